"""
Tests for L{lambdarapid.telemetry}: subscriptions, batching, delivery and its
bounds with a fake agent on a L{Clock}; then real deliveries over loopback.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from lambdarapid import errors, telemetry
from lambdarapid.config import Function
from lambdarapid.telemetry import TelemetryHub

FUNCTION = Function(name="conf")


def body(
    types: list[str] | None = None,
    uri: str = "http://sandbox.localdomain:4243/telemetry",
    schema: str | None = "2022-12-13",
    **buffering: Any,
) -> bytes:
    """A subscription body, with the given buffering settings."""
    document: dict[str, Any] = {
        "types": ["platform", "function", "extension"] if types is None else types,
        "destination": {"protocol": "HTTP", "URI": uri},
    }
    if schema is not None:
        document["schemaVersion"] = schema
    if buffering:
        document["buffering"] = buffering
    return json.dumps(document).encode()


@implementer(IResponse)
class FakeResponse:
    """An answer with an empty body."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.phrase = b"OK" if code < 300 else b"Error"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers()
        self.length = 0
        self.request = None
        self.previousResponse = None

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.dataReceived(b"")
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        pass


@implementer(IConsumer)
class _Collector:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class FakeRequest:
    """One POST the hub made, which the test answers."""

    def __init__(self, method: bytes, uri: bytes, headers: Headers, body: bytes) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.answer: Deferred[IResponse] = Deferred()

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)
        return events

    @property
    def records(self) -> list[Any]:
        return [event["record"] for event in self.events]

    def respond(self, code: int = 200) -> None:
        self.answer.callback(FakeResponse(code))

    def refuse(self) -> None:
        self.answer.errback(ConnectionRefusedError())


@implementer(IAgent)
class FakeAgent:
    """Records requests; each answers when the test says so."""

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        collector = _Collector()
        if bodyProducer is not None:
            bodyProducer.startProducing(collector)
        request = FakeRequest(method, uri, headers or Headers(), collector.data)
        self.requests.append(request)
        return request.answer

    def pop(self) -> FakeRequest:
        """The only request not yet looked at."""
        [request] = self.requests
        self.requests.clear()
        return request


class HubCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.hub = TelemetryHub(self.clock, FUNCTION, agent=self.agent)

    def delivered(self) -> list[dict[str, Any]]:
        """Flush, answer every request 200, and return the events they carried in order."""
        self.hub.flush()
        events: list[dict[str, Any]] = []
        while self.agent.requests:
            request = self.agent.requests.pop(0)
            events.extend(request.events)
            request.respond()
        return events

    def lines(self, count: int, source: str = "function") -> None:
        for i in range(count):
            self.hub.log_line(source, b"line %d" % (i,))


class ValidationTests(HubCase):
    """Every refusal of a subscription body, with its status, type and a message that says why."""

    def refused(
        self, data: bytes, api: str = "telemetry", contains: str = "", status: int = 400
    ) -> errors.APIError:
        error = self.assertRaises(errors.APIError, self.hub.subscribe, api, "ext", data)
        self.assertEqual(error.status, status)
        expected = "Logs.ValidationError" if api == "logs" else "ValidationError"
        if status == 400:
            self.assertEqual(error.error_type, expected)
        document = json.loads(error.body)
        self.assertEqual(document["errorType"], error.error_type)
        self.assertIn(contains, document["errorMessage"])
        return error

    def test_bad_json(self) -> None:
        """A body that is not JSON is a 400."""
        self.refused(b"{nope", contains="not valid JSON")

    def test_not_an_object(self) -> None:
        """A JSON body that is not an object is a 400."""
        self.refused(b'["platform"]', contains="JSON object")

    def test_schema_required_for_telemetry(self) -> None:
        """The Telemetry API needs a schemaVersion."""
        self.refused(body(schema=None), contains="schemaVersion")

    def test_unknown_schema(self) -> None:
        """An unknown Telemetry schemaVersion is a 400 that lists the known ones."""
        self.refused(body(schema="2020-08-15"), contains="2022-07-01, 2022-12-13, 2025-01-29")

    def test_every_telemetry_schema(self) -> None:
        """The three Telemetry schema versions are accepted."""
        for i, schema in enumerate(telemetry.TELEMETRY_SCHEMAS):
            self.hub.subscribe("telemetry", f"ext{i}", body(schema=schema))

    def test_logs_schema_optional(self) -> None:
        """The Logs API defaults to 2020-08-15 and takes 2021-03-18."""
        self.hub.subscribe("logs", "a", body(schema=None))
        self.hub.subscribe("logs", "b", body(schema="2021-03-18"))

    def test_logs_unknown_schema(self) -> None:
        """A Telemetry schema is refused by the Logs API with Logs.ValidationError."""
        self.refused(body(schema="2022-12-13"), api="logs", contains="2020-08-15, 2021-03-18")

    def test_types_required(self) -> None:
        """types must be present."""
        document = json.loads(body())
        del document["types"]
        self.refused(json.dumps(document).encode(), contains="types must be a non-empty list")

    def test_types_empty(self) -> None:
        """types must not be empty."""
        self.refused(body(types=[]), contains="types must be a non-empty list")

    def test_unknown_type(self) -> None:
        """Each type is platform, function or extension."""
        self.refused(body(types=["platform", "metrics"]), contains="'metrics'")

    def test_max_items_range(self) -> None:
        """maxItems is 1,000 to 10,000."""
        self.refused(body(maxItems=999), contains="buffering.maxItems")
        self.refused(body(maxItems=10_001), contains="from 1000 to 10000")
        self.hub.subscribe("telemetry", "ext", body(maxItems=1000))

    def test_max_bytes_range(self) -> None:
        """maxBytes is 262,144 to 1,048,576."""
        self.refused(body(maxBytes=262_143), contains="buffering.maxBytes")
        self.refused(body(maxBytes=1_048_577), contains="from 262144 to 1048576")
        self.hub.subscribe("telemetry", "ext", body(maxBytes=1_048_576))

    def test_timeout_range(self) -> None:
        """timeoutMs is 25 to 30,000."""
        self.refused(body(timeoutMs=24), contains="buffering.timeoutMs")
        self.refused(body(timeoutMs=30_001), contains="from 25 to 30000")
        self.hub.subscribe("telemetry", "ext", body(timeoutMs=25))

    def test_buffering_integers(self) -> None:
        """Buffering values are integers: not floats, strings or booleans."""
        self.refused(body(timeoutMs=100.5), contains="100.5")
        self.refused(body(maxItems="1000"), contains="'1000'")
        self.refused(body(timeoutMs=True), contains="True")

    def test_destination_required(self) -> None:
        """A subscription needs a destination."""
        document = json.loads(body())
        del document["destination"]
        self.refused(json.dumps(document).encode(), contains="destination")

    def test_unknown_protocol(self) -> None:
        """The protocol is HTTP or TCP."""
        document = json.loads(body())
        document["destination"]["protocol"] = "UDP"
        self.refused(json.dumps(document).encode(), contains="HTTP or TCP, not 'UDP'")

    def test_https_refused(self) -> None:
        """There is no HTTPS delivery."""
        self.refused(body(uri="https://sandbox.localdomain:4243/t"), contains="no HTTPS")

    def test_other_scheme_refused(self) -> None:
        """Only http:// URIs are destinations."""
        self.refused(body(uri="ftp://sandbox:21/t"), contains="http://")

    def test_outside_host_refused(self) -> None:
        """A host outside the sandbox is refused, naming it and the hosts allowed."""
        self.refused(body(uri="http://example.com:4243/t"), contains="'example.com'")
        self.refused(body(uri="http://10.0.0.1:4243/t"), contains="sandbox.localdomain, sandbox")

    def test_tcp_port(self) -> None:
        """A TCP destination needs a port number."""
        document = json.loads(body())
        document["destination"] = {"protocol": "TCP", "port": "4243"}
        self.refused(json.dumps(document).encode(), contains="port")
        document["destination"] = {"protocol": "TCP", "port": 70000}
        self.refused(json.dumps(document).encode(), contains="70000")

    def test_closed(self) -> None:
        """After Init both APIs answer 403 SubscriptionClosed."""
        self.hub.close_subscriptions()
        error = self.refused(body(), status=403)
        self.assertEqual(error.error_type, "Telemetry.SubscriptionClosed")
        error = self.refused(body(schema=None), api="logs", status=403)
        self.assertEqual(error.error_type, "Logs.SubscriptionClosed")

    def test_other_api_conflict(self) -> None:
        """An extension subscribed to one API is refused by the other."""
        self.hub.subscribe("telemetry", "ext", body())
        self.refused(
            body(schema=None), api="logs", contains="already subscribed to the Telemetry API"
        )
        self.hub.subscribe("logs", "other", body(schema=None))
        error = self.assertRaises(errors.APIError, self.hub.subscribe, "telemetry", "other", body())
        self.assertEqual(error.error_type, "ValidationError")
        self.assertIn(b"already subscribed to the Logs API", error.body)


class DestinationTests(HubCase):
    """Where deliveries go."""

    def test_sandbox_hosts(self) -> None:
        """Each of the five sandbox names is delivered to 127.0.0.1 with its port and path."""
        for i, host in enumerate(telemetry.SANDBOX_HOSTS):
            self.hub.subscribe(
                "telemetry", f"ext{i}", body(uri=f"http://{host}:{4243 + i}/p{i}?q=1")
            )
        self.hub.flush()
        uris = sorted(request.uri for request in self.agent.requests)
        self.assertEqual(uris, [b"http://127.0.0.1:%d/p%d?q=1" % (4243 + i, i) for i in range(5)])

    def test_default_port_and_path(self) -> None:
        """No port means 80, no path means /."""
        self.hub.subscribe("telemetry", "ext", body(uri="http://sandbox"))
        self.hub.flush()
        self.assertEqual(self.agent.pop().uri, b"http://127.0.0.1:80/")

    def test_post_json(self) -> None:
        """A delivery is a POST of a JSON array, naming the host the extension gave."""
        self.hub.subscribe("telemetry", "ext", body())
        self.hub.flush()
        request = self.agent.pop()
        self.assertEqual(request.method, b"POST")
        self.assertEqual(request.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.headers.getRawHeaders(b"host"), [b"sandbox.localdomain:4243"])
        self.assertIsInstance(json.loads(request.body), list)


class SubscriptionTests(HubCase):
    """What subscribing does to the event stream."""

    def test_subscription_event(self) -> None:
        """An accepted subscription emits platform.telemetrySubscription."""
        self.hub.subscribe("telemetry", "ext", body(types=["platform", "function"]))
        [event] = self.delivered()
        self.assertEqual(event["type"], "platform.telemetrySubscription")
        self.assertEqual(
            event["record"],
            {"name": "ext", "state": "Subscribed", "types": ["platform", "function"]},
        )

    def test_resubscribe_replaces(self) -> None:
        """Subscribing again is accepted and replaces the settings: one subscriber, the new URI."""
        self.hub.subscribe("telemetry", "ext", body(uri="http://sandbox:1111/"))
        self.hub.subscribe("telemetry", "ext", body(uri="http://sandbox:2222/", types=["function"]))
        self.hub.close_subscriptions()
        self.delivered()
        self.hub.log_line("function", b"hello")
        self.hub.platform("platform.start", {"requestId": "r"})
        self.hub.flush()
        request = self.agent.pop()
        self.assertEqual(request.uri, b"http://127.0.0.1:2222/")
        self.assertEqual(request.records, ["hello"])

    def test_backlog_first(self) -> None:
        """A subscriber gets Init's earlier events first, platform.initStart leading."""
        self.hub.platform(
            "platform.initStart", {"initializationType": "on-demand", "phase": "init"}
        )
        self.hub.log_line("extension", b"starting")
        self.hub.subscribe("telemetry", "ext", body())
        self.hub.log_line("function", b"later")
        types = [event["type"] for event in self.delivered()]
        self.assertEqual(
            types,
            ["platform.initStart", "extension", "platform.telemetrySubscription", "function"],
        )

    def test_backlog_for_each_subscriber(self) -> None:
        """A second subscriber in Init also gets the events from before the first, by its types."""
        self.hub.platform("platform.initStart", {"phase": "init"})
        self.hub.log_line("function", b"one")
        self.hub.subscribe("telemetry", "first", body(uri="http://sandbox:1/"))
        self.hub.log_line("function", b"two")
        self.hub.log_line("extension", b"ext line")
        self.hub.subscribe("telemetry", "second", body(uri="http://sandbox:2/", types=["function"]))
        self.hub.flush()
        [second] = [r for r in self.agent.requests if r.uri == b"http://127.0.0.1:2/"]
        self.assertEqual(second.records, ["one", "two"])

    def test_backlog_bounded(self) -> None:
        """The backlog keeps its first 1,000 events and reports the rest as dropped."""
        self.lines(telemetry.BACKLOG_ITEMS + 5)
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        events = self.delivered()
        self.assertEqual(events[0]["record"], "line 0")
        self.assertEqual(events[999]["record"], "line 999")
        dropped = events[1000]
        self.assertEqual(dropped["type"], "platform.logsDropped")
        self.assertEqual(dropped["record"]["droppedRecords"], 5)
        self.assertGreater(dropped["record"]["droppedBytes"], 5 * len('"line 1000"'))

    def test_close_discards_backlog(self) -> None:
        """After Init, with no subscriber, nothing is kept and nothing wants events."""
        self.assertTrue(self.hub.subscribed)
        self.hub.platform("platform.initStart", {"phase": "init"})
        self.hub.close_subscriptions()
        self.assertFalse(self.hub.subscribed)
        self.hub.log_line("function", b"lost")
        self.hub.flush()
        self.assertEqual(self.agent.requests, [])

    def test_subscribed_after_init(self) -> None:
        """With a subscriber, events keep flowing after Init."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.close_subscriptions()
        self.assertTrue(self.hub.subscribed)
        self.hub.log_line("function", b"kept")
        self.assertEqual([event["record"] for event in self.delivered()], ["kept"])


class EventTests(HubCase):
    """What an event looks like."""

    def test_envelope(self) -> None:
        """time is ISO-8601 UTC with milliseconds and a Z; type and record as given."""
        self.clock.advance(1796113525.1389)
        self.hub.subscribe("telemetry", "ext", body(types=["platform"]))
        self.hub.platform("platform.start", {"requestId": "r1", "version": "$LATEST"})
        event = self.delivered()[-1]
        self.assertEqual(
            event,
            {
                "time": "2026-12-01T08:25:25.138Z",
                "type": "platform.start",
                "record": {"requestId": "r1", "version": "$LATEST"},
            },
        )

    def test_log_lines(self) -> None:
        """Bytes become a string (bad UTF-8 replaced); a JSON-format line stays an object."""
        self.hub.subscribe("telemetry", "ext", body(types=["function", "extension"]))
        self.hub.log_line("function", b"caf\xc3\xa9 \xff")
        self.hub.log_line("extension", {"level": "INFO", "message": "hi"})
        events = self.delivered()
        self.assertEqual(
            [(e["type"], e["record"]) for e in events],
            [("function", "café \ufffd"), ("extension", {"level": "INFO", "message": "hi"})],
        )

    def test_unusual_records(self) -> None:
        """A record JSON cannot hold as is (integer keys, huge integers) is still delivered."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.log_line("function", {1: "one"})
        self.hub.log_line("function", {"big": 2**70})
        records = [event["record"] for event in self.delivered()]
        self.assertEqual(records, [{"1": "one"}, {"big": 2**70}])

    def test_types_filter(self) -> None:
        """A subscriber gets only the families it asked for."""
        self.hub.subscribe("telemetry", "ext", body(types=["extension"]))
        self.hub.platform("platform.start", {"requestId": "r"})
        self.hub.log_line("function", b"f")
        self.hub.log_line("extension", b"e")
        self.assertEqual([event["record"] for event in self.delivered()], ["e"])


class BatchingTests(HubCase):
    """When a batch leaves."""

    def setUp(self) -> None:
        super().setUp()
        self.hub.subscribe(
            "telemetry", "ext", body(types=["function"], timeoutMs=100, maxItems=1000)
        )
        self.hub.close_subscriptions()

    def test_max_items(self) -> None:
        """The maxItems-th event sends the batch at once."""
        self.lines(999)
        self.assertEqual(self.agent.requests, [])
        self.lines(1)
        request = self.agent.pop()
        self.assertEqual(len(request.events), 1000)

    def test_max_bytes(self) -> None:
        """Reaching maxBytes sends the batch at once."""
        line = b"x" * 10_000
        for _ in range(26):
            self.hub.log_line("function", line)
        self.assertEqual(self.agent.requests, [])
        self.hub.log_line("function", line)
        request = self.agent.pop()
        self.assertEqual(len(request.events), 27)
        self.assertGreaterEqual(len(request.body), 262_144)

    def test_timeout(self) -> None:
        """timeoutMs after the first buffered event, the batch leaves."""
        self.hub.log_line("function", b"one")
        self.clock.advance(0.05)
        self.hub.log_line("function", b"two")
        self.clock.advance(0.049)
        self.assertEqual(self.agent.requests, [])
        self.clock.advance(0.001)
        self.assertEqual(self.agent.pop().records, ["one", "two"])

    def test_flush(self) -> None:
        """flush() sends what is buffered now."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        self.assertEqual(self.agent.pop().records, ["one"])
        self.clock.advance(1)
        self.assertEqual(self.agent.requests, [])

    def test_timeout_behind_in_flight(self) -> None:
        """An event queued behind a batch in flight leaves as soon as that batch is taken
        if its timeoutMs has passed meanwhile."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        first = self.agent.pop()
        self.hub.log_line("function", b"two")
        self.clock.advance(0.1)
        self.assertEqual(self.agent.requests, [])
        first.respond()
        self.assertEqual(self.agent.pop().records, ["two"])

    def test_order_one_in_flight(self) -> None:
        """Batches leave one at a time, in order, each after the previous one was taken."""
        self.lines(2500)
        first = self.agent.pop()
        self.lines(1, source="function")
        self.assertEqual(self.agent.requests, [])
        first.respond()
        second = self.agent.pop()
        second.respond()
        self.clock.advance(0.1)
        third = self.agent.pop()
        third.respond()
        records = first.records + second.records + third.records
        self.assertEqual(records, [f"line {i}" for i in range(2500)] + ["line 0"])
        self.assertEqual([len(first.events), len(second.events)], [1000, 1000])


class RetryTests(HubCase):
    """A listener that fails gets the same batch again, later."""

    def setUp(self) -> None:
        super().setUp()
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.close_subscriptions()
        self.logged: list[LogEvent] = []
        self.patch(
            telemetry._Subscriber, "log", Logger(observer=cast(ILogObserver, self.logged.append))
        )

    def test_backoff(self) -> None:
        """Refused, the batch is resent after 0.1 s, then 0.2 s; later events follow it."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        first = self.agent.pop()
        first.refuse()
        self.hub.log_line("function", b"two")
        self.clock.advance(0.099)
        self.assertEqual(self.agent.requests, [])
        self.clock.advance(0.001)
        again = self.agent.pop()
        self.assertEqual(again.body, first.body)
        again.respond(503)
        self.clock.advance(0.199)
        self.assertEqual(self.agent.requests, [])
        self.clock.advance(0.001)
        third = self.agent.pop()
        self.assertEqual(third.body, first.body)
        third.respond(202)
        self.hub.flush()
        self.assertEqual(self.agent.pop().records, ["two"])

    def test_backoff_resets(self) -> None:
        """After a success, the next failure waits 0.1 s again."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        self.agent.pop().refuse()
        self.clock.advance(0.1)
        self.agent.pop().refuse()
        self.clock.advance(0.2)
        self.agent.pop().respond()
        self.hub.log_line("function", b"two")
        self.hub.flush()
        self.agent.pop().refuse()
        self.clock.advance(0.1)
        self.assertEqual(self.agent.pop().records, ["two"])

    def test_backoff_capped(self) -> None:
        """Retries never wait more than 5 s."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        for _ in range(10):
            self.agent.pop().refuse()
            self.clock.advance(5)
        self.assertEqual(len(self.agent.requests), 1)

    def test_flush_keeps_backoff(self) -> None:
        """flush() (an invoke ended) does not hurry a retry: a dead listener is not hammered."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        self.agent.pop().refuse()
        self.hub.log_line("function", b"two")
        self.hub.flush()
        self.assertEqual(self.agent.requests, [])
        self.clock.advance(0.1)
        self.assertEqual(self.agent.pop().records, ["one"])

    def test_post_timeout(self) -> None:
        """A POST unanswered for 5 s is given up and retried."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        hung = self.agent.pop()
        self.clock.advance(4.9)
        self.assertEqual(self.agent.requests, [])
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.assertEqual(self.agent.pop().body, hung.body)

    def test_logged_once_per_streak(self) -> None:
        """A failure streak logs one warning, and its end one line."""
        self.hub.log_line("function", b"one")
        self.hub.flush()
        for delay in (0.1, 0.2, 0.4):
            self.agent.pop().refuse()
            self.clock.advance(delay)
        self.agent.pop().respond()
        levels = [event["log_level"].name for event in self.logged]
        self.assertEqual(levels, ["warn", "info"])
        self.assertIn("127.0.0.1:4243", self.logged[0]["destination"])


class MemoryBoundTests(HubCase):
    """A subscriber that cannot keep up costs at most twice its maxBytes."""

    def test_dropped(self) -> None:
        """Past 2 × maxBytes events are dropped, counted, and reported before the next ones."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.close_subscriptions()
        size = len(
            telemetry.Event("1970-01-01T00:00:00.000Z", "function", "0000" + "x" * 1000).encode()
        )
        for i in range(2000):
            self.hub.log_line("function", b"%04d" % (i,) + b"x" * 1000)
        [hung] = self.agent.requests
        self.agent.requests.clear()
        subscriber = self.hub._subscribers["telemetry", "ext"]
        self.assertLessEqual(subscriber.buffered_bytes, 2 * 262_144)
        self.assertGreater(subscriber.buffered_bytes, 2 * 262_144 - size)
        hung.respond()
        self.hub.log_line("function", b"after")
        events = hung.events + self.delivered()
        records = [event["record"] for event in events]
        kept = records.index("after") - 1
        self.assertEqual(records[:kept], [f"{i:04d}" + "x" * 1000 for i in range(kept)])
        dropped = events[kept]
        self.assertEqual(dropped["type"], "platform.logsDropped")
        self.assertEqual(
            dropped["record"],
            {
                "droppedBytes": (2000 - kept) * size,
                "droppedRecords": 2000 - kept,
                "reason": "Some logs were dropped because the subscriber could not keep up",
            },
        )
        self.hub.log_line("function", b"next")
        self.assertEqual([event["record"] for event in self.delivered()], ["next"])


class LogsAPITests(HubCase):
    """Logs API subscribers get the Logs API's records."""

    def stream(self) -> None:
        self.hub.platform(
            "platform.initStart", {"initializationType": "on-demand", "phase": "init"}
        )
        self.hub.platform("platform.initRuntimeDone", {"status": "success"})
        self.hub.platform("platform.initReport", {"metrics": {"durationMs": 1.0}})
        self.hub.platform("platform.start", {"requestId": "r", "version": "$LATEST"})
        self.hub.log_line("function", b"hello")
        self.hub.platform(
            "platform.runtimeDone",
            {"requestId": "r", "status": "success", "metrics": {"durationMs": 2}},
        )
        self.hub.platform("platform.extension", {"name": "e", "state": "Ready", "events": []})
        self.hub.platform(
            "platform.report",
            {"requestId": "r", "status": "success", "metrics": {"durationMs": 3.0}},
        )

    def test_2020_08_15(self) -> None:
        """The default schema: no Telemetry-only events, start/end/report by request id."""
        self.hub.subscribe("logs", "ext", body(schema=None))
        self.stream()
        events = [(e["type"], e["record"]) for e in self.delivered()]
        self.assertEqual(
            events,
            [
                (
                    "platform.logsSubscription",
                    {
                        "name": "ext",
                        "state": "Subscribed",
                        "types": ["platform", "function", "extension"],
                    },
                ),
                ("platform.start", {"requestId": "r"}),
                ("function", "hello"),
                ("platform.extension", {"name": "e", "state": "Ready", "events": []}),
                ("platform.end", {"requestId": "r"}),
                ("platform.report", {"requestId": "r", "metrics": {"durationMs": 3.0}}),
            ],
        )

    def test_2021_03_18(self) -> None:
        """The newer schema adds platform.runtimeDone with request id and status."""
        self.hub.subscribe("logs", "ext", body(schema="2021-03-18", types=["platform"]))
        self.stream()
        events = [(e["type"], e["record"]) for e in self.delivered()]
        self.assertIn(("platform.runtimeDone", {"requestId": "r", "status": "success"}), events)
        self.assertNotIn("platform.initStart", [kind for kind, _ in events])

    def test_side_by_side(self) -> None:
        """A Telemetry subscriber beside a Logs one still gets the Telemetry records."""
        self.hub.subscribe("logs", "logs-ext", body(schema=None, uri="http://sandbox:1/"))
        self.hub.subscribe("telemetry", "tel-ext", body(uri="http://sandbox:2/"))
        self.hub.platform("platform.start", {"requestId": "r", "version": "$LATEST"})
        self.hub.flush()
        [tel] = [r for r in self.agent.requests if r.uri == b"http://127.0.0.1:2/"]
        self.assertIn({"requestId": "r", "version": "$LATEST"}, tel.records)


class StopTests(HubCase):
    """Shutdown waits for deliveries, but not forever."""

    def test_no_subscriber(self) -> None:
        """With nothing to deliver, stop fires at once."""
        self.successResultOf(self.hub.stop(2.0))

    def test_delivered(self) -> None:
        """stop sends what is buffered and fires once the listener took it."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.close_subscriptions()
        self.delivered()
        self.hub.log_line("function", b"last")
        stopped = self.hub.stop(2.0)
        request = self.agent.pop()
        self.assertEqual(request.records, ["last"])
        self.assertNoResult(stopped)
        request.respond()
        self.successResultOf(stopped)
        self.assertFalse(self.hub.subscribed)
        self.hub.log_line("function", b"ignored")
        self.hub.flush()
        self.assertEqual(self.agent.requests, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hung(self) -> None:
        """A listener that never answers holds stop for the timeout only, and leaves no timer."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.log_line("function", b"last")
        stopped = self.hub.stop(2.0)
        self.assertEqual(len(self.agent.requests), 1)
        self.clock.advance(1.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retries_now(self) -> None:
        """A subscriber waiting out a backoff is retried at once on stop."""
        self.hub.subscribe("telemetry", "ext", body(types=["function"]))
        self.hub.log_line("function", b"last")
        self.hub.flush()
        for delay in (0.1, 0.2):
            self.agent.pop().refuse()
            self.clock.advance(delay)
        self.agent.pop().refuse()
        stopped = self.hub.stop(2.0)
        self.agent.pop().respond()
        self.successResultOf(stopped)


class TCPUnitTests(SynchronousTestCase):
    """The TCP destination, on a memory reactor."""

    def test_refused_reconnects(self) -> None:
        """A refused connection is retried to 127.0.0.1 and the port."""
        reactor = MemoryReactorClock()
        hub = TelemetryHub(reactor, FUNCTION, agent=FakeAgent())
        document = json.loads(body(types=["function"]))
        document["destination"] = {"protocol": "TCP", "port": 4243}
        hub.subscribe("telemetry", "ext", json.dumps(document).encode())
        hub.log_line("function", b"one")
        hub.flush()
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 4243))
        factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        reactor.advance(0.1)
        self.assertEqual(len(reactor.tcpClients), 2)

    def test_lines_and_reconnect(self) -> None:
        """Each event is one JSON line on a kept connection; after it is lost, a new one."""
        reactor = MemoryReactorClock()
        hub = TelemetryHub(reactor, FUNCTION, agent=FakeAgent())
        document = json.loads(body(types=["function"]))
        document["destination"] = {"protocol": "TCP", "port": 4243}
        hub.subscribe("telemetry", "ext", json.dumps(document).encode())
        hub.log_line("function", b"one")
        hub.log_line("function", b"two")
        hub.flush()
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        lines = transport.value().splitlines()
        self.assertEqual([json.loads(line)["record"] for line in lines], ["one", "two"])
        self.assertTrue(transport.value().endswith(b"\n"))
        hub.log_line("function", b"three")
        hub.flush()
        self.assertEqual(json.loads(transport.value().splitlines()[-1])["record"], "three")
        self.assertEqual(len(reactor.tcpClients), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        hub.log_line("function", b"four")
        hub.flush()
        self.assertEqual(len(reactor.tcpClients), 2)


class Recorder(Resource):
    """A telemetry listener: keeps every POSTed array."""

    isLeaf = True

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.batches = 0
        self.expected = expected
        self.complete: Deferred[None] = Deferred()

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.events.extend(json.loads(request.content.read()))
        self.batches += 1
        if len(self.events) >= self.expected and not self.complete.called:
            self.complete.callback(None)
        # A body the client must read before its connection can carry the next batch.
        return b"received"


class TrackingFactory(WrappingFactory):
    """Wraps a server factory to know when its connections are gone."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.lost: dict[Any, Deferred[None]] = {}

    def registerProtocol(self, protocol: Any) -> None:
        super().registerProtocol(protocol)
        self.lost[protocol] = Deferred()

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        self.lost[protocol].callback(None)


class Lines(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        factory: LinesFactory = self.factory
        factory.lines.append(json.loads(line))
        if len(factory.lines) >= factory.expected and not factory.complete.called:
            factory.complete.callback(None)


class LinesFactory(ServerFactory):
    protocol = Lines

    def __init__(self, expected: int) -> None:
        self.lines: list[dict[str, Any]] = []
        self.expected = expected
        self.complete: Deferred[None] = Deferred()


class EndToEndTests(TestCase):
    """Real deliveries over loopback, on the real reactor."""

    timeout = 10

    def listen(self, factory: Any) -> tuple[TrackingFactory, int]:
        tracking = TrackingFactory(factory)
        listen: Any = global_reactor.listenTCP
        port = listen(0, tracking, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return tracking, port.getHost().port

    async def test_http(self) -> None:
        """Events reach a real HTTP listener named sandbox.localdomain, over one kept connection."""
        recorder = Recorder(expected=4)
        tracking, port = self.listen(Site(recorder))
        hub = TelemetryHub(global_reactor, FUNCTION)
        hub.platform("platform.initStart", {"initializationType": "on-demand", "phase": "init"})
        hub.subscribe(
            "telemetry",
            "ext",
            body(uri=f"http://sandbox.localdomain:{port}/telemetry", timeoutMs=25),
        )
        hub.close_subscriptions()
        hub.log_line("function", b"first")
        hub.flush()
        hub.log_line("function", b"second")
        await recorder.complete
        await hub.stop(2.0)
        for lost in tracking.lost.values():
            await lost
        self.assertEqual(
            [event["type"] for event in recorder.events],
            ["platform.initStart", "platform.telemetrySubscription", "function", "function"],
        )
        self.assertEqual(recorder.events[3]["record"], "second")
        self.assertEqual(recorder.batches, 2)
        self.assertEqual(len(tracking.lost), 1)

    async def test_tcp(self) -> None:
        """A TCP subscriber gets one JSON event per line."""
        lines = LinesFactory(expected=3)
        tracking, port = self.listen(lines)
        hub = TelemetryHub(global_reactor, FUNCTION)
        document = json.loads(body(types=["function"], timeoutMs=25))
        document["destination"] = {"protocol": "TCP", "port": port}
        hub.subscribe("telemetry", "ext", json.dumps(document).encode())
        hub.log_line("function", b"one")
        hub.flush()
        hub.log_line("function", b"two")
        hub.log_line("function", {"message": "three"})
        await lines.complete
        await hub.stop(2.0)
        for lost in tracking.lost.values():
            await lost
        self.assertEqual(
            [line["record"] for line in lines.lines], ["one", "two", {"message": "three"}]
        )
        self.assertEqual(len(tracking.lost), 1)
