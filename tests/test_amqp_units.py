"""
The AMQP transport's logic on a L{Clock}, with fake channels: the timers
(reroute window, startup hold, connect hold, requeue delay, retry delay), the
request checks and the error reply, without a broker or wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, cast

import pika
from pika.adapters.twisted_connection import ClosableDeferredQueue
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import errors
from lambdarapid.amqp import connection as amqp_connection
from lambdarapid.amqp.connection import AMQPConnectionService, HandshakeWatcher, retry_policy
from lambdarapid.amqp.consumer import REQUEUE_DELAY, RPCConsumer
from lambdarapid.amqp.invoker import (
    CONNECT_HOLD,
    REROUTE_INTERVAL,
    REROUTE_WINDOW,
    STARTUP_REROUTE,
    AMQPInvoker,
)
from lambdarapid.amqp.messages import error_from_reply, error_reply_properties, request_properties
from lambdarapid.amqp.parameters import parse_amqp_uri, redacted
from lambdarapid.config import Function
from lambdarapid.invocation import (
    FunctionNotFound,
    Invocation,
    InvocationType,
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    check_payload,
)


@dataclass
class FakeChannel:
    """The parts of pika's TwistedChannel the transport uses, recording what it is asked."""

    is_open: bool = True
    on_closed: Deferred[Any] = field(default_factory=Deferred)
    consumer_tags: list[str] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    nacks: list[tuple[int, bool]] = field(default_factory=list)
    consumed: list[ClosableDeferredQueue] = field(default_factory=list)
    on_return: Callable[[Any], None] | None = None

    def basic_qos(self, **_: Any) -> Deferred[None]:
        return succeed(None)

    def queue_declare(self, **_: Any) -> Deferred[None]:
        return succeed(None)

    def basic_consume(self, queue: str, auto_ack: bool) -> Deferred[tuple[Any, str]]:
        deliveries = ClosableDeferredQueue()
        self.consumed.append(deliveries)
        tag = f"ctag-{len(self.consumed)}"
        self.consumer_tags.append(tag)
        return succeed((deliveries, tag))

    def basic_cancel(self, tag: str) -> Deferred[None]:
        self.consumer_tags.remove(tag)
        return succeed(None)

    def basic_publish(self, **message: Any) -> Deferred[None]:
        self.published.append(message)
        return succeed(None)

    def basic_ack(self, delivery_tag: int) -> None:
        self.acks.append(delivery_tag)

    def basic_nack(self, delivery_tag: int, requeue: bool) -> None:
        self.nacks.append((delivery_tag, requeue))

    def add_on_return_callback(self, callback: Callable[[Any], None]) -> None:
        self.on_return = callback

    def confirm_delivery(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> None:
        self.is_open = False


@dataclass
class FakeConnection:
    is_open: bool = True
    channels: list[FakeChannel] = field(default_factory=list)

    def channel(self) -> Deferred[FakeChannel]:
        self.channels.append(FakeChannel())
        return succeed(self.channels[-1])

    def close(self) -> None:
        self.is_open = False


class FakeInvoker:
    """The daemon's pool, as the consumer sees it: every invocation waits for the test."""

    def __init__(self, answer: Callable[[Invocation], Deferred[Result]] | None = None) -> None:
        self.invocations: list[Invocation] = []
        self._answer = answer

    def invoke(self, invocation: Invocation) -> Deferred[Result]:
        self.invocations.append(invocation)
        return self._answer(invocation) if self._answer else Deferred()

    def withdraw(self, invocation: Invocation) -> bool:
        return False


def captured_logs(test: SynchronousTestCase) -> list[LogEvent]:
    """Every log event published during the test."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def messages(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events if event.get("log_namespace", "").startswith("lambdarapid")]


def apierror(call: Callable[[], object]) -> errors.APIError:
    try:
        call()
    except errors.APIError as error:
        return error
    raise AssertionError("no APIError raised")


FUNCTION = Function(name="fn", version="7", timeout=3.0)


class ConsumerTests(SynchronousTestCase):
    """The daemon's RPCConsumer on fake channels and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.invoker = FakeInvoker()
        self.consumer = RPCConsumer(self.invoker, FUNCTION, prefetch=5, reactor=self.clock)  # type: ignore[arg-type]
        self.connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(self.consumer.connected(self.connection)))
        self.channel = self.connection.channels[0]
        self.tags = 0

    def deliver(self, body: bytes, reply_to: str | None = "reply-q", **headers: str | bytes) -> int:
        self.tags += 1
        self.channel.consumed[-1].put(
            SimpleNamespace(
                method=SimpleNamespace(delivery_tag=self.tags),
                properties=pika.BasicProperties(
                    correlation_id=f"id-{self.tags}", reply_to=reply_to, headers=headers or None
                ),
                body=body,
            )
        )
        return self.tags

    def assert_error_reply(self, tag: int, error: errors.APIError) -> None:
        """The one publish is C{error}'s reply to the delivery, which is acked."""
        [reply] = self.channel.published
        self.assertEqual((reply["routing_key"], reply["body"]), ("reply-q", error.body))
        self.assertEqual(error_from_reply(reply["properties"], reply["body"]), error)
        self.assertEqual(reply["properties"].correlation_id, f"id-{tag}")
        self.assertEqual((self.channel.acks, self.channel.nacks), ([tag], []))
        self.assertEqual(self.invoker.invocations, [])

    def test_payload_at_the_limit_runs(self) -> None:
        """A RequestResponse payload of exactly 6,291,456 bytes of JSON is invoked."""
        body = b'"' + b"x" * (errors.MAX_SYNC_PAYLOAD - 2) + b'"'
        self.deliver(body)
        self.assertEqual([i.payload for i in self.invoker.invocations], [body])

    def test_oversized_request_refused(self) -> None:
        """One byte more gets a RequestTooLargeException error reply, acked, and is never invoked."""
        tag = self.deliver(b'"' + b"x" * (errors.MAX_SYNC_PAYLOAD - 1) + b'"')
        self.assert_error_reply(tag, errors.request_too_large(errors.MAX_SYNC_PAYLOAD))

    def test_invalid_json_refused(self) -> None:
        """A payload that is not JSON gets the 400 InvalidRequestContentException reply check_payload gives."""
        tag = self.deliver(b"{oops")
        expected = apierror(lambda: check_payload(b"{oops", InvocationType.REQUEST_RESPONSE))
        self.assertEqual((expected.status, expected.error_type), (400, "InvalidRequestContentException"))
        self.assert_error_reply(tag, expected)

    def test_empty_payload_is_an_empty_object(self) -> None:
        """An empty body runs as C{{}}, as before."""
        self.deliver(b"")
        self.assertEqual([i.payload for i in self.invoker.invocations], [b"{}"])

    def test_event_limit(self) -> None:
        """An Event of exactly 1 MB is invoked; one byte more is dropped: nacked without requeue, with a warning."""
        logs = captured_logs(self)
        at_limit = b'"' + b"x" * (errors.MAX_ASYNC_PAYLOAD - 2) + b'"'
        self.deliver(at_limit, reply_to=None)
        self.assertEqual(len(self.invoker.invocations), 1)
        tag = self.deliver(at_limit[:-1] + b'x"', reply_to=None)
        self.assertEqual(len(self.invoker.invocations), 1)
        self.assertEqual((self.channel.nacks, self.channel.published), ([(tag, False)], []))
        [warning] = [m for m in messages(logs) if "dropping" in m]
        self.assertIn("RequestTooLargeException", warning)

    def test_invalid_json_event_dropped(self) -> None:
        """An Event that is not JSON is nacked without requeue and never run."""
        tag = self.deliver(b"nope", reply_to=None)
        self.assertEqual((self.channel.nacks, self.invoker.invocations), ([(tag, False)], []))

    def test_unserved_qualifier_refused(self) -> None:
        """X-Amz-Qualifier v9 (not $LATEST nor the version) gets the 404 the HTTP path answers."""
        tag = self.deliver(b"{}", "reply-q", **{"X-Amz-Qualifier": b"v9"})
        self.assert_error_reply(tag, errors.function_not_found(FUNCTION.arn("v9")))

    def test_served_qualifiers_run(self) -> None:
        """$LATEST, the function's version and no qualifier run, with the invoked ARN carrying the qualifier."""
        self.deliver(b"{}", "reply-q", **{"X-Amz-Qualifier": "$LATEST"})
        self.deliver(b"{}", "reply-q", **{"X-Amz-Qualifier": b"7"})
        self.deliver(b"{}")
        self.assertEqual(
            [(i.qualifier, i.function_arn) for i in self.invoker.invocations],
            [("$LATEST", FUNCTION.arn("$LATEST")), ("7", FUNCTION.arn("7")), (None, FUNCTION.arn())],
        )

    def test_reply_carries_the_results_function_error(self) -> None:
        """A failed run's reply carries the result's own function_error value, and the delivery is acked."""

        @dataclass
        class Handled(Result):
            @property
            def function_error(self) -> str | None:
                return "Handled"

        self.invoker._answer = lambda invocation: succeed(
            Handled(outcome=Outcome.FUNCTION_ERROR, body=b'{"errorType":"E"}', request_id=invocation.request_id)
        )
        tag = self.deliver(b"{}")
        [reply] = self.channel.published
        self.assertEqual(reply["properties"].headers["X-Amz-Function-Error"], "Handled")
        self.assertEqual(self.channel.acks, [tag])

    def test_full_daemon_requeues_after_the_delay(self) -> None:
        """A delivery the pool has no room for is nacked back to the queue after REQUEUE_DELAY, not before."""
        self.invoker._answer = lambda _: fail(TooManyRequests())
        tag = self.deliver(b"{}")
        self.clock.advance(REQUEUE_DELAY - 0.01)
        self.assertEqual(self.channel.nacks, [])
        self.clock.advance(0.01)
        self.assertEqual(self.channel.nacks, [(tag, True)])

    def test_stopping_requeues_at_once(self) -> None:
        """Requeues waiting for their delay go back at once when the daemon stops consuming."""
        self.invoker._answer = lambda _: fail(TooManyRequests())
        tag = self.deliver(b"{}")
        self.successResultOf(Deferred.fromCoroutine(self.consumer.stop_consuming()))
        self.clock.advance(0)
        self.assertEqual(self.channel.nacks, [(tag, True)])


class InvokerTests(SynchronousTestCase):
    """The Lambda Server's AMQPInvoker on fake channels and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.invoker = AMQPInvoker(self.clock, timeout=60.0)

    def connect(self) -> FakeChannel:
        """A new connection; its rpc channel."""
        connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(self.invoker.connected(connection)))
        return connection.channels[0]

    def invocation(self, **fields: Any) -> Invocation:
        return Invocation(payload=b"{}", function_name="fn", function_arn="arn:fn", **fields)

    def returned(self, rpc: FakeChannel, invocation: Invocation) -> None:
        assert rpc.on_return is not None
        rpc.on_return(SimpleNamespace(properties=pika.BasicProperties(correlation_id=invocation.request_id)))

    def test_connect_hold(self) -> None:
        """A request made before the first connection waits for it up to CONNECT_HOLD, then is published."""
        waiting = self.invoker.invoke(self.invocation())
        self.clock.advance(CONNECT_HOLD - 0.01)
        self.assertNoResult(waiting)
        rpc = self.connect()
        self.assertEqual([m["routing_key"] for m in rpc.published], ["fn"])
        self.assertNoResult(waiting)

    def test_connect_hold_expires(self) -> None:
        """With no connection after CONNECT_HOLD, the request fails with ServiceUnavailable (503), not before."""
        waiting = self.invoker.invoke(self.invocation())
        self.clock.advance(CONNECT_HOLD - 0.01)
        self.assertNoResult(waiting)
        self.clock.advance(0.01)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_startup_hold(self) -> None:
        """Just after the first connection a returned request is published again; after STARTUP_REROUTE it is a 404."""
        rpc = self.connect()
        early = self.invocation()
        waiting = self.invoker.invoke(early)
        self.clock.advance(STARTUP_REROUTE - 0.5)
        self.returned(rpc, early)
        self.assertNoResult(waiting)
        self.clock.advance(REROUTE_INTERVAL)
        self.assertEqual(len(rpc.published), 2)
        self.clock.advance(0.5)
        self.returned(rpc, early)
        self.failureResultOf(waiting, FunctionNotFound)
        later = self.invocation()
        late = self.invoker.invoke(later)
        self.returned(rpc, later)
        self.failureResultOf(late, FunctionNotFound)

    def test_reroute_window(self) -> None:
        """After a reconnection a pending request is published again, and re-published while returned for REROUTE_WINDOW; then 503."""
        rpc = self.connect()
        invocation = self.invocation()
        waiting = self.invoker.invoke(invocation)
        self.clock.advance(STARTUP_REROUTE + 1)
        self.invoker.disconnected(Failure(ConnectionDone()))
        rpc = self.connect()
        self.assertEqual(len(rpc.published), 1)
        self.clock.advance(REROUTE_WINDOW - 0.5)
        self.returned(rpc, invocation)
        self.clock.advance(REROUTE_INTERVAL)
        self.assertEqual(len(rpc.published), 2)
        self.assertNoResult(waiting)
        self.clock.advance(0.5)
        self.returned(rpc, invocation)
        self.failureResultOf(waiting, ServiceUnavailable)

    def test_error_reply_fails_with_its_api_error(self) -> None:
        """An error reply fails the invocation with the APIError it describes, which the Invoke API answers as is."""
        rpc = self.connect()
        invocation = self.invocation()
        waiting = self.invoker.invoke(invocation)
        error = errors.request_too_large(errors.MAX_SYNC_PAYLOAD)
        self.clock.advance(STARTUP_REROUTE)
        replies = rpc.consumed[0]
        replies.put(
            SimpleNamespace(properties=error_reply_properties(error, invocation.request_id), body=error.body)
        )
        self.assertEqual(self.failureResultOf(waiting, errors.APIError).value, error)

    def test_fail_safe_timeout(self) -> None:
        """With no reply within the server's timeout, the answer is errors.timed_out_body, exactly then."""
        self.connect()
        invocation = self.invocation()
        waiting = self.invoker.invoke(invocation)
        self.clock.advance(59.99)
        self.assertNoResult(waiting)
        self.clock.advance(0.01)
        result = self.successResultOf(waiting)
        self.assertEqual(
            (result.outcome, result.body), (Outcome.TIMEOUT, errors.timed_out_body(invocation.request_id, 60.0))
        )

    def test_qualifier_travels_in_a_header(self) -> None:
        """The invoked qualifier is published as the X-Amz-Qualifier header; none when there is none."""
        self.assertEqual(
            request_properties(self.invocation(qualifier="v9"), reply_to="r").headers["X-Amz-Qualifier"], "v9"
        )
        self.assertNotIn("X-Amz-Qualifier", request_properties(self.invocation(), "r").headers or {})


class ErrorReplyTests(SynchronousTestCase):
    """The error reply's wire format, both ways."""

    def test_round_trip(self) -> None:
        """Status, error type and body survive the trip, for every error the daemon replies with."""
        for error in (
            errors.request_too_large(errors.MAX_SYNC_PAYLOAD),
            errors.invalid_json("unexpected character"),
            errors.function_not_found(FUNCTION.arn("v9")),
        ):
            properties = error_reply_properties(error, "id")
            self.assertEqual(properties.headers["X-Amz-Status-Code"], error.status)
            self.assertEqual(properties.headers["X-Amzn-ErrorType"], error.error_type)
            self.assertNotIn("X-Amz-Function-Error", properties.headers)
            self.assertEqual(error_from_reply(properties, error.body), error)

    def test_ordinary_reply_is_no_error(self) -> None:
        """A reply without X-Amzn-ErrorType (ours or upstream's) is a result."""
        self.assertIsNone(error_from_reply(pika.BasicProperties(headers={"X-Amz-Function-Error": "Unhandled"}), b"{}"))
        self.assertIsNone(error_from_reply(pika.BasicProperties(), b"{}"))

    def test_text_headers(self) -> None:
        """Headers sent as bytes or text (another publisher's choice) are read the same."""
        properties = pika.BasicProperties(
            headers={"X-Amz-Status-Code": b"413", "X-Amzn-ErrorType": b"RequestTooLargeException"}
        )
        self.assertEqual(error_from_reply(properties, b"{}"), errors.APIError(413, "RequestTooLargeException", b"{}"))

    def test_malformed_error_reply(self) -> None:
        """A status that is no HTTP error status, or a type unfit for a header, is our 500, never echoed."""
        for headers in (
            {"X-Amz-Status-Code": 200, "X-Amzn-ErrorType": "X"},
            {"X-Amz-Status-Code": "abc", "X-Amzn-ErrorType": "X"},
            {"X-Amz-Status-Code": 404, "X-Amzn-ErrorType": "X\r\nSet-Cookie: a=b"},
        ):
            error = error_from_reply(pika.BasicProperties(headers=headers), b"{}")
            assert error is not None
            self.assertEqual((error.status, error.error_type), (500, "ServiceException"), headers)


class ConnectionTests(SynchronousTestCase):
    """Where the connection service says it connects, how long it waits, and what it says when refused."""

    def test_redacted(self) -> None:
        """The log form of AMQP_URI: scheme, host, port and vhost (with its slash), never credentials."""
        cases = {
            "amqp://u:secret@127.0.0.1:5672/rel-vh": "amqp://127.0.0.1:5672/rel-vh",
            "amqp://u:secret@127.0.0.1:5672/": "amqp://127.0.0.1:5672/%2F",
            "amqp://u:secret@127.0.0.1:5672/%2F": "amqp://127.0.0.1:5672/%2F",
            "amqps://u:secret@broker:5671/a%2Fb": "amqps://broker:5671/a%2Fb",
        }
        for uri, expected in cases.items():
            self.assertEqual(redacted(parse_amqp_uri(uri)), expected, uri)

    def test_retry_policy_never_exceeds_retry_delay(self) -> None:
        """Backoff from 0.5 s, doubling, jittered within [half, all] of it, and never past retry_delay."""
        for jitter in (0.0, 0.5, 0.999999):
            policy = retry_policy(0.5, 10.0, random=lambda: jitter)
            delays = [policy(attempt) for attempt in range(1, 200)]
            self.assertTrue(all(0.25 <= delay <= 10.0 for delay in delays), delays)
        policy = retry_policy(0.5, 10.0, random=lambda: 0.999999)
        self.assertAlmostEqual(policy(1), 0.5, places=4)
        self.assertAlmostEqual(policy(2), 1.0, places=4)
        self.assertAlmostEqual(policy(50), 10.0, places=4)
        self.assertEqual(retry_policy(0.5, 10.0, random=lambda: 0.0)(50), 5.0)

    def test_service_retries_within_retry_delay(self) -> None:
        """An unreachable broker is retried at least every retry_delay seconds, as logged, and warned about once."""
        clock = Clock()
        attempts: list[float] = []

        class Refusing:
            def connect(self, factory: Any) -> Deferred[Any]:
                attempts.append(clock.seconds())
                return fail(ConnectionRefusedError())

        logs = captured_logs(self)
        service = AMQPConnectionService(
            parse_amqp_uri("amqp://u:p@127.0.0.1:5999/vh?retry_delay=3"),
            clock,
            endpoint=Refusing(),  # type: ignore[arg-type]
            random=lambda: 0.999999,  # the longest waits the jitter allows
        )
        service.startService()
        self.addCleanup(service.stopService)
        for _ in range(600):
            clock.advance(0.05)
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        self.assertGreater(len(gaps), 5)
        self.assertLessEqual(max(gaps), 3.0 + 1e-6, gaps)
        warnings = [m for m in messages(logs) if "cannot reach" in m]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("amqp://127.0.0.1:5999/vh", warnings[0])
        self.assertIn("within 3 s", warnings[0])
        self.assertNotIn("p@", warnings[0])

    def test_handshake_watcher_reads_the_brokers_refusal(self) -> None:
        """The broker's connection.close during the handshake (code and text) is kept, even split across reads."""
        frame = pika.frame.Method(
            0, pika.spec.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 0, 0)
        ).marshal()
        watcher = HandshakeWatcher()
        watcher.feed(frame[:5])
        self.assertIsNone(watcher.refusal)
        watcher.feed(frame[5:])
        self.assertEqual(watcher.refusal, (403, "ACCESS_REFUSED - Login was refused"))

    def test_refusals_are_explained(self) -> None:
        """A refused login and a refused vhost each say so, naming the user or vhost, never the password."""
        parameters = parse_amqp_uri("amqp://alice:secret@127.0.0.1:5672/rel-vh")
        login = amqp_connection.describe_refusal((403, "ACCESS_REFUSED - Login was refused"), parameters)
        self.assertIn("refused the login of user 'alice'", login)
        vhost = amqp_connection.describe_refusal((530, "NOT_ALLOWED - vhost rel-vh not found"), parameters)
        self.assertIn("refused access to vhost 'rel-vh'", vhost)
        other = amqp_connection.describe_refusal((541, "INTERNAL_ERROR"), parameters)
        self.assertIn("541 INTERNAL_ERROR", other)
        for text in (login, vhost, other):
            self.assertNotIn("secret", text)
