"""
twisted.web pieces every HTTP listener here shares.

Each of the three HTTP exchanges of an invocation goes through a L{Site};
measured here, the default one spends ~95 us per POST looking for form data
and ~50 us formatting an access-log line nobody reads. L{QuietSite} does
neither. L{BoundedRequest} stops buffering a body past its limit, so an
oversized payload costs no memory and still gets its 413.
"""

from __future__ import annotations

import io
import weakref
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from . import errors
from .logs import observer

log = Logger(observer=observer)


#: Seconds an Invoke API connection may sit idle or half-sent before it is closed.
IDLE_CONNECTION_TIMEOUT = 60
#: Seconds the rest of a refused request is read (and dropped) before the
#: connection is closed, so that its client reads the answer, not a reset.
REFUSED_LINGER = 5


class BoundedRequest(Request):
    """A request that keeps at most C{max_body} bytes of its body."""

    max_body: ClassVar[int] = 6_291_556
    #: The body's full length, counted even where it was not kept.
    body_length: int = 0
    #: True when the body was longer than C{max_body}.
    too_large: bool = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
            self.body_length = length
            self.content = io.BytesIO()
        else:
            # In memory, whatever the size: at most max_body is kept, and a temp
            # file per large invocation costs disk I/O (or fails on a read-only
            # container filesystem).
            self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self.body_length += len(data)
        if self.body_length > self.max_body:
            self.too_large = True
            self.content = io.BytesIO()
            return
        assert self.content is not None
        self.content.write(data)

    def body(self) -> bytes:
        """The whole body, read once."""
        content = self.content
        assert content is not None
        if isinstance(content, io.BytesIO):
            return content.getvalue()
        content.seek(0)
        data: bytes = content.read()
        return data


def read_body(request: Request, limit: int) -> bytes | None:
    """
    The request's body, or None if it is longer than C{limit} bytes.

    Works for any twisted.web request (so the Klein apps also run under treq's
    StubTreq); a L{BoundedRequest} has not even kept an oversized body.
    """
    if isinstance(request, BoundedRequest):
        if request.too_large or request.body_length > limit:
            return None
        return request.body()
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    return None if len(data) > limit else data


def bounded_request(limit: int) -> type[BoundedRequest]:
    """A L{BoundedRequest} class keeping at most C{limit} body bytes."""
    return type(f"BoundedRequest{limit}", (BoundedRequest,), {"max_body": limit})


class QuietChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that answers every request it cannot frame.

    twisted.web answers some framing errors with a bare C{400}, closes others
    without a word (a line over 16 KB) and waits on the rest until the idle
    timeout (LF-only line endings, a body or chunk length no client will ever
    send). Here each gets an AWS-shaped JSON error at once (400, 413, 414 or
    431) with C{Connection: close}; the rest of the request is then read and
    dropped for a few seconds, so the client is not reset before it has read
    the answer. It also asks the kernel for its local address once per
    connection rather than once per request (twisted.web's Request does).
    """

    _host: Any = None
    #: The error answered on this connection: nothing more is read as HTTP.
    refused: errors.APIError | None = None
    #: Lines and bytes of the request head being read (the request line counts).
    _head_lines = 0
    _head_size = 0
    _receiving = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        # Answers are written whole: never hold one back waiting for an ACK.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    @property
    def _max_body(self) -> int | None:
        return getattr(self.requestFactory, "max_body", None)

    def dataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return  # the rest of a refused request: dropped
        # Answering a request can feed pipelined data back in from within.
        self._receiving += 1
        try:
            super().dataReceived(data)
        finally:
            self._receiving -= 1
        # A head still being read whose unterminated part holds an LF has
        # LF-only line endings: twisted.web would wait for a CRLF until the
        # idle timeout. LineReceiver keeps that part in its (private) buffer,
        # at most MAX_LENGTH bytes, split into lines only by the outermost
        # call; this is the one place that reads it.
        if (
            self.line_mode
            and not self._receiving
            and self.refused is None
            and b"\n" in self._buffer
        ):
            self.refuse(errors.malformed_request("Request lines must end with CRLF"))

    def lineReceived(self, line: bytes) -> None:
        # The head's size is counted here, before twisted.web counts it, so
        # that too large a head is a 431 rather than twisted.web's bare 400.
        if line or self._head_lines:  # not the empty line a client may send between requests
            self._head_lines += 1
            self._head_size += len(line)
        if self._head_size > self.totalHeadersSize or self._head_lines > self.maxHeaders + 1:
            self.refuse(errors.header_fields_too_large(self.totalHeadersSize))
            return
        if b"\n" in line:
            self.refuse(errors.malformed_request("Request lines must end with CRLF"))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line over MAX_LENGTH: the request line (414) or a header (431)."""
        if self._head_lines == 0:
            self.refuse(errors.uri_too_long(self.MAX_LENGTH))
        else:
            self.refuse(errors.header_fields_too_large(self.totalHeadersSize))

    def allHeadersReceived(self) -> None:
        self._head_lines = self._head_size = 0
        limit = self._max_body
        # A declared length over every limit is answered now, before any
        # 100 Continue and without waiting for a body that may never come.
        if limit is not None and self.length is not None and self.length > limit:
            self.refuse(errors.request_too_large(limit))
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return
        super().rawDataReceived(data)
        # A chunk declaring more than every limit is answered now too: the
        # chunk size is only known to twisted.web's (private) decoder, whose
        # documented ``length`` is what is left of the current chunk.
        decoder = self._transferDecoder
        limit = self._max_body
        if (
            self.length is None
            and decoder is not None
            and limit is not None
            and getattr(decoder, "state", None) == "BODY"
        ):
            received = getattr(self.requests[-1], "body_length", 0) if self.requests else 0
            if received + decoder.length > limit:
                self.refuse(errors.request_too_large(limit))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's one (private) hook for every other framing error: bad
        # request lines, header names or values, lengths, transfer codings,
        # chunks. Answered in the Invoke API's shape instead of a bare 400.
        self.refuse(errors.malformed_request("The request is not valid HTTP/1.1"))

    def refuse(self, error: errors.APIError) -> None:
        """
        Answer C{error} and end the connection: half-close at once (the client
        reads the answer, then the end), drop whatever else it sends, and
        close for good when it does, or after L{REFUSED_LINGER} seconds.
        """
        if self.refused is not None:
            return
        self.refused = error
        self.persistent = False
        self.clearLineBuffer()
        status = error.status
        head = [
            b"HTTP/1.1 %d %s" % (status, RESPONSES.get(status, b"Error")),
            b"Content-Type: application/json",
            b"x-amzn-ErrorType: " + error.error_type.encode(),
            b"Content-Length: %d" % len(error.body),
            b"Connection: close",
        ]
        head.extend(f"{name}: {value}".encode() for name, value in error.headers.items())
        transport = self.transport
        assert transport is not None
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + error.body)
        self.setTimeout(REFUSED_LINGER)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self.refused is not None:
            # The client had its answer and REFUSED_LINGER seconds to read it.
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.loseConnection()
            return
        super().timeoutConnection()


class QuietSite(Site):
    """
    A L{Site} tuned for an API: no form parsing, no access log, a short idle
    timeout, no start/stop chatter, and plain HTTP/1.1 channels (no protocol-negotiation
    proxy in front of every read: there is no TLS here to negotiate HTTP/2 on).
    """

    noisy = False
    protocol = QuietChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        request_class: type[Request] = BoundedRequest,
        reactor: Any = None,
    ):
        super().__init__(
            resource,
            requestFactory=request_class,
            parsePOSTFormSubmission=False,
            reactor=reactor,
        )
        # Idle (or half-sent) connections go after a minute; a request being
        # answered is never timed out, however long its invocation runs.
        self.timeOut = IDLE_CONNECTION_TIMEOUT

    def log(self, request: Any) -> None:
        """No access log: it costs more than the rest of a small request."""


class _RecordingFactory(Factory):
    """Hands out the real factory's protocols, remembering each connection's."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self.protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._factory.buildProtocol(addr)
        if protocol is not None:
            self.protocols.add(protocol)
        return protocol


class ListenerService(Service):
    """
    Listens on C{description} while running, says where it listens, and can
    hang up the connections it accepted (callers' keep-alive connections
    outlive the listening port otherwise).

    A port that cannot be had raises L{CannotListenError} from
    L{privilegedStartService}, synchronously: the program's edge (the console
    scripts, twistd's C{makeService}) turns it into one line and an exit.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: Any, description: str, factory: Any, name: str) -> None:
        self._reactor = reactor
        self._endpoint = serverFromString(reactor, description)
        self._factory = _RecordingFactory(factory)
        self._what = name
        #: Fires with the listening port once it listens.
        self.listening: Deferred[IListeningPort] = Deferred()
        self.port: IListeningPort | None = None
        self._tried = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._tried:
            return
        self._tried = True
        failures: list[Failure] = []
        self._endpoint.listen(self._factory).addCallbacks(self._listened, failures.append)
        if failures:
            self._tried = False
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        self.log.info(
            "{what} listening on {host}:{port}",
            what=self._what,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        self.listening.callback(port)

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._tried = False
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)

    def connections(self) -> list[Any]:
        """The protocols of the connections still open."""
        return [
            protocol
            for protocol in self._factory.protocols
            if protocol.transport is not None and protocol.transport.connected
        ]

    async def close_connections(self, grace: float = 2.0) -> None:
        """Hang up every open connection; abort those still open after C{grace} seconds."""
        for protocol in self.connections():
            protocol.transport.loseConnection()
        deadline = self._reactor.seconds() + grace
        while self.connections():
            if self._reactor.seconds() >= deadline:
                for protocol in self.connections():
                    protocol.transport.abortConnection()
            await deferLater(self._reactor, 0.01, lambda: None)


def listen_error_line(program: str, error: CannotListenError) -> str:
    """The one line a program stops with when its port is taken."""
    where = f"{error.interface or '0.0.0.0'}:{error.port}"
    return f"{program}: cannot listen on {where}: {error.socketError}"
