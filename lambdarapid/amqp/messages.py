"""
The AMQP-RPC message format, both ways, in one place.

Requests: body = event, C{correlation_id} = request id, C{reply_to} (absent
for Event), C{timestamp} in seconds, headers C{X-Amz-Client-Context}
(base64), C{X-Amzn-Trace-Id} and, ours, C{X-Amz-Log-Type}. Replies: body =
exactly what an HTTP caller gets, same C{correlation_id}, headers
C{X-Amz-Function-Error}, C{X-Amz-Log-Result}, C{X-Amz-Executed-Version}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import pika

from ..invocation import Invocation, Outcome, Result

JSON = "application/json"
#: RabbitMQ's direct reply-to pseudo-queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A header's value as text, whether the publisher sent bytes or str."""
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def request_properties(invocation: Invocation, reply_to: str | None) -> pika.BasicProperties:
    """What the Lambda Server publishes for C{invocation}."""
    headers: dict[str, str] = {}
    if invocation.client_context:
        headers["X-Amz-Client-Context"] = base64.b64encode(
            invocation.client_context.encode()
        ).decode()
    if invocation.trace_id:
        headers["X-Amzn-Trace-Id"] = invocation.trace_id
    if invocation.tail_log:
        headers["X-Amz-Log-Type"] = "Tail"
    if invocation.tenant_id:
        headers["X-Amz-Tenant-Id"] = invocation.tenant_id
    return pika.BasicProperties(
        content_type=JSON,
        correlation_id=invocation.request_id,
        reply_to=reply_to,
        timestamp=int(invocation.arrived),
        delivery_mode=None if reply_to else pika.DeliveryMode.Persistent,
        headers=headers or None,
    )


def reply_properties(result: Result, correlation_id: str | None) -> pika.BasicProperties:
    """What the daemon publishes back for C{result}, to the request C{correlation_id}."""
    headers = {"X-Amz-Executed-Version": result.executed_version}
    if result.outcome.is_error:
        headers["X-Amz-Function-Error"] = "Unhandled"
    if result.log_tail:
        headers["X-Amz-Log-Result"] = base64.b64encode(result.log_tail).decode()
    return pika.BasicProperties(content_type=JSON, correlation_id=correlation_id, headers=headers)


def result_from_reply(properties: pika.BasicProperties, body: bytes) -> Result:
    """The L{Result} a reply message carries."""
    headers = properties.headers or {}
    log_tail = b""
    encoded = header_text(headers, "X-Amz-Log-Result")
    if encoded:
        try:
            log_tail = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            pass
    return Result(
        outcome=(
            Outcome.FUNCTION_ERROR
            if header_text(headers, "X-Amz-Function-Error")
            else Outcome.SUCCESS
        ),
        body=body,
        request_id=properties.correlation_id or "",
        executed_version=header_text(headers, "X-Amz-Executed-Version") or "$LATEST",
        log_tail=log_tail,
    )
