"""
The Invoke API on twisted.web, for what its own connections hand over.

L{invoke_protocol.InvokeAPIProtocol} serves well-formed invoke requests
itself; a connection that sends anything else (another route, chunked or
C{Expect}, a framing error, an oversized body, InvokeWithResponseStream) is
handed to the L{QuietSite} made here, at the first such connection, so that
twisted.web is imported only by a daemon that is sent one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import errors
from .invoke_api import InvokeAPI, invoke_route_name, route_name
from .web import QuietSite, bounded_request

_STREAM_FUNCTIONS = b"/2021-11-15/functions/"
_STREAM_INVOCATIONS = b"/response-streaming-invocations"
_INVOKE_METHODS = [b"POST"]


def _stream_route_name(path: bytes) -> str | None:
    """The function name in InvokeWithResponseStream's path; None for any other path."""
    return route_name(path, _STREAM_FUNCTIONS, _STREAM_INVOCATIONS)


def invoke_site(api: InvokeAPI, clock: Any) -> QuietSite:
    """The twisted.web site of the Invoke API's handed-over connections."""
    return QuietSite(InvokeAPIResource(api), bounded_request(errors.MAX_SYNC_PAYLOAD), clock)


class InvokeAPIResource(Resource):
    """
    The Invoke API as served: the invoke route, on every invocation's path, is
    matched here, since Klein's routing costs ~60 us a request; every other
    request goes to L{InvokeRoutes}' Klein app. Errors of both reach
    L{InvokeAPI.error_answer}.
    """

    isLeaf = True

    def __init__(self, api: InvokeAPI) -> None:
        super().__init__()
        self._api = api
        self._app: Resource | None = None

    def _routes(self) -> Resource:
        """The Klein app of every other route, made at the first request for one."""
        if self._app is None:
            from .invoke_routes import InvokeRoutes

            self._app = InvokeRoutes(self._api).app.resource()
        return self._app

    def refused(self, target: bytes, headers: Any) -> None:
        """What L{QuietSite} calls when its channel answers 413 before any route."""
        self._api.refused_by_channel(target, headers)

    def render(self, request: Request) -> Any:
        path = request.path
        name = invoke_route_name(path)
        streaming = False
        if name is None and path.startswith(_STREAM_FUNCTIONS):
            name, streaming = _stream_route_name(path), True
        if name is None:
            return self._routes().render(request)
        try:
            if request.method not in _INVOKE_METHODS:
                raise errors.invoke_method_not_allowed(["POST"])
            answer = self._api.invoke(request, name, streaming)
        except Exception:
            return self._api.error_answer(request, Failure()) or b""
        # Fires early only if the caller hangs up; the invoker ignores the
        # cancel: the invocation runs on, as on AWS.
        finished = request.notifyFinish()
        finished.addErrback(lambda _: answer.cancel())
        answer.addErrback(self._api.error_answer_for, request)
        answer.addCallback(self._write, request, finished)
        return NOT_DONE_YET

    @staticmethod
    def _write(body: bytes | None, request: Request, finished: Deferred[None]) -> None:
        if body is not None and not finished.called:
            request.write(body)
            request.finish()
