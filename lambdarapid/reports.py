"""
The START / END / REPORT lines Lambda prints for every invocation.

Same request id on all three; Init Duration only for the invocation that
started an environment, and last, as in production.
"""

from __future__ import annotations

import math

from .invocation import Result


def start_line(request_id: str, version: str) -> bytes:
    return f"START RequestId: {request_id} Version: {version}\n".encode()


def end_line(request_id: str) -> bytes:
    return f"END RequestId: {request_id}\n".encode()


def report_line(result: Result, memory_size: int) -> bytes:
    # Billed from the duration as printed, so the two never disagree.
    milliseconds = round(result.duration * 1000, 2)
    fields = [
        f"REPORT RequestId: {result.request_id}",
        f"Duration: {milliseconds:.2f} ms",
        f"Billed Duration: {max(1, math.ceil(milliseconds))} ms",
        f"Memory Size: {memory_size} MB",
        f"Max Memory Used: {result.max_memory_mb or 0} MB",
    ]
    if result.init_duration is not None:
        fields.append(f"Init Duration: {result.init_duration * 1000:.2f} ms")
    return ("\t".join(fields) + "\n").encode()
