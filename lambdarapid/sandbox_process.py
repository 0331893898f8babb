"""
One process of an execution environment: its runtime or an external extension.

Each writes into the environment's L{OutputCapture} and tells the
environment when it has exited (with Go's words for how: AWS reports them)
and when it has ended (its pipes closed too).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from . import proctree
from .capture import OutputCapture

_SIGNAL_WORDS = {
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGINT: "interrupt",
    signal.SIGBUS: "bus error",
}


def exit_reason(failure: Failure) -> str:
    """Go's wording for how a process ended, as AWS reports it."""
    error = failure.value
    if isinstance(error, ProcessTerminated) and error.signal is not None:
        word = _SIGNAL_WORDS.get(signal.Signals(error.signal))
        return f"signal: {word or signal.Signals(error.signal).name}"
    if isinstance(error, (ProcessDone, ProcessTerminated)):
        return f"exit status {error.exitCode or 0}"
    return str(error)


class SandboxProcess(ProcessProtocol):
    """A child process whose output is part of the environment's log."""

    def __init__(
        self,
        name: str,
        source: str,
        capture: OutputCapture,
        exited: Callable[[SandboxProcess, str], None],
        ended: Callable[[SandboxProcess], None],
    ) -> None:
        self.name = name
        self.source = source
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.has_exited = False
        self.has_ended = False
        #: Its own process group (an extension started through setsid): signalled whole.
        self.group = False
        self._capture = capture
        self._exited = exited
        self._ended = ended

    def __repr__(self) -> str:
        return f"<SandboxProcess {self.name} pid={self.pid}>"

    def spawn(
        self,
        reactor: Any,
        command: Sequence[str],
        environ: Mapping[str, str],
        path: str | None = None,
        new_group: str | None = None,
    ) -> None:
        """
        Start it, stdin closed. With C{new_group} (the path of util-linux's
        C{setsid}, which execs in place: the pid stays) it leads its own
        process group, as Lambda starts extensions.
        """
        args = list(command)
        executable = args[0]
        if new_group is not None:
            args = [new_group, *args]
            executable = new_group
            self.group = True
        transport = reactor.spawnProcess(
            self, executable, args=args, env=dict(environ), path=path
        )
        self.pid = transport.pid
        transport.closeStdin()

    def signal(self, signum: int) -> None:
        """Signal it and everything it started that is still its own (its group, its tree)."""
        if self.has_exited or self.pid is None:
            return
        if self.group:
            proctree.signal_group(self.pid, signum)
        proctree.signal_tree(self.pid, signum)

    def close_output(self) -> None:
        """Stop reading its pipes (processes it left still hold them)."""
        transport = self.transport
        if transport is not None:
            for fd in (1, 2):
                transport.closeChildFD(fd)  # type: ignore[attr-defined]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._capture.feed((self, childFD), self.source, data)

    def finish_output(self) -> None:
        """Its unfinished last lines are lines."""
        self._capture.finish_all(self.source, ((self, 1), (self, 2)))

    def processExited(self, reason: Failure) -> None:
        self.has_exited = True
        error = reason.value
        if isinstance(error, (ProcessDone, ProcessTerminated)) and getattr(error, "signal", None) is None:
            self.exit_status = error.exitCode or 0
        self._exited(self, exit_reason(reason))

    def processEnded(self, reason: Failure) -> None:
        self.has_ended = True
        self._ended(self)
