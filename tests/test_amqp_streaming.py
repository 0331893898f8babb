"""
Response streaming over AMQP-RPC (docs/amqp.md, "Streamed replies"): the
daemon's stream messages and the Lambda Server's relay of them, on fake
channels and a Clock; then end to end, RabbitMQ, lambda-server and a daemon
running the Node RIC's streaming handler, read by boto3 through the server.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from types import SimpleNamespace
from typing import Any

import pika
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from lambdarapid import errors
from lambdarapid.amqp.consumer import RPCConsumer
from lambdarapid.amqp.invoker import GAP_TIMEOUT, STARTUP_REROUTE, AMQPInvoker
from lambdarapid.amqp.messages import (
    ACCEPT_STREAM,
    MAX_STREAM_CHUNK,
    SEQ,
    STREAM,
    STREAM_ID,
    request_properties,
    stream_properties,
)
from lambdarapid.invocation import Invocation, Outcome, Result
from lambdarapid.streams import ResponseStream
from lambdarapid.testing import RunningDaemon, start_daemon

from .amqp_support import Server, amqp_uri, eventually, function_name, lambda_server, upstream_rpc
from .runtimes import (
    NODE_TEST_TIMEOUT,
    function_environ,
    in_thread,
    lambda_client,
    node_example,
    python_runtime,
)
from .test_amqp_units import FUNCTION, FakeChannel, FakeConnection, FakeInvoker


class Reader:
    """A stream's consumer, as the Invoke API's event-stream writer would be."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.result: Result | None = None

    def stream_chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def stream_ended(self, result: Result) -> None:
        self.result = result


@implementer(IPushProducer)
class Producer:
    """The runtime's connection, as a stream sees it: paused and resumed."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


#: The server's fail-safe timeout in the relay tests.
FAIL_SAFE = 60.0


def kinds(published: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [
        (m["properties"].headers[STREAM], m["properties"].headers[SEQ]) for m in published
    ]


class DaemonStreamTests(SynchronousTestCase):
    """The daemon's RPCConsumer answering an opted-in request with stream messages."""

    def setUp(self) -> None:
        self.invoker = FakeInvoker()
        self.consumer = RPCConsumer(self.invoker, FUNCTION, prefetch=5, reactor=Clock())  # type: ignore[arg-type]
        self.connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(self.consumer.connected(self.connection)))
        self.channel = self.connection.channels[0]
        self.tags = 0

    def deliver(self, reply_to: str | None = "reply-q", accept: bool = True) -> int:
        self.tags += 1
        headers = {ACCEPT_STREAM: b"1"} if accept else None
        self.channel.consumed[-1].put(
            SimpleNamespace(
                method=SimpleNamespace(delivery_tag=self.tags),
                properties=pika.BasicProperties(
                    correlation_id=f"id-{self.tags}", reply_to=reply_to, headers=headers
                ),
                body=b"{}",
            )
        )
        return self.tags

    def streaming(self, content_type: str = "text/plain") -> ResponseStream:
        """Answer every invocation with a stream, as the pool does for a streaming function."""
        stream = ResponseStream(content_type)
        self.invoker._answer = lambda invocation: succeed(
            Result(
                outcome=Outcome.SUCCESS,
                body=b"",
                request_id=invocation.request_id,
                executed_version="7",
                stream=stream,
                content_type=content_type,
            )
        )
        return stream

    def final(
        self, outcome: Outcome = Outcome.SUCCESS, body: bytes = b"", **fields: Any
    ) -> Result:
        """How the pool closes a stream: the run's final Result."""
        return Result(outcome=outcome, body=body, request_id="id-1", **fields)

    def test_opt_in(self) -> None:
        """Only X-Lambdarapid-Accept-Stream: 1 on a RequestResponse request makes an invocation that accepts a stream."""
        self.deliver()
        self.deliver(accept=False)
        self.deliver(reply_to=None)
        self.assertEqual([i.accept_stream for i in self.invoker.invocations], [True, False, False])

    def test_message_sequence(self) -> None:
        """start (seq 0, the content type, the version), a chunk per write, end with {}; acked after end only."""
        stream = self.streaming()
        tag = self.deliver()
        stream.write(b"first ")
        stream.write(b"second")
        self.assertEqual(self.channel.acks, [])
        stream.close(self.final())
        published = self.channel.published
        self.assertEqual(kinds(published), [("start", 0), ("chunk", 1), ("chunk", 2), ("end", 3)])
        self.assertEqual([m["body"] for m in published], [b"", b"first ", b"second", b"{}"])
        start, end = published[0]["properties"], published[-1]["properties"]
        self.assertEqual((start.content_type, start.correlation_id), ("text/plain", "id-1"))
        self.assertEqual(start.headers["X-Amz-Executed-Version"], "7")
        self.assertEqual({m["routing_key"] for m in published}, {"reply-q"})
        self.assertEqual(len({m["properties"].headers[STREAM_ID] for m in published}), 1)
        self.assertNotIn("X-Amz-Function-Error", end.headers)
        self.assertEqual(self.channel.acks, [tag])

    def test_large_chunks_split(self) -> None:
        """A runtime chunk over 1 MiB goes as several chunk messages of at most 1 MiB."""
        stream = self.streaming()
        self.deliver()
        stream.write(b"x" * (2 * MAX_STREAM_CHUNK + 5))
        bodies = [m["body"] for m in self.channel.published[1:]]
        self.assertEqual([len(b) for b in bodies], [MAX_STREAM_CHUNK, MAX_STREAM_CHUNK, 5])

    def test_error_end(self) -> None:
        """A failed run's end carries ErrorCode, ErrorDetails, LogResult and X-Amz-Function-Error: Unhandled."""
        stream = self.streaming()
        self.deliver()
        stream.write(b"kept")
        document = b'{"errorType":"Error","errorMessage":"failed mid-stream"}'
        stream.close(
            self.final(outcome=Outcome.FUNCTION_ERROR, body=document, error_type="Error", log_tail=b"log")
        )
        end = self.channel.published[-1]
        self.assertEqual(
            json.loads(end["body"]),
            {"ErrorCode": "Error", "ErrorDetails": document.decode(), "LogResult": base64.b64encode(b"log").decode()},
        )
        self.assertEqual(end["properties"].headers["X-Amz-Function-Error"], "Unhandled")
        self.assertEqual(self.channel.acks, [1])

    def test_buffered_result_is_one_reply(self) -> None:
        """An opted-in request to a buffered function gets the one reply of today, no stream marker."""
        self.invoker._answer = lambda invocation: succeed(
            Result(outcome=Outcome.SUCCESS, body=b'{"a":1}', request_id=invocation.request_id)
        )
        self.deliver()
        [reply] = self.channel.published
        self.assertEqual(reply["body"], b'{"a":1}')
        self.assertNotIn(STREAM, reply["properties"].headers)
        self.assertEqual(self.channel.acks, [1])

    def test_channel_closed_mid_stream(self) -> None:
        """When the delivery's channel closes mid-stream, nothing more is published or acked; the runtime's bytes are dropped."""
        stream = self.streaming()
        runtime = Producer()
        stream.set_producer(runtime)
        self.deliver()
        stream.write(b"one")
        self.channel.is_open = False
        stream.write(b"two")
        stream.close(self.final())
        self.assertEqual(kinds(self.channel.published), [("start", 0), ("chunk", 1)])
        self.assertEqual(self.channel.acks, [])

    def test_full_transport_pauses_the_runtime(self) -> None:
        """While the broker connection's write buffer is full, every stream's runtime upload is paused."""
        stream = self.streaming()
        runtime = Producer()
        stream.set_producer(runtime)
        self.deliver()
        self.consumer.pressure.pauseProducing()
        self.assertTrue(runtime.paused)
        self.consumer.pressure.resumeProducing()
        self.assertFalse(runtime.paused)
        self.consumer.pressure.pauseProducing()
        stream.close(self.final())
        later = self.streaming()
        other = Producer()
        later.set_producer(other)
        self.deliver()
        self.assertTrue(other.paused)  # a stream that starts while the buffer is full waits too


class ServerRelayTests(SynchronousTestCase):
    """The Lambda Server's AMQPInvoker relaying a stream to its caller."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.invoker = AMQPInvoker(self.clock, timeout=FAIL_SAFE)
        connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(self.invoker.connected(connection)))
        self.rpc: FakeChannel = connection.channels[0]
        self.clock.advance(STARTUP_REROUTE)
        self.invocation = Invocation(
            payload=b"{}", function_name="fn", function_arn="arn:fn", accept_stream=True
        )
        self.answer = self.invoker.invoke(self.invocation)

    def send(
        self,
        kind: str,
        seq: int,
        body: bytes = b"",
        stream_id: str = "s1",
        content_type: str | None = None,
        version: str | None = None,
    ) -> None:
        headers = {"X-Amz-Executed-Version": version} if version else {}
        properties = stream_properties(
            kind, stream_id, seq, self.invocation.request_id, content_type, **headers
        )
        self.rpc.consumed[0].put(SimpleNamespace(properties=properties, body=body))

    def started(self, content_type: str = "text/plain") -> tuple[Result, Reader]:
        self.send("start", 0, content_type=content_type, version="7")
        result = self.successResultOf(self.answer)
        assert result.stream is not None
        reader = Reader()
        result.stream.consume(reader)
        return result, reader

    def test_request_opts_in(self) -> None:
        """The published request carries X-Lambdarapid-Accept-Stream: 1; an Invoke's does not."""
        [request] = self.rpc.published
        self.assertEqual(request["properties"].headers[ACCEPT_STREAM], "1")
        plain = Invocation(payload=b"{}", function_name="fn")
        self.assertNotIn(ACCEPT_STREAM, request_properties(plain, "r").headers or {})

    def test_in_order(self) -> None:
        """start answers with a stream of its content type and version; chunks follow; end closes it with {}."""
        result, reader = self.started()
        self.assertEqual(
            (result.outcome, result.body, result.executed_version, result.content_type),
            (Outcome.SUCCESS, b"", "7", "text/plain"),
        )
        self.send("chunk", 1, b"first ")
        self.send("chunk", 2, b"second")
        self.assertEqual(reader.chunks, [b"first ", b"second"])
        self.assertIsNone(reader.result)
        self.send("end", 3, b"{}")
        assert reader.result is not None
        self.assertEqual((reader.result.outcome, reader.result.executed_version), (Outcome.SUCCESS, "7"))
        self.assertEqual(self.invoker.pending, 0)

    def test_reordered_and_duplicates(self) -> None:
        """Out-of-order messages are put in seq order; duplicates are dropped."""
        self.send("chunk", 2, b"b")
        self.send("chunk", 1, b"a")
        self.assertNoResult(self.answer)
        _, reader = self.started()
        self.send("chunk", 1, b"a")
        self.send("end", 4, b"{}")
        self.send("chunk", 3, b"c")
        self.send("chunk", 3, b"c")
        self.assertEqual(reader.chunks, [b"a", b"b", b"c"])
        assert reader.result is not None
        self.assertEqual(reader.result.outcome, Outcome.SUCCESS)

    def test_error_completion(self) -> None:
        """An end with ErrorCode is a function error of that type, its details the body, LogResult the decoded tail."""
        _, reader = self.started()
        document = '{"errorType":"Error","errorMessage":"x"}'
        end = {"ErrorCode": "Error", "ErrorDetails": document, "LogResult": base64.b64encode(b"tail").decode()}
        self.send("end", 1, json.dumps(end).encode())
        assert reader.result is not None
        self.assertEqual(
            (reader.result.outcome, reader.result.error_type, reader.result.body, reader.result.log_tail),
            (Outcome.FUNCTION_ERROR, "Error", document.encode(), b"tail"),
        )

    def test_gap_truncates(self) -> None:
        """A gap not filled within GAP_TIMEOUT ends the stream as Runtime.TruncatedResponse, exactly then."""
        _, reader = self.started()
        self.send("chunk", 1, b"a")
        self.send("chunk", 3, b"c")
        self.clock.advance(GAP_TIMEOUT - 0.01)
        self.assertIsNone(reader.result)
        self.clock.advance(0.01)
        assert reader.result is not None
        self.assertEqual((reader.result.error_type, reader.chunks), ("Runtime.TruncatedResponse", [b"a"]))
        self.assertEqual(self.invoker.pending, 0)
        self.send("chunk", 2, b"b")  # too late: dropped
        self.assertEqual(reader.chunks, [b"a"])

    def test_gap_filled_in_time(self) -> None:
        """A gap filled before GAP_TIMEOUT costs nothing."""
        _, reader = self.started()
        self.send("chunk", 2, b"b")
        self.clock.advance(GAP_TIMEOUT - 0.01)
        self.send("chunk", 1, b"a")
        self.clock.advance(GAP_TIMEOUT)
        self.send("end", 3, b"{}")
        self.assertEqual(reader.chunks, [b"a", b"b"])
        assert reader.result is not None
        self.assertEqual(reader.result.outcome, Outcome.SUCCESS)

    def test_missing_start_truncates(self) -> None:
        """Stream messages with no start within GAP_TIMEOUT: the caller gets Runtime.TruncatedResponse."""
        self.send("chunk", 1, b"a")
        self.clock.advance(GAP_TIMEOUT)
        result = self.successResultOf(self.answer)
        self.assertEqual((result.error_type, result.stream), ("Runtime.TruncatedResponse", None))

    def test_other_stream_dropped_once_bytes_went_out(self) -> None:
        """A second run's stream (new Stream-Id) after bytes went out means the first daemon was lost: truncated."""
        _, reader = self.started()
        self.send("chunk", 1, b"a")
        self.send("chunk", 1, b"z", stream_id="s2")  # not its start: dropped
        self.assertEqual(reader.chunks, [b"a"])
        self.assertIsNone(reader.result)
        self.send("start", 0, stream_id="s2")
        assert reader.result is not None
        self.assertEqual((reader.result.error_type, reader.chunks), ("Runtime.TruncatedResponse", [b"a"]))

    def test_other_stream_takes_over_before_bytes(self) -> None:
        """A second run's stream that starts before any byte went out replaces the first; the first is dropped from then on."""
        _, reader = self.started()
        self.send("start", 0, stream_id="s2", content_type="text/plain")
        self.send("chunk", 1, b"old", stream_id="s1")
        self.send("start", 0, stream_id="s1")
        self.send("chunk", 1, b"new", stream_id="s2")
        self.send("end", 2, b"{}", stream_id="s2")
        self.assertEqual(reader.chunks, [b"new"])
        assert reader.result is not None
        self.assertEqual(reader.result.outcome, Outcome.SUCCESS)

    def test_fail_safe_timer_covers_the_whole_stream(self) -> None:
        """The server's timeout counts from the request: a stream still open then ends as Sandbox.Timedout."""
        _, reader = self.started()
        self.send("chunk", 1, b"a")
        self.clock.advance(FAIL_SAFE - 0.01)  # from when the request was made
        self.assertIsNone(reader.result)
        self.clock.advance(0.01)
        assert reader.result is not None
        self.assertEqual((reader.result.outcome, reader.result.error_type), (Outcome.TIMEOUT, "Sandbox.Timedout"))
        self.assertEqual(json.loads(reader.result.body)["errorType"], "Sandbox.Timedout")

    def test_hang_up_drops_the_pending_entry(self) -> None:
        """The caller hanging up (the stream's stopProducing) drops the entry; later messages are discarded."""
        result, reader = self.started()
        assert result.stream is not None
        result.stream.stopProducing()
        self.assertEqual(self.invoker.pending, 0)
        self.send("chunk", 1, b"a")
        self.send("end", 2, b"{}")
        self.assertEqual((reader.chunks, reader.result), ([], None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hang_up_before_start(self) -> None:
        """Cancelling the invoke before start drops the entry too."""
        self.answer.cancel()
        self.failureResultOf(self.answer)
        self.assertEqual(self.invoker.pending, 0)

    def test_connection_lost_mid_stream(self) -> None:
        """The server losing its connection ends a started stream as truncated: its reply-to died with it."""
        _, reader = self.started()
        self.invoker.disconnected(Failure(ConnectionDone()))
        assert reader.result is not None
        self.assertEqual(reader.result.error_type, "Runtime.TruncatedResponse")
        self.assertEqual(self.invoker.pending, 0)

    def test_buffered_reply_echoing_the_opt_in(self) -> None:
        """A reply without the marker is the one buffered reply, even carrying the echoed opt-in header (upstream's daemon)."""
        echoed = pika.BasicProperties(
            correlation_id=self.invocation.request_id,
            headers={ACCEPT_STREAM: "1", "X-Amz-Executed-Version": "$LATEST"},
        )
        self.rpc.consumed[0].put(SimpleNamespace(properties=echoed, body=b'{"a":1}'))
        result = self.successResultOf(self.answer)
        self.assertEqual((result.stream, result.body), (None, b'{"a":1}'))

    def test_buffered_reply_after_a_stream_began_is_dropped(self) -> None:
        """The first reply decides: once a stream came, a plain reply (another run's) is dropped."""
        _, reader = self.started()
        plain = pika.BasicProperties(correlation_id=self.invocation.request_id, headers={})
        self.rpc.consumed[0].put(SimpleNamespace(properties=plain, body=b"other"))
        self.send("chunk", 1, b"a")
        self.send("end", 2, b"{}")
        self.assertEqual(reader.chunks, [b"a"])


class RoundTripTests(SynchronousTestCase):
    """The daemon's stream messages, as published, fed to the server's relay."""

    def test_daemon_to_server(self) -> None:
        """What the daemon publishes for a streamed error run is what the server's caller reads."""
        invoker = AMQPInvoker(Clock(), timeout=60.0)
        server_connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(invoker.connected(server_connection)))
        rpc = server_connection.channels[0]
        answer = invoker.invoke(
            Invocation(payload=b"{}", function_name="fn", function_arn="arn:fn", accept_stream=True)
        )
        [request] = rpc.published

        stream = ResponseStream("text/plain")
        pool = FakeInvoker(
            lambda invocation: succeed(
                Result(
                    outcome=Outcome.SUCCESS,
                    body=b"",
                    request_id=invocation.request_id,
                    stream=stream,
                    content_type="text/plain",
                )
            )
        )
        consumer = RPCConsumer(pool, FUNCTION, prefetch=5, reactor=Clock())  # type: ignore[arg-type]
        daemon_connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(consumer.connected(daemon_connection)))
        daemon = daemon_connection.channels[0]
        daemon.consumed[-1].put(
            SimpleNamespace(
                method=SimpleNamespace(delivery_tag=1),
                properties=request["properties"],
                body=request["body"],
            )
        )
        self.assertTrue(pool.invocations[0].accept_stream)
        stream.write(b"kept")
        stream.close(
            Result(
                outcome=Outcome.FUNCTION_ERROR,
                body=errors.function_error_body("Error", "failed"),
                request_id="x",
                error_type="Error",
            )
        )
        for message in daemon.published:
            rpc.consumed[0].put(SimpleNamespace(properties=message["properties"], body=message["body"]))
        result = self.successResultOf(answer)
        assert result.stream is not None
        reader = Reader()
        result.stream.consume(reader)
        self.assertEqual(reader.chunks, [b"kept"])
        assert reader.result is not None
        self.assertEqual((reader.result.error_type, json.loads(reader.result.body)["errorMessage"]), ("Error", "failed"))


# End to end: RabbitMQ, lambda-server in-process, a daemon in-process.


async def amqp_daemon(
    test: TestCase, name: str, command: list[str], task_root: str | None = None, **settings: object
) -> RunningDaemon:
    """A daemon serving C{name} on the local broker with C{command}, consuming its queue."""
    environ = function_environ(AMQP_URI=amqp_uri(), AWS_LAMBDA_FUNCTION_NAME=name)
    if task_root is not None:
        environ["LAMBDA_TASK_ROOT"] = task_root
    # Room for a Node cold start on a loaded machine; the timeout test sets its own.
    settings.setdefault("AWS_LAMBDA_FUNCTION_TIMEOUT", 30)
    daemon = await start_daemon(command, environ, **settings)
    test.addCleanup(daemon.stop)
    amqp, consumer = daemon.service.amqp, daemon.service.consumer
    assert amqp is not None and consumer is not None
    await eventually(reactor, lambda: amqp.connected, 10, "consuming its queue")
    connection: Any = amqp.connection
    # The streams' throttle is the producer of the broker connection's transport.
    test.assertIs(connection.transport.producer, consumer.pressure)
    return daemon


def stream_through(url: str, name: str, event: Any) -> dict[str, Any]:
    """boto3's invoke_with_response_stream of C{name} at C{url}, read whole (blocking), with arrival times."""
    response: dict[str, Any] = lambda_client(url).invoke_with_response_stream(
        FunctionName=name, Payload=json.dumps(event).encode()
    )
    events, arrived = [], []
    for event_ in response["EventStream"]:
        events.append(event_)
        arrived.append(time.monotonic())
    response["events"], response["arrived"] = events, arrived
    response["chunks"] = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    response["complete"] = [e["InvokeComplete"] for e in events if "InvokeComplete" in e]
    return response


class ThroughServerStreamingTests(TestCase):
    """InvokeWithResponseStream through lambda-server, over RabbitMQ, to a daemon."""

    timeout = NODE_TEST_TIMEOUT

    async def node(self, **settings: object) -> tuple[str, str]:
        """A Node streaming function behind a connected server: its name and the server's URL."""
        name, server = await self.node_server(**settings)
        return name, server.url

    async def node_server(self, **settings: object) -> tuple[str, Server]:
        directory = await node_example()
        name = function_name("stream")
        command = ["node", os.path.join(directory, "node_modules", ".bin", "aws-lambda-ric"), "stream.handler"]
        await amqp_daemon(self, name, command, directory, **settings)
        server = lambda_server(self, reactor)
        await server.wait_connected()
        return name, server

    async def python(self) -> tuple[str, str]:
        name = function_name("echo")
        await amqp_daemon(self, name, python_runtime("handlers.echo"))
        server = lambda_server(self, reactor)
        await server.wait_connected()
        return name, server.url

    async def test_chunks_in_order_as_written(self) -> None:
        """Two writes 1 s apart reach boto3 as two PayloadChunks, the first well before the function ends, then {}."""
        name, url = await self.node()
        answer = await in_thread(stream_through, url, name, {"parts": ["first ", "second"], "pause_ms": 1000})
        self.assertEqual((answer["StatusCode"], answer["ExecutedVersion"]), (200, "$LATEST"))
        self.assertEqual(answer["ResponseStreamContentType"], "text/plain")
        self.assertEqual(answer["chunks"], [b"first ", b"second"])
        self.assertEqual(answer["complete"], [{}])
        self.assertIn("InvokeComplete", answer["events"][-1])
        self.assertGreater(answer["arrived"][1] - answer["arrived"][0], 0.8)

    async def test_throw_mid_stream(self) -> None:
        """A throw after one write: that write arrives, InvokeComplete carries ErrorCode Error and the document."""
        name, url = await self.node()
        answer = await in_thread(stream_through, url, name, {"parts": ["kept", "lost"], "fail_after": 1})
        self.assertEqual(answer["chunks"], [b"kept"])
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], "Error")
        self.assertEqual(json.loads(complete["ErrorDetails"])["errorMessage"], "failed mid-stream")
        again = await in_thread(stream_through, url, name, {"parts": ["again"]})
        self.assertEqual((again["chunks"], again["complete"]), ([b"again"], [{}]))

    async def test_buffered_function_on_the_stream_route(self) -> None:
        """A Python (buffered) function through the stream route: one PayloadChunk with its result, then {}."""
        name, url = await self.python()
        answer = await in_thread(stream_through, url, name, {"a": 1})
        self.assertEqual(len(answer["chunks"]), 1)
        self.assertEqual(json.loads(answer["chunks"][0]), {"a": 1})
        self.assertEqual(answer["complete"], [{}])
        self.assertEqual(answer["ResponseStreamContentType"], "application/json")

    async def test_ten_megabytes_whole(self) -> None:
        """10 MiB through the server arrives whole and in order, with the daemon's transport throttling the runtime."""
        name, url = await self.node()
        size = 10 * 1024 * 1024
        answer = await in_thread(stream_through, url, name, {"size": size})
        body = b"".join(answer["chunks"])
        self.assertEqual((len(body), body.count(b"x")), (size, size))
        self.assertGreater(len(answer["chunks"]), 1)
        self.assertEqual(answer["complete"], [{}])

    async def test_timeout_mid_stream(self) -> None:
        """The daemon's function timeout mid-stream: the chunks so far, then ErrorCode Sandbox.Timedout; the next one works."""
        name, url = await self.node(AWS_LAMBDA_FUNCTION_TIMEOUT=1)
        answer = await in_thread(stream_through, url, name, {"parts": ["early", "late"], "pause_ms": 3000})
        self.assertEqual(answer["chunks"], [b"early"])
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], "Sandbox.Timedout")
        again = await in_thread(stream_through, url, name, {"parts": ["next"]})
        self.assertEqual((again["chunks"], again["complete"]), ([b"next"], [{}]))

    async def test_caller_hangs_up_mid_stream(self) -> None:
        """A caller hanging up mid-stream drops its pending entry on the server; the next stream is whole."""
        name, server = await self.node_server()
        port = int(server.url.rsplit(":", 1)[1])
        body = json.dumps({"parts": ["a", "b", "c"], "pause_ms": 1000}).encode()
        path = f"/2021-11-15/functions/{name}/response-streaming-invocations".encode()

        def hang_up() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(
                    b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                return connection.recv(4096)  # the head and the first chunk, then gone

        head = await in_thread(hang_up)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        invoker = server.service_invoker()
        # Well before the function's end, 2 s after its first write.
        await eventually(reactor, lambda: invoker.pending == 0, 1.0, "the hung-up request forgotten")
        await deferLater(reactor, 2.0, lambda: None)  # the function runs on to its end
        again = await in_thread(stream_through, server.url, name, {"parts": ["whole"]})
        self.assertEqual((again["chunks"], again["complete"]), ([b"whole"], [{}]))

    async def test_unknown_function_is_404(self) -> None:
        """A function nobody serves is 404 ResourceNotFoundException on the stream route too, before any stream."""
        server = lambda_server(self, reactor)
        await server.wait_connected()
        await deferLater(reactor, STARTUP_REROUTE, lambda: None)  # past the server's startup hold

        def call() -> str:
            try:
                lambda_client(server.url).invoke_with_response_stream(
                    FunctionName=function_name("nobody"), Payload=b"{}"
                )
            except Exception as error:
                return type(error).__name__
            return "no error"

        self.assertEqual(await in_thread(call), "ResourceNotFoundException")

    async def test_plain_invoke_stays_buffered(self) -> None:
        """Invoke (not the stream route) of the streaming function through the server: the whole body, one reply."""
        name, url = await self.node()

        def invoke() -> dict[str, Any]:
            response: dict[str, Any] = lambda_client(url).invoke(
                FunctionName=name, Payload=b'{"parts": ["all ", "at ", "once"]}'
            )
            response["Payload"] = response["Payload"].read()
            return response

        response = await in_thread(invoke)
        self.assertEqual((response["StatusCode"], response["Payload"]), (200, b"all at once"))
        self.assertNotIn("FunctionError", response)


class DaemonWireTests(TestCase):
    """The daemon's stream messages on a real broker, read by a plain AMQP client."""

    timeout = NODE_TEST_TIMEOUT

    async def test_wire_messages(self) -> None:
        """On the wire, an opted-in request gets start, a chunk per write and end, in seq order; one without gets one reply."""
        directory = await node_example()
        name = function_name("stream")
        command = ["node", os.path.join(directory, "node_modules", ".bin", "aws-lambda-ric"), "stream.handler"]
        await amqp_daemon(self, name, command, directory)
        body = b'{"parts": ["a", "b"]}'
        _, streamed = await in_thread(
            upstream_rpc, amqp_uri(), name, [body], linger=2.0, headers={ACCEPT_STREAM: "1"}
        )
        self.assertEqual(
            [(r.headers.get(STREAM), int(r.headers[SEQ]), r.body) for r in streamed],
            [("start", 0, b""), ("chunk", 1, b"a"), ("chunk", 2, b"b"), ("end", 3, b"{}")],
        )
        self.assertEqual(streamed[0].content_type, "text/plain")
        self.assertEqual(len({r.headers[STREAM_ID] for r in streamed}), 1)
        _, [plain] = await in_thread(upstream_rpc, amqp_uri(), name, [body])
        self.assertEqual((plain.body, plain.headers.get(STREAM)), (b"ab", None))
