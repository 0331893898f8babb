"""
The cold routes of an environment's Runtime API port, as a Klein app.

Extensions register, report errors and subscribe to telemetry once per
Init, and a runtime reports an init error at most once: none of it is on an
invocation's path, so it is served by Klein (rendered through
L{lambdarapid.web_bridge} on the fast protocol's connection), and only
C{next}, C{response}, C{error} and the extensions' C{event/next} stay below
twisted.web.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.web.iweb import IRequest

from . import errors
from .runtime_api import (
    EXTENSION_EXIT_ERROR,
    EXTENSION_INIT_ERROR,
    LOGS,
    REGISTER,
    RUNTIME_INIT_ERROR,
    TELEMETRY,
)

if TYPE_CHECKING:
    from .environment import ExecutionEnvironment


_IDENTIFIER = b"Lambda-Extension-Identifier"
_FUNCTION_ERROR_TYPE = b"Lambda-Extension-Function-Error-Type"


def _answer(request: IRequest, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return body


def _require(request: IRequest, method: bytes) -> None:
    if request.method != method:
        raise errors.runtime_method_not_allowed(method.decode())


def _header(request: IRequest, name: bytes) -> bytes | None:
    value = request.getHeader(name)
    return value if isinstance(value, bytes) or value is None else value.encode()


def _body(request: IRequest) -> bytes:
    return request.content.read() if request.content is not None else b""


class ColdRoutes:
    """The Extensions, Telemetry and Logs APIs, and the runtime's init/error, of one environment."""

    app = Klein()

    def __init__(self, environment: ExecutionEnvironment) -> None:
        self._environment = environment

    @app.handle_errors(errors.APIError)
    def api_error(self, request: IRequest, failure: Any) -> bytes:
        error: errors.APIError = failure.value
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return _answer(request, error.status, error.body)

    @app.route(REGISTER.decode(), branch=False)
    def register(self, request: IRequest) -> bytes:
        _require(request, b"POST")
        name = _header(request, b"Lambda-Extension-Name")
        features = (_header(request, b"Lambda-Extension-Accept-Feature") or b"").decode()
        identifier, document = self._environment.register_extension(
            name.decode("utf-8", "replace") if name else None,
            _body(request),
            account="accountId" in (each.strip() for each in features.split(",")),
        )
        request.setHeader(b"Lambda-Extension-Identifier", identifier.encode())
        return _answer(request, 200, json.dumps(document).encode())

    @app.route(EXTENSION_INIT_ERROR.decode(), branch=False)
    def extension_init_error(self, request: IRequest) -> bytes:
        return self._extension_error(request, exiting=False)

    @app.route(EXTENSION_EXIT_ERROR.decode(), branch=False)
    def extension_exit_error(self, request: IRequest) -> bytes:
        return self._extension_error(request, exiting=True)

    def _extension_error(self, request: IRequest, exiting: bool) -> bytes:
        _require(request, b"POST")
        error_type = _header(request, _FUNCTION_ERROR_TYPE)
        self._environment.extension_error(
            _header(request, _IDENTIFIER),
            error_type.decode("utf-8", "replace") if error_type else None,
            exiting,
        )
        return _answer(request, 202, errors.ACCEPTED)

    @app.route(TELEMETRY.decode(), branch=False)
    def telemetry(self, request: IRequest) -> bytes:
        return self._subscribe(request, "telemetry")

    @app.route(LOGS.decode(), branch=False)
    def logs(self, request: IRequest) -> bytes:
        return self._subscribe(request, "logs")

    def _subscribe(self, request: IRequest, api: str) -> bytes:
        _require(request, b"PUT")
        self._environment.subscribe(api, _header(request, _IDENTIFIER), _body(request))
        return _answer(request, 200, errors.SUBSCRIBED)

    @app.route(RUNTIME_INIT_ERROR.decode(), branch=False)
    def runtime_init_error(self, request: IRequest) -> bytes:
        _require(request, b"POST")
        raw_type = _header(request, b"Lambda-Runtime-Function-Error-Type")
        error_type = raw_type.decode("utf-8", "replace") if raw_type else None
        self._environment.init_failed(error_type, errors.error_document(error_type, _body(request)))
        return _answer(request, 202, errors.ACCEPTED)
