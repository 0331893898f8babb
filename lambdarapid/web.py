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
from typing import Any, Callable, ClassVar

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .logs import observer

log = Logger(observer=observer)


#: Seconds an Invoke API connection may sit idle or half-sent before it is closed.
IDLE_CONNECTION_TIMEOUT = 60


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
    An HTTP/1.1 channel that asks the kernel for its local address once per
    connection rather than once per request (twisted.web's Request does).
    """

    _host: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Answers are written whole: never hold one back waiting for an ACK.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host


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


class FastRoutes(Resource):
    """
    A Klein app's resource with its hottest routes served directly.

    Klein's routing and wrapping cost ~60 us a request here, and every
    invocation makes three requests. Subclasses answer the few routes on the
    invocation path in L{fast_route} and leave every other request to the Klein
    resource, which stays the one description of the whole API.
    """

    isLeaf = True

    def __init__(self, fallback: IResource) -> None:
        super().__init__()
        self._fallback = fallback

    def fast_route(self, request: Request) -> Callable[[Request], Any] | None:
        """The handler for C{request} if it is a hot route, else None."""
        raise NotImplementedError()

    def error_body(self, request: Request, error: BaseException) -> bytes | None:
        """Write the status and headers for C{error}; its body, or None if not ours."""
        raise NotImplementedError()

    def render(self, request: Request) -> Any:
        handler = self.fast_route(request)
        if handler is None:
            return self._fallback.render(request)
        try:
            result = handler(request)
        except Exception as error:
            body = self.error_body(request, error)
            if body is None:
                raise
            return body
        if not isinstance(result, Deferred):
            return result
        result.addCallbacks(self._send, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        request.notifyFinish().addErrback(lambda _: result.cancel())
        return NOT_DONE_YET

    @staticmethod
    def _send(body: bytes, request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.write(body)
            request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError):
            return  # the client went away
        assert isinstance(failure.value, Exception)
        body = self.error_body(request, failure.value)
        if body is None:
            log.failure("unexpected error answering {uri}", failure, uri=request.uri)
            request.setResponseCode(500)
            body = b'{"errorMessage": "internal error", "errorType": "ServiceException"}'
        self._send(body, request)
