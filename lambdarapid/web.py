"""
twisted.web pieces every HTTP listener here shares.

Only what twisted.web serves imports this module: the Invoke API's handed-over
connections, the Function URL and metrics listeners, the Runtime API's cold
routes; a daemon serving invocations alone never loads twisted.web.

Each of the three HTTP exchanges of an invocation goes through a L{Site};
measured here, the default one spends ~95 us per POST looking for form data
and ~50 us formatting an access-log line nobody reads. L{QuietSite} does
neither. L{BoundedRequest} stops buffering a body past its limit, so an
oversized payload costs no memory and still gets its 413.
"""

from __future__ import annotations

import io
from typing import Any, Callable, ClassVar

from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from . import errors
from .listener import IDLE_CONNECTION_TIMEOUT, ListenerService
from .logs import observer

log = Logger(observer=observer)


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

    Nothing is added per header line: the checks run once per read, once per
    head and once per body read, so the hot path stays as fast.
    """

    _host: Any = None
    #: The error answered on this connection: nothing more is read as HTTP.
    refused: errors.APIError | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Answers are written whole: never hold one back waiting for an ACK.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return  # the rest of a refused request: dropped
        super().dataReceived(data)
        # A head still being read whose unparsed part holds an LF has LF-only
        # line endings: twisted.web would wait for a CRLF until the idle timeout.
        if self.line_mode and b"\n" in self._unparsed_head() and self.refused is None:
            self.refuse(errors.malformed_request("Request lines must end with CRLF"))

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line over MAX_LENGTH: the request line (414) or a header (431)."""
        if self._head_size() == 0:
            self.refuse(errors.uri_too_long(self.MAX_LENGTH))
        else:
            self.refuse(errors.header_fields_too_large(self.totalHeadersSize))

    def allHeadersReceived(self) -> None:
        limit = getattr(self.requestFactory, "max_body", None)
        # A declared length over every limit is answered now, before any
        # 100 Continue and without waiting for a body that may never come.
        if limit is not None and self.length is not None and self.length > limit:
            self.refuse(self._too_large(limit))
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return
        super().rawDataReceived(data)
        if self.length is None:  # a chunked body is being read
            if self._chunk_line_has_bare_lf():
                # A chunk-size or trailer line ended by LF alone: twisted.web
                # would wait for its CRLF until the idle timeout.
                self.refuse(errors.malformed_request("Chunk lines must end with CRLF"))
                return
            # A chunk declaring more than every limit is answered now too.
            left = self._chunk_left()
            limit = getattr(self.requestFactory, "max_body", None)
            if left and limit is not None and self.requests:
                if getattr(self.requests[-1], "body_length", 0) + left > limit:
                    self.refuse(self._too_large(limit))

    def _too_large(self, limit: int) -> errors.APIError:
        """The 413 of this channel's API (the Invoke API's, or a Function URL's)."""
        site = getattr(self, "site", None)
        too_large = getattr(site, "too_large", errors.request_too_large)
        error: errors.APIError = too_large(limit)
        return error

    # twisted.web's internals (Twisted 26.10): the only ones this module uses,
    # all read here and nowhere else, since no public hook tells these things.

    def _unparsed_head(self) -> bytes:
        """
        What LineReceiver holds of a head not yet split into lines (at most
        MAX_LENGTH bytes); nothing while it is still splitting (a pipelined
        request fed back in from within an answer), which it will finish.
        """
        if self._busyReceiving:
            return b""
        return self._buffer

    def _head_size(self) -> int:
        """Bytes of the current request's head twisted.web has counted."""
        return self._receivedHeaderSize

    def _request_target(self) -> bytes:
        """The current request's target (path and query), once its request line is read."""
        target = getattr(self, "_path", b"")
        return target if isinstance(target, bytes) else b""

    def _chunk_left(self) -> int:
        """What the current chunk of a chunked body still declares (0 between chunks)."""
        decoder = self._transferDecoder
        if decoder is None or getattr(decoder, "state", None) != "BODY":
            return 0
        left: int = decoder.length
        return left

    def _chunk_line_has_bare_lf(self) -> bool:
        """
        Whether the chunk-size or trailer line the decoder waits on holds an LF:
        it would have taken a CRLF at once, so that LF has no CR before it.
        """
        decoder = self._transferDecoder
        if decoder is None or getattr(decoder, "state", None) not in ("CHUNK_LENGTH", "TRAILER"):
            return False
        return b"\n" in getattr(decoder, "_buffer", b"")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's one hook for every other framing error (bad request
        # lines, header names or values, lengths, transfer codings, chunks, too
        # many or too long headers), answered in the Invoke API's shape rather
        # than a bare 400.
        if self._receivedHeaderSize > self.totalHeadersSize or (
            self._receivedHeaderCount > self.maxHeaders
        ):
            self.refuse(errors.header_fields_too_large(self.totalHeadersSize))
        else:
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
        refused = getattr(getattr(self, "site", None), "refused", None)
        if refused is not None and error.status == 413 and self.requests:
            # An invocation refused before any route read it: counted all the same.
            refused(self._request_target(), self.requests[-1].requestHeaders)
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
    #: Told (request target, headers) of each request its channels answered 413
    #: before any resource saw it: the resource's own C{refused}, if it has one.
    refused: Callable[[bytes, Any], None] | None = None

    def __init__(
        self,
        resource: IResource,
        request_class: type[Request] = BoundedRequest,
        reactor: Any = None,
        too_large: Callable[[int], errors.APIError] = errors.request_too_large,
    ):
        self.refused = getattr(resource, "refused", None)
        #: The 413 its channels answer for a body over every limit.
        self.too_large = too_large
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


class HealthResource(Resource):
    """
    The metrics listener's root: C{/healthz} (200 while the process runs),
    C{/readyz} (200 when C{not_ready()} is None, else 503 with its one-line
    reason), C{/metrics} (the child given), and 404 for anything else.
    """

    def __init__(self, metrics: IResource, not_ready: Callable[[], str | None]) -> None:
        super().__init__()
        self._not_ready = not_ready
        self.putChild(b"metrics", metrics)

    def getChild(self, path: bytes, request: Any) -> Any:
        if path in (b"healthz", b"readyz") and not request.postpath:
            return _Health(path == b"readyz", self._not_ready)
        return _Text(404, b"not found")

    def render(self, request: Any) -> bytes:
        return _Text(404, b"not found").render(request)


class _Text(Resource):
    isLeaf = True

    def __init__(self, status: int, text: bytes) -> None:
        super().__init__()
        self._status = status
        self._text = text

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self._status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self._text + b"\n"


class _Health(Resource):
    isLeaf = True

    def __init__(self, readiness: bool, not_ready: Callable[[], str | None]) -> None:
        super().__init__()
        self._readiness = readiness
        self._not_ready = not_ready

    def render_GET(self, request: Any) -> bytes:
        reason = self._not_ready() if self._readiness else None
        if reason is None:
            return _Text(200, b"ok").render(request)
        return _Text(503, reason.encode("utf-8")).render(request)

    render_HEAD = render_GET


def metrics_listener(
    reactor: Any, description: str, metrics: IResource, not_ready: Callable[[], str | None]
) -> ListenerService:
    """The C{Metrics} listener: C{metrics} (prometheus_client's) under L{HealthResource}."""
    site = QuietSite(HealthResource(metrics, not_ready), reactor=reactor)
    return ListenerService(reactor, description, site, "Metrics")
