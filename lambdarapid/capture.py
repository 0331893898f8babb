"""
What the processes of one execution environment print.

The runtime and every external extension share one log stream, as on Lambda:
their output is cut into whole lines (so two processes' lines never mix), the
current invocation's window is kept for C{X-Amz-Log-Result}, and every line
is told to whoever wants it by source (C{function} or C{extension}), which is
how telemetry hears of them.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IDelayedCall

#: How much of an invocation's output is kept for X-Amz-Log-Result.
LOG_TAIL_BYTES = 4096
#: The longest output line kept whole; a longer one is forwarded in pieces.
MAX_LINE = 64 * 1024
#: The most reactor turns L{OutputCapture.after_output} waits for output to be read.
MAX_OUTPUT_TURNS = 16

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
        reactor: Any,
        keep: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._output = output
        self._reactor = reactor
        self._settle_call: IDelayedCall | None = None
        self._settle_then: Callable[[], None] | None = None
        self._settle_seen = 0
        self._settle_turns = 0
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

    # Waiting for what was written to be read

    def after_output(self, then: Callable[[], None]) -> None:
        """
        Call C{then} once the output written before now has been read.

        A runtime writes its log lines before it posts its answer (or exits),
        but the reactor may read the answer's socket before the pipes, which
        already hold the lines. Every reactor turn reads the pipes (8 KB at a
        time), so wait for turns until one brings no output: one turn after
        the current one at least, L{MAX_OUTPUT_TURNS} at most. Only done when
        the log is wanted, and it costs a turn or two: microseconds.
        """
        earlier = self._settle_then
        if earlier is not None:  # both wait for the same output: the earlier first

            def both() -> None:
                earlier()
                then()

            self._settle_then = both
            return
        self._settle_then = then
        self._settle_seen = self.reads
        self._settle_turns = 0
        self._settle_call = self._reactor.callLater(0, self._settle_turn)

    def _settle_turn(self) -> None:
        self._settle_turns += 1
        fresh = self.reads != self._settle_seen
        self._settle_seen = self.reads
        if (fresh or self._settle_turns == 1) and self._settle_turns < MAX_OUTPUT_TURNS:
            self._settle_call = self._reactor.callLater(0, self._settle_turn)
        else:
            self._settle_call = None
            self.settle_now()

    def settle_now(self) -> None:
        """Stop waiting for output: do now what was to be done once it was read."""
        call, self._settle_call = self._settle_call, None
        if call is not None and call.active():
            call.cancel()
        then, self._settle_then = self._settle_then, None
        if then is not None:
            then()
