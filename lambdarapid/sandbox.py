"""
The processes of one execution environment: its runtime and its external
extensions, and whatever they leave behind.

The environment decides what each exit means; this knows how to start the
processes, signal them, and tell when nothing of them is left. Whatever the
runtime started is found by the environment's marker (its
C{AWS_LAMBDA_LOG_STREAM_NAME}, unique to it, which children inherit) and
killed when the runtime exits, wherever those processes were re-parented;
each extension leads its own process group, which is signalled whole.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.interfaces import IDelayedCall

from . import proctree
from .capture import EXTENSION, FUNCTION, OutputCapture
from .sandbox_process import SandboxProcess

#: How long the output pipes of an exited process are read for its leftover children.
ORPHAN_OUTPUT_GRACE = 1.0
#: When what a runtime left is looked for a second time after its exit: one
#: forked just before the exit may be mid-exec at the first look, its
#: environment unreadable for that instant.
LEFTOVER_SWEEP = 0.2

Exited = Callable[[SandboxProcess, str], None]


class Sandbox:
    """Starts, signals and outlives the processes of one environment."""

    def __init__(
        self,
        reactor: Any,
        capture: OutputCapture,
        runtime_exited: Exited,
        extension_exited: Exited,
        changed: Callable[[], None],
    ) -> None:
        self.runtime: SandboxProcess | None = None
        self.external: dict[str, SandboxProcess] = {}
        #: C{NAME=value} of the variable that marks what the runtime started.
        self.marker = b""
        self._reactor = reactor
        self._capture = capture
        self._runtime_exited = runtime_exited
        self._extension_exited = extension_exited
        self._changed = changed
        self._sweep_call: IDelayedCall | None = None
        #: When each exited process's pipes stop being read, if its leftovers hold them.
        self._closers: dict[SandboxProcess, IDelayedCall] = {}

    @property
    def processes(self) -> list[SandboxProcess]:
        return ([self.runtime] if self.runtime is not None else []) + list(self.external.values())

    @property
    def exited(self) -> bool:
        """Whether every process has exited (or never started)."""
        return all(each.has_exited or each.pid is None for each in self.processes)

    @property
    def ended(self) -> bool:
        """Whether every process has ended (its pipes closed too) and the last leftover look is done."""
        return self._sweep_call is None and all(
            each.has_ended or each.pid is None for each in self.processes
        )

    # Starting

    def launch_extensions(self, paths: Sequence[str], environ: Mapping[str, str]) -> str | None:
        """
        Start every external extension at once, each in its own process
        group (through util-linux's C{setsid}, which execs in place, when the
        image has it); the cause of the failure if one cannot be started.
        """
        setsid = shutil.which("setsid", path=environ.get("PATH", os.defpath))
        for path in paths:
            name = os.path.basename(path)
            process = SandboxProcess(
                name, EXTENSION, self._capture, self._extension_exited, self._ended
            )
            try:
                process.spawn(self._reactor, [path], environ, new_group=setsid)
            except OSError as error:
                return f"fork/exec {path}: {error.strerror or error}"
            self.external[name] = process
        return None

    def spawn_runtime(
        self, command: Sequence[str], environ: Mapping[str, str], marker_variable: str
    ) -> SandboxProcess:
        """Start the runtime, in its task root (as Lambda does) when there is one."""
        self.marker = f"{marker_variable}={environ[marker_variable]}".encode()
        task_root = environ.get("LAMBDA_TASK_ROOT")
        self.runtime = SandboxProcess(
            "runtime", FUNCTION, self._capture, self._runtime_has_exited, self._ended
        )
        self.runtime.spawn(
            self._reactor,
            command,
            environ,
            path=task_root if task_root and os.path.isdir(task_root) else None,
        )
        return self.runtime

    # Signals

    def signal_runtime(self, signum: int) -> None:
        if self.runtime is not None:
            self.runtime.signal(signum)

    def signal_extension(self, name: str, signum: int) -> None:
        process = self.external.get(name)
        if process is not None:
            process.signal(signum)

    def kill(self) -> None:
        """SIGKILL every process and everything they started."""
        for process in self.processes:
            process.signal(signal.SIGKILL)

    # Ends

    def _runtime_has_exited(self, process: SandboxProcess, why: str) -> None:
        # What the runtime started goes with it (its children are no longer
        # its children: they were re-parented, so found by the marker).
        proctree.signal_marked(self.marker, signal.SIGKILL)
        self._sweep_call = self._reactor.callLater(LEFTOVER_SWEEP, self._sweep)
        self._runtime_exited(process, why)

    def _sweep(self) -> None:
        """Kill what the runtime left once more; the sandbox has ended only after this."""
        self._sweep_call = None
        proctree.signal_marked(self.marker, signal.SIGKILL)
        self._changed()

    def done_with(self, process: SandboxProcess) -> None:
        """C{process} has exited and its exit is dealt with: its pipes are read a while longer at most."""
        if not process.has_ended:
            self._closers[process] = self._reactor.callLater(
                ORPHAN_OUTPUT_GRACE, self._close_output, process
            )

    def _close_output(self, process: SandboxProcess) -> None:
        """Stop reading pipes that processes it left still hold, and kill those again."""
        self._closers.pop(process, None)
        if process is self.runtime:
            proctree.signal_marked(self.marker, signal.SIGKILL)
        process.close_output()

    def _ended(self, process: SandboxProcess) -> None:
        closer = self._closers.pop(process, None)
        if closer is not None and closer.active():
            closer.cancel()
        self._changed()
