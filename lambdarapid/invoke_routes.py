"""
The Invoke API's routes other than the invoke routes, as a Klein app.

The invoke routes are matched below Klein (L{InvokeAPIResource}); these
(the OpenFaaS watchdog's, and the 404s and 405s of every other path) are
the API's declaration, made at the first request that needs them, so that
a daemon that only ever invokes never imports Klein and werkzeug.
"""

from __future__ import annotations

from klein import Klein
from werkzeug.exceptions import MethodNotAllowed, NotFound
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from . import errors
from .invoke_api import InvokeAPI


class InvokeRoutes:
    """The Klein app over one L{InvokeAPI}."""

    app = Klein()

    def __init__(self, api: InvokeAPI) -> None:
        self._api = api

    @app.route("/_/health", methods=["GET"])
    @app.route("/_/ready", methods=["GET"])
    def health(self, request: Request) -> bytes:
        """The OpenFaaS watchdog's health and readiness (ENABLE_OPENFAAS=true)."""
        return self._api.health(request)

    @app.route("/")
    def openfaas_invoke(self, request: Request) -> Deferred[bytes]:
        """The OpenFaaS watchdog's function route: any method on / invokes."""
        return self._api.openfaas_invoke(request)

    @app.handle_errors(Exception)
    def _app_error(self, request: IRequest, failure: Failure) -> bytes | None:
        """Klein's routing and route errors, answered by the one error path."""
        if failure.check(NotFound):
            failure = Failure(errors.unknown_operation(404))
        elif failure.check(MethodNotAllowed):
            assert isinstance(failure.value, MethodNotAllowed)
            allowed = sorted(failure.value.valid_methods or ())
            failure = Failure(errors.invoke_method_not_allowed(allowed))
        return self._api.error_answer(request, failure)
