"""
Streamed responses on fakes: the stream between a runtime's connection and
one caller, and the Runtime API feeding it chunk by chunk, with backpressure.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import runtime_api
from lambdarapid.invocation import Invocation, Outcome, Result
from lambdarapid.streams import PENDING_LIMIT, ResponseStream

from .test_runtime_api import NEXT, RawConnectionTestCase, response_path


class Collector:
    """A stream consumer that keeps what it is told."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended: list[Result] = []

    def stream_chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def stream_ended(self, result: Result) -> None:
        self.ended.append(result)


class Producer:
    """A runtime connection's transport, as far as pausing goes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def done(outcome: Outcome = Outcome.SUCCESS) -> Result:
    return Result(outcome=outcome, body=b"", request_id="r")


class ResponseStreamTests(SynchronousTestCase):
    def test_chunks_in_order_then_end(self) -> None:
        """What came before the consumer is given first, then each chunk as it comes, then the end."""
        stream = ResponseStream("text/plain")
        stream.write(b"a")
        collector = Collector()
        stream.consume(collector)
        stream.write(b"b")
        stream.close(done())
        stream.write(b"late")  # after a timeout closed it: dropped
        self.assertEqual(collector.chunks, [b"a", b"b"])
        self.assertEqual(len(collector.ended), 1)
        self.assertEqual(stream.size, 2)

    def test_caller_pauses_the_runtime(self) -> None:
        """The caller's transport pausing the stream pauses the runtime's connection, and resumes it."""
        stream, producer = ResponseStream("x"), Producer()
        stream.set_producer(producer)  # type: ignore[arg-type]
        stream.consume(Collector())
        stream.pauseProducing()
        stream.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_no_consumer_yet_holds_a_megabyte_at_most(self) -> None:
        """Before anyone reads, the runtime is paused once a megabyte is held; reading resumes it."""
        stream, producer = ResponseStream("x"), Producer()
        stream.set_producer(producer)  # type: ignore[arg-type]
        block = b"x" * (64 * 1024)
        for _ in range(PENDING_LIMIT // len(block) + 1):
            stream.write(block)
        self.assertEqual(producer.calls, ["pause"])
        collector = Collector()
        stream.consume(collector)
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(sum(map(len, collector.chunks)), stream.size)

    def test_caller_gone_drops_and_resumes(self) -> None:
        """A caller that went away: the runtime is resumed and its bytes are dropped, not held."""
        stream, producer = ResponseStream("x"), Producer()
        stream.set_producer(producer)  # type: ignore[arg-type]
        collector = Collector()
        stream.consume(collector)
        stream.pauseProducing()
        stream.stopProducing()
        stream.write(b"dropped")
        stream.close(done())
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual((collector.chunks, collector.ended), ([], []))


class RuntimeStreamingTests(RawConnectionTestCase):
    """The Runtime API passing a streamed POST on as it arrives."""

    def streaming_head(self, invocation: Invocation, extra: bytes = b"") -> bytes:
        return (
            b"POST " + response_path(invocation.request_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Lambda-Runtime-Function-Response-Mode: streaming\r\nContent-Type: text/csv\r\n"
            b"Transfer-Encoding: chunked\r\n" + extra + b"\r\n"
        )

    def started(self) -> tuple[Invocation, Deferred[Result], Any, StringTransport]:
        invocation, result = self.invoke(accept_stream=True)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(self.streaming_head(invocation))
        return invocation, result, protocol, transport

    def test_chunks_reach_the_caller_as_they_arrive(self) -> None:
        """The caller has the stream at the head; each chunk as it is read; the end at the last chunk."""
        invocation, result, protocol, transport = self.started()
        answer = self.successResultOf(result)
        assert answer.stream is not None
        self.assertEqual(answer.stream.content_type, "text/csv")
        collector = Collector()
        answer.stream.consume(collector)
        protocol.dataReceived(b"3\r\nabc\r\n")
        self.assertEqual(collector.chunks, [b"abc"])
        protocol.dataReceived(b"2\r\nde\r\n")
        self.assertEqual(collector.chunks, [b"abc", b"de"])
        self.assertEqual(collector.ended, [])
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.responses(transport)[-1], (202, b'{"status":"OK"}'))
        [end] = collector.ended
        self.assertEqual(end.outcome, Outcome.SUCCESS)

    def test_slow_caller_pauses_the_runtime_connection(self) -> None:
        """While the caller cannot take more, the runtime's connection is not read."""
        _, result, protocol, transport = self.started()
        stream = self.successResultOf(result).stream
        assert stream is not None
        stream.consume(Collector())
        stream.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        stream.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_error_trailers_end_the_stream_with_the_error(self) -> None:
        """Error-Type and Error-Body trailers: the stream ends with that type and the decoded document."""
        _, result, protocol, transport = self.started()
        stream = self.successResultOf(result).stream
        assert stream is not None
        collector = Collector()
        stream.consume(collector)
        document = b'{"errorType":"Function.StreamBroken","errorMessage":"no"}'
        protocol.dataReceived(
            b"2\r\nok\r\n0\r\nLambda-Runtime-Function-Error-Type: Function.StreamBroken\r\n"
            b"Lambda-Runtime-Function-Error-Body: " + base64.b64encode(document) + b"\r\n\r\n"
        )
        [end] = collector.ended
        self.assertEqual((end.outcome, end.error_type), (Outcome.FUNCTION_ERROR, "Function.StreamBroken"))
        self.assertEqual(json.loads(end.body)["errorMessage"], "no")
        self.assertEqual(collector.chunks, [b"ok"])

    def test_connection_lost_mid_stream_is_truncated(self) -> None:
        """The runtime's connection breaking off mid-stream ends it as Runtime.TruncatedResponse."""
        _, result, protocol, transport = self.started()
        stream = self.successResultOf(result).stream
        assert stream is not None
        collector = Collector()
        stream.consume(collector)
        protocol.dataReceived(b"2\r\nok\r\n")
        protocol.connectionLost()
        [end] = collector.ended
        self.assertEqual(end.error_type, "Runtime.TruncatedResponse")

    def test_over_the_limit(self) -> None:
        """Past the streamed limit the rest is dropped, the runtime gets 413, the caller the size error."""
        self.patch(runtime_api, "MAX_STREAMED_RESPONSE", 4)
        _, result, protocol, transport = self.started()
        stream = self.successResultOf(result).stream
        assert stream is not None
        collector = Collector()
        stream.consume(collector)
        protocol.dataReceived(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
        self.assertEqual(self.responses(transport)[-1][0], 413)
        [end] = collector.ended
        self.assertEqual(end.error_type, "Function.ResponseSizeTooLarge")
        self.assertEqual(collector.chunks, [b"abc"])

    def test_buffered_caller_collects(self) -> None:
        """For a caller that does not take a stream, a streamed POST is read whole (with its content type)."""
        invocation, result = self.invoke()
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(self.streaming_head(invocation) + b"3\r\nabc\r\n0\r\n\r\n")
        answer = self.successResultOf(result)
        self.assertEqual((answer.stream, answer.body, answer.content_type), (None, b"abc", "text/csv"))

    def test_unknown_request_id_is_refused_and_its_body_dropped(self) -> None:
        """A streamed POST for another request id is 400 once its body is in, and nothing is streamed."""
        self.invoke(accept_stream=True)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET " + NEXT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        other = Invocation(payload=b"{}")
        protocol.dataReceived(self.streaming_head(other) + b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(self.responses(transport)[-1][0], 400)
