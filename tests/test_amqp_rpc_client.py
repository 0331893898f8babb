"""
Our daemon with a client speaking upstream's AMQP-RPC format, no Lambda
Server involved: pika publishing to the function's queue on the default
exchange, with its own exclusive reply queue and no mandatory flag.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lambdarapid import errors
from lambdarapid.invocation import InvocationType, check_payload

from .amqp_support import (
    amqp_uri,
    count_starts,
    deploy,
    eventually,
    function_name,
    declare_like_upstream,
    ready_messages,
    upstream_event,
    upstream_rpc,
    within,
)


class UpstreamClientTests(TestCase):
    """A pika client in upstream's request format against our daemon."""

    timeout = 30

    async def daemon(self, **settings: Any):
        name = function_name()
        daemon = deploy(self, reactor, name, **settings)
        await daemon.wait_connected()
        return name, daemon

    def rpc(self, name: str, bodies: list[bytes], **options: Any):
        return within(deferToThread(upstream_rpc, amqp_uri(), name, bodies, **options), 25, reactor)

    async def test_echo_replies(self) -> None:
        """Each request gets exactly one reply, on its reply_to, with its correlation_id and the echoed body."""
        name, daemon = await self.daemon(MAX_CONCURRENCY=2)
        events = [{"n": n, "id": uuid.uuid4().hex} for n in range(3)]
        ids, replies = await self.rpc(name, [json.dumps(e).encode() for e in events])
        self.assertEqual(sorted(r.correlation_id for r in replies), sorted(ids))
        by_id = {r.correlation_id: r for r in replies}
        for correlation_id, event in zip(ids, events):
            reply = by_id[correlation_id]
            self.assertEqual(json.loads(reply.body), event)
            self.assertEqual(reply.content_type, "application/json")
            self.assertNotIn("X-Amz-Function-Error", reply.headers)

    async def test_function_error_reply(self) -> None:
        """A failed run's reply carries the header X-Amz-Function-Error: Unhandled and the error JSON as body."""
        name, daemon = await self.daemon()
        ids, replies = await self.rpc(name, [b'{"fail": "over amqp"}'])
        self.assertEqual([r.correlation_id for r in replies], ids)
        self.assertEqual(replies[0].headers.get("X-Amz-Function-Error"), "Unhandled")
        error = json.loads(replies[0].body)
        self.assertEqual((error["errorType"], error["errorMessage"]), ("ValueError", "over amqp"))

    async def test_request_headers_reach_the_function(self) -> None:
        """The X-Amz-Client-Context (base64) and X-Amzn-Trace-Id headers reach the runtime; correlation_id is the request id."""
        name, daemon = await self.daemon()
        custom = {"tenant": uuid.uuid4().hex}
        trace = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent=53995c3f42cd8ad8;Sampled=1"
        ids, replies = await self.rpc(
            name,
            [b'{"context": true}'],
            headers={
                "X-Amz-Client-Context": base64.b64encode(
                    json.dumps({"custom": custom}).encode()
                ).decode(),
                "X-Amzn-Trace-Id": trace,
            },
        )
        told = json.loads(replies[0].body)
        self.assertEqual(told, {"custom": custom, "trace_id": trace, "request_id": ids[0]})

    async def test_hostile_headers_stay_one_header(self) -> None:
        """A trace id with CR/LF cannot add headers to the runtime's event: it arrives as one clean value."""
        name, daemon = await self.daemon()
        trace = "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700\r\nLambda-Runtime-Deadline-Ms: 99999999999999"
        ids, replies = await self.rpc(name, [b'{"context": true}'], headers={"X-Amzn-Trace-Id": trace})
        told = json.loads(replies[0].body)
        self.assertEqual(
            told["trace_id"],
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700Lambda-Runtime-Deadline-Ms: 99999999999999",
        )

    async def test_any_correlation_id_is_answered(self) -> None:
        """A correlation_id unfit for a Runtime API path still gets its reply, under that id."""
        name, daemon = await self.daemon()
        odd = "a?b c/d#e"
        ids, replies = await self.rpc(name, [b'{"odd": true}'], correlation_ids=[odd])
        self.assertEqual([(reply.correlation_id, reply.body) for reply in replies], [(odd, b'{"odd": true}')])

    async def test_malformed_client_context_does_not_stop_the_consumer(self) -> None:
        """A request with a pathological client context is still answered, and so is the next one."""
        name, daemon = await self.daemon()
        deep = base64.b64encode(("[" * 1300 + "]" * 1300).join(['{"a":', "}"]).encode()).decode()
        ids, replies = await self.rpc(
            name, [b'{"first": 1}'], headers={"X-Amz-Client-Context": deep}
        )
        self.assertEqual([reply.body for reply in replies], [b'{"first": 1}'])
        ids, replies = await self.rpc(name, [b'{"second": 2}'])
        self.assertEqual([reply.body for reply in replies], [b'{"second": 2}'])

    async def test_timestamp_counts_toward_the_deadline(self) -> None:
        """The request's timestamp (when the caller asked) starts the function's timeout, not its delivery."""
        name, daemon = await self.daemon(AWS_LAMBDA_FUNCTION_TIMEOUT=12)
        start = time.monotonic()
        # Sent "10 s ago": at most 3 s of the 12 are left (timestamps are whole seconds).
        ids, replies = await self.rpc(
            name, [b'{"sleep": 20}'], timestamp=int(time.time()) - 10, seconds=20
        )
        elapsed = time.monotonic() - start
        self.assertEqual(json.loads(replies[0].body)["errorType"], "Sandbox.Timedout")
        self.assertEqual(replies[0].headers.get("X-Amz-Function-Error"), "Unhandled")
        # Timed out at about 3 s; counted from delivery it would be 12 s.
        self.assertLess(elapsed, 8.0)

    async def test_event_without_reply_to(self) -> None:
        """A request with no reply_to is an Event: the function runs and nothing is published back."""
        name, daemon = await self.daemon(PRINT_REPORTS="true")
        marker = f"fire-and-forget-{uuid.uuid4().hex}"
        await within(
            deferToThread(upstream_event, amqp_uri(), name, json.dumps({"print": marker}).encode()),
            10,
            reactor,
        )
        await eventually(reactor, lambda: marker.encode() in daemon.output, 10, "the Event run")
        await eventually(reactor, lambda: b"END RequestId" in daemon.output, 5, "the Event ended")

    async def test_queue_declared_as_upstream_declares_it(self) -> None:
        """The daemon's queue is the function's name, declared exactly as upstream's daemon declares it."""
        name, daemon = await self.daemon()
        declare = lambda durable: within(  # noqa: E731
            deferToThread(declare_like_upstream, amqp_uri(), name, durable), 10, reactor
        )
        self.assertTrue(await declare(False))
        # The check can fail: a declaration that differs is refused.
        self.assertFalse(await declare(True))

    async def test_refused_deliveries_do_not_spin(self) -> None:
        """Deliveries the pool cannot take yet (MAX_QUEUED_INVOCATIONS < AMQP_PREFETCH) wait without a busy requeue loop."""
        name, daemon = await self.daemon(
            MAX_CONCURRENCY=1, MAX_QUEUED_INVOCATIONS=1, AWS_LAMBDA_FUNCTION_TIMEOUT=20
        )
        events = [{"sleep": 1, "n": n} for n in range(4)]
        cpu = time.process_time()
        ids, replies = await self.rpc(name, [json.dumps(e).encode() for e in events], seconds=20)
        cpu = time.process_time() - cpu
        self.assertEqual(sorted(json.loads(r.body)["n"] for r in replies), [0, 1, 2, 3])
        # This process (daemon and client) needs a few tens of ms for this
        # when deliveries wait; nack-and-requeue at once spins for the ~4 s.
        self.assertLess(cpu, 0.4, f"{cpu:.2f} s of CPU to wait for 4 s")



#: A 20 MB JSON event: over every Invoke API limit.
HUGE_EVENT = b'{"big": "' + b"x" * (20 * 1024 * 1024) + b'"}'


class RefusedRequestTests(TestCase):
    """Requests the Invoke API would refuse are refused over AMQP too, with an error reply, never run."""

    timeout = 60

    async def daemon(self, **settings: Any):
        name = function_name()
        daemon = deploy(self, reactor, name, PRINT_REPORTS="true", **settings)
        await daemon.wait_connected()
        return name, daemon

    def rpc(self, name: str, bodies: list[bytes], **options: Any):
        return within(deferToThread(upstream_rpc, amqp_uri(), name, bodies, **options), 50, reactor)

    def assert_error_reply(self, reply: Any, error: errors.APIError) -> None:
        self.assertEqual(
            (reply.body, reply.headers.get("X-Amzn-ErrorType"), reply.headers.get("X-Amz-Status-Code")),
            (error.body, error.error_type, str(error.status)),
        )
        self.assertNotIn("X-Amz-Function-Error", reply.headers)

    async def test_oversized_request_refused(self) -> None:
        """A 20 MB RequestResponse request gets a RequestTooLargeException reply (413) and never reaches the function."""
        name, daemon = await self.daemon()
        ids, replies = await self.rpc(name, [HUGE_EVENT, b'{"after": 1}'], seconds=40)
        by_id = {reply.correlation_id: reply for reply in replies}
        self.assertEqual(len(replies), 2)
        self.assert_error_reply(by_id[ids[0]], errors.request_too_large(errors.MAX_SYNC_PAYLOAD))
        self.assertEqual(by_id[ids[1]].body, b'{"after": 1}')
        # The second request was answered after the first was decided: one run only.
        self.assertEqual(count_starts(daemon.output), 1)

    async def test_invalid_json_refused(self) -> None:
        """A payload that is not JSON gets the Invoke API's 400 InvalidRequestContentException reply, not a run."""
        name, daemon = await self.daemon()
        ids, replies = await self.rpc(name, [b"{not json", b'{"after": 2}'])
        by_id = {reply.correlation_id: reply for reply in replies}
        try:
            check_payload(b"{not json", InvocationType.REQUEST_RESPONSE)
        except errors.APIError as error:
            expected = error
        self.assertEqual(expected.status, 400)
        self.assert_error_reply(by_id[ids[0]], expected)
        self.assertIn(b"Could not parse request body into json", by_id[ids[0]].body)
        self.assertEqual(by_id[ids[1]].body, b'{"after": 2}')
        self.assertEqual(count_starts(daemon.output), 1)

    async def test_refused_events_are_dropped(self) -> None:
        """Events over 1 MB or not JSON are dropped (not requeued, never run); the next Event runs."""
        name, daemon = await self.daemon()
        marker = f"after-refused-{uuid.uuid4().hex}"
        too_big = b'{"big": "' + b"x" * errors.MAX_ASYNC_PAYLOAD + b'"}'
        for body in (too_big, b"not json", json.dumps({"print": marker}).encode()):
            await within(deferToThread(upstream_event, amqp_uri(), name, body), 20, reactor)
        await eventually(reactor, lambda: b"END RequestId" in daemon.output, 10, "the last Event ran")
        self.assertEqual(count_starts(daemon.output), 1)
        self.assertIn(marker.encode(), bytes(daemon.output))
        # Nothing went back to the queue to be delivered again.
        self.assertEqual(await within(deferToThread(ready_messages, amqp_uri(), name), 10, reactor), 0)

    async def test_unserved_qualifier_refused(self) -> None:
        """A request whose X-Amz-Qualifier the daemon does not serve gets a 404 reply; $LATEST and none are served."""
        name, daemon = await self.daemon()
        ids, replies = await self.rpc(name, [b'{"q": 1}'], headers={"X-Amz-Qualifier": "v9"})
        self.assert_error_reply(
            replies[0], errors.function_not_found(daemon.config.function.arn("v9"))
        )
        ids, replies = await self.rpc(name, [b'{"q": 2}'], headers={"X-Amz-Qualifier": "$LATEST"})
        self.assertEqual([reply.body for reply in replies], [b'{"q": 2}'])
        self.assertEqual(count_starts(daemon.output), 1)
