"""
The daemon's standard output, written so that nobody reading it slowly can
stall the daemon.

Runtime output, START/END/REPORT lines and the console script's log lines
all go to stdout, which is often a pipe to a log shipper. A blocking write to
a pipe nobody reads would freeze the reactor: no invocation, timeout or health
check would be answered any more. So writes are queued, and a thread of their
own writes them out. The queue is bounded: when it is full, whole writes are
dropped and counted, and once output flows again one line says how much was
lost, as Lambda drops logs rather than stall a function.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from collections import deque

from .logs import iso_time

#: How much output may wait for a slow reader before writes are dropped.
DEFAULT_LIMIT = 4 * 1024 * 1024
#: The most written in one system call.
_CHUNK = 64 * 1024


class OutputWriter:
    """
    Writes bytes to a file descriptor from its own thread, holding at most
    C{limit} bytes for it; L{write} never blocks.
    """

    def __init__(self, fd: int, limit: int = DEFAULT_LIMIT, json_notices: bool = False) -> None:
        self._fd = fd
        #: In JSON log format the drop notice is a JSON log record, like every line of ours.
        self._json_notices = json_notices
        self._limit = limit
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._broken = False
        self._closing = False
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _ensure_thread(self) -> None:
        """Start the writing thread on first use (and again in a forked child: twistd daemonizes)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="lambdarapid-output", daemon=True
            )
            self._thread.start()

    @property
    def dropped_lines(self) -> int:
        """Lines dropped so far and not yet reported in the output."""
        return self._dropped_lines

    def write(self, data: bytes) -> None:
        """Queue C{data}; drop it (and count it) if the queue is full."""
        if not data:
            return
        with self._lock:
            if self._broken or self._closing:
                return
            if self._queued + len(data) > self._limit:
                self._dropped_lines += data.count(b"\n") or 1
                self._dropped_bytes += len(data)
                return
            self._queue.append(data)
            self._queued += len(data)
            self._ensure_thread()
            self._lock.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, for at most C{timeout} seconds, then stop."""
        with self._lock:
            self._closing = True
            self._lock.notify()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            thread.join(timeout)

    def _next_chunk(self) -> bytes | None:
        """What to write next, or None once closed and empty; under the lock."""
        while not self._queue:
            if self._dropped_lines:
                return self._dropped_notice()
            if self._closing:
                return None
            self._lock.wait()
        pieces = [self._queue.popleft()]
        size = len(pieces[0])
        while self._queue and size + len(self._queue[0]) <= _CHUNK:
            piece = self._queue.popleft()
            pieces.append(piece)
            size += len(piece)
        self._queued -= size
        chunk = b"".join(pieces)
        if self._dropped_lines and self._queued < self._limit // 2:
            chunk = self._dropped_notice() + chunk
        return chunk

    def _dropped_notice(self) -> bytes:
        message = (
            f"dropped {self._dropped_lines} line(s) ({self._dropped_bytes} bytes) "
            "of output: stdout was not read fast enough"
        )
        self._dropped_lines = self._dropped_bytes = 0
        if self._json_notices:
            record = {
                "timestamp": iso_time(time.time()),
                "level": "WARN",
                "message": message,
                "logger": "lambdarapid.output",
            }
            return (json.dumps(record) + "\n").encode()
        return f"lambdarapid: {message}\n".encode()

    def _run(self) -> None:
        while True:
            with self._lock:
                chunk = self._next_chunk()
            if chunk is None:
                return
            view = memoryview(chunk)
            try:
                while view:
                    try:
                        view = view[os.write(self._fd, view) :]
                    except BlockingIOError:  # an fd someone made non-blocking
                        select.select([], [self._fd], [], 1.0)
            except OSError:
                # Nobody reads our stdout any more: the daemon keeps running.
                with self._lock:
                    self._broken = True
                    self._queue.clear()
                    self._queued = 0
                return


class TextOutput:
    """A text-file face of an L{OutputWriter}, for C{textFileLogObserver}."""

    def __init__(self, writer: OutputWriter, encoding: str = "utf-8") -> None:
        self._writer = writer
        self._encoding = encoding

    def write(self, text: str) -> int:
        self._writer.write(text.encode(self._encoding, "replace"))
        return len(text)

    def flush(self) -> None:
        """Writes are already on their way."""


def stdout_writer(log_format: str = "Text") -> OutputWriter:
    """An L{OutputWriter} on our standard output, its notices in C{log_format}."""
    return OutputWriter(sys.stdout.buffer.fileno(), json_notices=log_format == "JSON")
