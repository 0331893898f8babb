"""
The AMQP-RPC message format, both ways, in one place.

Requests: body = event, C{correlation_id} = request id, C{reply_to} (absent
for Event), C{timestamp} in seconds, headers C{X-Amz-Client-Context}
(base64), C{X-Amzn-Trace-Id} and, ours, C{X-Amz-Log-Type} and
C{X-Amz-Qualifier}. Replies: body = exactly what an HTTP caller gets, same
C{correlation_id}, headers C{X-Amz-Function-Error}, C{X-Amz-Log-Result},
C{X-Amz-Executed-Version}. Error replies (a request refused before it ran)
carry the Invoke API's error instead: body C{{"Type","Message"}}, headers
C{X-Amzn-ErrorType} and C{X-Amz-Status-Code}, so the Lambda Server answers
what the daemon's own Invoke API would, and clients that read only the body
still get a readable document.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Mapping

import pika

from .. import errors
from ..invocation import Invocation, Outcome, Result

JSON = "application/json"
#: RabbitMQ's direct reply-to pseudo-queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Error replies: the Invoke API's error type and HTTP status.
ERROR_TYPE = "X-Amzn-ErrorType"
STATUS_CODE = "X-Amz-Status-Code"
#: Error types fit to go into an HTTP header as they are.
_ERROR_TYPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
    if invocation.qualifier:
        headers["X-Amz-Qualifier"] = invocation.qualifier
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
    if result.function_error:
        headers["X-Amz-Function-Error"] = result.function_error
    if result.log_tail:
        headers["X-Amz-Log-Result"] = base64.b64encode(result.log_tail).decode()
    return pika.BasicProperties(content_type=JSON, correlation_id=correlation_id, headers=headers)


def error_reply_properties(
    error: errors.APIError, correlation_id: str | None
) -> pika.BasicProperties:
    """What the daemon publishes back for a request it refused with C{error} (the body is C{error.body})."""
    headers: dict[str, Any] = {ERROR_TYPE: error.error_type, STATUS_CODE: error.status}
    return pika.BasicProperties(content_type=JSON, correlation_id=correlation_id, headers=headers)


def error_from_reply(properties: pika.BasicProperties, body: bytes) -> errors.APIError | None:
    """
    The Invoke API error an error reply carries; None for an ordinary reply.
    A status that is no HTTP error, or a type unfit for a header, is our own
    500: a publisher's header values never reach the HTTP answer unchecked.
    """
    headers = properties.headers or {}
    error_type = header_text(headers, ERROR_TYPE)
    if error_type is None:
        return None
    try:
        status = int(header_text(headers, STATUS_CODE) or "")
    except ValueError:
        status = 0
    if not 400 <= status <= 599 or not _ERROR_TYPE.fullmatch(error_type):
        return errors.internal_error("The function's daemon sent a malformed error reply.")
    return errors.APIError(status, error_type, body)


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
