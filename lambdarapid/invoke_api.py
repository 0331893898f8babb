"""
The Lambda Invoke API, shared by the daemon and the Lambda Server.

It turns C{POST /2015-03-31/functions/{name}/invocations} into an
L{Invocation}, asks its L{IInvoker} (the daemon's pool, or the server's AMQP
client) for the L{Result}, and answers the way botocore expects.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, unquote
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import errors, eventstream
from .config import Function, function_arn
from .invocation import (
    FunctionNotFound,
    IInvoker,
    Invocation,
    InvocationType,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    check_payload,
    decode_client_context,
    new_trace_id,
    payload_limit,
)
from .logs import observer
from .observers import (
    NO_INVOCATIONS,
    STATUS_OUTCOMES,
    SUCCESS,
    THROTTLED,
    TOO_LARGE,
    UNAVAILABLE,
    InvocationObserver,
    RequestObserver,
    result_outcome,
)
from .streams import ResponseStream
from .request_body import read_body

if TYPE_CHECKING:
    from twisted.web.server import Request

_JSON = b"application/json"
_INVOCATION_TYPES = {kind.value: kind for kind in InvocationType}


#: AWS's function name and qualifier patterns (a name alone is at most 64 characters).
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_QUALIFIER = re.compile(r"\$LATEST|[A-Za-z0-9_-]{1,128}")


def split_function_name(raw: str, qualifier: str | None) -> tuple[str, str | None]:
    """
    The function name and qualifier from a name, C{name:qualifier}, a full ARN
    or a partial ARN (C{account:function:name[:qualifier]}).
    """
    parts = raw.split(":")
    if parts[0] == "arn" and len(parts) in (7, 8) and parts[5] == "function":
        name, derived = parts[6], (parts[7] if len(parts) == 8 else None)
    elif len(parts) in (3, 4) and parts[1] == "function":
        name, derived = parts[2], (parts[3] if len(parts) == 4 else None)
    elif len(parts) == 2:
        name, derived = parts
    elif len(parts) == 1:
        name, derived = raw, None
    else:
        raise errors.invalid_parameter(f"Invalid function name: {raw}")
    if not _NAME.fullmatch(name) or (derived and not _QUALIFIER.fullmatch(derived)):
        raise errors.invalid_parameter(f"Invalid function name: {raw[:200]}")
    if qualifier and not _QUALIFIER.fullmatch(qualifier):
        raise errors.invalid_parameter(f"Invalid qualifier: {qualifier[:200]}")
    if derived and qualifier and derived != qualifier:
        raise errors.invalid_parameter(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    return name, derived or qualifier or None


def as_api_error(error: BaseException) -> errors.APIError | None:
    """The AWS error answer for an exception raised while invoking; None if unexpected."""
    if isinstance(error, errors.APIError):
        return error
    if isinstance(error, FunctionNotFound):
        return errors.function_not_found(str(error))
    if isinstance(error, TooManyRequests):
        return errors.too_many_requests()
    if isinstance(error, ServiceUnavailable):
        return errors.service_unavailable(str(error))
    return None


class _Recording:
    """One Invoke API request on its way to its answer, for the server's metrics."""

    __slots__ = ("_observer", "_started", "_reactor", "function", "outcome")

    def __init__(self, observer: RequestObserver, reactor: Any) -> None:
        self._observer = observer
        self._reactor = reactor
        self._started: float = reactor.seconds()
        self.function = ""
        self.outcome: str | None = SUCCESS

    def result(self, result: Result) -> Result:
        self.outcome = result_outcome(result)
        return result

    def failed(self, error: BaseException) -> None:
        if isinstance(error, CancelledError):
            return  # the caller hung up: nothing was answered
        api_error = as_api_error(error)
        self.outcome = STATUS_OUTCOMES.get(api_error.status) if api_error is not None else None
        self.done(None)

    def done(self, answer: Any) -> Any:
        if isinstance(answer, Failure):
            assert answer.value is not None
            self.failed(answer.value)
            return answer
        self._observer.answered(
            self.function, self.outcome, self._reactor.seconds() - self._started
        )
        return answer


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("utf-8", "replace") if value is not None else None


class InvokeAPI:
    """
    The Invoke API over an invoker.

    With a C{function} (the daemon) only that function, under its own name or
    the RIE's C{function}, is served; without one (the server) every name is
    passed on and the invoker decides whether it exists. The invoke route is
    matched by L{invoke_protocol.InvokeAPIProtocol}, and on a connection handed
    to twisted.web by L{invoke_resource.InvokeAPIResource}; L{InvokeRoutes}'
    Klein app holds every other route, and is made (Klein imported) at the
    first such request.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        invoker: IInvoker,
        reactor: Any,
        function: Function | None = None,
        region: str = "us-east-1",
        openfaas: bool = False,
        ready: Callable[[], bool] = lambda: True,
        invocations: InvocationObserver = NO_INVOCATIONS,
        requests: RequestObserver | None = None,
    ) -> None:
        self._invoker = invoker
        #: The daemon's metrics: told the invocations refused to HTTP callers
        #: (413 here, 429 and 503 from the invoker) and the DryRuns answered.
        self._invocations = invocations
        self._counting = invocations is not NO_INVOCATIONS
        #: The server's metrics: told every invoke request's answer (None: no timing at all).
        self._requests = requests
        self._reactor = reactor
        self._function = function
        self._region = function.region if function is not None else region
        self._openfaas = openfaas and function is not None
        self._ready = ready

    def _resolve(self, raw_name: str, qualifier: str | None) -> tuple[str, str, str | None]:
        """The routed name, invoked ARN and qualifier; 404 for another function."""
        name, qualifier = split_function_name(raw_name, qualifier)
        function = self._function
        if function is None:
            return name, function_arn(self._region, name, qualifier), qualifier
        if not function.serves(name, qualifier):
            raise errors.function_not_found(function_arn(self._region, name, qualifier))
        return function.name, function.arn(qualifier), qualifier

    def _invocation(self, request: Request, raw_name: str) -> Invocation:
        """Everything the request says, checked, as an Invocation."""
        raw_qualifier = request.args.get(b"Qualifier")
        qualifier = raw_qualifier[0].decode("utf-8", "replace") if raw_qualifier else None
        name, arn, qualifier = self._resolve(raw_name, qualifier)
        kind_name = _header(request, b"x-amz-invocation-type") or "RequestResponse"
        kind = _INVOCATION_TYPES.get(kind_name)
        if kind is None:
            raise errors.invalid_request_content(f"Invalid invocation type: {kind_name}")
        log_type = _header(request, b"x-amz-log-type") or "None"
        if log_type not in ("None", "Tail"):
            raise errors.invalid_request_content(f"Invalid log type: {log_type}")
        raw_context = request.getHeader(b"x-amz-client-context")
        limit = payload_limit(kind)
        payload = read_body(request, limit)
        if payload is None:
            self._invocations.refused(kind, TOO_LARGE)
            raise errors.request_too_large(limit)
        now: float = self._reactor.seconds()
        return Invocation(
            payload=check_payload(payload, kind),
            function_arn=arn,
            function_name=name,
            qualifier=qualifier,
            invocation_type=kind,
            tail_log=log_type == "Tail",
            client_context=decode_client_context(raw_context) if raw_context else None,
            trace_id=_header(request, b"x-amzn-trace-id") or new_trace_id(now),
            tenant_id=_header(request, b"x-amz-tenant-id"),
            arrived=now,
        )

    def invoke(
        self, request: Request, function_name: str, streaming: bool = False
    ) -> Deferred[bytes | None]:
        """
        C{POST /2015-03-31/functions/{function_name}/invocations}, or with
        C{streaming} C{POST /2021-11-15/functions/{function_name}/response-streaming-invocations}:
        the invoke routes' handler. Fires
        with the body to write, or None once a streamed answer is under way.
        """
        requests = self._requests
        if requests is None:
            return self._invoke(request, function_name, None, streaming)
        recording = _Recording(requests, self._reactor)
        try:
            answer = self._invoke(request, function_name, recording, streaming)
        except Exception as error:
            recording.failed(error)
            raise
        return answer.addBoth(recording.done)

    def _invoke(
        self,
        request: Request,
        function_name: str,
        recording: _Recording | None,
        streaming: bool = False,
    ) -> Deferred[bytes | None]:
        if recording is not None:
            try:  # the routed name, for refusals (413) as for answers
                recording.function = split_function_name(function_name, None)[0]
            except errors.APIError:
                pass
        invocation = self._invocation(request, function_name)
        if streaming:
            if invocation.invocation_type is InvocationType.EVENT:
                raise errors.invalid_request_content(
                    "InvokeWithResponseStream takes RequestResponse or DryRun, not Event"
                )
            invocation.accept_stream = True
        request.responseHeaders.setRawHeaders(
            b"x-amzn-requestid", [invocation.request_id.encode()]
        )
        kind = invocation.invocation_type
        if kind is InvocationType.DRY_RUN:
            checked = self._invoker.dry_run(invocation)
            if self._counting:
                checked.addCallbacks(
                    self._dry_run_answered, self._count_refusal, errbackArgs=(kind,)
                )
            return checked.addCallback(self._empty, request, 204)
        if kind is InvocationType.EVENT:
            accepted = self._invoker.accept_event(invocation)
            if self._counting:
                accepted.addErrback(self._count_refusal, kind)
            return accepted.addCallback(self._empty, request, 202)
        result = self._invoker.invoke(invocation)
        if recording is not None:
            result.addCallback(recording.result)
        if self._counting:
            result.addErrback(self._count_refusal, kind)
        if streaming:
            return result.addCallback(_stream_answer, request)
        return result.addCallback(self._respond, request)

    def _dry_run_answered(self, _: object) -> None:
        self._invocations.dry_run()

    def _count_refusal(self, failure: Failure, kind: InvocationType) -> Failure:
        """An invoker's refusal, about to be answered 429 or 503: counted as such."""
        if failure.check(TooManyRequests):
            self._invocations.refused(kind, THROTTLED)
        elif failure.check(ServiceUnavailable):
            self._invocations.refused(kind, UNAVAILABLE)
        return failure

    def refused_by_channel(self, target: bytes, headers: Any) -> None:
        """
        The HTTP channel answered 413 to a request whose declared body was over
        every limit, before it reached a route: count it if it was an
        invocation of ours (C{target} is its request target, C{headers} its
        C{Headers}).
        """
        path, _, query = target.partition(b"?")
        name = invoke_route_name(path)
        if name is None:
            return
        if self._requests is not None:
            try:
                routed, _ = split_function_name(name, None)
            except errors.APIError:
                return
            self._requests.answered(routed, TOO_LARGE, 0.0)
            return
        kind = _INVOCATION_TYPES.get(
            _header_value(headers, b"x-amz-invocation-type") or "RequestResponse"
        )
        qualifiers = parse_qs(query).get(b"Qualifier")
        qualifier = qualifiers[0].decode("utf-8", "replace") if qualifiers else None
        try:
            self._resolve(name, qualifier)
        except errors.APIError:
            return  # not this function's: a 404 had it been read
        if kind is not None:
            self._invocations.refused(kind, TOO_LARGE)

    # OpenFaaS watchdog emulation (ENABLE_OPENFAAS=true): the routes are
    # InvokeRoutes'; what they do is here.

    def health(self, request: Request) -> bytes:
        """200 while the daemon can serve; 503 while it cannot (draining, broker down)."""
        self._require_openfaas()
        if self._ready():
            return b"OK"
        request.setResponseCode(503)
        _close_after(request)
        return b"Service Unavailable"

    def openfaas_invoke(self, request: Request) -> Deferred[bytes]:
        """The watchdog's function route: the body is the event (any bytes, as the watchdog passes them), the result the body."""
        self._require_openfaas()
        function = self._function
        assert function is not None
        payload = read_body(request, errors.MAX_SYNC_PAYLOAD)
        if payload is None:
            self._invocations.refused(InvocationType.REQUEST_RESPONSE, TOO_LARGE)
            raise errors.request_too_large(errors.MAX_SYNC_PAYLOAD)
        now: float = self._reactor.seconds()
        invocation = Invocation(
            payload=payload or b"{}",
            function_arn=function.arn(),
            function_name=function.name,
            trace_id=_header(request, b"x-amzn-trace-id") or new_trace_id(now),
            arrived=now,
        )
        result = self._invoker.invoke(invocation)
        if self._counting:
            result.addErrback(self._count_refusal, InvocationType.REQUEST_RESPONSE)
        return result.addCallback(self._respond_openfaas, request)

    def _require_openfaas(self) -> None:
        if not self._openfaas:
            raise errors.unknown_operation(404)

    @classmethod
    def _respond_openfaas(cls, result: Result, request: Request) -> bytes:
        body = cls._respond(result, request)
        if result.outcome.is_error:
            request.setResponseCode(500)
        return body

    @staticmethod
    def _empty(_: object, request: Request, status: int) -> bytes:
        request.setResponseCode(status)
        if status != 204:  # a 204 carries no Content-Length (RFC 9110)
            request.responseHeaders.setRawHeaders(b"content-length", [b"0"])
        return b""

    @staticmethod
    def _respond(result: Result, request: Request) -> bytes:
        """The Invoke API answer for C{result}: 200, the body, botocore's headers."""
        headers = request.responseHeaders
        content_type = result.content_type.encode("latin-1") if result.content_type else _JSON
        headers.setRawHeaders(b"content-type", [content_type])
        headers.setRawHeaders(b"x-amz-executed-version", [result.executed_version.encode()])
        function_error = result.function_error
        if function_error is not None:
            headers.setRawHeaders(b"x-amz-function-error", [function_error.encode()])
        if result.log_tail:
            headers.setRawHeaders(b"x-amz-log-result", [base64.b64encode(result.log_tail)])
        headers.setRawHeaders(b"content-length", [b"%d" % len(result.body)])
        return result.body

    def error_answer_for(self, failure: Failure, request: Any) -> bytes | None:
        """L{error_answer}, its arguments in errback order."""
        return self.error_answer(request, failure)

    def error_answer(self, request: Any, failure: Failure) -> bytes | None:
        """
        The one place an exception becomes an Invoke API answer: its status,
        headers and the body to write; None when the caller went away. An
        unexpected exception is logged and answered C{500 ServiceException}.
        """
        if failure.check(CancelledError):
            return None
        assert failure.value is not None
        error = as_api_error(failure.value)
        if error is None:
            self.log.failure("unexpected error answering {uri}", failure, uri=request.uri)
            error = errors.internal_error()
        request.setResponseCode(error.status)
        headers = request.responseHeaders
        headers.setRawHeaders(b"content-type", [_JSON])
        headers.setRawHeaders(b"x-amzn-errortype", [error.error_type.encode()])
        for name, value in error.headers.items():
            headers.setRawHeaders(name.encode(), [value.encode()])
        headers.setRawHeaders(b"content-length", [b"%d" % len(error.body)])
        if error.status == 503:
            _close_after(request)
        return error.body


def _stream_answer(result: Result, request: Request) -> None:
    """
    InvokeWithResponseStream's answer: 200 with the function's content type,
    then an event stream, one event per HTTP chunk (botocore reads each chunk
    as it lands): the runtime's bytes as PayloadChunks, then InvokeComplete.
    A buffered function's one payload is streamed as it is.
    """
    headers = request.responseHeaders
    stream = result.stream
    content_type = stream.content_type if stream is not None else result.content_type
    content_type = content_type or "application/json"
    headers.setRawHeaders(b"content-type", [content_type.encode("latin-1")])
    headers.setRawHeaders(b"x-amz-executed-version", [result.executed_version.encode()])
    if stream is not None:
        _EventStreamWriter(request, stream)
        return None
    if not result.outcome.is_error:
        for event in eventstream.payload_chunks(result.body):
            request.write(event)
    request.write(eventstream.completed(result))
    request.finish()
    return None


class _EventStreamWriter:
    """A stream's consumer writing it to one InvokeWithResponseStream caller."""

    def __init__(self, request: Request, stream: ResponseStream) -> None:
        self._request = request
        self._stream = stream
        self._gone = False
        request.notifyFinish().addErrback(self._hung_up)
        request.registerProducer(stream, True)
        stream.consume(self)

    def stream_chunk(self, data: bytes) -> None:
        if not self._gone:
            for event in eventstream.payload_chunks(data):
                self._request.write(event)

    def stream_ended(self, result: Result) -> None:
        if self._gone:
            return
        request = self._request
        request.unregisterProducer()
        request.write(eventstream.completed(result))
        request.finish()

    def _hung_up(self, _: Failure) -> None:
        """The caller went away mid-stream: the function runs on; its bytes are dropped."""
        self._gone = True
        self._stream.stopProducing()


def _close_after(request: Any) -> None:
    """
    End the connection once C{request} is answered: a 503 means this server
    is going (draining) or cannot serve, and a client reusing the connection
    would send its next request to a server about to exit. twisted.web closes
    a channel that is not persistent after its answer; the header alone does not.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.persistent = False


_FUNCTIONS = b"/2015-03-31/functions/"
_INVOCATIONS = b"/invocations"


def route_name(path: bytes, prefix: bytes, suffix: bytes) -> str | None:
    """The unquoted name between C{prefix} and C{suffix} in C{path}; None if it is not there."""
    if not (
        path.startswith(prefix)
        and path.endswith(suffix)
        and len(path) > len(prefix) + len(suffix)
    ):
        return None
    return unquote(path[len(prefix) : -len(suffix)].decode("utf-8", "replace"))


def invoke_route_name(path: bytes) -> str | None:
    """The function name in an invoke route's path; None for any other path."""
    return route_name(path, _FUNCTIONS, _INVOCATIONS)


def _header_value(headers: Any, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0].decode("utf-8", "replace") if values else None
