"""
The platform lines Lambda prints around every invocation.

In Text format (the default) they are START / END / REPORT: the same request
id on all three, Init Duration only for the invocation that started an
environment, and last, as in production. In JSON format (Lambda's advanced
logging controls, C{AWS_LAMBDA_LOG_FORMAT=JSON}) they are Lambda's
C{{"time", "type", "record"}} events: C{platform.initStart},
C{platform.start} and C{platform.report}; END has no JSON form.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .config import Function
from .invocation import Outcome, Result
from .logs import iso_time

#: An environment's initialisation types (AWS_LAMBDA_INITIALIZATION_TYPE, telemetry's
#: initializationType): started for an invocation, or ahead of any (PROVISIONED_CONCURRENCY).
ON_DEMAND = "on-demand"
PROVISIONED = "provisioned-concurrency"


def start_line(request_id: str, version: str) -> bytes:
    return f"START RequestId: {request_id} Version: {version}\n".encode()


def end_line(request_id: str) -> bytes:
    return f"END RequestId: {request_id}\n".encode()


def _milliseconds(result: Result) -> float:
    return round(result.duration * 1000, 2)


def _billed(milliseconds: float) -> int:
    # Billed from the duration as printed, so the two never disagree.
    return max(1, math.ceil(milliseconds))


def report_line(result: Result, memory_size: int) -> bytes:
    milliseconds = _milliseconds(result)
    fields = [
        f"REPORT RequestId: {result.request_id}",
        f"Duration: {milliseconds:.2f} ms",
        f"Billed Duration: {_billed(milliseconds)} ms",
        f"Memory Size: {memory_size} MB",
        f"Max Memory Used: {result.max_memory_mb or 0} MB",
    ]
    if result.init_duration is not None:
        fields.append(f"Init Duration: {result.init_duration * 1000:.2f} ms")
    return ("\t".join(fields) + "\n").encode()


def report_status(result: Result) -> tuple[str, str | None]:
    """C{platform.report}'s C{status} and C{errorType} for C{result}."""
    if result.outcome is Outcome.SUCCESS:
        return "success", None
    if result.outcome is Outcome.TIMEOUT:
        return "timeout", None
    error_type = result.error_type or (
        "Runtime.ExitError" if result.outcome is Outcome.RUNTIME_EXIT else "Unhandled"
    )
    if error_type.startswith("Sandbox."):
        return "failure", error_type
    return "error", error_type


class PlatformLines:
    """The platform lines of one function, in its log format, timed on C{clock}."""

    def __init__(self, function: Function, log_format: str, clock: Any) -> None:
        self._function = function
        self._json = log_format == "JSON"
        self._clock = clock

    def _event(self, kind: str, record: dict[str, Any]) -> bytes:
        event = {"time": iso_time(self._clock.seconds()), "type": kind, "record": record}
        return (json.dumps(event, separators=(",", ":")) + "\n").encode()

    def init_start(self, initialization_type: str = ON_DEMAND) -> bytes:
        """When an environment starts: nothing in Text, C{platform.initStart} in JSON."""
        if not self._json:
            return b""
        function = self._function
        return self._event(
            "platform.initStart",
            {
                "initializationType": initialization_type,
                "phase": "init",
                "functionName": function.name,
                "functionVersion": function.version,
            },
        )

    def start(self, request_id: str) -> bytes:
        if not self._json:
            return start_line(request_id, self._function.version)
        return self._event(
            "platform.start", {"requestId": request_id, "version": self._function.version}
        )

    def end(self, request_id: str) -> bytes:
        return b"" if self._json else end_line(request_id)

    def report(self, result: Result) -> bytes:
        if not self._json:
            return report_line(result, self._function.memory_size)
        milliseconds = _milliseconds(result)
        metrics: dict[str, Any] = {
            "durationMs": milliseconds,
            "billedDurationMs": _billed(milliseconds),
            "memorySizeMB": self._function.memory_size,
            "maxMemoryUsedMB": result.max_memory_mb or 0,
        }
        if result.init_duration is not None:
            metrics["initDurationMs"] = round(result.init_duration * 1000, 2)
        status, error_type = report_status(result)
        record: dict[str, Any] = {
            "requestId": result.request_id,
            "status": status,
            "metrics": metrics,
        }
        if error_type is not None:
            record["errorType"] = error_type
        return self._event("platform.report", record)

    def extension(
        self, name: str, state: str, events: list[str], error_type: str | None = None
    ) -> bytes:
        """The line Lambda prints for each extension once Init is over (or has failed)."""
        if self._json:
            record: dict[str, Any] = {"name": name, "state": state, "events": events}
            if error_type:
                record["errorType"] = error_type
            return self._event("platform.extension", record)
        fields = [f"EXTENSION\tName: {name}", f"State: {state}", f"Events: [{','.join(events)}]"]
        if error_type:
            fields.append(f"Error Type: {error_type}")
        return ("\t".join(fields) + "\n").encode()

    def init_report_error(
        self, duration: float, error_type: str, initialization_type: str = ON_DEMAND
    ) -> bytes:
        """INIT_REPORT for an Init that failed: how long it ran, and why."""
        milliseconds = round(duration * 1000, 2)
        if self._json:
            return self._event(
                "platform.initReport",
                {
                    "initializationType": initialization_type,
                    "phase": "init",
                    "status": "error",
                    "errorType": error_type,
                    "metrics": {"durationMs": milliseconds},
                },
            )
        return (
            f"INIT_REPORT Init Duration: {milliseconds:.2f} ms\tPhase: init\t"
            f"Status: error\tError Type: {error_type}\n"
        ).encode()


# The Telemetry API's platform records (the events extensions subscribe to).


def init_start_record(function: Function, initialization_type: str = ON_DEMAND) -> dict[str, Any]:
    return {
        "initializationType": initialization_type,
        "phase": "init",
        "functionName": function.name,
        "functionVersion": function.version,
        "instanceMaxMemory": function.memory_size,
    }


def init_done_record(
    status: str, error_type: str | None = None, initialization_type: str = ON_DEMAND
) -> dict[str, Any]:
    """C{platform.initRuntimeDone}'s record."""
    record: dict[str, Any] = {
        "initializationType": initialization_type,
        "phase": "init",
        "status": status,
    }
    if error_type:
        record["errorType"] = error_type
    return record


def init_report_record(
    duration: float, status: str, initialization_type: str = ON_DEMAND
) -> dict[str, Any]:
    return {
        "initializationType": initialization_type,
        "phase": "init",
        "status": status,
        "metrics": {"durationMs": round(duration * 1000, 2)},
    }


def _span(name: str, start: float, seconds: float) -> dict[str, Any]:
    return {"name": name, "start": iso_time(start), "durationMs": round(seconds * 1000, 3)}


def _tracing(trace_id: str | None) -> dict[str, Any]:
    return {"tracing": {"type": "X-Amzn-Trace-Id", "value": trace_id}} if trace_id else {}


def runtime_done_record(
    request_id: str,
    status: str,
    delivered: float,
    answered: float,
    produced: int,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """C{platform.runtimeDone}: how long the runtime took and what it produced."""
    return {
        "requestId": request_id,
        "status": status,
        "metrics": {
            "durationMs": round((answered - delivered) * 1000, 2),
            "producedBytes": produced,
        },
        "spans": [
            _span("responseLatency", delivered, answered - delivered),
            _span("responseDuration", answered, 0.0),
        ],
        **_tracing(trace_id),
    }


def report_record(
    request_id: str,
    function: Function,
    delivered: float,
    answered: float,
    done: float,
    max_memory_mb: int,
    init_duration: float | None,
    status: str = "success",
    trace_id: str | None = None,
) -> dict[str, Any]:
    """C{platform.report}, sent once the extensions are done too (their share is a span)."""
    milliseconds = round((answered - delivered) * 1000, 2)
    metrics: dict[str, Any] = {
        "durationMs": milliseconds,
        "billedDurationMs": _billed(milliseconds),
        "memorySizeMB": function.memory_size,
        "maxMemoryUsedMB": max_memory_mb,
    }
    if init_duration is not None:
        metrics["initDurationMs"] = round(init_duration * 1000, 2)
    return {
        "requestId": request_id,
        "status": status,
        "metrics": metrics,
        "spans": [_span("extensionOverhead", answered, max(0.0, done - answered))],
        **_tracing(trace_id),
    }
