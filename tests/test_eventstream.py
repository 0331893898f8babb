"""
The event-stream framing of InvokeWithResponseStream, checked against
botocore's own decoder and its Lambda response parsing (what boto3 users see).
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Iterator

from botocore import parsers  # type: ignore[import-untyped]
from botocore.eventstream import (  # type: ignore[import-untyped]
    EventStream,
    EventStreamBuffer,
    EventStreamMessage,
    ParserError,
)
from botocore.session import get_session  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid.eventstream import (
    MAX_CHUNK,
    encode_message,
    invoke_complete,
    payload_chunks,
)

_MIB = 1024 * 1024


def decode(data: bytes) -> list[EventStreamMessage]:
    """Every message botocore finds in C{data}, which must hold whole messages only."""
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    messages = list(buffer)
    # Nothing left over: the lengths in the prelude were exact.
    assert buffer._data == b"", buffer._data
    return messages


class _RawStream:
    """What botocore iterates: urllib3's response C{stream()}, one HTTP chunk at a time."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def stream(self) -> Iterator[bytes]:
        yield from self._chunks


def _operation() -> Any:
    return (
        get_session()
        .get_service_model("lambda")
        .operation_model("InvokeWithResponseStream")
    )


class EncodeMessageTests(SynchronousTestCase):
    """L{encode_message} against the wire format of docs/STREAMING.md section 4."""

    def test_layout(self) -> None:
        """Prelude, type-7 string headers, payload and both CRC-32s are where the format says."""
        message = encode_message([("a", "xy"), (":b", "é")], b"payload")
        headers = b"\x01a\x07\x00\x02xy" + b"\x02:b\x07\x00\x02" + "é".encode()
        total, headers_length, prelude_crc = struct.unpack(">III", message[:12])
        self.assertEqual(total, len(message))
        self.assertEqual(total, 16 + len(headers) + len(b"payload"))
        self.assertEqual(headers_length, len(headers))
        self.assertEqual(prelude_crc, zlib.crc32(message[:8]))
        self.assertEqual(message[12 : 12 + headers_length], headers)
        self.assertEqual(message[12 + headers_length : -4], b"payload")
        self.assertEqual(message[-4:], struct.pack(">I", zlib.crc32(message[:-4])))

    def test_botocore_decodes(self) -> None:
        """botocore reads back the headers and payload, with both CRCs checked."""
        [message] = decode(encode_message([("h", "v"), ("k", "")], b"\x00\xff"))
        self.assertEqual(message.headers, {"h": "v", "k": ""})
        self.assertEqual(message.payload, b"\x00\xff")
        self.assertEqual(message.prelude.total_length, 16 + 11 + 2)
        self.assertEqual(message.prelude.headers_length, 6 + 5)

    def test_empty(self) -> None:
        """No headers and no payload is the 16-byte minimum message."""
        message = encode_message([], b"")
        self.assertEqual(len(message), 16)
        [decoded] = decode(message)
        self.assertEqual((decoded.headers, decoded.payload), ({}, b""))

    def test_flipped_byte(self) -> None:
        """A byte flipped anywhere in a message makes botocore refuse it."""
        message = payload_chunks(b"some bytes")[0] + invoke_complete()
        for index in range(len(message)):
            corrupt = bytearray(message)
            corrupt[index] ^= 0x01
            buffer = EventStreamBuffer()
            buffer.add_data(bytes(corrupt))
            # A flipped length may just leave botocore waiting for more data,
            # but it never yields the messages as they were sent.
            try:
                decoded = [(m.headers, m.payload) for m in buffer]
            except ParserError:
                continue
            self.assertNotEqual(
                decoded,
                [(m.headers, m.payload) for m in decode(message)],
                f"byte {index}",
            )
            self.assertLess(len(decoded), 2, f"byte {index}")


class PayloadChunkTests(SynchronousTestCase):
    """L{payload_chunks}: a runtime's chunk as PayloadChunk events."""

    def test_headers(self) -> None:
        """A small chunk is one PayloadChunk event of the raw bytes."""
        [message] = decode(b"".join(payload_chunks(b"hello")))
        self.assertEqual(
            message.headers,
            {
                ":message-type": "event",
                ":event-type": "PayloadChunk",
                ":content-type": "application/octet-stream",
            },
        )
        self.assertEqual(message.payload, b"hello")

    def test_exactly_max(self) -> None:
        """A chunk of exactly MAX_CHUNK bytes stays one event."""
        self.assertEqual(len(payload_chunks(b"x" * MAX_CHUNK)), 1)

    def test_split(self) -> None:
        """A 2.5 MiB chunk becomes 3 PayloadChunks, none over MAX_CHUNK, that reassemble."""
        data = bytes(range(256)) * (10 * _MIB // 1024)
        self.assertEqual(len(data), 2 * _MIB + _MIB // 2)
        events = payload_chunks(data)
        self.assertEqual(len(events), 3)
        payloads = [message.payload for message in decode(b"".join(events))]
        self.assertEqual([len(p) for p in payloads], [MAX_CHUNK, MAX_CHUNK, _MIB // 2])
        self.assertEqual(b"".join(payloads), data)

    def test_empty(self) -> None:
        """Empty data gives no events at all."""
        self.assertEqual(payload_chunks(b""), [])


class InvokeCompleteTests(SynchronousTestCase):
    """L{invoke_complete}: the stream's final event."""

    def test_success(self) -> None:
        """With no members the payload is C{{}}, under the InvokeComplete headers."""
        [message] = decode(invoke_complete())
        self.assertEqual(
            message.headers,
            {
                ":message-type": "event",
                ":event-type": "InvokeComplete",
                ":content-type": "application/json",
            },
        )
        self.assertEqual(json.loads(message.payload), {})

    def test_members(self) -> None:
        """Only the members given appear, under their AWS names."""
        [message] = decode(invoke_complete(error_code="Unhandled", log_result="bG9n"))
        self.assertEqual(
            json.loads(message.payload), {"ErrorCode": "Unhandled", "LogResult": "bG9n"}
        )
        [message] = decode(invoke_complete("E", "details ✓", "TA=="))
        self.assertEqual(
            json.loads(message.payload),
            {"ErrorCode": "E", "ErrorDetails": "details ✓", "LogResult": "TA=="},
        )


class Boto3Tests(SynchronousTestCase):
    """A whole stream, parsed the way boto3 parses C{invoke_with_response_stream}."""

    def _chunks(self) -> list[bytes]:
        return [
            *payload_chunks(b"first "),
            *payload_chunks(b"y" * (MAX_CHUNK + 3)),
            *payload_chunks(b""),
            *payload_chunks(b"last"),
            invoke_complete(error_code="Unhandled", error_details="boom"),
        ]

    def test_event_stream(self) -> None:
        """botocore's EventStream with Lambda's shape yields PayloadChunk and InvokeComplete dicts."""
        shape = _operation().output_shape.members["EventStream"]
        stream = EventStream(
            _RawStream(self._chunks()),
            shape,
            parsers.EventStreamJSONParser(),
            "InvokeWithResponseStream",
        )
        self.assertEqual(
            list(stream),
            [
                {"PayloadChunk": {"Payload": b"first "}},
                {"PayloadChunk": {"Payload": b"y" * MAX_CHUNK}},
                {"PayloadChunk": {"Payload": b"yyy"}},
                {"PayloadChunk": {"Payload": b"last"}},
                {"InvokeComplete": {"ErrorCode": "Unhandled", "ErrorDetails": "boom"}},
            ],
        )

    def test_response(self) -> None:
        """The rest-json parser turns an HTTP response into boto3's result, EventStream included."""
        body = b"".join(self._chunks())
        # Delivered in arbitrary pieces: the decoder must not rely on one event per read.
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        parsed = parsers.create_parser("rest-json").parse(
            {
                "status_code": 200,
                "headers": {
                    "X-Amz-Executed-Version": "$LATEST",
                    "Content-Type": "text/plain",
                },
                "body": _RawStream(pieces),
                "context": {"operation_name": "InvokeWithResponseStream"},
            },
            _operation().output_shape,
        )
        self.assertEqual(parsed["StatusCode"], 200)
        self.assertEqual(parsed["ExecutedVersion"], "$LATEST")
        self.assertEqual(parsed["ResponseStreamContentType"], "text/plain")
        events = list(parsed["EventStream"])
        self.assertEqual(
            b"".join(e["PayloadChunk"]["Payload"] for e in events[:-1]),
            b"first " + b"y" * (MAX_CHUNK + 3) + b"last",
        )
        self.assertEqual(
            events[-1], {"InvokeComplete": {"ErrorCode": "Unhandled", "ErrorDetails": "boom"}}
        )

    def test_success_complete(self) -> None:
        """A successful stream ends in C{{"InvokeComplete": {}}}, as AWS was seen to send."""
        shape = _operation().output_shape.members["EventStream"]
        stream = EventStream(
            _RawStream([*payload_chunks(b"ok"), invoke_complete()]),
            shape,
            parsers.EventStreamJSONParser(),
            "InvokeWithResponseStream",
        )
        self.assertEqual(
            list(stream), [{"PayloadChunk": {"Payload": b"ok"}}, {"InvokeComplete": {}}]
        )
