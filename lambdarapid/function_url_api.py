"""
The function as a web service: a Function URL on its own port.

Every HTTP request, whatever its method and path, becomes one payload
format 2.0 event, invoked through the same L{IInvoker} as the Invoke API
(the daemon's pool: same queue, concurrency, timeout and reports), and the
result becomes the HTTP response, buffered or (C{RESPONSE_STREAM}) streamed
as the runtime writes it. The rules of both are L{function_url}'s.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import errors
from .config import Function, function_arn
from .function_url import (
    HTTP_INTEGRATION,
    HTTPAnswer,
    PreludeReader,
    UnmappableResult,
    URLRequest,
    buffered_answer,
    failed_answer,
    request_event,
)
from .invocation import (
    FunctionNotFound,
    IInvoker,
    Invocation,
    InvocationType,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    new_request_id,
    new_trace_id,
)
from .logs import observer
from .observers import NO_INVOCATIONS, THROTTLED, TOO_LARGE, UNAVAILABLE, InvocationObserver
from .streams import ResponseStream
from .request_body import read_body

_REQUEST = InvocationType.REQUEST_RESPONSE


class FunctionURLResource(Resource):
    """
    A Function URL. With a C{function} (the daemon) every path is that
    function's; without one (the Lambda Server) the first path segment names
    the function, whose queue the invoker routes to, and the rest is its path.
    """

    isLeaf = True
    log = Logger(observer=observer)

    def __init__(
        self,
        invoker: IInvoker,
        reactor: Any,
        port: int,
        function: Function | None = None,
        region: str = "us-east-1",
        streaming: bool = False,
        invocations: InvocationObserver = NO_INVOCATIONS,
    ) -> None:
        super().__init__()
        self._invoker = invoker
        self._reactor = reactor
        self._port = port
        self._function = function
        self._region = function.region if function is not None else region
        self._streaming = streaming
        self._invocations = invocations

    def render(self, request: Request) -> Any:
        request_id = new_request_id()
        request.responseHeaders.setRawHeaders(b"x-amzn-requestid", [request_id.encode()])
        try:
            invocation = self._invocation(request, request_id)
        except errors.APIError as error:
            return _error(request, error)
        answer = self._invoker.invoke(invocation)
        # Fires early only if the client hangs up; the invocation runs on, as on Lambda.
        finished = request.notifyFinish()
        finished.addErrback(lambda _: answer.cancel())
        answer.addCallbacks(
            self._answer,
            self._refused,
            callbackArgs=(request, finished),
            errbackArgs=(request, finished),
        )
        return NOT_DONE_YET

    def _target(self, request: Request) -> tuple[str, str, bytes]:
        """The function's name and ARN, and the request target it sees."""
        function = self._function
        if function is not None:
            return function.name, function.arn(), request.uri
        segment, _, rest = request.uri.lstrip(b"/").partition(b"/")
        name, _, query = segment.partition(b"?")
        text = name.decode("utf-8", "replace")
        if not text:
            raise errors.url_not_found("No function in the path: /<function>/...")
        if query:
            rest = b"?" + query
        return text, function_arn(self._region, text), b"/" + rest

    def _invocation(self, request: Request, request_id: str) -> Invocation:
        name, arn, target = self._target(request)
        body = read_body(request, errors.MAX_SYNC_PAYLOAD)
        if body is None:
            self._invocations.refused(_REQUEST, TOO_LARGE)
            raise errors.url_too_large()
        now: float = self._reactor.seconds()
        sent = request.getHeader(b"x-amzn-trace-id")
        trace_id = sent.decode("latin-1") if sent else new_trace_id(now)
        peer = request.getClientAddress()
        host = request.getHost()
        event = request_event(
            URLRequest(
                method=request.method.decode("latin-1"),
                target=target,
                headers=[
                    (name, value)
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                body=body,
                source_ip=getattr(peer, "host", "") or "",
                port=self._port,
                local_host=getattr(host, "host", "") or "localhost",
                request_id=request_id,
                trace_header=trace_id if sent else trace_id.split(";", 1)[0],
                arrived=now,
                protocol=request.clientproto.decode("latin-1"),
            )
        )
        if len(event) > errors.MAX_SYNC_PAYLOAD:
            self._invocations.refused(_REQUEST, TOO_LARGE)
            raise errors.url_too_large()
        return Invocation(
            payload=event,
            request_id=request_id,
            function_arn=arn,
            function_name=name,
            trace_id=trace_id,
            arrived=now,
            accept_stream=self._streaming,
        )

    def _answer(self, result: Result, request: Request, finished: Deferred[None]) -> None:
        if finished.called:
            if result.stream is not None:
                result.stream.stopProducing()
            return
        if result.stream is not None:
            _StreamedAnswer(request, result.stream, self.log)
            return
        if result.outcome.is_error:
            _send(request, failed_answer())
            return
        if result.content_type is not None and not self._streaming:
            # A streaming handler behind a BUFFERED URL: Lambda answers 200 and
            # nothing else; say why, since the function itself looks fine.
            self.log.warn(
                "invocation {request_id}: the function streamed its response, but "
                "FUNCTION_URL_INVOKE_MODE is BUFFERED: answered 200 with no body, as "
                "Lambda does (set FUNCTION_URL_INVOKE_MODE=RESPONSE_STREAM)",
                request_id=result.request_id,
            )
            _send(request, HTTPAnswer(200, [(b"content-type", b"application/json")]))
            return
        if self._streaming:
            # A buffered handler behind a RESPONSE_STREAM URL: its result is
            # the body as it is, not translated (as on Lambda).
            content_type = (result.content_type or "application/json").encode("latin-1")
            _send(request, HTTPAnswer(200, [(b"content-type", content_type)], result.body))
            return
        try:
            answer = buffered_answer(result.body)
        except UnmappableResult as error:
            self.log.warn(
                "invocation {request_id}: the result is no HTTP answer ({why}): 502",
                request_id=result.request_id,
                why=str(error),
            )
            answer = failed_answer()
        _send(request, answer)

    def _refused(self, failure: Failure, request: Request, finished: Deferred[None]) -> None:
        if failure.check(CancelledError) or finished.called:
            return
        if failure.check(TooManyRequests):
            self._invocations.refused(_REQUEST, THROTTLED)
            error = errors.url_throttled()
        elif failure.check(ServiceUnavailable):
            self._invocations.refused(_REQUEST, UNAVAILABLE)
            error = errors.url_unavailable(str(failure.value))
            _close_after(request)
        elif failure.check(FunctionNotFound):
            error = errors.url_not_found(str(failure.value))
        elif failure.check(errors.APIError):
            assert isinstance(failure.value, errors.APIError)
            error = failure.value
        else:
            self.log.failure("unexpected error answering {uri}", failure, uri=request.uri)
            _send(request, failed_answer())
            return
        request.write(_error(request, error))
        request.finish()


def too_large(limit: int) -> errors.APIError:
    """
    The 413 a Function URL's channel answers for a body declared over every
    limit, before any resource sees it: with a request id, as every answer.
    """
    error = errors.url_too_large(limit)
    error.headers["x-amzn-RequestId"] = new_request_id()
    return error


def _error(request: Request, error: errors.APIError) -> bytes:
    """An AWS-shaped error answer's head, set on C{request}; returns its body."""
    request.setResponseCode(error.status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    headers.setRawHeaders(b"x-amzn-errortype", [error.error_type.encode()])
    for name, value in error.headers.items():
        headers.setRawHeaders(name.encode(), [value.encode()])
    headers.setRawHeaders(b"content-length", [b"%d" % len(error.body)])
    return error.body


def _set_head(request: Request, answer: HTTPAnswer) -> None:
    request.setResponseCode(answer.status)
    headers = request.responseHeaders
    headers.removeHeader(b"content-type")
    for name, value in answer.headers:
        headers.addRawHeader(name, value)


def _send(request: Request, answer: HTTPAnswer) -> None:
    _set_head(request, answer)
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(answer.body)])
    request.write(answer.body)
    request.finish()


def _close_after(request: Request) -> None:
    """A draining daemon's 503: the client must not reuse this connection."""
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.persistent = False


class _StreamedAnswer:
    """
    A streamed result on its way to the client: the prelude (if the runtime
    wrote one) read into the status and headers, then every chunk sent as it
    comes (chunked transfer coding). An error before the first byte is a
    502; after it the status is gone, so the connection is cut before the
    final chunk, and the client sees a truncated answer.
    """

    def __init__(self, request: Request, stream: ResponseStream, log: Logger) -> None:
        self._request = request
        self._stream = stream
        self._log = log
        self._prelude = PreludeReader() if stream.content_type == HTTP_INTEGRATION else None
        self._started = False
        self._gone = False
        request.notifyFinish().addErrback(self._hung_up)
        stream.consume(self)

    def _start(self, answer: HTTPAnswer) -> None:
        self._started = True
        _set_head(self._request, answer)
        self._request.registerProducer(self._stream, True)

    def stream_chunk(self, data: bytes) -> None:
        if self._gone:
            return
        if not self._started:
            if self._prelude is None:
                content_type = self._stream.content_type.encode("latin-1")
                self._start(HTTPAnswer(200, [(b"content-type", content_type)]))
            else:
                try:
                    read = self._prelude.feed(data)
                except UnmappableResult as error:
                    self._give_up(str(error))
                    return
                if read is None:
                    return
                answer, data = read
                self._start(answer)
            if not data:
                return
        self._request.write(data)

    def stream_ended(self, result: Result) -> None:
        if self._gone:
            return
        request = self._request
        if not self._started:
            if result.outcome.is_error or (self._prelude is not None and self._prelude.started):
                if not result.outcome.is_error:
                    self._log.warn(
                        "invocation {request_id}: the stream ended inside its prelude: 502",
                        request_id=result.request_id,
                    )
                _send(request, failed_answer())
                return
            # Ended without a byte (a handler that never wrote): 200, empty.
            self._start(HTTPAnswer(200, [(b"content-type", b"application/json")]))
        request.unregisterProducer()
        if result.outcome.is_error:
            self._gone = True
            request.channel.loseConnection()  # no final chunk: the client sees it cut short
            return
        request.finish()

    def _give_up(self, why: str) -> None:
        """A prelude that cannot be read: 502 now, the rest of the stream dropped."""
        self._log.warn("a streamed answer's prelude cannot be read ({why}): 502", why=why)
        self._gone = True
        self._stream.stopProducing()
        _send(self._request, failed_answer())

    def _hung_up(self, _: Failure) -> None:
        """The client went away: the function runs on; its bytes are dropped."""
        self._gone = True
        self._stream.stopProducing()
