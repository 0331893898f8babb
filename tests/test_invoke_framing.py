"""
The Invoke API's HTTP/1.1 framing, byte by byte, on a real listening port:
what a malformed request is answered (an AWS-shaped error, then the end of
the connection, never a hang), and the framing that must keep working
(keep-alive, pipelining, chunked bodies, C{Expect: 100-continue}, the idle
timeout), plus the drain's 503s on a real daemon.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lambdarapid import errors
from lambdarapid.config import Function
from lambdarapid.invocation import ServiceUnavailable
from lambdarapid.invoke_api import InvokeAPI
from lambdarapid.invoke_resource import InvokeAPIResource
from lambdarapid.invoke_protocol import InvokeAPIFactory
from lambdarapid.listener import IDLE_CONNECTION_TIMEOUT
from lambdarapid.web import QuietSite, bounded_request

from .runtimes import start_python
from .test_invoke_api import FakeInvoker

INVOKE = b"/2015-03-31/functions/function/invocations"
#: How long a test waits for the server to end a connection: far less than the
#: 60 s idle timeout a hang would take, far more than a busy machine needs.
PATIENCE = 10.0


class RawClient(Protocol):
    """A client that records every byte it gets and when the server hangs up."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for needle, waiter in list(self._waiting):
            if needle in self.data:
                self._waiting.remove((needle, waiter))
                waiter.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(self.data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def wait_for(self, needle: bytes) -> Deferred[None]:
        """Fires once C{needle} has been received."""
        waiter: Deferred[None] = Deferred()
        if needle in self.data:
            waiter.callback(None)
        else:
            self._waiting.append((needle, waiter))
        return waiter.addTimeout(PATIENCE, reactor)


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Each (status, lower-cased headers, body) in C{data}, bodies framed by Content-Length."""
    found = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, data[:200]
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        length = int(headers.get("content-length", "0"))
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


def post(body: bytes, *headers: bytes, path: bytes = INVOKE) -> bytes:
    """A POST of C{body} with a Content-Length and C{headers}."""
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines + list(headers)) + b"\r\n\r\n" + body


class RawSiteTestCase(TestCase):
    """An Invoke API for a function called echo, with a fake invoker, on a loopback port."""

    timeout = 30
    function: Function | None = Function(name="echo")

    def setUp(self) -> None:
        self.invoker = FakeInvoker()
        api = InvokeAPI(self.invoker, reactor, self.function)
        self.site = QuietSite(InvokeAPIResource(api), bounded_request(errors.MAX_SYNC_PAYLOAD))
        self.port = reactor.listenTCP(  # type: ignore[attr-defined,arg-type]
            0, InvokeAPIFactory(api, reactor, self.site), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)

    async def connect(self) -> RawClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)  # type: ignore[attr-defined]
        client: RawClient = await connectProtocol(endpoint, RawClient())
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)  # type: ignore[attr-defined]
        return client

    async def exchange(self, *chunks: bytes) -> list[tuple[int, dict[str, str], bytes]]:
        """Send C{chunks}; the responses once the server has closed the connection."""
        client = await self.connect()
        for chunk in chunks:
            client.send(chunk)
        data = await client.closed.addTimeout(PATIENCE, reactor)
        return parse_responses(data)

    def assert_refused(
        self, responses: list[tuple[int, dict[str, str], bytes]], status: int, error_type: str
    ) -> dict[str, Any]:
        """One AWS-shaped JSON error answered, saying the connection ends; its document."""
        self.assertEqual(len(responses), 1, responses)
        [(code, headers, body)] = responses
        self.assertEqual((code, headers.get("x-amzn-errortype")), (status, error_type), body)
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(headers.get("connection"), "close")
        document: dict[str, Any] = json.loads(body)
        self.assertEqual(document["Type"], "User")
        self.assertIsInstance(document["Message"], str)
        self.assertEqual(self.invoker.calls, [])
        return document


class MalformedRequestTests(RawSiteTestCase):
    """Every request twisted.web cannot frame is answered at once, then the connection ends."""

    async def test_lf_line_endings(self) -> None:
        """A request whose lines end in LF alone is 400, not a wait for the idle timeout."""
        responses = await self.exchange(
            b"POST " + INVOKE + b" HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}"
        )
        self.assert_refused(responses, 400, "InvalidRequestContentException")

    async def test_lf_inside_a_line(self) -> None:
        """A bare LF inside a CRLF-terminated head is 400 too."""
        responses = await self.exchange(b"GET / HTTP/1.1\nHost: x\r\n\r\n")
        self.assert_refused(responses, 400, "InvalidRequestContentException")

    async def test_lf_line_endings_in_a_chunked_body(self) -> None:
        """Chunk-size and trailer lines ended by LF alone are 400 at once, not a wait for the idle timeout."""
        head = b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for body in (b"2\n{}\n0\n\n", b"2\r\n{}\r\n0\n\n", b"2\r\n{}\r\n0\r\n\n"):
            responses = await self.exchange(head + body)
            self.assert_refused(responses, 400, "InvalidRequestContentException")

    async def test_huge_content_length(self) -> None:
        """A Content-Length over every limit is 413 at once, without waiting for the body."""
        responses = await self.exchange(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 99999999999999999999999\r\n\r\n{}"
        )
        self.assert_refused(responses, 413, "RequestTooLargeException")

    async def test_content_length_over_the_limit_with_expect_continue(self) -> None:
        """A client asking 100-continue for too large a body gets the 413, never a 100."""
        client = await self.connect()
        client.send(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (errors.MAX_SYNC_PAYLOAD + 1)
        )
        data = await client.closed.addTimeout(PATIENCE, reactor)
        self.assertNotIn(b"100 Continue", data)
        self.assert_refused(parse_responses(data), 413, "RequestTooLargeException")

    async def test_huge_chunk_size(self) -> None:
        """A chunk declaring more than every limit is 413 at once."""
        responses = await self.exchange(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffffffff\r\n{}"
        )
        self.assert_refused(responses, 413, "RequestTooLargeException")

    async def test_long_header(self) -> None:
        """A 64 KB header is 431 with a JSON body, not a silent close."""
        responses = await self.exchange(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
        )
        self.assert_refused(responses, 431, "RequestHeaderFieldsTooLargeException")

    async def test_headers_too_large_together(self) -> None:
        """Many headers over 16 KB in all are 431."""
        headers = b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 1000) for n in range(20))
        responses = await self.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        self.assert_refused(responses, 431, "RequestHeaderFieldsTooLargeException")

    async def test_long_url(self) -> None:
        """A 100 KB URL is 414 with a JSON body, not a silent close."""
        responses = await self.exchange(
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assert_refused(responses, 414, "RequestURITooLongException")

    async def test_other_framing_errors(self) -> None:
        """Bad request lines, headers, lengths and chunks are 400 with a JSON body."""
        for raw in (
            b"NONSENSE\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"POST " + INVOKE + b" HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST " + INVOKE + b" HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            b"POST " + INVOKE + b" HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST " + INVOKE + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            responses = await self.exchange(raw)
            self.assert_refused(responses, 400, "InvalidRequestContentException")

    async def test_error_after_a_good_request(self) -> None:
        """A malformed request pipelined after a good one: the good one is answered, then the 400."""
        responses = await self.exchange(post(b'{"n":1}') + b"GET / HTTP/1.1\nHost: x\n\n")
        self.assertEqual([status for status, _, _ in responses], [200, 400])
        self.assertEqual(responses[0][2], b'{"n":1}')


class WellFormedFramingTests(RawSiteTestCase):
    """The framing the error answers must not break."""

    async def test_keep_alive_and_pipelining(self) -> None:
        """Requests sent together on one connection are answered in order on it."""
        responses = await self.exchange(
            post(b'{"n":1}') + post(b'{"n":2}') + post(b'{"n":3}', b"Connection: close")
        )
        self.assertEqual(
            [(status, body) for status, _, body in responses],
            [(200, b'{"n":1}'), (200, b'{"n":2}'), (200, b'{"n":3}')],
        )

    async def test_keep_alive_between_requests(self) -> None:
        """A second request on a connection after the first one's answer is served on it."""
        client = await self.connect()
        client.send(post(b'{"n":1}'))
        await client.wait_for(b'{"n":1}')
        client.send(post(b'{"n":2}', b"Connection: close"))
        data = await client.closed.addTimeout(PATIENCE, reactor)
        self.assertEqual([body for _, _, body in parse_responses(data)], [b'{"n":1}', b'{"n":2}'])

    async def test_chunked_body(self) -> None:
        """A chunked body arriving in pieces is the event."""
        responses = await self.exchange(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n4\r\n{\"a\"\r\n",
            b"3\r\n:1}\r\n0\r\n\r\n",
        )
        self.assertEqual([(s, b) for s, _, b in responses], [(200, b'{"a":1}')])

    async def test_expect_continue(self) -> None:
        """Expect: 100-continue gets its 100 before the body is sent, then the answer."""
        client = await self.connect()
        client.send(
            b"POST " + INVOKE + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: 7\r\n\r\n"
        )
        await client.wait_for(b"100 Continue\r\n\r\n")
        client.send(b'{"b":2}')
        data = await client.closed.addTimeout(PATIENCE, reactor)
        self.assertTrue(data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), data)
        [(status, _, body)] = parse_responses(data[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
        self.assertEqual((status, body), (200, b'{"b":2}'))


class UnavailableTests(RawSiteTestCase):
    """503s end their connection (twisted.web keeps it open on the header alone)."""

    async def test_503_closes_the_connection(self) -> None:
        """An invoker's ServiceUnavailable is a 503 with Connection: close, and the connection then ends."""
        self.invoker.answer = fail(ServiceUnavailable("the daemon is shutting down"))
        client = await self.connect()
        client.send(post(b"{}"))
        data = await client.closed.addTimeout(PATIENCE, reactor)
        [(status, headers, body)] = parse_responses(data)
        self.assertEqual((status, headers.get("connection")), (503, "close"))
        self.assertEqual(json.loads(body)["Message"], "the daemon is shutting down")


class OpenFaaSUnavailableTests(RawSiteTestCase):
    """The watchdog's readiness 503 ends its connection too."""

    async def test_health_503_closes_the_connection(self) -> None:
        """GET /_/health while not ready is 503 with Connection: close, then the end of the connection."""
        api = InvokeAPI(self.invoker, reactor, self.function, openfaas=True, ready=lambda: False)
        self.site.resource = InvokeAPIResource(api)
        client = await self.connect()
        client.send(b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await client.closed.addTimeout(PATIENCE, reactor)
        head = data.partition(b"\r\n\r\n")[0]  # a chunked body follows
        [(status, headers, _)] = parse_responses(head + b"\r\n\r\n")
        self.assertEqual((status, headers.get("connection")), (503, "close"))


class TimeoutTests(SynchronousTestCase):
    """The idle timeout and the bounded wait after an error answer, on a Clock."""

    def connect(self) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        api = InvokeAPI(FakeInvoker(), clock, Function(name="echo"))
        site = QuietSite(InvokeAPIResource(api), bounded_request(errors.MAX_SYNC_PAYLOAD), clock)
        # As served: the invoke route's connection, handing the rest to the site's channel.
        factory = InvokeAPIFactory(api, clock, site)
        channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport, clock

    def test_idle_connection_closes_after_a_minute(self) -> None:
        """An idle connection is closed after IDLE_CONNECTION_TIMEOUT seconds, not before."""
        channel, transport, clock = self.connect()
        clock.advance(IDLE_CONNECTION_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_refused_connection_ends_soon(self) -> None:
        """After an error answer the rest of the request is dropped, and the connection ends within seconds."""
        channel, transport, clock = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n")
        self.assertIn(b"413", transport.value().split(b"\r\n", 1)[0])
        answered = transport.value()
        channel.dataReceived(b"x" * 100_000)
        self.assertEqual(transport.value(), answered)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)


class DrainTests(TestCase):
    """A daemon draining on SIGTERM, over a real keep-alive connection."""

    timeout = 30

    async def test_503_while_draining_closes_the_connection(self) -> None:
        """The drain's 503 says Connection: close, and the connection is closed after it."""
        daemon = await start_python(self, "handlers.echo")
        port = int(daemon.url.rsplit(":", 1)[1].rstrip("/"))
        client: RawClient = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient()
        )
        client.send(post(b'{"n":1}'))
        await client.wait_for(b'{"n": 1}')  # as the runtime serialises it
        await daemon.service.pool.stop()
        client.send(post(b'{"n":2}'))
        data = await client.closed.addTimeout(PATIENCE, reactor)
        responses = parse_responses(data)
        self.assertEqual([status for status, _, _ in responses], [200, 503])
        _, headers, _ = responses[1]
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(headers.get("x-amzn-errortype"), "ServiceException")
