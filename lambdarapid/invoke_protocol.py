"""
The Invoke API's connections: the invoke route below twisted.web.

One of an invocation's three HTTP exchanges is the caller's; through
twisted.web (its line parser, L{Request}, L{Headers}, the resource walk) it
cost ~70 us of daemon CPU, about a fifth of an invocation. A connection here
serves well-formed C{POST .../invocations} requests itself, with a minimal
parser, and answers them through the same L{InvokeAPI}; at the first request
that is anything else (another route, chunked or C{Expect}, a framing error,
an oversized body) it hands the connection, from that request's first byte
on, to the twisted.web channel that serves everything else, for the rest of
its life. Nothing has been consumed of that request, so nothing is lost, and
every rule of that channel (its error answers, limits and timeouts) holds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, cast
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import errors
from .directwrite import DirectWriter
from .http1 import HEAD_END, REASONS, parse_head
from .httpdate import http_date
from .invoke_api import InvokeAPI, invoke_route_name
from .listener import IDLE_CONNECTION_TIMEOUT
from .logs import observer

if TYPE_CHECKING:
    from twisted.internet.protocol import Factory
    from twisted.web.server import Request

_PREFIX = b"POST /2015-03-31/functions/"
#: A request line this parser takes: the invoke route, HTTP/1.1.
_REQUEST_LINE = re.compile(rb"POST (/2015-03-31/functions/[!-.0->@-~]+/invocations(?:\?[!-~]*)?) HTTP/1\.1")


class _Headers:
    """The response headers L{InvokeAPI} sets, kept for one write."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[bytes, list[bytes]] = {}

    def setRawHeaders(self, name: bytes, values: list[bytes]) -> None:
        self.values[name.lower()] = values


class _Channel:
    """What L{InvokeAPI} asks of a request's channel: whether to keep the connection."""

    __slots__ = ("persistent",)

    def __init__(self, persistent: bool) -> None:
        self.persistent = persistent


class FastRequest:
    """
    One invoke request parsed here: what L{InvokeAPI} reads of a twisted.web
    L{Request} (its headers, query, body) and writes to it (status, headers).
    """

    __slots__ = ("uri", "path", "args", "whole_body", "channel", "responseHeaders", "code", "_headers")

    def __init__(self, uri: bytes, headers: dict[bytes, bytes], body: bytes, keep_alive: bool) -> None:
        self.uri = uri
        self.path, _, query = uri.partition(b"?")
        self.args: dict[bytes, list[bytes]] = parse_qs(query) if query else {}
        #: The body, read whole (L{read_body} takes it from here).
        self.whole_body = body
        self.channel = _Channel(keep_alive)
        self.responseHeaders = _Headers()
        self.code = 200
        self._headers = headers

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name)

    def setResponseCode(self, code: int) -> None:
        self.code = code


class InvokeAPIProtocol(Protocol):
    """One caller's connection: invoke requests served here, the rest by twisted.web."""

    log = Logger(observer=observer)

    def __init__(self, api: InvokeAPI, site: Callable[[], Factory[Any]], address: Any, clock: Any) -> None:
        self._api = api
        #: The twisted.web site this connection is handed to, when it is.
        self._site = site
        self._address = address
        self._clock = clock
        #: What has arrived and is not yet served, in pieces, and its size.
        self._parts: list[bytes] = []
        self._size = 0
        #: The parsed head of the request whose body is still arriving, and where its body starts.
        self._head: tuple[bytes, dict[bytes, bytes], int, bool, int] | None = None
        #: The answer being waited for: nothing more is read until it is written.
        self._waiting: Deferred[bytes | None] | None = None
        self._closing = False
        #: Whether L{_serve} is on the stack: an answer ready at once is written
        #: in its loop, which then serves the next request, instead of recursing.
        self._serving = False
        #: The twisted.web channel the connection was handed to, once it was.
        self._channel: Protocol | None = None
        self._writer: DirectWriter
        self._last_activity = 0.0
        self._idle_timer: IDelayedCall | None = None

    # Protocol

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._writer = DirectWriter(self.transport)
        self._last_activity = self._clock.seconds()
        self._idle_timer = self._clock.callLater(IDLE_CONNECTION_TIMEOUT, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        if self._channel is not None:
            self._channel.dataReceived(data)
            return
        if self._closing:
            return
        self._last_activity = self._clock.seconds()
        self._parts.append(data)
        self._size += len(data)
        if self._waiting is None:
            self._serve()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._channel is not None:
            self._channel.connectionLost(reason)
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()  # the caller hung up: the invocation runs on, as on AWS

    # Serving

    def _take(self) -> bytes:
        """What has arrived and is not yet served, as one string (joined once)."""
        parts = self._parts
        if len(parts) > 1:
            parts[:] = [b"".join(parts)]
        return parts[0] if parts else b""

    def _take_body(self, start: int, length: int) -> tuple[bytes, bytes]:
        """
        The body (C{length} bytes from C{start}) and what follows it, with one
        copy of a body that came in pieces: its head's piece is read from
        where the body starts, and only a pipelined request after it is cut off.
        """
        parts = self._parts
        if len(parts) == 1:
            buffer = parts[0]
            return buffer[start : start + length], buffer[start + length :]
        joined = b"".join([memoryview(parts[0])[start:], *parts[1:]])
        if len(joined) == length:
            return joined, b""
        return joined[:length], joined[length:]

    def _serve(self) -> None:
        """Answer the buffered requests in order, until one must wait or is not ours."""
        if self._serving:
            return
        self._serving = True
        try:
            self._serve_buffered()
        finally:
            self._serving = False

    def _serve_buffered(self) -> None:
        while self._size and self._waiting is None and not self._closing:
            head = self._head
            if head is None:
                buffer = self._take()
                if not buffer.startswith(_PREFIX[: len(buffer)]):
                    self._hand_over()
                    return
                end = buffer.find(HEAD_END)
                if end < 0:
                    if len(buffer) > errors.MAX_REQUEST_HEAD or b"\n" in buffer.replace(b"\r\n", b""):
                        self._hand_over()  # twisted.web answers what is wrong with it
                    return
                parsed = parse_head(buffer[:end], _REQUEST_LINE, errors.MAX_SYNC_PAYLOAD)
                if parsed is None:
                    self._hand_over()  # twisted.web serves it, or answers what is wrong with it
                    return
                line, headers, length, keep_alive = parsed
                head = self._head = (line.group(1), headers, length, keep_alive, end + len(HEAD_END))
            uri, headers, length, keep_alive, body_start = head
            if self._size < body_start + length:
                return  # the rest of the body is still to come: kept in pieces until then
            body, rest = self._take_body(body_start, length)
            self._parts = [rest] if rest else []
            self._size = len(rest)
            self._head = None
            self._handle(FastRequest(uri, headers, body, keep_alive))

    def _handle(self, request: FastRequest) -> None:
        api = self._api
        name = invoke_route_name(request.path)
        assert name is not None  # the request line matched the route
        twisted_request = cast("Request", request)  # the subset of a Request InvokeAPI uses
        try:
            answer = api.invoke(twisted_request, name)
        except Exception:
            self._write(request, api.error_answer(request, Failure()))
            return
        self._waiting = answer
        answer.addErrback(api.error_answer_for, request)
        answer.addCallbacks(self._answered, self._lost, callbackArgs=(request,))

    def _answered(self, body: bytes | None, request: FastRequest) -> None:
        self._waiting = None
        self._last_activity = self._clock.seconds()  # idle from its answer on
        if self._closing:
            return
        self._write(request, body)
        if not self._closing:
            self._serve()

    def _lost(self, failure: Failure) -> None:
        """No answer could be made (the error path itself failed): say so, and hang up rather than hang."""
        self._waiting = None
        self.log.failure("answering an invoke request", failure)
        if not self._closing:
            self._closing = True
            assert self.transport is not None
            self.transport.loseConnection()

    def _write(self, request: FastRequest, body: bytes | None) -> None:
        if body is None or self._closing:
            return
        code = request.code
        head = [
            b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Unknown")),
            b"Date: " + http_date(self._clock.seconds()) + b"\r\n",
        ]
        for name, values in request.responseHeaders.values.items():
            for value in values:
                head.append(name + b": " + value + b"\r\n")
        close = not request.channel.persistent
        if close and b"connection" not in request.responseHeaders.values:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        self._writer.write_sequence(head)
        if close:
            self._closing = True
            assert self.transport is not None
            self.transport.loseConnection()

    def _hand_over(self) -> None:
        """From the buffered request on, the connection is twisted.web's."""
        channel = self._site().buildProtocol(self._address)
        assert channel is not None and self.transport is not None
        self._writer.foreign_producer()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self._channel = channel
        channel.makeConnection(self.transport)
        buffer = self._take()
        self._parts, self._size = [], 0
        channel.dataReceived(buffer)

    def _check_idle(self) -> None:
        """Close a connection idle for IDLE_CONNECTION_TIMEOUT (never one whose answer is being waited for)."""
        self._idle_timer = None
        if self._closing or self._channel is not None:
            return
        idle = self._clock.seconds() - self._last_activity
        if self._waiting is None and idle >= IDLE_CONNECTION_TIMEOUT:
            self._closing = True
            assert self.transport is not None
            self.transport.loseConnection()
            return
        delay = IDLE_CONNECTION_TIMEOUT - idle if self._waiting is None else IDLE_CONNECTION_TIMEOUT
        self._idle_timer = self._clock.callLater(max(delay, 0.001), self._check_idle)


class InvokeAPIFactory(ServerFactory):
    """
    The Invoke API's listener: L{InvokeAPIProtocol} connections, which hand
    whatever is not an invoke request to C{site}, by default
    L{invoke_resource.invoke_site}'s, made (twisted.web imported) at the
    first connection handed over.
    """

    noisy = False

    def __init__(self, api: InvokeAPI, clock: Any, site: Factory[Any] | None = None) -> None:
        self._api = api
        self._clock = clock
        self._site_made = site

    def logPrefix(self) -> str:
        return "Invoke API"

    @property
    def site(self) -> Factory[Any]:
        """The twisted.web site of the handed-over connections."""
        if self._site_made is None:
            from .invoke_resource import invoke_site

            self._site_made = invoke_site(self._api, self._clock)
        return self._site_made

    def _site(self) -> Factory[Any]:
        return self.site

    def buildProtocol(self, addr: Any) -> InvokeAPIProtocol:
        protocol = InvokeAPIProtocol(self._api, self._site, addr, self._clock)
        protocol.factory = self
        return protocol
