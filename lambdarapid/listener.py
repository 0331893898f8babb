"""
Listening: a service that holds one port while it runs and can hang up the
connections it accepted. It knows nothing of HTTP, so a program whose
listeners serve their own protocols (the Invoke API's and the Runtime API's)
starts without importing twisted.web.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from .logs import observer

#: Seconds an Invoke API connection may sit idle or half-sent before it is closed.
IDLE_CONNECTION_TIMEOUT = 60


class _RecordingFactory(Factory):
    """Hands out the real factory's protocols, remembering each connection's."""

    def __init__(self, factory: Any, name: str) -> None:
        self._factory = factory
        self._name = name
        self.protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def logPrefix(self) -> str:
        """What Twisted's port says it is starting: "Invoke API starting on 8080"."""
        return self._name

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
        self._factory = _RecordingFactory(factory, name)
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
        if self.listening.called:  # a restart listens anew
            self.listening = Deferred()
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
