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

Ours, and opt-in (docs/amqp.md, "Streamed replies"): a request with
C{X-Lambdarapid-Accept-Stream: 1} may be answered by a stream of messages
(C{start}, C{chunk}s, C{end}), each marked C{X-Lambdarapid-Stream} and
numbered by C{X-Lambdarapid-Seq} under one C{X-Lambdarapid-Stream-Id}. The
opt-in and the marker never share a name: upstream's daemon echoes the
request's headers in its reply, so only the marker proves a stream.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Mapping

import pika

from .. import errors
from ..eventstream import completion
from ..invocation import Invocation, Outcome, Result

JSON = "application/json"
#: RabbitMQ's direct reply-to pseudo-queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Error replies: the Invoke API's error type and HTTP status.
ERROR_TYPE = "X-Amzn-ErrorType"
STATUS_CODE = "X-Amz-Status-Code"
#: Error types fit to go into an HTTP header as they are.
_ERROR_TYPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: Request header: the caller takes a streamed reply (InvokeWithResponseStream).
ACCEPT_STREAM = "X-Lambdarapid-Accept-Stream"
#: Stream message headers: which part (start, chunk, end), of which stream, in what order.
STREAM = "X-Lambdarapid-Stream"
STREAM_ID = "X-Lambdarapid-Stream-Id"
SEQ = "X-Lambdarapid-Seq"
START, CHUNK, END = "start", "chunk", "end"
#: The largest chunk message body: far below any broker's max_message_size.
MAX_STREAM_CHUNK = 1024 * 1024


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
    if invocation.accept_stream and reply_to:
        headers[ACCEPT_STREAM] = "1"
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


def accepts_stream(properties: pika.BasicProperties) -> bool:
    """Whether a request asks for a streamed reply (only a RequestResponse one can)."""
    return bool(properties.reply_to) and header_text(properties.headers or {}, ACCEPT_STREAM) == "1"


def stream_properties(
    kind: str,
    stream_id: str,
    seq: int,
    correlation_id: str | None,
    content_type: str | None = None,
    **headers: str,
) -> pika.BasicProperties:
    """A stream message's properties: C{kind} (start, chunk, end) number C{seq} of C{stream_id}."""
    return pika.BasicProperties(
        content_type=content_type,
        correlation_id=correlation_id,
        headers={STREAM: kind, STREAM_ID: stream_id, SEQ: seq, **headers},
    )


def split_chunk(data: bytes) -> list[bytes]:
    """A runtime's chunk as message bodies of at most L{MAX_STREAM_CHUNK} bytes."""
    if len(data) <= MAX_STREAM_CHUNK:
        return [data]
    view = memoryview(data)
    return [
        bytes(view[start : start + MAX_STREAM_CHUNK])
        for start in range(0, len(data), MAX_STREAM_CHUNK)
    ]


def end_body(result: Result) -> bytes:
    """An C{end} message's body: the InvokeComplete JSON object for C{result}."""
    return json.dumps(completion(result), separators=(",", ":")).encode()


def result_from_completion(
    body: bytes, request_id: str, executed_version: str
) -> Result:
    """
    The final L{Result} an C{end} message's InvokeComplete object says: an
    C{ErrorCode} is a failed run of that error type, C{ErrorDetails} its
    document, C{LogResult} the base64 log tail. A body that is no such
    object is a truncated response: the end of the stream cannot be trusted.
    """
    try:
        members = json.loads(body) if body else {}
    except ValueError:
        members = None
    if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()):
        return truncated_result(request_id, executed_version, "the stream's end was malformed")
    log_tail = b""
    if members.get("LogResult"):
        try:
            log_tail = base64.b64decode(members["LogResult"])
        except (binascii.Error, ValueError):
            pass
    error_code = members.get("ErrorCode")
    if error_code is None:
        return Result(
            outcome=Outcome.SUCCESS,
            body=b"",
            request_id=request_id,
            executed_version=executed_version,
            log_tail=log_tail,
        )
    return Result(
        outcome=Outcome.TIMEOUT if error_code == "Sandbox.Timedout" else Outcome.FUNCTION_ERROR,
        body=members.get("ErrorDetails", "").encode(),
        request_id=request_id,
        executed_version=executed_version,
        log_tail=log_tail,
        error_type=error_code,
    )


def truncated_result(request_id: str, executed_version: str, why: str) -> Result:
    """A stream that broke off (a gap, a lost daemon): Runtime.TruncatedResponse."""
    return Result(
        outcome=Outcome.FUNCTION_ERROR,
        body=errors.function_error_body(
            "Runtime.TruncatedResponse", f"RequestId: {request_id} Error: {why}"
        ),
        request_id=request_id,
        executed_version=executed_version,
        error_type="Runtime.TruncatedResponse",
    )
