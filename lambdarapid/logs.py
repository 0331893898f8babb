"""
lambdarapid's log lines: LOG_LEVEL for its own events, and Lambda's JSON log
format (C{AWS_LAMBDA_LOG_FORMAT=JSON}) for them and for function output.

twistd sets up the global log observers after C{makeService}, so instead of
wrapping those, every lambdarapid L{Logger} publishes through L{observer},
which drops events below the configured level before they reach them.
"""

from __future__ import annotations

import math
import time
import json
import re
from typing import Callable

import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: The observer lambdarapid's loggers publish to.
observer = FilteringLogObserver(globalLogPublisher, [_levels])


def set_level(level: LogLevel) -> None:
    """Emit lambdarapid's events at C{level} and above from now on."""
    _levels.setLogLevelForNamespace("", level)


#: The last whole second L{iso_time} formatted, and its text: telemetry stamps
#: several events per invocation, and strftime is most of the cost of one.
_iso_second: tuple[int, str] = (-1, "")


def iso_time(seconds: float) -> str:
    """C{seconds} since the epoch as Lambda writes times: ISO-8601 UTC, milliseconds."""
    global _iso_second
    whole = math.floor(seconds)
    microseconds = round((seconds - whole) * 1_000_000)
    if microseconds >= 1_000_000:
        whole, microseconds = whole + 1, 0
    if _iso_second[0] != whole:
        _iso_second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return f"{_iso_second[1]}{microseconds // 1000:03d}Z"


#: Lambda's level names for Twisted's levels (Twisted's critical is FATAL).
_JSON_LEVELS = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERROR",
    LogLevel.critical: "FATAL",
}
#: A request id named in a message ("RequestId: ..."), for events that carry none of their own.
_REQUEST_ID = re.compile(r"RequestId: ([0-9A-Za-z._:@+=-]{1,128})")


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each log event as one JSON object on one line, as Lambda writes its
    system logs in JSON format: C{timestamp}, C{level}, C{message}, C{logger},
    C{requestId} when the event names one, and C{errorType}, C{errorMessage},
    C{stackTrace} for failures. (Twisted's own jsonFileLogObserver writes RFC
    7464 records of Twisted's keys, which line-JSON readers reject.)
    """

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def __call__(self, event: LogEvent) -> None:
        message = formatEvent(event)
        record: dict[str, object] = {
            "timestamp": iso_time(event.get("log_time") or 0.0),
            "level": _JSON_LEVELS.get(event.get("log_level", LogLevel.info), "INFO"),
            "message": message,
            "logger": event.get("log_namespace") or "-",
        }
        request_id = event.get("request_id")
        if request_id is None:
            named = _REQUEST_ID.search(message)
            request_id = named.group(1) if named else None
        if request_id is not None:
            record["requestId"] = str(request_id)
        failure = event.get("log_failure")
        if failure is not None:
            record["errorType"] = failure.type.__name__
            record["errorMessage"] = failure.getErrorMessage()
            record["stackTrace"] = failure.getTraceback().rstrip("\n").splitlines()
        self._write((json.dumps(record, default=str) + "\n").encode())


#: Lambda's application levels, lowest first; Python's names for two of them too.
_APPLICATION_LEVELS = {
    "TRACE": 0,
    "DEBUG": 1,
    "INFO": 2,
    "WARN": 3,
    "WARNING": 3,
    "ERROR": 4,
    "FATAL": 5,
    "CRITICAL": 5,
}
_INFO = _APPLICATION_LEVELS["INFO"]


def _line_level(line: bytes) -> int:
    """A function output line's level: its JSON C{level} (or C{log_level}), else INFO."""
    text = line.strip()
    if not text.startswith(b"{"):
        return _INFO
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _INFO
    if not isinstance(record, dict):
        return _INFO
    level = record.get("level", record.get("log_level"))
    if not isinstance(level, str):
        return _INFO
    return _APPLICATION_LEVELS.get(level.upper(), _INFO)


def application_filter(level: str) -> Callable[[bytes], bytes]:
    """
    What Lambda keeps of function output in JSON format at application level
    C{level}: lines below it are dropped, a line's level being its JSON
    C{level} (any case) and INFO for any other line. Lines pass verbatim.
    """
    threshold = _APPLICATION_LEVELS[level.upper()]

    def keep(lines: bytes) -> bytes:
        if threshold <= _INFO and b"{" not in lines:
            return lines  # plain lines are INFO: all kept, nothing to parse
        kept = [line for line in lines.splitlines(keepends=True) if _line_level(line) >= threshold]
        return b"".join(kept)

    return keep
