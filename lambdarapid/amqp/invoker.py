"""
The Lambda Server's invoker: an invocation becomes an AMQP-RPC request to the
queue named after the function, answered through direct reply-to.

Requests are published C{mandatory}, so one for a function nobody serves
comes straight back (C{basic.return}) as a 404. The pending reply is
registered before publishing, so even the fastest reply finds it. If the
connection drops, pending requests are published again on the next one (their
old reply-to died with the old channel): the first reply wins, and a caller is
answered once. An error reply (a request the daemon refused before running
it) fails the invocation with the L{errors.APIError} it describes, which the
Invoke API answers exactly as the daemon's own would.

An InvokeWithResponseStream invocation asks for a streamed reply. The first
reply decides: one carrying the stream marker is relayed as it comes (in
sequence order, duplicates and other runs' streams dropped), any other is the
one buffered reply, as for Invoke. A stream that breaks off (a gap that is not
filled, a lost daemon, a lost connection) ends as C{Runtime.TruncatedResponse};
one that outlasts the fail-safe timeout as C{Sandbox.Timedout}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pika.adapters.twisted_connection import ClosableDeferredQueue, TwistedChannel
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..invocation import (
    FunctionNotFound,
    IInvoker,
    Invocation,
    Outcome,
    Result,
    ServiceUnavailable,
)
from .. import errors
from ..logs import observer
from .connection import reconnect_if_closed
from ..streams import ResponseStream
from .messages import (
    CHUNK,
    DIRECT_REPLY_TO,
    END,
    SEQ,
    START,
    STREAM,
    STREAM_ID,
    error_from_reply,
    header_text,
    request_properties,
    result_from_completion,
    result_from_reply,
    truncated_result,
)


#: After a reconnection, how long requests that come back unroutable are
#: published again: the daemons' auto-delete queues went with their own
#: connections and reappear as the daemons reconnect.
REROUTE_WINDOW = 10.0
REROUTE_INTERVAL = 0.25
#: How long a request waits for the broker connection before it gets a 503:
#: long enough to cover the server's own start, short enough not to hang.
CONNECT_HOLD = 2.0
#: After the server's first connection, how long an unroutable request is
#: taken for a daemon that has not declared its queue yet rather than a 404:
#: daemons and server usually start together.
STARTUP_REROUTE = 1.5
#: How long a gap in a stream's sequence may stay open before the stream is
#: taken as broken: a stream goes over one channel, in order, so a gap is a
#: message lost with a connection, not one late.
GAP_TIMEOUT = 1.0
#: At most this many out-of-order stream messages are held for a gap.
MAX_EARLY = 64


@dataclass(eq=False)
class _Pending:
    invocation: Invocation
    result: Deferred[Result]
    timer: IDelayedCall
    #: Until when a return means "not routable yet" rather than "no such function".
    reroute_until: float = 0.0
    #: Published again after a reconnection: it was routable once.
    republished: bool = False
    #: Once a stream message came: the stream being relayed.
    relay: _Relay | None = None


class _RelayedStream(ResponseStream):
    """A relayed stream that tells its relay when the caller hangs up."""

    def __init__(self, content_type: str, hung_up: Any) -> None:
        super().__init__(content_type)
        self._hung_up = hung_up

    def stopProducing(self) -> None:
        super().stopProducing()
        self._hung_up()


@dataclass(eq=False)
class _Relay:
    """Where one pending request's stream is: which stream, which message is next, what came early."""

    stream_id: str
    next_seq: int = 0
    #: Messages past a gap, by sequence number.
    early: dict[int, Any] = field(default_factory=dict)
    #: Streams given up for a later run's: their messages are dropped.
    retired: set[str] = field(default_factory=set)
    #: Its end came, or it was cut short: nothing more is relayed.
    ended: bool = False
    gap_timer: IDelayedCall | None = None
    #: Once C{start} came: the stream the caller reads.
    stream: ResponseStream | None = None
    executed_version: str = "$LATEST"

    def stop_gap_timer(self) -> None:
        if self.gap_timer is not None and self.gap_timer.active():
            self.gap_timer.cancel()
        self.gap_timer = None


@implementer(IInvoker)
class AMQPInvoker:
    """Sends invocations to whichever daemon consumes the function's queue."""

    log = Logger(observer=observer)

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._pending: dict[str, _Pending] = {}
        self._connection: Any = None
        self._rpc: TwistedChannel | None = None
        self._events: TwistedChannel | None = None
        self._startup_reroute_until = 0.0
        self._connection_waiters: list[Deferred[None]] = []

    @property
    def pending(self) -> int:
        """Requests published and waiting for their reply."""
        return len(self._pending)

    # AMQPUser

    async def connected(self, connection: Any) -> None:
        rpc = await connection.channel()
        rpc.add_on_return_callback(self._returned)
        replies, _ = await rpc.basic_consume(queue=DIRECT_REPLY_TO, auto_ack=True)
        events = await connection.channel()
        await events.confirm_delivery()
        self._connection, self._rpc, self._events = connection, rpc, events
        for channel in (rpc, events):
            reconnect_if_closed(channel, connection, lambda: self._connection is connection)
        Deferred.fromCoroutine(self._receive(replies))
        if not self._startup_reroute_until:
            self._startup_reroute_until = self._reactor.seconds() + STARTUP_REROUTE
        if self._pending:
            self.log.info(
                "publishing {n} pending request(s) again on the new connection",
                n=len(self._pending),
            )
        reroute_until = self._reactor.seconds() + REROUTE_WINDOW
        for pending in self._pending.values():
            pending.reroute_until = reroute_until
            pending.republished = True
            self._publish(pending.invocation)
        # Only now: requests held for the connection publish themselves once,
        # and must not be in the republished set above (they would run twice).
        waiters, self._connection_waiters = self._connection_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def disconnected(self, reason: Failure) -> None:
        self._connection = self._rpc = self._events = None
        # The rest of every stream was to come to the reply-to that just died.
        for pending in list(self._pending.values()):
            relay = pending.relay
            if relay is None:
                continue
            if relay.stream is None:
                relay.stop_gap_timer()
                pending.relay = None  # nothing went out: published again, it starts afresh
            else:
                self._truncate(pending, "the connection to the broker was lost mid-stream")

    # IInvoker

    async def _connected(self) -> None:
        """Wait a little for the broker connection (the server may have just started); else 503."""
        if self._rpc is not None:
            return
        waiter: Deferred[None] = Deferred()
        self._connection_waiters.append(waiter)
        try:
            await waiter.addTimeout(CONNECT_HOLD, self._reactor)
        except defer.TimeoutError:
            raise ServiceUnavailable("the AMQP broker is unavailable") from None
        finally:
            if waiter in self._connection_waiters:
                self._connection_waiters.remove(waiter)

    def invoke(self, invocation: Invocation) -> Deferred[Result]:
        if self._rpc is None:
            return Deferred.fromCoroutine(self._invoke_when_connected(invocation))
        request_id = invocation.request_id
        result: Deferred[Result] = Deferred(lambda _: self._forget(request_id))
        timer = self._reactor.callLater(self._timeout, self._timed_out, request_id)
        # Registered before publishing: a reply can never beat its pending entry.
        self._pending[request_id] = _Pending(
            invocation, result, timer, reroute_until=self._startup_reroute_until
        )
        try:
            self._publish(invocation)
        except Exception as error:
            self._forget(request_id)
            return fail(ServiceUnavailable(f"the request could not be published: {error}"))
        return result

    async def _invoke_when_connected(self, invocation: Invocation) -> Result:
        await self._connected()
        return await self.invoke(invocation)

    async def _accept_event(self, invocation: Invocation) -> None:
        await self._connected()
        while True:
            events = self._events
            if events is None:
                raise ServiceUnavailable("the AMQP broker is unavailable")
            try:
                await events.basic_publish(
                    exchange="",
                    routing_key=invocation.function_name,
                    body=invocation.payload,
                    properties=request_properties(invocation, reply_to=None),
                    mandatory=True,
                )
                return
            except UnroutableError:
                if self._reactor.seconds() >= self._startup_reroute_until:
                    raise FunctionNotFound(invocation.function_arn) from None
            except NackError:
                raise ServiceUnavailable("the broker refused the event") from None
            except Exception as error:
                raise ServiceUnavailable(f"the event could not be queued: {error}") from None
            await deferLater(self._reactor, REROUTE_INTERVAL, lambda: None)

    def accept_event(self, invocation: Invocation) -> Deferred[None]:
        return Deferred.fromCoroutine(self._accept_event(invocation))

    async def _dry_run(self, invocation: Invocation) -> None:
        await self._connected()
        connection = self._connection
        if connection is None:
            raise ServiceUnavailable("the AMQP broker is unavailable")
        channel = await connection.channel()
        try:
            await channel.queue_declare(queue=invocation.function_name, passive=True)
        except ChannelClosedByBroker:
            raise FunctionNotFound(invocation.function_arn) from None
        channel.close()

    def withdraw(self, invocation: Invocation) -> bool:
        """Once published, a request is the daemons' to run: nothing to take back here."""
        return False

    def dry_run(self, invocation: Invocation) -> Deferred[None]:
        return Deferred.fromCoroutine(self._dry_run(invocation))

    # Requests and replies

    def _publish(self, invocation: Invocation) -> None:
        rpc = self._rpc
        if rpc is None:
            return  # published again once reconnected
        rpc.basic_publish(
            exchange="",
            routing_key=invocation.function_name,
            body=invocation.payload,
            properties=request_properties(invocation, reply_to=DIRECT_REPLY_TO),
            mandatory=True,
        )

    async def _receive(self, replies: ClosableDeferredQueue) -> None:
        while True:
            try:
                message = await replies.get()
            except Exception:
                return  # the channel closed; the next connection starts a new loop
            request_id = message.properties.correlation_id or ""
            pending = self._pending.get(request_id)
            if pending is None:
                continue  # a late or duplicate reply: its caller was answered
            if header_text(message.properties.headers or {}, STREAM) is not None:
                if pending.invocation.accept_stream:
                    self._stream_message(pending, message)
                continue  # a stream for a request that asked for none: not ours
            if pending.relay is not None:
                continue  # the first reply was a stream's: this is another run's
            del self._pending[request_id]
            pending.timer.cancel()
            error = error_from_reply(message.properties, message.body)
            if error is not None:
                pending.result.errback(error)
            else:
                pending.result.callback(result_from_reply(message.properties, message.body))

    def _returned(self, message: Any) -> None:
        request_id = message.properties.correlation_id or ""
        pending = self._pending.get(request_id)
        if pending is None:
            return
        if self._reactor.seconds() < pending.reroute_until:
            # Its function's queue is (re)appearing: daemons are (re)connecting.
            self._reactor.callLater(REROUTE_INTERVAL, self._republish, request_id)
            return
        del self._pending[request_id]
        pending.timer.cancel()
        if pending.republished:
            pending.result.errback(
                ServiceUnavailable("the function's queue did not come back after a reconnection")
            )
        else:
            pending.result.errback(FunctionNotFound(pending.invocation.function_arn))

    def _republish(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is not None:
            self._publish(pending.invocation)

    def _timed_out(self, request_id: str) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        self.log.warn(
            "{message} (no reply from the function)",
            message=errors.timed_out_message(request_id, self._timeout),
        )
        result = Result(
            outcome=Outcome.TIMEOUT,
            body=errors.timed_out_body(request_id, self._timeout),
            request_id=request_id,
            error_type="Sandbox.Timedout",
            duration=self._timeout,
        )
        relay = pending.relay
        if relay is not None:
            relay.ended = True
            relay.stop_gap_timer()
            if relay.stream is not None:
                result.executed_version = relay.executed_version
                relay.stream.close(result)
                return
        pending.result.callback(result)

    def _forget(self, request_id: str) -> None:
        """The caller went away: its reply, if any, will be dropped."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        if pending.timer.active():
            pending.timer.cancel()
        if pending.relay is not None:
            pending.relay.ended = True
            pending.relay.stop_gap_timer()

    # Streamed replies

    def _stream_message(self, pending: _Pending, message: Any) -> None:
        """One stream message for C{pending}: relayed in order, or held for a gap, or dropped."""
        headers = message.properties.headers or {}
        stream_id = header_text(headers, STREAM_ID) or ""
        try:
            seq = int(header_text(headers, SEQ) or "")
        except ValueError:
            return  # no place in any sequence
        relay = pending.relay
        if relay is None:
            relay = pending.relay = _Relay(stream_id)
        elif stream_id in relay.retired or relay.ended:
            return
        elif stream_id != relay.stream_id:
            # Another run of the request (redelivered when its first daemon lost it).
            if seq != 0:
                return
            if relay.stream is not None and relay.stream.size:
                self._truncate(pending, "the function's daemon was lost mid-stream")
                return
            # Nothing went out yet: the new run's stream takes over.
            relay.stop_gap_timer()
            relay.retired.add(relay.stream_id)
            relay.stream_id, relay.next_seq, relay.early = stream_id, 0, {}
        if seq < relay.next_seq or seq in relay.early:
            return  # a duplicate
        relay.early[seq] = message
        if len(relay.early) > MAX_EARLY:
            self._truncate(pending, "too many stream messages came out of order")
            return
        before = relay.next_seq
        while relay.next_seq in relay.early and not relay.ended:
            self._relay(pending, relay, relay.early.pop(relay.next_seq))
            relay.next_seq += 1
        if relay.ended or pending.relay is not relay:
            return
        if relay.next_seq != before:
            relay.stop_gap_timer()  # a gap filled: any gap left has its own time
        if relay.early:
            if relay.gap_timer is None:
                relay.gap_timer = self._reactor.callLater(
                    GAP_TIMEOUT, self._gap_unfilled, pending, relay
                )

    def _relay(self, pending: _Pending, relay: _Relay, message: Any) -> None:
        """The next message of the stream, in order."""
        properties = message.properties
        kind = header_text(properties.headers or {}, STREAM)
        request_id = pending.invocation.request_id
        if relay.stream is None:
            if kind != START:
                self._truncate(pending, "the stream did not start with its start message")
                return
            relay.executed_version = (
                header_text(properties.headers or {}, "X-Amz-Executed-Version") or "$LATEST"
            )
            content_type = properties.content_type or "application/octet-stream"
            relay.stream = _RelayedStream(content_type, lambda: self._forget(request_id))
            pending.result.callback(
                Result(
                    outcome=Outcome.SUCCESS,
                    body=b"",
                    request_id=request_id,
                    executed_version=relay.executed_version,
                    stream=relay.stream,
                    content_type=content_type,
                )
            )
        elif kind == CHUNK:
            relay.stream.write(message.body)
        elif kind == END:
            self._end(pending)
            relay.stream.close(
                result_from_completion(message.body, request_id, relay.executed_version)
            )
        # Anything else (a second start, a kind from a later version) only takes its place.

    def _end(self, pending: _Pending) -> None:
        """The stream is over: the pending entry and its timers go."""
        if self._pending.get(pending.invocation.request_id) is pending:
            del self._pending[pending.invocation.request_id]
        if pending.timer.active():
            pending.timer.cancel()
        if pending.relay is not None:
            pending.relay.ended = True
            pending.relay.stop_gap_timer()

    def _truncate(self, pending: _Pending, why: str) -> None:
        """End C{pending}'s stream (or answer it, if it had not started) as Runtime.TruncatedResponse."""
        self._end(pending)
        relay = pending.relay
        request_id = pending.invocation.request_id
        self.log.warn("the response stream of {id} broke off: {why}", id=request_id, why=why)
        version = relay.executed_version if relay is not None else "$LATEST"
        result = truncated_result(request_id, version, why)
        if relay is not None and relay.stream is not None:
            relay.stream.close(result)
        elif not pending.result.called:
            pending.result.callback(result)

    def _gap_unfilled(self, pending: _Pending, relay: _Relay) -> None:
        relay.gap_timer = None
        if pending.relay is relay and not relay.ended:
            self._truncate(pending, f"stream message {relay.next_seq} never came")
