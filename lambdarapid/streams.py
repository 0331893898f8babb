"""
A streamed response on its way from a runtime to its caller.

A runtime posting in C{streaming} mode sends its response in chunks; the
caller (an HTTP InvokeWithResponseStream, an AMQP reply, a Function URL) is
to get each chunk as it comes, never the whole thing buffered. The stream
sits between them: the runtime's connection writes into it, one consumer
reads from it, and it pauses the runtime's connection (its producer) while
the consumer cannot keep up, so a slow caller slows the runtime's upload
instead of growing the daemon's memory.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from .invocation import Result

#: The largest streamed response (AWS: 200 MB since July 2025).
MAX_STREAMED_RESPONSE = 200 * 1024 * 1024
#: What is held for a consumer that has not started reading before the runtime is paused.
PENDING_LIMIT = 1024 * 1024


class StreamConsumer(Protocol):
    """Where a stream's bytes go."""

    def stream_chunk(self, data: bytes) -> None:
        """The runtime's next chunk."""

    def stream_ended(self, result: Result) -> None:
        """The end: C{result} says how it ended (an error, its details, the log tail)."""


@implementer(IPushProducer)
class ResponseStream:
    """
    One streamed response: written by the runtime's side, consumed by the
    caller's. As the caller's L{IPushProducer} it passes the caller's
    transport's pauses on to the runtime's connection.
    """

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        #: The bytes written so far.
        self.size = 0
        #: How it ended, once it has.
        self.result: Result | None = None
        self._consumer: StreamConsumer | None = None
        self._pending: deque[bytes] = deque()
        self._pending_size = 0
        self._producer: IPushProducer | None = None
        self._paused = False
        self._discarding = False

    def __repr__(self) -> str:
        return f"<ResponseStream {self.content_type} {self.size} bytes>"

    # The runtime's side

    def set_producer(self, producer: IPushProducer | None) -> None:
        """The runtime's connection, paused while the caller cannot keep up."""
        self._producer = producer
        if producer is not None and self._paused:
            producer.pauseProducing()

    def write(self, data: bytes) -> None:
        """The runtime's next chunk (ignored once the stream has ended: it timed out)."""
        if self.result is not None or not data:
            return
        self.size += len(data)
        if self._discarding:
            return
        consumer = self._consumer
        if consumer is not None:
            consumer.stream_chunk(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_LIMIT:
            self._pause_runtime()

    def close(self, result: Result) -> None:
        """The stream's end, however it came (complete, an error trailer, a timeout, an exit)."""
        if self.result is not None:
            return
        self.result = result
        self._producer = None
        if self._consumer is not None and not self._discarding:
            self._consumer.stream_ended(result)

    # The caller's side

    def consume(self, consumer: StreamConsumer) -> None:
        """Start reading: what came so far first, then each chunk as it comes."""
        self._consumer = consumer
        pending, self._pending, self._pending_size = self._pending, deque(), 0
        for data in pending:
            consumer.stream_chunk(data)
        if self.result is not None:
            consumer.stream_ended(self.result)
        elif self._paused:
            self.resumeProducing()

    def pauseProducing(self) -> None:
        """The caller's transport is full: pause the runtime's upload."""
        self._pause_runtime()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        The caller went away. The function runs on, as on Lambda: its bytes
        are read and dropped, never held.
        """
        self._discarding = True
        self._pending.clear()
        self._pending_size = 0
        self.resumeProducing()

    def _pause_runtime(self) -> None:
        if not self._paused:
            self._paused = True
            if self._producer is not None:
                self._producer.pauseProducing()

