"""
The Lambda Runtime API, served to one runtime process.

One L{RuntimeAPI} is bound to one execution environment and listens on that
environment's own loopback port, so every call is known to come from it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from . import errors
from .invocation import Invocation, Outcome
from .web import FastRoutes, read_body

if TYPE_CHECKING:
    from .environment import ExecutionEnvironment

_JSON = b"application/json"
_ERROR_TYPE = b"lambda-runtime-function-error-type"
_RESPONSE_MODE = b"lambda-runtime-function-response-mode"
_RESPONSE_MODES = (b"buffered", b"streaming")


def _body(request: Request) -> bytes | None:
    """The request's body; None if it is over the 6 MB a runtime may post."""
    return read_body(request, errors.MAX_RUNTIME_RESPONSE)


def _error_document(request: Request, body: bytes) -> tuple[str | None, bytes]:
    """The error type header and the body, built from the header when empty."""
    raw_type = request.getHeader(_ERROR_TYPE)
    error_type = raw_type.decode("utf-8", "replace") if raw_type else None
    if not body.strip():
        body = json.dumps(
            {"errorMessage": error_type or "Unknown error", "errorType": error_type or "Unknown"}
        ).encode()
    return error_type, body


class RuntimeAPI:
    """next / response / error / init-error for one environment."""

    app = Klein()

    def __init__(self, environment: ExecutionEnvironment) -> None:
        self._environment = environment

    @app.route("/2018-06-01/runtime/invocation/next", methods=["GET"])
    def next_invocation(self, request: Request) -> Deferred[bytes]:
        waiting = self._environment.next_invocation()
        return waiting.addCallback(self._send_event, request)

    @staticmethod
    def _send_event(invocation: Invocation, request: Request) -> bytes:
        set_header = request.responseHeaders.setRawHeaders
        set_header(b"content-type", [_JSON])
        set_header(b"lambda-runtime-aws-request-id", [invocation.request_id.encode()])
        set_header(
            b"lambda-runtime-deadline-ms", [b"%d" % int((invocation.deadline or 0) * 1000)]
        )
        set_header(b"lambda-runtime-invoked-function-arn", [invocation.function_arn.encode()])
        if invocation.trace_id:
            set_header(b"lambda-runtime-trace-id", [invocation.trace_id.encode()])
        if invocation.client_context:
            set_header(b"lambda-runtime-client-context", [invocation.client_context.encode()])
        if invocation.cognito_identity:
            set_header(
                b"lambda-runtime-cognito-identity", [invocation.cognito_identity.encode()]
            )
        if invocation.tenant_id:
            set_header(b"lambda-runtime-aws-tenant-id", [invocation.tenant_id.encode()])
        set_header(b"content-length", [b"%d" % len(invocation.payload)])
        return invocation.payload

    @app.route("/2018-06-01/runtime/invocation/<request_id>/response", methods=["POST"])
    def invocation_response(self, request: Request, request_id: str) -> bytes:
        mode = request.getHeader(_RESPONSE_MODE)
        if mode is not None and mode.lower() not in _RESPONSE_MODES:
            raise errors.invalid_response_mode(mode.decode("utf-8", "replace"))
        body = _body(request)
        if body is None:
            self._environment.answer(
                request_id,
                Outcome.FUNCTION_ERROR,
                errors.RESPONSE_TOO_LARGE,
                "Function.ResponseSizeTooLarge",
            )
            raise errors.entity_too_large()
        self._environment.answer(request_id, Outcome.SUCCESS, body)
        return self._accepted(request)

    @app.route("/2018-06-01/runtime/invocation/<request_id>/error", methods=["POST"])
    def invocation_error(self, request: Request, request_id: str) -> bytes:
        body = _body(request)
        if body is None:
            raise errors.entity_too_large()
        error_type, body = _error_document(request, body)
        self._environment.answer(request_id, Outcome.FUNCTION_ERROR, body, error_type)
        return self._accepted(request)

    @app.route("/2018-06-01/runtime/init/error", methods=["POST"])
    def init_error(self, request: Request) -> bytes:
        body = _body(request)
        if body is None:
            raise errors.entity_too_large()
        error_type, body = _error_document(request, body)
        self._environment.init_failed(error_type, body)
        return self._accepted(request)

    @staticmethod
    def _accepted(request: Request) -> bytes:
        request.setResponseCode(202)
        request.responseHeaders.setRawHeaders(b"content-type", [_JSON])
        request.responseHeaders.setRawHeaders(b"content-length", [b"15"])
        return errors.ACCEPTED

    @app.handle_errors(errors.APIError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, errors.APIError) and isinstance(request, Request)
        return _error_response(request, error)


def _error_response(request: Request, error: errors.APIError) -> bytes:
    """Status and headers for C{error}; its JSON body."""
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(b"content-type", [_JSON])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(error.body)])
    return error.body


_NEXT = b"/2018-06-01/runtime/invocation/next"
_INVOCATION = b"/2018-06-01/runtime/invocation/"
_RESPONSE = b"/response"


class RuntimeAPIResource(FastRoutes):
    """L{RuntimeAPI} with C{next} and C{response}, two of every invocation's three requests, served directly."""

    def __init__(self, api: RuntimeAPI) -> None:
        super().__init__(api.app.resource())
        self._api = api

    def fast_route(self, request: Request) -> Callable[[Request], Any] | None:
        path = request.path
        if path == _NEXT and request.method == b"GET":
            return self._api.next_invocation
        if (
            path.endswith(_RESPONSE)
            and path.startswith(_INVOCATION)
            and request.method == b"POST"
        ):
            return self._response
        return None

    def _response(self, request: Request) -> bytes:
        request_id = request.path[len(_INVOCATION) : -len(_RESPONSE)].decode("utf-8", "replace")
        return self._api.invocation_response(request, request_id)

    def error_body(self, request: Request, error: BaseException) -> bytes | None:
        if isinstance(error, errors.APIError):
            return _error_response(request, error)
        return None


def runtime_api_resource(environment: ExecutionEnvironment) -> RuntimeAPIResource:
    """The Runtime API for C{environment}, as served."""
    return RuntimeAPIResource(RuntimeAPI(environment))
