"""
What the processes of one execution environment print.

The runtime and every external extension share one log stream, as on Lambda:
their output is cut into whole lines (so two processes' lines never mix), the
current invocation's window is kept for C{X-Amz-Log-Result}, and every line
is told to whoever wants it by source (C{function} or C{extension}), which is
how telemetry hears of them.
"""

from __future__ import annotations

from typing import Callable, Hashable

#: How much of an invocation's output is kept for X-Amz-Log-Result.
LOG_TAIL_BYTES = 4096
#: The longest output line kept whole; a longer one is forwarded in pieces.
MAX_LINE = 64 * 1024

FUNCTION = "function"
EXTENSION = "extension"

LineObserver = Callable[[str, bytes], None]


class OutputCapture:
    """
    One environment's log stream, fed by each of its processes' pipes.

    C{keep}, in JSON log format, filters the function's lines by its
    application log level; C{Tail} then holds what is printed, as on Lambda.
    """

    def __init__(
        self,
        output: Callable[[bytes], None],
        keep: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._output = output
        self._keep = keep
        self._partial: dict[Hashable, bytearray] = {}
        self._window = bytearray()
        #: Told every forwarded run of whole lines, with its source.
        self.observer: LineObserver | None = None
        #: How many pieces of output were read: what is waited on to know the pipes are drained.
        self.reads = 0

    def feed(self, stream: Hashable, source: str, data: bytes) -> None:
        """C{data} as read from C{stream} (a process's pipe) of C{source}."""
        self.reads += 1
        if self._keep is None or source != FUNCTION:
            self._keep_for_tail(data)  # as written, partial lines too
        partial = self._partial.get(stream)
        if partial is None:
            partial = self._partial[stream] = bytearray()
        cut = data.rfind(b"\n") + 1
        if cut:
            if partial:
                self._emit(source, bytes(partial) + data[:cut])
                del partial[:]
            else:
                self._emit(source, data[:cut])
        partial += data[cut:]
        if len(partial) > MAX_LINE:
            # A line with no end in sight (a progress bar): forward what there is.
            self._emit(source, bytes(partial) + b"\n")
            del partial[:]

    def finish(self, stream: Hashable, source: str) -> None:
        """C{stream} is closed: its unfinished last line is a line."""
        partial = self._partial.pop(stream, None)
        if partial:
            self._emit(source, bytes(partial) + b"\n")

    def finish_all(self, source: str, streams: tuple[Hashable, ...]) -> None:
        for stream in streams:
            self.finish(stream, source)

    def restart_window(self) -> None:
        """An invocation starts: its window starts empty."""
        del self._window[:]

    def window(self) -> bytes:
        """The current invocation's output so far (its last 4 KB at least)."""
        return bytes(self._window)

    def _keep_for_tail(self, data: bytes) -> None:
        window = self._window
        window += data
        if len(window) > 4 * LOG_TAIL_BYTES:
            del window[: -LOG_TAIL_BYTES * 2]

    def _emit(self, source: str, lines: bytes) -> None:
        if self._keep is not None and source == FUNCTION:
            lines = self._keep(lines)
            if not lines:
                return
            self._keep_for_tail(lines)
        self._output(lines)
        if self.observer is not None:
            self.observer(source, lines)
