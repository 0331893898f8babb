"""
One AMQP connection that stays up: pika's TwistedProtocolConnection under a
ClientService.

The broker may be down at start, restart, or close our connection; each time
the service reconnects with backoff and tells its L{AMQPUser}s to set up again
(declare, consume) on the new connection. Users keep working without it
(the daemon keeps serving HTTP; the server answers 503). Each outage is
logged once, saying why: the broker unreachable, a refused login, a refused
vhost.
"""

from __future__ import annotations

import random as _random
from typing import Any, Callable, Protocol

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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
        # Imported only for amqps: the console scripts start without TLS otherwise.
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(parameters.host), endpoint)
    return endpoint


def retry_policy(
    initial: float, maximum: float, random: Callable[[], float] = _random.random
) -> Callable[[int], float]:
    """
    The wait before reconnection attempt C{attempt} (1, 2, ...): C{initial}
    doubling up to C{maximum}, of which a random half to all is waited, so
    that daemons cut off together do not all come back at once, and never
    longer than C{maximum} (the URI's C{retry_delay}), as logged. Twisted's
    C{backoffPolicy} adds its jitter on top of its maximum instead.
    """

    def policy(attempt: int) -> float:
        delay = min(initial * 2.0 ** min(max(attempt - 1, 0), 64), maximum)
        return delay * (0.5 + 0.5 * random())

    return policy


class HandshakeWatcher:
    """
    Reads the frames of the AMQP handshake for the broker's C{connection.close}.

    pika's Twisted adapter fails C{ready} with a bare C{AMQPConnectionError}
    whatever happened, so its reply code and text (C{403 ACCESS_REFUSED}: the
    login; C{530 NOT_ALLOWED}: the vhost) are kept here for the log.
    """

    #: The handshake is a few small frames; past this, stop looking.
    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False
        self.refusal: tuple[int, str] | None = None

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._buffer += data
        while self._buffer:
            try:
                consumed, frame = pika.frame.decode_frame(bytes(self._buffer))
            except Exception:  # not ours to judge: pika reports framing errors
                self.stop()
                return
            if frame is None:
                break
            del self._buffer[:consumed]
            method = getattr(frame, "method", None)
            if isinstance(method, pika.spec.Connection.Close):
                self.refusal = (int(method.reply_code or 0), str(method.reply_text or ""))
                self.stop()
                return
        if len(self._buffer) > self.LIMIT:
            self.stop()

    def stop(self) -> None:
        self.done = True
        self._buffer = bytearray()


def describe_refusal(refusal: tuple[int, str], parameters: pika.ConnectionParameters) -> str:
    """What a broker's refusal to open the connection means, for the log (no password)."""
    code, text = refusal
    where = redacted(parameters)
    user = getattr(parameters.credentials, "username", None)
    if code == 403:
        return (
            f"the AMQP broker at {where} refused the login of user {user!r} ({text}); "
            "check the credentials in AMQP_URI (or AMQP_USERNAME and AMQP_PASSWORD)"
        )
    if code == 530:
        return (
            f"the AMQP broker at {where} refused access to vhost {parameters.virtual_host!r} "
            f"for user {user!r} ({text}); the vhost does not exist, or the user has no "
            "permissions on it"
        )
    return f"the AMQP broker at {where} closed the connection while opening it: {code} {text}"


def _refusal(error: BaseException, watcher: HandshakeWatcher) -> tuple[int, str] | None:
    """The broker's refusal behind a failed C{ready}: seen on the wire, or named by pika."""
    if watcher.refusal is not None:
        return watcher.refusal
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        return (error.reply_code, error.reply_text)
    if isinstance(error, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return (403, str(error))
    if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return (530, str(error))
    return None


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """An endpoint that reports its failed connection attempts (ClientService only retries them)."""

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self._failed(failure)
            return failure

        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(failed)


class _Connection(TwistedProtocolConnection):
    """Tells the service when the transport goes, whatever the reason; watches the handshake."""

    service: AMQPConnectionService

    def __init__(self, parameters: pika.ConnectionParameters, custom_reactor: Any) -> None:
        super().__init__(parameters, custom_reactor=custom_reactor)
        self.handshake = HandshakeWatcher()

    def dataReceived(self, data: bytes) -> None:
        if not self.handshake.done:
            self.handshake.feed(data)
        super().dataReceived(data)

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
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._parameters = parameters
        self._reactor = reactor
        self._users: list[AMQPUser] = []
        self.connection: TwistedProtocolConnection | None = None
        #: The protocol of the connection attempt under way (ClientService makes one at a time).
        self._built: _Connection | None = None
        #: What the current outage was last logged as; None while connected.
        self._outage: object = None
        #: Failed attempts since the users were last set up (see L{_reject}).
        self._failures = 0
        self.retry_delay = max(0.1, float(parameters.retry_delay or 10))
        self._policy = retry_policy(0.5, self.retry_delay, random)
        self._client = ClientService(
            _WatchedEndpoint(endpoint or broker_endpoint(reactor, parameters), self._unreachable),
            Factory.forProtocol(self._build),
            retryPolicy=lambda attempt: self._policy(max(self._failures, 1)),
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
        self._built = connection
        return connection

    def _outage_is(self, kind: object, problem: str, error: bool = False) -> None:
        """Log C{problem} once per outage (and again if its kind changes)."""
        if kind == self._outage:
            return
        self._outage = kind
        emit = self.log.error if error else self.log.warn
        emit("{problem}; retrying within {delay:g} s", problem=problem, delay=self.retry_delay)

    def _unreachable(self, failure: Failure) -> None:
        self._failures += 1
        self._outage_is(
            "unreachable",
            f"cannot reach the AMQP broker at {redacted(self._parameters)} "
            f"({failure.getErrorMessage()})",
        )

    async def _prepare(self, proxy: object) -> None:
        connection = self._built
        assert connection is not None
        try:
            if connection.ready is not None:
                await connection.ready
        except Exception as error:
            refusal = _refusal(error, connection.handshake)
            if refusal is None:
                self._outage_is(
                    "handshake",
                    f"the AMQP handshake with {redacted(self._parameters)} failed ({error!r})",
                )
            else:
                self._outage_is(
                    ("refused", refusal[0]), describe_refusal(refusal, self._parameters), error=True
                )
            self._reject(connection)
            return
        finally:
            connection.handshake.stop()
        try:
            for user in self._users:
                await user.connected(connection)
        except Exception as error:
            self.log.error(
                "AMQP setup failed on {where}: {error}; reconnecting",
                where=redacted(self._parameters),
                error=error,
            )
            self._reject(connection)
            return
        self.connection = connection
        self._failures = 0
        self._outage = None
        self.log.info("connected to the AMQP broker at {where}", where=redacted(self._parameters))

    def _reject(self, connection: _Connection) -> None:
        """
        Close a connection we will not use, and count the failure.

        Not by failing C{prepareConnection}: ClientService then waits to
        retry, and the rejected connection's loss arriving after that has no
        transition in its state machine (automat raises C{NoTransition} into
        the reactor). A rejected connection is one made and lost at once
        instead, which resets ClientService's attempt count: the backoff
        counts C{_failures} itself.
        """
        self._failures += 1
        if connection.is_open:
            connection.close()
        elif connection.transport is not None:
            connection.transport.loseConnection()

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
