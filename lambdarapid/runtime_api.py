"""
The Lambda Runtime API, served to one runtime process.

Each environment listens on its own loopback port, so every request on it
comes from its runtime. Two of the three HTTP exchanges of every invocation
(C{GET next}, C{POST response}) happen here, so this API is served below
twisted.web: a L{Protocol} around the llhttp parser (C{httptools}), which
measured ~100 us less daemon CPU per invocation than a tuned twisted.web
Site. It still speaks proper HTTP/1.1: keep-alive, chunked bodies (streamed
responses, with their error trailers), pipelining, size limits, 400 on
malformed input, C{Connection: close}.

The request line and headers are capped at L{errors.MAX_REQUEST_HEAD}: the
parser is never fed more of a head than that (httptools joins a header's
pieces anew on every read, so an unbounded one costs quadratic time).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from . import errors
from .directwrite import DirectWriter
from .http1 import HEAD_END, MAX_HEAD_TAKEN, REASONS, parse_head
from .httpdate import http_date
from .invocation import Invocation, Outcome
from .streams import MAX_STREAMED_RESPONSE, ResponseStream

if TYPE_CHECKING:
    from twisted.web.server import Site

    from .environment import ExecutionEnvironment
    from .web_bridge import Rendered

_PREFIX = b"/2018-06-01/runtime/"
_NEXT = b"/2018-06-01/runtime/invocation/next"
_EXTENSION_NEXT = b"/2020-01-01/extension/event/next"
_EXTENSION_IDENTIFIER = b"lambda-extension-identifier"
_INVOCATION = b"/2018-06-01/runtime/invocation/"
_RESPONSE = b"/response"
_ERROR = b"/error"

#: The cold routes: the extensions', the Telemetry and Logs APIs', the runtime's
#: init error. They are the ColdRoutes Klein app's (extensions_api), made (and
#: Klein and twisted.web imported) at the first request for one.
REGISTER = b"/2020-01-01/extension/register"
EXTENSION_INIT_ERROR = b"/2020-01-01/extension/init/error"
EXTENSION_EXIT_ERROR = b"/2020-01-01/extension/exit/error"
TELEMETRY = b"/2022-07-01/telemetry"
LOGS = b"/2020-08-15/logs"
RUNTIME_INIT_ERROR = b"/2018-06-01/runtime/init/error"
COLD_PATHS = frozenset(
    {REGISTER, EXTENSION_INIT_ERROR, EXTENSION_EXIT_ERROR, TELEMETRY, LOGS, RUNTIME_INIT_ERROR}
)

_ERROR_TYPE = b"lambda-runtime-function-error-type"
_ERROR_BODY = b"lambda-runtime-function-error-body"
_RESPONSE_MODE = b"lambda-runtime-function-response-mode"
_RESPONSE_MODES = (b"buffered", b"streaming")
#: The request lines L{http1.parse_head} takes here; any other goes to llhttp.
_REQUEST_LINE = re.compile(rb"(GET|POST) (/[!-~]*) HTTP/1\.1")


@dataclass
class _Request:
    """One parsed request: what the handlers need of it."""

    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes | None  # None when it was over the limit
    keep_alive: bool
    #: A response streamed to its caller as it came: the body went there, not here.
    stream: ResponseStream | None = None
    #: Whether that stream went past its limit (the rest was dropped).
    oversized: bool = False
    #: The error a streamed response's head already got (out of turn): its answer.
    refused: errors.APIError | None = None


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _accepted() -> _Response:
    return _Response(202, errors.ACCEPTED)


def _accepted_when(taken: Deferred[None] | None) -> _Response | Deferred[_Response]:
    """202 now, or once the environment has taken the answer (after the runtime's output)."""
    if taken is None:
        return _accepted()
    return taken.addCallback(lambda _: _accepted())


def _error_response(error: errors.APIError) -> _Response:
    headers = [(name.encode(), _header_value(value)) for name, value in error.headers.items()]
    return _Response(error.status, error.body, headers)


def _error_document(request: _Request, body: bytes) -> tuple[str | None, bytes]:
    """The error type header and the error body, built from the header when empty."""
    raw_type = request.headers.get(_ERROR_TYPE)
    error_type = raw_type.decode("utf-8", "replace") if raw_type else None
    if not body.strip():
        raw_body = request.headers.get(_ERROR_BODY)  # a streamed response's trailer
        if raw_body:
            try:
                body = base64.b64decode(raw_body, validate=True)
            except (binascii.Error, ValueError):
                body = b""
    return error_type, errors.error_document(error_type, body)


_UNSAFE = str.maketrans("", "", "\r\n\x00")
_UNSAFE_CHARACTER = re.compile("[\r\n\x00]")


def _header_value(text: str) -> bytes:
    """C{text} as a header value: whatever a caller sent, it stays one header."""
    if _UNSAFE_CHARACTER.search(text) is not None:  # rare: one scan, not a translation
        text = text.translate(_UNSAFE)
    return text.encode("utf-8", "replace")


def _event_headers(invocation: Invocation) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"Lambda-Runtime-Aws-Request-Id", _header_value(invocation.request_id)),
        (b"Lambda-Runtime-Deadline-Ms", b"%d" % int((invocation.deadline or 0) * 1000)),
        (b"Lambda-Runtime-Invoked-Function-Arn", _header_value(invocation.function_arn)),
    ]
    if invocation.trace_id:
        headers.append((b"Lambda-Runtime-Trace-Id", _header_value(invocation.trace_id)))
    if invocation.client_context:
        headers.append(
            (b"Lambda-Runtime-Client-Context", _header_value(invocation.client_context))
        )
    if invocation.cognito_identity:
        headers.append(
            (b"Lambda-Runtime-Cognito-Identity", _header_value(invocation.cognito_identity))
        )
    if invocation.tenant_id:
        headers.append((b"Lambda-Runtime-Aws-Tenant-Id", _header_value(invocation.tenant_id)))
    return headers


def _rendered(rendered: Rendered) -> _Response:
    # Every answer of this port is JSON, written with its own Content-Type.
    headers = [(name, value) for name, value in rendered.headers if name.lower() != b"content-type"]
    return _Response(rendered.status, rendered.body, headers)


def _extension_event(event: tuple[str, bytes]) -> _Response:
    identifier, body = event
    return _Response(200, body, [(b"Lambda-Extension-Event-Identifier", identifier.encode())])


class RuntimeAPI:
    """
    The routes of one environment's port: the hot ones (the runtime's next,
    response and error, the extensions' next) here, the cold ones through
    the L{ColdRoutes} Klein app.
    """

    def __init__(self, environment: ExecutionEnvironment) -> None:
        self._environment = environment
        self._cold: Site | None = None

    def _cold_site(self) -> Site:
        if self._cold is None:
            from twisted.web.server import Site

            from .extensions_api import ColdRoutes

            self._cold = Site(ColdRoutes(self._environment).app.resource())
        return self._cold

    def handle(
        self, request: _Request, transport: ITransport | None = None
    ) -> _Response | Deferred[_Response]:
        """The response to C{request}, now or (for C{next}) when an event comes."""
        path = request.path
        if request.refused is not None:
            return _error_response(request.refused)
        try:
            if path == _NEXT:
                self._require(request, b"GET")
                return self._environment.next_invocation().addCallback(self._event)
            if path == _EXTENSION_NEXT:
                self._require(request, b"GET")
                identifier = request.headers.get(_EXTENSION_IDENTIFIER)
                return self._environment.extension_next(identifier).addCallback(
                    _extension_event
                )
            if path.startswith(_INVOCATION):
                if path.endswith(_RESPONSE):
                    self._require(request, b"POST")
                    return self.response(request, self._request_id(path, _RESPONSE))
                if path.endswith(_ERROR):
                    self._require(request, b"POST")
                    return self.error(request, self._request_id(path, _ERROR))
            if path in COLD_PATHS:
                return self._render_cold(request, transport)
            raise errors.not_found_route()
        except errors.APIError as error:
            return _error_response(error)

    @staticmethod
    def _require(request: _Request, method: bytes) -> None:
        if request.method != method:
            raise errors.runtime_method_not_allowed(method.decode())

    @staticmethod
    def _request_id(path: bytes, suffix: bytes) -> str:
        return unquote(path[len(_INVOCATION) : -len(suffix)].decode("utf-8", "replace"))

    @staticmethod
    def _event(invocation: Invocation) -> _Response:
        return _Response(200, invocation.payload, _event_headers(invocation))

    def begin_stream(self, path: bytes, headers: dict[bytes, bytes]) -> ResponseStream | None:
        """
        A request with a response mode has its head in: a response POST in
        C{streaming} mode, for an invocation whose caller takes a stream, has
        its body go to the caller as it comes. None: it is read whole, as any
        other request.
        """
        mode = headers.get(_RESPONSE_MODE)
        if mode is None or mode.lower() != b"streaming":
            return None
        if not (path.startswith(_INVOCATION) and path.endswith(_RESPONSE)):
            return None
        content_type = headers.get(b"content-type", b"application/octet-stream")
        return self._environment.begin_stream(
            self._request_id(path, _RESPONSE), content_type.decode("latin-1")
        )

    def response(self, request: _Request, request_id: str) -> _Response | Deferred[_Response]:
        mode = request.headers.get(_RESPONSE_MODE)
        if mode is not None and mode.lower() not in _RESPONSE_MODES:
            raise errors.invalid_response_mode(mode.decode("utf-8", "replace"))
        if request.stream is not None:
            return self._stream_ended(request, request_id)
        body = request.body
        if body is None:
            raise self._too_large(request_id)
        if mode is not None and _ERROR_TYPE in request.headers:
            # A streamed response that failed midway reports it in its trailers.
            error_type, document = _error_document(request, b"")
            taken = self._environment.answer(
                request_id, Outcome.FUNCTION_ERROR, document, error_type
            )
        else:
            content_type = request.headers.get(b"content-type") if mode is not None else None
            taken = self._environment.answer(
                request_id,
                Outcome.SUCCESS,
                body,
                content_type=content_type.decode("latin-1") if content_type else None,
            )
        return _accepted_when(taken)

    def _stream_ended(self, request: _Request, request_id: str) -> _Response | Deferred[_Response]:
        """The streamed body is all in: the answer is its trailers' error, if any."""
        if request.oversized:
            self._environment.answer(
                request_id,
                Outcome.FUNCTION_ERROR,
                errors.function_error_body(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size exceeded maximum allowed payload size "
                    f"({MAX_STREAMED_RESPONSE} bytes).",
                ),
                "Function.ResponseSizeTooLarge",
            )
            raise errors.entity_too_large(MAX_STREAMED_RESPONSE)
        if _ERROR_TYPE in request.headers:
            error_type, document = _error_document(request, b"")
            taken = self._environment.answer(
                request_id, Outcome.FUNCTION_ERROR, document, error_type
            )
        else:
            taken = self._environment.answer(request_id, Outcome.SUCCESS, b"")
        return _accepted_when(taken)

    def truncated(self, stream: ResponseStream, path: bytes) -> None:
        """The runtime's connection broke off mid-stream: the stream ends, truncated."""
        try:
            self._environment.answer(
                self._request_id(path, _RESPONSE),
                Outcome.FUNCTION_ERROR,
                errors.function_error_body(
                    "Runtime.TruncatedResponse", "HTTP request detected as truncated"
                ),
                "Runtime.TruncatedResponse",
            )
        except errors.APIError:
            pass  # the invocation is over already (timed out, the runtime exited)

    def _too_large(self, request_id: str) -> errors.APIError:
        """The caller gets Function.ResponseSizeTooLarge; the runtime the 413 returned."""
        self._environment.answer(
            request_id,
            Outcome.FUNCTION_ERROR,
            errors.RESPONSE_TOO_LARGE,
            "Function.ResponseSizeTooLarge",
        )
        return errors.entity_too_large()

    def error(self, request: _Request, request_id: str) -> _Response | Deferred[_Response]:
        if request.body is None:
            raise self._too_large(request_id)
        error_type, body = _error_document(request, request.body)
        taken = self._environment.answer(request_id, Outcome.FUNCTION_ERROR, body, error_type)
        return _accepted_when(taken)

    def _render_cold(
        self, request: _Request, transport: ITransport | None
    ) -> Deferred[_Response]:
        if request.body is None:
            raise errors.entity_too_large()
        assert transport is not None
        from .web_bridge import render

        return render(
            self._cold_site(),
            request.method,
            request.path,
            request.headers,
            request.body,
            transport.getPeer(),
            transport.getHost(),
        ).addCallback(_rendered)


class _HeadTooLarge(Exception):
    """Raised inside the parser's callbacks to stop it at an oversized head."""

    def __init__(self, status: int) -> None:
        self.status = status


class RuntimeAPIProtocol(Protocol):
    """One runtime connection: parses requests, answers them in order."""

    def __init__(self, api: RuntimeAPI, clock: Any, max_body: int) -> None:
        self._api = api
        self._clock = clock
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._requests: deque[_Request] = deque()
        self._waiting: Deferred[_Response] | None = None
        self._closing = False
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._length = 0
        #: Whether the parser is reading a head (request line, headers) or waits for one.
        self._in_head = True
        #: Bytes fed to the parser while it was reading the current head.
        self._head_fed = 0
        #: The current head's URL and header bytes, as the parser reports them.
        self._head_size = 0
        self._completed = 0
        #: The current request's path, known once its head is in.
        self._path = b""
        #: The response being streamed to its caller as it comes (its path is L{_path}).
        self._stream: ResponseStream | None = None
        self._stream_oversized = False
        self._stream_refused: errors.APIError | None = None
        self._writer: DirectWriter
        #: Whether L{_serve} is on the stack (an answer ready at once must not recurse into it).
        self._serving = False
        #: Set by a request with C{Connection: close}: whatever follows it is not read.
        self._last_read = False
        #: Whether the parser holds part of a request (from its first byte to its
        #: end): only between requests are requests taken whole.
        self._in_message = False

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = []
        self._url_size = 0
        self._headers = {}
        self._body = []
        self._length = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_size += len(url)
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Whitespace around a value is not part of it (RFC 9110 5.5), as http1 reads it too.
        self._headers[name.lower()] = value.strip(b" \t")
        self._grow_head(len(name) + len(value) + 4)

    def _grow_head(self, size: int) -> None:
        # Counts what one read delivered at once (a whole head after a body, say).
        self._head_size += size
        if self._head_size > errors.MAX_REQUEST_HEAD:
            raise _HeadTooLarge(self._oversize_status())

    def _oversize_status(self) -> int:
        """414 when it is the URL that does not fit (the head is nearly all URL), else 431."""
        others = max(self._head_fed, self._head_size) - self._url_size
        return 414 if not self._headers and others < 64 else 431

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._path, _, _ = b"".join(self._url).partition(b"?")
        if _RESPONSE_MODE in self._headers and self._parser.get_method() == b"POST":
            try:
                stream = self._api.begin_stream(self._path, self._headers)
            except errors.APIError as error:
                # Out of turn: answered once the body is in, and the body is not kept.
                self._stream_refused = error
                stream = None
            if stream is not None:
                self._stream = stream
                stream.set_producer(self.transport)  # type: ignore[arg-type]
        # curl asks before sending a body over 1 MB; without an answer it waits a second.
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            assert self.transport is not None
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._length += len(body)
        stream = self._stream
        if stream is not None:
            if self._length <= MAX_STREAMED_RESPONSE:
                stream.write(bytes(body))
            else:
                self._stream_oversized = True
        elif self._length <= self._max_body and self._stream_refused is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        path = self._path
        stream, self._stream = self._stream, None
        refused, self._stream_refused = self._stream_refused, None
        if stream is not None:
            stream.set_producer(None)
        self._requests.append(
            _Request(
                method=parser.get_method(),
                path=path,
                headers=self._headers,
                body=b"".join(self._body) if self._length <= self._max_body else None,
                keep_alive=parser.should_keep_alive(),
                stream=stream,
                oversized=self._stream_oversized,
            )
            if refused is None
            else _Request(b"REFUSED", path, {}, b"", parser.should_keep_alive(), refused=refused)
        )
        self._stream_oversized = False
        self._in_head = True
        self._in_message = False
        self._head_fed = 0
        self._head_size = 0
        self._completed += 1

    # Protocol

    def connectionMade(self) -> None:
        # Answers are written whole: never hold one back waiting for an ACK.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._writer = DirectWriter(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._last_read:
            return
        if not self._in_message:
            data = self._take_whole(data)
            if not data:
                self._serve()
                return
        try:
            self._feed(memoryview(data))
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _HeadTooLarge):
                raise
            self._head_too_large(error.__context__.status)
        except httptools.HttpParserError as error:
            self._fail(400, f"malformed HTTP request: {error}")
        except _HeadTooLarge as error:
            self._head_too_large(error.status)
        self._serve()

    def _take_whole(self, data: bytes) -> bytes:
        """
        Queue the whole, plain requests at the front of C{data} (between two
        requests: the parser holds nothing), parsed by L{http1.parse_head}
        without a callback per header; return what is left for the parser,
        from the first request that is not one of those (or not all here).
        """
        at = 0
        size = len(data)
        while at < size:
            end = data.find(HEAD_END, at, at + MAX_HEAD_TAKEN + len(HEAD_END))
            if end < 0:
                break
            parsed = parse_head(data[at:end], _REQUEST_LINE, self._max_body)
            if parsed is None:
                break
            line, headers, length, keep_alive = parsed
            start = end + len(HEAD_END)
            if size < start + length or _RESPONSE_MODE in headers:
                break  # a body still to come, or a stream: the parser's
            path = line.group(2).partition(b"?")[0]
            self._requests.append(
                _Request(line.group(1), path, headers, data[start : start + length], keep_alive)
            )
            self._completed += 1
            if not keep_alive:
                self._last_read = True  # the client said this was its last request
                return b""
            at = start + length
        return data[at:] if at else data

    def _feed(self, data: memoryview) -> None:
        """
        Feed C{data} to the parser, a head's worth at most while it reads a
        head: past L{errors.MAX_REQUEST_HEAD} of one, stop feeding.
        """
        parser = self._parser
        limit = errors.MAX_REQUEST_HEAD
        while data:
            if not self._in_head:
                parser.feed_data(data)  # a body (and whatever follows it): at once
                return
            room = limit - self._head_fed
            if room <= 0:
                raise _HeadTooLarge(self._oversize_status())
            chunk, data = data[: room + 1], data[room + 1 :]
            completed = self._completed
            parser.feed_data(chunk)
            if self._in_head and self._completed == completed:
                # Still in the same head: all of it was head.
                self._head_fed += len(chunk)
                if self._head_fed > limit:
                    raise _HeadTooLarge(self._oversize_status())

    def _head_too_large(self, status: int) -> None:
        if status == 414:
            message = f"URI must be shorter than {errors.MAX_REQUEST_HEAD} bytes"
        else:
            message = f"Request line and headers must be smaller than {errors.MAX_REQUEST_HEAD} bytes"
        self._fail(status, message)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._closing = True
        self._requests.clear()
        stream, self._stream = self._stream, None
        if stream is not None:
            self._api.truncated(stream, self._path)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()  # the runtime hung up its GET /next

    # Answering

    def _serve(self) -> None:
        """Answer queued requests in order, until one has to wait (GET /next)."""
        if self._serving:
            return  # an answer ready at once: the loop below goes on with the next request
        self._serving = True
        try:
            self._serve_queued()
        finally:
            self._serving = False

    def _serve_queued(self) -> None:
        while self._requests and self._waiting is None and not self._closing:
            request = self._requests.popleft()
            response = self._api.handle(request, self.transport)
            if isinstance(response, Deferred):
                self._waiting = response
                response.addCallbacks(
                    self._answered, self._lost, callbackArgs=(request,), errbackArgs=(request,)
                )
            else:
                self._write(request, response)

    def _answered(self, response: _Response, request: _Request) -> None:
        self._waiting = None
        if not self._closing:
            self._write(request, response)
            self._serve()

    def _lost(self, failure: Failure, request: _Request) -> None:
        self._waiting = None
        if not self._closing:
            # An event was due but could not be had: a container error.
            error = failure.value
            if not isinstance(error, errors.APIError):
                error = errors.container_error(
                    f"the execution environment could not answer: {failure.getErrorMessage()}"
                )
            self._write(request, _error_response(error))
            self._serve()

    def _write(self, request: _Request, response: _Response) -> None:
        close = not request.keep_alive
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (response.status, REASONS.get(response.status, b"")),
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(response.body),
            b"Date: " + http_date(self._clock.seconds()) + b"\r\n",
        ]
        for name, value in response.headers:
            lines.append(name + b": " + value + b"\r\n")
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(response.body)
        assert self.transport is not None
        self._writer.write_sequence(lines)
        if close:
            self._closing = True
            self.transport.loseConnection()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse, then hang up: the stream is lost."""
        self._requests.clear()
        if self._waiting is not None:
            # An answer is still owed on this connection, and must come first: hang up.
            self._closing = True
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._write(
            _Request(b"", b"", {}, None, keep_alive=False),
            _error_response(errors.malformed_runtime_request(message, status)),
        )


class RuntimeAPIFactory(Factory):
    """Builds the protocol serving one environment's runtime."""

    noisy = False

    def logPrefix(self) -> str:
        """What Twisted's port says it is starting: "Runtime API starting on 9001"."""
        return "Runtime API"

    def __init__(self, environment: ExecutionEnvironment, clock: Any) -> None:
        self._api = RuntimeAPI(environment)
        self._clock = clock

    def buildProtocol(self, addr: Any) -> RuntimeAPIProtocol:
        return RuntimeAPIProtocol(self._api, self._clock, errors.MAX_RUNTIME_RESPONSE)
