"""
The Telemetry API and the Logs API of one execution environment.

Its extensions subscribe during Init; from then on every platform event and
log line of the environment is batched per subscriber and delivered to the
subscriber's own listener (HTTP POST of a JSON array, or NDJSON over TCP).
A subscriber that is slow or gone never holds more than twice its
C{maxBytes} in memory: what does not fit is dropped, counted, and reported
to it later as C{platform.logsDropped}, as Lambda does.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import urlsplit

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IConsumer, IDelayedCall, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

if TYPE_CHECKING:
    from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from . import errors
from .config import Function
from .logs import iso_time, observer

TELEMETRY_SCHEMAS = ("2022-07-01", "2022-12-13", "2025-01-29")
LOGS_SCHEMAS = ("2020-08-15", "2021-03-18")
TYPES = ("platform", "function", "extension")
#: Destination hosts that name the environment itself (SAM-local samples use 0.0.0.0).
SANDBOX_HOSTS = ("sandbox.localdomain", "sandbox", "localhost", "127.0.0.1", "0.0.0.0")
#: C{buffering} settings: (lowest, highest, default).
BUFFERING = {
    "maxItems": (1_000, 10_000, 10_000),
    "maxBytes": (262_144, 1_048_576, 262_144),
    "timeoutMs": (25, 30_000, 1_000),
}
#: What is kept of Init for subscribers still to come.
BACKLOG_ITEMS = 1_000
BACKLOG_BYTES = 1_048_576
#: One delivery's limit, and the retry delays after a failed one.
DELIVERY_TIMEOUT = 5.0
FIRST_RETRY = 0.1
LAST_RETRY = 5.0
DROPPED_REASON = "Some logs were dropped because the subscriber could not keep up"

_LOGS_EVENTS_2020 = frozenset(
    {
        "platform.start",
        "platform.end",
        "platform.report",
        "platform.fault",
        "platform.extension",
        "platform.logsSubscription",
        "platform.logsDropped",
    }
)


@dataclass(frozen=True)
class Event:
    """One event of the environment, before any subscriber's encoding."""

    time: str
    type: str
    record: Any

    @property
    def family(self) -> str:
        """What a subscription's C{types} names it: platform, function or extension."""
        return "platform" if self.type.startswith("platform.") else self.type

    def encode(self) -> bytes:
        """The event as its subscribers read it; what JSON cannot say is written as text."""
        document = {"time": self.time, "type": self.type, "record": self.record}
        try:
            return orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # integers past 64 bits, for one
            return json.dumps(document, default=str).encode()


def logs_api_events(event: Event, schema: str) -> list[Event]:
    """
    What a Logs API subscriber gets for C{event}: the older record shapes,
    C{platform.end} before each report, and none of Telemetry's own events.
    """
    record = event.record if isinstance(event.record, dict) else {}
    kind = event.type
    if event.family != "platform":
        return [event]
    if kind == "platform.start":
        return [Event(event.time, kind, {"requestId": record.get("requestId")})]
    if kind == "platform.report":
        request = {"requestId": record.get("requestId")}
        return [
            Event(event.time, "platform.end", request),
            Event(event.time, kind, {**request, "metrics": record.get("metrics", {})}),
        ]
    if kind == "platform.runtimeDone":
        if schema != "2021-03-18":
            return []
        done = {"requestId": record.get("requestId"), "status": record.get("status")}
        return [Event(event.time, kind, done)]
    if kind == "platform.telemetrySubscription":
        return [Event(event.time, "platform.logsSubscription", event.record)]
    return [event] if kind in _LOGS_EVENTS_2020 else []


@dataclass(frozen=True)
class Subscription:
    """A validated subscription body."""

    api: str
    extension: str
    schema: str
    types: tuple[str, ...]
    max_items: int
    max_bytes: int
    timeout: float
    #: C{("HTTP", uri)} with the host mapped to loopback, or C{("TCP", port)}.
    protocol: str
    uri: bytes = b""
    host: bytes = b""
    port: int = 0

    @property
    def view(self) -> str:
        """Which encoding of the events this subscriber reads (one per API and schema)."""
        return "telemetry" if self.api == "telemetry" else self.schema

    def events(self, event: Event) -> list[Event]:
        """C{event} as this subscriber receives it, or nothing if it did not ask for it."""
        return self.translate(event) if event.family in self.types else []

    def translate(self, event: Event) -> list[Event]:
        """C{event} in this subscriber's API and schema, whatever its types."""
        return [event] if self.api == "telemetry" else logs_api_events(event, self.schema)

    def describe(self) -> str:
        if self.protocol == "TCP":
            return f"tcp:127.0.0.1:{self.port}"
        return self.uri.decode()


def parse_subscription(api: str, extension: str, body: bytes) -> Subscription:
    """A subscription from a request body, or the 400 that says what is wrong with it."""

    def invalid(message: str) -> errors.APIError:
        return errors.subscription_invalid(api, message)

    try:
        document = json.loads(body)
    except ValueError as e:
        raise invalid(f"The subscription body is not valid JSON: {e}")
    if not isinstance(document, dict):
        raise invalid("The subscription body must be a JSON object")

    schemas = TELEMETRY_SCHEMAS if api == "telemetry" else LOGS_SCHEMAS
    schema = document.get("schemaVersion", None if api == "telemetry" else LOGS_SCHEMAS[0])
    if not isinstance(schema, str) or schema not in schemas:
        raise invalid(f"schemaVersion must be one of {', '.join(schemas)}, not {schema!r}")

    types = document.get("types")
    if not isinstance(types, list) or not types:
        raise invalid(f"types must be a non-empty list of {', '.join(TYPES)}")
    for name in types:
        if name not in TYPES:
            raise invalid(f"Unknown type {name!r} in types: expected {', '.join(TYPES)}")

    buffering = document.get("buffering", {})
    if buffering is None:
        buffering = {}
    if not isinstance(buffering, dict):
        raise invalid("buffering must be an object")
    limits = {}
    for key, (lowest, highest, default) in BUFFERING.items():
        value = buffering.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise invalid(
                f"buffering.{key} must be an integer from {lowest} to {highest}, not {value!r}"
            )
        limits[key] = value

    destination = document.get("destination")
    if not isinstance(destination, dict):
        raise invalid(
            "destination must be an object with protocol HTTP and a URI, or TCP and a port"
        )
    protocol = destination.get("protocol")
    uri = host = b""
    port = 0
    if protocol == "HTTP":
        uri, host = _sandbox_uri(destination.get("URI"), invalid)
    elif protocol == "TCP":
        number = destination.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise invalid(f"destination.port must be a TCP port number, not {number!r}")
        port = number
    else:
        raise invalid(f"destination.protocol must be HTTP or TCP, not {protocol!r}")
    return Subscription(
        api=api,
        extension=extension,
        schema=schema,
        types=tuple(dict.fromkeys(types)),
        max_items=limits["maxItems"],
        max_bytes=limits["maxBytes"],
        timeout=limits["timeoutMs"] / 1000,
        protocol=protocol,
        uri=uri,
        host=host,
        port=port,
    )


def _sandbox_uri(uri: object, invalid: Callable[[str], errors.APIError]) -> tuple[bytes, bytes]:
    """
    The loopback URI a destination inside the sandbox names, and its Host
    header: the listener is in this environment whatever name it used.
    """
    if not isinstance(uri, str):
        raise invalid("destination.URI must be a string")
    try:
        parts = urlsplit(uri)
        port = parts.port or 80
    except ValueError:
        raise invalid(f"destination.URI is not a valid URI: {uri!r}")
    if parts.scheme.lower() != "http":
        raise invalid(f"destination.URI must be an http:// URI (no HTTPS), not {uri!r}")
    host = parts.hostname or ""
    if host not in SANDBOX_HOSTS:
        raise invalid(
            f"destination.URI host {host!r} is outside the sandbox: "
            f"use one of {', '.join(SANDBOX_HOSTS)}"
        )
    target = f"http://127.0.0.1:{port}{parts.path or '/'}"
    if parts.query:
        target += "?" + parts.query
    return target.encode(), parts.netloc.rpartition("@")[2].encode()


@implementer(IBodyProducer)
class _BytesProducer:
    """A body already in memory (FileBodyProducer would use the global reactor's cooperator)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Refused(Exception):
    """The listener answered, but not with a 2xx."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")


class _LineSender(Protocol):
    """The TCP destination's connection: NDJSON out, nothing read."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class _Subscriber:
    """
    One subscription's queue and its deliveries: one batch in flight at a
    time, so events arrive in order, and the same batch resent until the
    listener takes it.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: Any,
        agent: IAgent,
        subscription: Subscription,
        on_idle: Callable[[], None],
    ) -> None:
        self._reactor = reactor
        self._agent = agent
        self.subscription = subscription
        self._on_idle = on_idle
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._in_flight: list[bytes] | None = None
        self._delivery: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._retry: IDelayedCall | None = None
        self._backoff = FIRST_RETRY
        self._failing = False
        self._due = False
        self._dropped_records = 0
        self._dropped_bytes = 0
        self._connection: _LineSender | None = None

    @property
    def idle(self) -> bool:
        return not self._queue and self._in_flight is None

    @property
    def buffered_bytes(self) -> int:
        """What waits in the queue, not counting the batch in flight."""
        return self._queued_bytes

    def offer(self, encoded: Iterable[bytes]) -> None:
        """Queue events, or count them as dropped while the queue is full."""
        limit = 2 * self.subscription.max_bytes
        for data in encoded:
            if self._dropped_records:
                notice = self._dropped_notice()
                if self._queued_bytes + len(notice) + len(data) > limit:
                    self._drop(data)
                    continue
                self._dropped_records = self._dropped_bytes = 0
                self._append(notice)
            elif self._queued_bytes + len(data) > limit:
                self._drop(data)
                continue
            self._append(data)
        self._pump()

    def flush(self, retry_now: bool = False) -> None:
        """
        Send everything queued now, without waiting for the limits or the
        timer; at shutdown (C{retry_now}) a failed batch does not wait out its backoff either.
        """
        self._due = True
        if retry_now and self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            self._deliver()
        self._pump()

    def replace(self, subscription: Subscription) -> None:
        """New settings from a repeated subscription; a TCP connection elsewhere is dropped."""
        old, self.subscription = self.subscription, subscription
        if self._connection is not None and (subscription.protocol, subscription.port) != (
            old.protocol,
            old.port,
        ):
            transport = self._connection.transport
            self._connection = None
            if transport is not None:
                transport.loseConnection()

    def close(self) -> Deferred[None]:
        """Give up: cancel timers and the delivery in flight, close the TCP connection."""
        for call in (self._timer, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._retry = None
        self._queue.clear()
        self._queued_bytes = 0
        self._in_flight = None
        if self._delivery is not None:
            self._delivery.cancel()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            transport: ITransport | None = connection.transport
            if transport is not None:
                transport.loseConnection()
                return connection.lost
        return succeed(None)

    def _append(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)

    def _drop(self, data: bytes) -> None:
        if not self._dropped_records:
            self.log.warn(
                "telemetry subscriber {extension} cannot keep up: dropping events",
                extension=self.subscription.extension,
            )
        self._dropped_records += 1
        self._dropped_bytes += len(data)

    def _dropped_notice(self) -> bytes:
        record = {
            "droppedBytes": self._dropped_bytes,
            "droppedRecords": self._dropped_records,
            "reason": DROPPED_REASON,
        }
        return Event(iso_time(self._reactor.seconds()), "platform.logsDropped", record).encode()

    def _ready(self) -> bool:
        subscription = self.subscription
        return (
            self._due
            or len(self._queue) >= subscription.max_items
            or self._queued_bytes >= subscription.max_bytes
        )

    def _pump(self) -> None:
        """Send the next batch if one is due and nothing is in flight; else keep the timer."""
        if not self._queue:
            return
        if not self._ready():
            # The clock runs from the first event queued, even behind a batch in flight.
            if self._timer is None:
                self._timer = self._reactor.callLater(self.subscription.timeout, self._timed_out)
            return
        if self._in_flight is not None:
            return
        batch: list[bytes] = []
        size = 0
        while self._queue and len(batch) < self.subscription.max_items:
            if batch and size >= self.subscription.max_bytes:
                break
            data = self._queue.popleft()
            batch.append(data)
            size += len(data)
        self._queued_bytes -= size
        if not self._queue:
            self._due = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._in_flight = batch
        self._deliver()

    def _timed_out(self) -> None:
        self._timer = None
        self._due = True
        self._pump()

    def _deliver(self) -> None:
        assert self._in_flight is not None
        self._retry = None
        if self.subscription.protocol == "TCP":
            sending = Deferred.fromCoroutine(self._write_lines(self._in_flight))
        else:
            sending = Deferred.fromCoroutine(self._post(self._in_flight))
        sending.addTimeout(DELIVERY_TIMEOUT, self._reactor)
        self._delivery = sending
        sending.addCallbacks(self._delivered, self._failed)

    async def _post(self, batch: list[bytes]) -> None:
        headers = Headers(
            {b"Content-Type": [b"application/json"], b"Host": [self.subscription.host]}
        )
        body = b"[" + b",".join(batch) + b"]"
        response = await self._agent.request(
            b"POST", self.subscription.uri, headers, _BytesProducer(body)
        )
        # Read the answer to its end so that the pool can reuse the connection.
        from twisted.web.client import readBody

        await readBody(response)
        if not 200 <= response.code < 300:
            raise _Refused(response.code)

    async def _write_lines(self, batch: list[bytes]) -> None:
        if self._connection is None:
            endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self.subscription.port)
            connection = await endpoint.connect(Factory.forProtocol(_LineSender))
            assert isinstance(connection, _LineSender)
            connection.lost.addCallback(self._disconnected, connection)
            self._connection = connection
        assert self._connection.transport is not None
        self._connection.transport.write(b"\n".join(batch) + b"\n")

    def _disconnected(self, _: None, connection: _LineSender) -> None:
        if self._connection is connection:
            self._connection = None

    def _delivered(self, _: None) -> None:
        self._delivery = None
        if self._in_flight is None:
            return  # closed meanwhile
        self._in_flight = None
        self._backoff = FIRST_RETRY
        if self._failing:
            self._failing = False
            self.log.info(
                "telemetry delivery to {extension} works again",
                extension=self.subscription.extension,
            )
        self._pump()
        if self.idle:
            self._on_idle()

    def _failed(self, failure: Failure) -> None:
        self._delivery = None
        if self._in_flight is None:
            return  # closed meanwhile
        if not self._failing:
            self._failing = True
            self.log.warn(
                "telemetry delivery to {extension} at {destination} failed, retrying: {reason}",
                extension=self.subscription.extension,
                destination=self.subscription.describe(),
                reason=failure.getErrorMessage() or repr(failure.value),
            )
        self._retry = self._reactor.callLater(self._backoff, self._deliver)
        self._backoff = min(self._backoff * 2, LAST_RETRY)


class _Backlog:
    """Init's events for subscribers still to come, bounded; what did not fit is counted."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._size = 0
        self.dropped_records = 0
        self.dropped_bytes = 0

    def add(self, event: Event, size: int) -> None:
        if len(self.events) >= BACKLOG_ITEMS or self._size + size > BACKLOG_BYTES:
            self.dropped_records += 1
            self.dropped_bytes += size
            return
        self.events.append(event)
        self._size += size


class TelemetryHub:
    """
    The subscriptions of one execution environment's extensions, and the
    fan-out of that environment's events to them.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: Any, function: Function, agent: IAgent | None = None) -> None:
        self._reactor = reactor
        self._function = function
        self._pool: HTTPConnectionPool | None = None
        #: Made at the first subscription: most environments never have one.
        self._agent = agent
        self._subscribers: dict[tuple[str, str], _Subscriber] = {}
        self._backlog: _Backlog | None = _Backlog()
        self._stopped = False
        self._drained: Deferred[None] | None = None

    def _client(self) -> IAgent:
        """The HTTP client the subscribers deliver with, one persistent pool for them all."""
        if self._agent is None:
            from .telemetry_client import delivery_agent

            self._pool, self._agent = delivery_agent(self._reactor)
        return self._agent

    @property
    def subscribed(self) -> bool:
        """
        Whether any subscription exists or may still come (Init is open, its
        events are kept): callers skip building events when not.
        """
        return not self._stopped and (bool(self._subscribers) or self._backlog is not None)

    def subscribe(self, api: str, extension: str, body: bytes) -> None:
        """
        Accept C{extension}'s subscription to C{api} ("telemetry" or "logs"),
        or raise the L{errors.APIError} that refuses it.
        """
        if self._backlog is None or self._stopped:
            raise errors.subscription_closed(api)
        subscription = parse_subscription(api, extension, body)
        other = "logs" if api == "telemetry" else "telemetry"
        if (other, extension) in self._subscribers:
            name = "Logs API" if other == "logs" else "Telemetry API"
            raise errors.subscription_invalid(
                api, f"{extension} is already subscribed to the {name}"
            )
        existing = self._subscribers.get((api, extension))
        if existing is not None:
            # Subscribing again replaces the settings; what is queued stays queued.
            existing.replace(subscription)
        else:
            subscriber = _Subscriber(self._reactor, self._client(), subscription, self._check_drained)
            self._subscribers[api, extension] = subscriber
            subscriber.offer(self._replay(subscription))
        self.platform(
            "platform.telemetrySubscription",
            {"name": extension, "state": "Subscribed", "types": list(subscription.types)},
        )

    def close_subscriptions(self) -> None:
        """Init is over: no more subscriptions, and no backlog kept for them."""
        self._backlog = None

    def platform(self, event_type: str, record: dict[str, Any]) -> None:
        """A platform event, timestamped now."""
        self._publish(event_type, record)

    def log_line(self, source: str, line: bytes | Any) -> None:
        """One log line of the function ("function") or an extension ("extension")."""
        record = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        self._publish(source, record)

    def flush(self) -> None:
        """Send what every subscriber has buffered now (the runtime crashed, an invoke ended...)."""
        for subscriber in self._subscribers.values():
            subscriber.flush()

    def stop(self, timeout: float) -> Deferred[None]:
        """
        Flush, wait at most C{timeout} seconds for the deliveries, then close
        the connections. Events after this are ignored.
        """
        return Deferred.fromCoroutine(self._stop(timeout))

    async def _stop(self, timeout: float) -> None:
        self._stopped = True
        self._backlog = None
        self._drained = Deferred()
        for subscriber in self._subscribers.values():
            subscriber.flush(retry_now=True)
        self._check_drained()
        self._drained.addTimeout(timeout, self._reactor)
        try:
            await self._drained
        except defer.TimeoutError:
            self.log.warn(
                "telemetry subscribers of {function} did not take their events within {timeout} s",
                function=self._function.name,
                timeout=timeout,
            )
        closing = [subscriber.close() for subscriber in self._subscribers.values()]
        for closed in closing:
            await closed
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.called:
            if all(subscriber.idle for subscriber in self._subscribers.values()):
                self._drained.callback(None)

    def _replay(self, subscription: Subscription) -> list[bytes]:
        """Init's events so far as a new subscriber gets them: C{platform.initStart} first."""
        assert self._backlog is not None
        encoded = [
            event.encode() for old in self._backlog.events for event in subscription.events(old)
        ]
        if self._backlog.dropped_records:
            record = {
                "droppedBytes": self._backlog.dropped_bytes,
                "droppedRecords": self._backlog.dropped_records,
                "reason": DROPPED_REASON,
            }
            now = iso_time(self._reactor.seconds())
            encoded.append(Event(now, "platform.logsDropped", record).encode())
        return encoded

    def _publish(self, event_type: str, record: Any) -> None:
        if self._stopped or not self.subscribed:
            return
        event = Event(iso_time(self._reactor.seconds()), event_type, record)
        # Each event is encoded once per view (Telemetry API, each Logs API schema).
        views: dict[str, list[bytes]] = {}
        for subscriber in self._subscribers.values():
            subscription = subscriber.subscription
            if event.family not in subscription.types:
                continue
            if subscription.view not in views:
                views[subscription.view] = [e.encode() for e in subscription.translate(event)]
            if views[subscription.view]:
                subscriber.offer(views[subscription.view])
        if self._backlog is not None:
            size = len(views["telemetry"][0]) if views.get("telemetry") else len(event.encode())
            self._backlog.add(event, size)
