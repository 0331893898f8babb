"""
The daemon's AMQP-RPC transport: deliveries from the function's queue become
invocations of the pool; results go back to C{reply_to}.

Wire-compatible with the upstream Go daemon: the queue is the function's name,
declared non-durable, auto-delete, non-exclusive; the request id is the
C{correlation_id}; the reply's body is what an HTTP caller would get, with
C{X-Amz-Function-Error} and C{X-Amz-Log-Result} headers. A delivery is acked
only once its reply is published, so a daemon that dies mid-invocation leaves
the message to be redelivered to another.

Requests are checked as the Invoke API checks them (qualifier, size, JSON): a
refused one gets an error reply (or, for an Event, is dropped), never a run.

A request that opts in (C{X-Lambdarapid-Accept-Stream: 1}) to a streaming
function is answered by stream messages as the runtime sends its response:
C{start}, C{chunk}s, C{end}, then the ack. While the connection's write
buffer is full the runtime's upload is paused, so a slow broker slows the
function's upload instead of growing the daemon's memory.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pika
from pika.adapters.twisted_connection import ClosableDeferredQueue, TwistedChannel
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from ..config import Function
from ..invocation import (
    IInvoker,
    Invocation,
    InvocationType,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    Withdrawn,
    check_payload,
    decode_client_context,
    new_trace_id,
)
from ..logs import observer
from ..observers import NO_INVOCATIONS, TOO_LARGE, InvocationObserver
from ..streams import ResponseStream
from .connection import reconnect_if_closed
from .messages import (
    CHUNK,
    END,
    START,
    accepts_stream,
    end_body,
    error_reply_properties,
    header_text,
    reply_properties,
    split_chunk,
    stream_properties,
)


#: How long a delivery the pool has no room for is held before it is requeued,
#: so that a full daemon does not spin on redeliveries of the same messages.
REQUEUE_DELAY = 1.0
#: Correlation ids usable as request ids as they are (UUIDs and the like).
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
#: How long to wait before consuming again after the broker cancelled us.
RECONSUME_DELAY = 0.5


class RPCConsumer:
    """Consumes the function's queue into an invoker (the daemon's pool)."""

    log = Logger(observer=observer)

    def __init__(
        self,
        invoker: IInvoker,
        function: Function,
        prefetch: int,
        reactor: Any,
        metrics: InvocationObserver = NO_INVOCATIONS,
    ) -> None:
        self._invoker = invoker
        #: Told the requests refused here as too large (the pool counts the rest).
        self._metrics = metrics
        self._function = function
        self._prefetch = prefetch
        self._reactor = reactor
        self._channel: TwistedChannel | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        #: Invocations delivered on the current channel and not yet answered, by delivery tag.
        self._held: dict[int, Invocation] = {}
        self._requeues: list[IDelayedCall] = []
        #: The connection's transport's producer: pauses the streams being published.
        self.pressure = OutboundPressure()

    @property
    def queue(self) -> str:
        return self._function.name

    async def connected(self, connection: Any) -> None:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=self._prefetch)
        self.pressure.attach(connection)
        self._channel = channel
        self._held = {}
        reconnect_if_closed(channel, connection, lambda: self._still_ours(channel, closed=True))
        await self._start_consuming(channel)

    async def _start_consuming(self, channel: TwistedChannel) -> None:
        await channel.queue_declare(
            queue=self.queue, durable=False, auto_delete=True, exclusive=False
        )
        deliveries, self._consumer_tag = await channel.basic_consume(
            queue=self.queue, auto_ack=False
        )
        Deferred.fromCoroutine(self._consume(channel, deliveries))
        self.log.info("consuming AMQP queue {queue}", queue=self.queue)

    def disconnected(self, reason: Failure) -> None:
        self._channel = None
        self._consumer_tag = None
        # The broker has put every unacked delivery back in the queue: those
        # still waiting for a runtime here would only run twice.
        held, self._held = self._held, {}
        withdrawn = sum(1 for invocation in held.values() if self._invoker.withdraw(invocation))
        if withdrawn:
            self.log.info(
                "withdrew {n} queued AMQP invocation(s); the broker redelivers them", n=withdrawn
            )
        self._flush_requeues()

    async def stop_consuming(self) -> None:
        """Take no more deliveries (on shutdown); those held are still answered."""
        self._stopping = True
        self._flush_requeues()
        channel, tag = self._channel, self._consumer_tag
        self._consumer_tag = None
        if channel is None or tag is None or not channel.is_open:
            return
        if tag not in channel.consumer_tags:
            return  # the broker cancelled it already
        try:
            await channel.basic_cancel(tag).addTimeout(2.0, self._reactor)
        except Exception as error:  # the channel may close meanwhile
            self.log.debug("basic.cancel failed: {error}", error=error)

    async def _consume(self, channel: TwistedChannel, deliveries: ClosableDeferredQueue) -> None:
        while True:
            try:
                message = await deliveries.get()
            except Exception:
                break  # the channel closed, or the broker cancelled the consumer
            self._deliver(channel, message.method, message.properties, message.body)
        if not self._still_ours(channel):
            return
        # Cancelled by the broker (queue deleted, node lost): consume again.
        self.log.warn(
            "the broker cancelled our consumer of {queue}; consuming again", queue=self.queue
        )
        await deferLater(self._reactor, RECONSUME_DELAY, lambda: None)
        if not self._still_ours(channel):
            return
        try:
            await self._start_consuming(channel)
        except Exception as error:
            self.log.error("cannot consume {queue} again: {error}", queue=self.queue, error=error)
            channel.close()  # reconnect_if_closed: the next connection sets everything up

    def _still_ours(self, channel: TwistedChannel, closed: bool = False) -> bool:
        """Whether C{channel} is the (open, unless C{closed}) channel we should be consuming on."""
        return (
            (closed or bool(channel.is_open))
            and channel is self._channel
            and not self._stopping
        )

    def _invocation(self, properties: pika.BasicProperties, body: bytes) -> Invocation:
        """
        The request as an Invocation, checked as the Invoke API checks it: an
        L{errors.APIError} for a qualifier this function does not serve (404),
        a payload over its type's limit (413) or not JSON (400).
        """
        headers = properties.headers or {}
        qualifier = header_text(headers, "X-Amz-Qualifier") or None
        if not self._function.serves(self._function.name, qualifier):
            raise errors.function_not_found(self._function.arn(qualifier))
        invocation_type = (
            InvocationType.REQUEST_RESPONSE if properties.reply_to else InvocationType.EVENT
        )
        payload = check_payload(body, invocation_type)
        now: float = self._reactor.seconds()
        context = header_text(headers, "X-Amz-Client-Context")
        client_context = None
        if context:
            try:
                client_context = decode_client_context(context.encode())
            except errors.APIError:
                self.log.warn(
                    "ignoring the malformed client context of {id}",
                    id=properties.correlation_id,
                )
        deadline = None
        if properties.timestamp:
            # AMQP timestamps are whole seconds: never start the clock before
            # the message could have been sent.
            deadline = min(now, float(properties.timestamp) + 1.0) + self._function.timeout
        invocation = Invocation(
            payload=payload,
            function_arn=self._function.arn(qualifier),
            function_name=self._function.name,
            qualifier=qualifier,
            invocation_type=invocation_type,
            tail_log=header_text(headers, "X-Amz-Log-Type") == "Tail",
            client_context=client_context,
            trace_id=header_text(headers, "X-Amzn-Trace-Id") or new_trace_id(now),
            tenant_id=header_text(headers, "X-Amz-Tenant-Id"),
            arrived=now,
            deadline=deadline,
            accept_stream=accepts_stream(properties),
        )
        if properties.correlation_id and _SAFE_ID.fullmatch(properties.correlation_id):
            # Otherwise the generated id stands in for it with the runtime (it
            # goes into Runtime API paths and headers); the reply still carries it.
            invocation.request_id = properties.correlation_id
        return invocation

    def _deliver(
        self,
        channel: TwistedChannel,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        try:
            invocation = self._invocation(properties, body)
        except errors.APIError as error:
            if error.status == 413:
                kind = InvocationType.REQUEST_RESPONSE
                if not properties.reply_to:
                    kind = InvocationType.EVENT
                self._metrics.refused(kind, TOO_LARGE)
            self._refuse_request(channel, tag, properties, error)
            return
        except Exception:
            self.log.failure("dropping a malformed AMQP request (delivery {tag})", tag=tag)
            channel.basic_nack(delivery_tag=tag, requeue=False)
            return
        if channel is self._channel:
            self._held[tag] = invocation
        self._invoker.invoke(invocation).addCallbacks(
            self._answer,
            self._refuse,
            callbackArgs=(channel, tag, properties.reply_to, properties.correlation_id),
            errbackArgs=(channel, tag, invocation.request_id),
        )

    def _refuse_request(
        self,
        channel: TwistedChannel,
        tag: int,
        properties: pika.BasicProperties,
        error: errors.APIError,
    ) -> None:
        """Answer a request the Invoke API would refuse with its error; drop such an Event."""
        if not properties.reply_to:
            self.log.warn(
                "dropping Event request {id}: {status} {type}",
                id=properties.correlation_id,
                status=error.status,
                type=error.error_type,
            )
            channel.basic_nack(delivery_tag=tag, requeue=False)
            return
        channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            body=error.body,
            properties=error_reply_properties(error, properties.correlation_id),
        )
        channel.basic_ack(delivery_tag=tag)

    def _answer(
        self,
        result: Result,
        channel: TwistedChannel,
        tag: int,
        reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        if channel is self._channel:
            self._held.pop(tag, None)
        if reply_to and result.stream is not None:
            _StreamReply(self, channel, tag, reply_to, correlation_id, result, result.stream)
            return
        if reply_to:
            publisher = channel if channel.is_open else self._channel
            if publisher is None or not publisher.is_open:
                # The broker has requeued the request with our connection:
                # whoever runs it again answers the caller.
                self.log.warn(
                    "no AMQP channel to reply to {id} on; the request will be redelivered",
                    id=result.request_id,
                )
                return
            publisher.basic_publish(
                exchange="",
                routing_key=reply_to,
                body=result.body,
                properties=reply_properties(result, correlation_id),
            )
        else:
            self.log.info(
                "Event invocation {id} finished: {outcome}",
                id=result.request_id,
                outcome=result.outcome.value,
            )
        if channel.is_open:
            channel.basic_ack(delivery_tag=tag)

    def _refuse(
        self, failure: Failure, channel: TwistedChannel, tag: int, request_id: str
    ) -> None:
        if channel is self._channel:
            self._held.pop(tag, None)
        if failure.check(Withdrawn):
            return  # the broker has requeued it already
        if not failure.check(TooManyRequests, ServiceUnavailable):
            self.log.failure("invocation {id} failed", failure, id=request_id)
        if failure.check(TooManyRequests) and not self._stopping:
            # Back to the queue a little later, for another daemon or for us.
            self._requeues.append(
                self._reactor.callLater(REQUEUE_DELAY, self._requeue, channel, tag)
            )
        else:
            self._requeue(channel, tag)

    def _requeue(self, channel: TwistedChannel, tag: int) -> None:
        self._requeues = [call for call in self._requeues if call.active()]
        if channel.is_open:
            channel.basic_nack(delivery_tag=tag, requeue=True)

    def _flush_requeues(self) -> None:
        """Requeue now what was waiting to be requeued."""
        requeues, self._requeues = self._requeues, []
        for call in requeues:
            if call.active():
                call.reset(0)



@implementer(IPushProducer)
class OutboundPressure:
    """
    The producer registered with the broker connection's transport: when its
    write buffer is full (a slow broker, a slow network) every stream being
    published is paused, and so is its runtime's upload; resumed once drained.
    """

    def __init__(self) -> None:
        self._streams: set[ResponseStream] = set()
        self.paused = False

    def attach(self, connection: Any) -> None:
        """Be the producer of C{connection}'s transport (a new connection's)."""
        self.resumeProducing()  # the old transport's pause died with it
        transport = getattr(connection, "transport", None)
        if transport is None:
            return
        try:
            transport.registerProducer(self, True)
        except RuntimeError:  # someone else's producer: streams then go unthrottled
            pass

    def add(self, stream: ResponseStream) -> None:
        self._streams.add(stream)
        if self.paused:
            stream.pauseProducing()

    def discard(self, stream: ResponseStream) -> None:
        self._streams.discard(stream)

    def pauseProducing(self) -> None:
        self.paused = True
        for stream in list(self._streams):
            stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        for stream in list(self._streams):
            stream.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone: nothing is held for it any more."""
        self.resumeProducing()


class _StreamReply:
    """
    One streamed result on its way to C{reply_to}: C{start}, a C{chunk} per
    runtime chunk (split at 1 MiB), C{end} with the InvokeComplete object,
    then the delivery's ack. Published only on the channel the request came
    on: if that closes, the broker has requeued the request, whose next run
    streams again under a new id; this one's bytes are then dropped.
    """

    def __init__(
        self,
        consumer: RPCConsumer,
        channel: TwistedChannel,
        tag: int,
        reply_to: str,
        correlation_id: str | None,
        result: Result,
        stream: ResponseStream,
    ) -> None:
        self._consumer = consumer
        self._channel = channel
        self._tag = tag
        self._reply_to = reply_to
        self._correlation_id = correlation_id
        self._request_id = result.request_id
        self._version = result.executed_version
        self._stream = stream
        self._id = str(uuid.uuid4())
        self._seq = 0
        self._abandoned = False
        if self._publish(
            START, b"", content_type=stream.content_type, **{"X-Amz-Executed-Version": self._version}
        ):
            stream.consume(self)
            consumer.pressure.add(stream)  # after consume, which resumes a stream it paused

    def _publish(self, kind: str, body: bytes, content_type: str | None = None, **headers: str) -> bool:
        channel = self._channel
        if self._abandoned:
            return False
        if not channel.is_open:
            self._abandoned = True
            self._consumer.pressure.discard(self._stream)
            self._stream.stopProducing()  # the function runs on; its bytes are dropped
            self._consumer.log.warn(
                "the AMQP channel of {id} closed mid-stream; the request will be redelivered",
                id=self._request_id,
            )
            return False
        channel.basic_publish(
            exchange="",
            routing_key=self._reply_to,
            body=body,
            properties=stream_properties(
                kind, self._id, self._seq, self._correlation_id, content_type, **headers
            ),
        )
        self._seq += 1
        return True

    # StreamConsumer

    def stream_chunk(self, data: bytes) -> None:
        for piece in split_chunk(data):
            if not self._publish(CHUNK, piece):
                return

    def stream_ended(self, result: Result) -> None:
        self._consumer.pressure.discard(self._stream)
        headers = {"X-Amz-Executed-Version": self._version}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        if self._publish(END, end_body(result), content_type="application/json", **headers):
            self._channel.basic_ack(delivery_tag=self._tag)
