"""
Answers written straight to the socket.

A Twisted transport's C{write} queues the bytes and asks the reactor to
watch the socket for writability: two C{epoll_ctl} calls and one more
reactor event (with its log context) before the one C{send}. The fast HTTP
protocols write a whole small answer per request, three per invocation, and
measured that detour at ~45 us of daemon CPU per invocation. L{DirectWriter}
sends at once while nothing is queued, and hands the transport only what
the kernel did not take; the transport tells it (as its pull producer) when
that is gone, and until then every write goes through the transport, in order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer


@implementer(IPullProducer)
class DirectWriter:
    """One connection's writes: to the socket when nothing is queued, else to the transport."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        handle = getattr(transport, "getHandle", None)
        socket = handle() if handle is not None else None
        #: None: write through the transport only (no socket, or another producer's turn).
        self._sendmsg = getattr(socket, "sendmsg", None)
        #: Whether the transport holds bytes of ours not yet sent.
        self._queued = False

    def write(self, data: bytes) -> None:
        """Send C{data} now, or after what is queued."""
        self.write_sequence([data])

    def write_sequence(self, parts: list[bytes]) -> None:
        """Send C{parts} in one system call (no joined copy of a large body), or after what is queued."""
        transport = self._transport
        sendmsg = self._sendmsg
        if sendmsg is None or self._queued or transport.disconnecting or not transport.connected:
            transport.writeSequence(parts)
            return
        try:
            sent: int = sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The transport finds the same error on its own write and handles it.
            transport.writeSequence(parts)
            return
        if sent == sum(map(len, parts)):
            return
        rest = _after(parts, sent)
        # Registered first: a pull producer is asked for more at once, which
        # must not count as the rest having gone.
        transport.registerProducer(self, False)
        self._queued = True
        transport.writeSequence(rest)

    def foreign_producer(self) -> None:
        """
        Another producer is about to be registered on the transport (the
        twisted.web channel a connection is handed to registers itself):
        from now on every write goes through the transport.
        """
        self._sendmsg = None
        if self._queued:
            self._queued = False
            self._transport.unregisterProducer()

    # IPullProducer: the transport asks for more once its buffer is empty.

    def resumeProducing(self) -> None:
        if self._queued:
            self._queued = False
            self._transport.unregisterProducer()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._queued = False
        self._sendmsg = None


def _after(parts: list[bytes], sent: int) -> list[bytes]:
    """What of C{parts} is left once their first C{sent} bytes are gone."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [part[sent:], *parts[index + 1 :]]
        sent -= len(part)
    return []
