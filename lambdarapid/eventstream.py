"""
AWS event-stream framing for InvokeWithResponseStream responses.

Lambda's stream is C{PayloadChunk} events (the runtime's bytes) and one final
C{InvokeComplete} (a JSON object), each a binary message framed as in
docs/STREAMING.md section 4. Only string headers are needed, and the header
blocks of the two event types never change, so they are encoded once here and
a message costs two CRC-32s and one join.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .invocation import Result

MAX_CHUNK = 1024 * 1024
"""Largest payload per PayloadChunk: every SDK's event-stream decoder accepts it."""

_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """String headers (type 7): name_len u8, name, 7, value_len u16, value."""
    parts = []
    for name, value in headers:
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        parts.append(
            struct.pack(">B", len(raw_name))
            + raw_name
            + struct.pack(">BH", 7, len(raw_value))
            + raw_value
        )
    return b"".join(parts)


def _frame(header_block: bytes, payload: bytes) -> bytes:
    """A message around an already-encoded header block."""
    prelude = _PRELUDE.pack(16 + len(header_block) + len(payload), len(header_block))
    prelude += _CRC.pack(zlib.crc32(prelude))
    crc = zlib.crc32(payload, zlib.crc32(header_block, zlib.crc32(prelude)))
    return b"".join((prelude, header_block, payload, _CRC.pack(crc)))


def encode_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """
    One event-stream message: prelude (total length, headers length, prelude
    CRC-32), string headers (type 7), payload, message CRC-32.
    """
    return _frame(_encode_headers(headers), payload)


_PAYLOAD_CHUNK_HEADERS = _encode_headers(
    [
        (":message-type", "event"),
        (":event-type", "PayloadChunk"),
        (":content-type", "application/octet-stream"),
    ]
)
_INVOKE_COMPLETE_HEADERS = _encode_headers(
    [
        (":message-type", "event"),
        (":event-type", "InvokeComplete"),
        (":content-type", "application/json"),
    ]
)


def payload_chunks(data: bytes) -> list[bytes]:
    """
    C{data} (a runtime's chunk) as one or more encoded PayloadChunk events
    (each payload at most L{MAX_CHUNK}; none for empty data, which a caller
    would otherwise see as a spurious empty chunk).
    """
    if len(data) <= MAX_CHUNK:
        return [_frame(_PAYLOAD_CHUNK_HEADERS, data)] if data else []
    view = memoryview(data)
    return [
        _frame(_PAYLOAD_CHUNK_HEADERS, bytes(view[start : start + MAX_CHUNK]))
        for start in range(0, len(data), MAX_CHUNK)
    ]


def invoke_complete(
    error_code: str | None = None,
    error_details: str | None = None,
    log_result: str | None = None,
) -> bytes:
    """
    The final InvokeComplete event: its JSON payload has only the members
    given (C{{}} on success, as AWS sends), since boto3 users test for
    C{"ErrorCode" in event}.
    """
    members = {
        name: value
        for name, value in (
            ("ErrorCode", error_code),
            ("ErrorDetails", error_details),
            ("LogResult", log_result),
        )
        if value is not None
    }
    payload = json.dumps(members, separators=(",", ":")).encode("utf-8")
    return _frame(_INVOKE_COMPLETE_HEADERS, payload)


def completion(result: Result) -> dict[str, str]:
    """
    The InvokeComplete members for how C{result} ended, for every transport:
    none on success; else C{ErrorCode} (the result's error type, else its
    document's C{errorType}, else C{Unhandled}) and C{ErrorDetails} (the
    error document as text); C{LogResult} (base64) with a log tail.
    """
    members: dict[str, str] = {}
    if result.outcome.is_error:
        members["ErrorCode"] = (
            result.error_type or _document_error_type(result.body) or "Unhandled"
        )
        members["ErrorDetails"] = result.body.decode("utf-8", "replace")
    if result.log_tail:
        members["LogResult"] = base64.b64encode(result.log_tail).decode()
    return members


def completed(result: Result) -> bytes:
    """The InvokeComplete event for C{result}."""
    members = completion(result)
    return invoke_complete(
        members.get("ErrorCode"), members.get("ErrorDetails"), members.get("LogResult")
    )


def _document_error_type(body: bytes) -> str | None:
    """The errorType an error document names, if it is one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    error_type = document.get("errorType") if isinstance(document, dict) else None
    return error_type if isinstance(error_type, str) else None
