"""
The Invoke API's fast connections (invoke_protocol) and their direct
writes (directwrite), on string transports and a Clock: what the framing
tests over real sockets cannot time exactly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid.config import Function
from lambdarapid.directwrite import DirectWriter
from lambdarapid.invocation import Outcome, Result
from lambdarapid.invoke_api import InvokeAPI
from lambdarapid.invoke_protocol import InvokeAPIFactory, InvokeAPIProtocol
from lambdarapid.listener import IDLE_CONNECTION_TIMEOUT

from .test_invoke_api import FakeInvoker

INVOKE = b"/2015-03-31/functions/echo/invocations"


def post(body: bytes, *headers: bytes) -> bytes:
    head = b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


class ProtocolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.invoker = FakeInvoker()
        api = InvokeAPI(self.invoker, self.clock, Function(name="echo"))
        self.protocol = InvokeAPIFactory(api, self.clock).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)


class FastConnectionTests(ProtocolTestCase):
    """Invoke requests served by the fast connection."""

    def test_body_in_pieces(self) -> None:
        """A body arriving a byte at a time is one invocation of the whole body."""
        request = post(b'{"key": "value"}')
        for index in range(len(request)):
            self.protocol.dataReceived(request[index : index + 1])
        [(_, invocation)] = self.invoker.calls
        self.assertEqual(invocation.payload, b'{"key": "value"}')
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(self.transport.value().endswith(b'\r\n\r\n{"key": "value"}'))

    def test_body_in_pieces_then_pipelined(self) -> None:
        """A body in three reads, the last also holding the next request: each invocation gets its own body whole."""
        first, second = post(b'{"n": "' + b"1" * 5000 + b'"}'), post(b'{"n": 2}')
        self.protocol.dataReceived(first[:100])
        self.protocol.dataReceived(first[100:3000])
        self.protocol.dataReceived(first[3000:] + second[:20])
        self.protocol.dataReceived(second[20:])
        payloads = [invocation.payload for _, invocation in self.invoker.calls]
        self.assertEqual(payloads, [first.partition(b"\r\n\r\n")[2], b'{"n": 2}'])

    def test_target_with_a_tab_is_handed_over(self) -> None:
        """A request target holding a tab or a byte over 0x7F is twisted.web's to refuse (400), never served here."""
        for name in (b"f\to", b"f\xffo"):
            protocol = self.protocol.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(
                b"POST /2015-03-31/functions/" + name + b"/invocations HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"), transport.value())
        self.assertEqual(self.invoker.calls, [])

    def test_answers_in_order_then_hands_over(self) -> None:
        """An invoke request, then a 404 path: the first answered here, the second by twisted.web, in order."""
        waiting: Deferred[Result] = Deferred()
        self.invoker.answer = waiting
        self.protocol.dataReceived(post(b"{}") + b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.value(), b"")  # the second waits for the first
        waiting.callback(Result(Outcome.SUCCESS, b'"first"', "id"))
        answers = self.transport.value()
        self.assertLess(answers.index(b'"first"'), answers.index(b"Unknown operation"))
        self.assertIn(b"HTTP/1.1 404", answers)

    def test_many_pipelined_answers_at_once(self) -> None:
        """Thousands of pipelined requests whose answers are ready at once are all answered, in order, without recursing."""
        count = 3000
        self.protocol.dataReceived(b"".join(post(b'{"n":%d}' % n) for n in range(count)))
        answers = self.transport.value()
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK\r\n"), count)
        self.assertLess(answers.index(b'{"n":1}'), answers.index(b'{"n":2999}'))
        self.assertEqual(len(self.invoker.calls), count)

    def test_connection_close(self) -> None:
        """Connection: close is honoured once the answer is written."""
        self.protocol.dataReceived(post(b"{}", b"Connection: close"))
        self.assertIn(b"connection: close\r\n", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_hang_up_cancels_the_wait(self) -> None:
        """A caller hanging up cancels its wait (the invoker ignores it: the run goes on)."""
        cancelled: list[bool] = []
        self.invoker.answer = Deferred(lambda _: cancelled.append(True))
        self.protocol.dataReceived(post(b"{}"))
        self.protocol.connectionLost()
        self.assertEqual(cancelled, [True])

    def test_waiting_connection_is_not_idle(self) -> None:
        """A connection whose answer is awaited is never closed for idleness; once answered, it is, a minute later."""
        waiting: Deferred[Result] = Deferred()
        self.invoker.answer = waiting
        self.protocol.dataReceived(post(b"{}"))
        self.clock.advance(IDLE_CONNECTION_TIMEOUT * 3)
        self.assertFalse(self.transport.disconnecting)
        waiting.callback(Result(Outcome.SUCCESS, b"{}", "id"))
        self.clock.advance(IDLE_CONNECTION_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

    def test_not_ours_is_handed_over_whole(self) -> None:
        """A request this parser does not take (a repeated header) reaches twisted.web intact, and is answered by it."""
        self.protocol.dataReceived(post(b"{}", b"X-A: 1", b"X-A: 2"))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"Server: TwistedWeb", self.transport.value())
        self.assertIsInstance(self.protocol, InvokeAPIProtocol)


class FakeSocket:
    """A socket whose sendmsg takes at most C{room} bytes, or raises."""

    def __init__(self, room: int | None = None, error: Exception | None = None) -> None:
        self.room = room
        self.error = error
        self.sent = b""

    def sendmsg(self, parts: list[bytes]) -> int:
        if self.error is not None:
            raise self.error
        data = b"".join(parts)
        taken = data if self.room is None else data[: self.room]
        self.sent += taken
        return len(taken)


class SocketTransport(StringTransport):
    def __init__(self, socket: FakeSocket) -> None:
        super().__init__()
        self.socket = socket
        self.connected = True

    def getHandle(self) -> Any:
        return self.socket


class DirectWriterTests(SynchronousTestCase):
    """Writes to the socket while nothing is queued; in order through the transport otherwise."""

    def test_whole_send(self) -> None:
        """What the kernel takes whole never reaches the transport's buffer."""
        socket = FakeSocket()
        transport = SocketTransport(socket)
        DirectWriter(transport).write_sequence([b"head ", b"body"])
        self.assertEqual((socket.sent, transport.value()), (b"head body", b""))

    def test_partial_send_queues_the_rest_in_order(self) -> None:
        """A short send: the rest, and everything after it, go through the transport until it is drained."""
        socket = FakeSocket(room=3)
        transport = SocketTransport(socket)
        writer = DirectWriter(transport)
        writer.write_sequence([b"ab", b"cdef"])
        writer.write(b"gh")
        self.assertEqual((socket.sent, transport.value()), (b"abc", b"defgh"))
        self.assertIs(transport.producer, writer)
        self.assertTrue(IPullProducer.providedBy(writer))
        writer.resumeProducing()  # the transport's buffer is empty
        self.assertIsNone(transport.producer)
        socket.room = None
        writer.write(b"ij")
        self.assertEqual(socket.sent, b"abcij")

    def test_would_block(self) -> None:
        """A full socket buffer: all of it through the transport."""
        transport = SocketTransport(FakeSocket(error=BlockingIOError()))
        DirectWriter(transport).write(b"data")
        self.assertEqual(transport.value(), b"data")

    def test_socket_error_is_the_transports(self) -> None:
        """Any other error: the bytes go to the transport, which meets the error itself."""
        transport = SocketTransport(FakeSocket(error=ConnectionResetError()))
        DirectWriter(transport).write(b"data")
        self.assertEqual(transport.value(), b"data")

    def test_foreign_producer(self) -> None:
        """Before another producer is registered, the writer steps aside for good."""
        socket = FakeSocket(room=1)
        transport = SocketTransport(socket)
        writer = DirectWriter(transport)
        writer.write(b"ab")
        writer.foreign_producer()
        self.assertIsNone(transport.producer)
        socket.room = None
        writer.write(b"c")
        self.assertEqual((socket.sent, transport.value()), (b"a", b"bc"))

    def test_no_socket(self) -> None:
        """A transport without a socket (a test's) gets every write."""
        transport = StringTransport()
        DirectWriter(transport).write(b"data")
        self.assertEqual(transport.value(), b"data")
