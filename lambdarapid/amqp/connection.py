"""
One AMQP connection that stays up: pika's TwistedProtocolConnection under a
ClientService.

The broker may be down at start, restart, or close our connection; each time
the service reconnects with backoff and tells its L{AMQPUser}s to set up again
(declare, consume) on the new connection. Users keep working without it
(the daemon keeps serving HTTP; the server answers 503).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..logs import observer
from .parameters import redacted

_log = Logger(namespace="lambdarapid.amqp.connection", observer=observer)


class AMQPUser(Protocol):
    """Something that uses the connection: sets itself up on each new one."""

    async def connected(self, connection: TwistedProtocolConnection) -> None:
        """Open channels, declare, consume. Failing rejects the connection."""

    def disconnected(self, reason: Failure) -> None:
        """The connection is gone; a new one will follow."""


def reconnect_if_closed(channel: Any, connection: Any, still_wanted: Callable[[], bool]) -> None:
    """
    When the broker closes C{channel} but not the connection (a consumer
    timeout, a refused publish), close the connection too: the service then
    reconnects and every user sets up again from scratch.
    """

    def closed(reason: object) -> None:
        if still_wanted() and connection.is_open:
            _log.warn(
                "the broker closed an AMQP channel ({reason}); reconnecting", reason=reason
            )
            connection.close()

    channel.on_closed.addBoth(closed)


def broker_endpoint(reactor: Any, parameters: pika.ConnectionParameters) -> IStreamClientEndpoint:
    """TCP to the broker, or TLS with certificate and hostname checks for amqps."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, parameters.host, parameters.port, timeout=parameters.socket_timeout or 10
    )
    if parameters.ssl_options is not None:
        endpoint = wrapClientTLS(optionsForClientTLS(parameters.host), endpoint)
    return endpoint


class _Connection(TwistedProtocolConnection):
    """Tells the service when the transport goes, whatever the reason."""

    service: AMQPConnectionService

    def connectionMade(self) -> None:
        super().connectionMade()
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        self.service._lost(self, reason)


class AMQPConnectionService(Service):
    """Keeps one connection to the broker and hands it to its users."""

    log = Logger(observer=observer)

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        reactor: Any,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self._parameters = parameters
        self._reactor = reactor
        self._users: list[AMQPUser] = []
        self.connection: TwistedProtocolConnection | None = None
        retry_delay = max(0.1, float(parameters.retry_delay or 10))
        self._client = ClientService(
            endpoint or broker_endpoint(reactor, parameters),
            Factory.forProtocol(self._build),
            retryPolicy=self._retry_policy(backoffPolicy(0.5, retry_delay, 2.0)),
            clock=reactor,
            prepareConnection=self._prepare,
        )

    @property
    def connected(self) -> bool:
        """Whether the users are set up on a live connection right now."""
        return self.connection is not None

    def add_user(self, user: AMQPUser) -> None:
        self._users.append(user)

    def _build(self) -> _Connection:
        connection = _Connection(self._parameters, custom_reactor=self._reactor)
        connection.service = self
        return connection

    def _retry_policy(self, policy: Any) -> Any:
        def retry(attempt: int) -> float:
            delay: float = policy(attempt)
            if attempt == 1:
                self.log.warn(
                    "cannot reach the AMQP broker at {where}; retrying every {max:.0f} s at most",
                    where=redacted(self._parameters),
                    max=float(self._parameters.retry_delay or 10),
                )
            return delay

        return retry

    async def _prepare(self, proxy: Any) -> None:
        await proxy.ready
        connection = proxy._protocol if hasattr(proxy, "_protocol") else proxy
        try:
            for user in self._users:
                await user.connected(connection)
        except Exception as error:
            self.log.error(
                "AMQP setup failed on {where}: {error}; reconnecting",
                where=redacted(self._parameters),
                error=error,
            )
            connection.close()
            raise
        self.connection = connection
        self.log.info("connected to the AMQP broker at {where}", where=redacted(self._parameters))

    def _lost(self, connection: _Connection, reason: Failure) -> None:
        if self.connection is not connection:
            return
        self.connection = None
        if self.running:
            self.log.warn(
                "lost the AMQP connection ({reason}); reconnecting",
                reason=reason.getErrorMessage(),
            )
        for user in self._users:
            user.disconnected(reason)

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        connection = self.connection
        if connection is not None and connection.is_open:
            connection.close()
        stopped: Deferred[None] = self._client.stopService()
        return stopped
