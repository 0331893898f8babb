"""
One execution environment: a runtime (RIC) process and its own Runtime API.

Each environment listens on its own loopback port, so which process asked for
the next event is known from the socket it asked on. The environment owns the
runtime's state machine and its output; what to run and when to give up is
the L{Pool}'s business, told through the L{EnvironmentOwner} callbacks.

An environment is I{released} once its runtime has exited and its port is
closed (its slot may be reused), and has I{ended} once the process has ended
too (its output pipes are closed: nothing of it is left in the reactor).
Whatever the runtime started is found by the environment's marker (its
C{AWS_LAMBDA_LOG_STREAM_NAME}, unique to it, which children inherit) and
killed when the runtime exits, wherever those processes were re-parented.
"""

from __future__ import annotations

import datetime
import enum
import os
import signal
import uuid
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import errors, proctree
from .config import RapidConfig
from .invocation import Invocation, Outcome
from .logs import application_filter, observer
from .runtime_api import RuntimeAPIFactory
from .config import endpoint_description as tcp_description

#: How much of an invocation's output is kept for X-Amz-Log-Result.
LOG_TAIL_BYTES = 4096
#: The longest output line kept whole; a longer one is forwarded in pieces.
MAX_LINE = 64 * 1024
#: How long the output pipes of an exited runtime are read for its leftover children.
ORPHAN_OUTPUT_GRACE = 1.0
#: When what a runtime left is looked for a second time after its exit: one
#: forked just before the exit may be mid-exec at the first look, its
#: environment unreadable for that instant.
LEFTOVER_SWEEP = 0.2
#: How long a runtime that reported an init error gets to exit by itself.
INIT_ERROR_EXIT_GRACE = 2.0
#: The most reactor turns an answer waits for the runtime's output to be read.
MAX_OUTPUT_TURNS = 16
#: The variable whose value, unique to an environment, marks the processes its runtime started.
MARKER_VARIABLE = "AWS_LAMBDA_LOG_STREAM_NAME"

_SIGNAL_WORDS = {
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGINT: "interrupt",
    signal.SIGBUS: "bus error",
}


class State(enum.Enum):
    """Where the runtime is in its life."""

    STARTING = "starting"  # spawned, initialising: has not asked for an event yet
    IDLE = "idle"  # waiting in GET /next
    BUSY = "busy"  # running an event
    STOPPING = "stopping"  # being shut down; takes no more events
    DEAD = "dead"  # the process has exited


class EnvironmentOwner(Protocol):
    """What an environment tells its pool."""

    def environment_ready(self, environment: ExecutionEnvironment) -> None:
        """The runtime is waiting for an event."""

    def environment_answered(
        self,
        environment: ExecutionEnvironment,
        outcome: Outcome,
        body: bytes,
        error_type: str | None,
    ) -> None:
        """The runtime answered its current invocation."""

    def environment_exited(self, environment: ExecutionEnvironment, reason: str) -> None:
        """The runtime process exited (C{reason} as Go words it: C{exit status 1})."""


def exit_reason(failure: Failure) -> str:
    """Go's wording for how a process ended, as AWS reports it."""
    error = failure.value
    if isinstance(error, ProcessTerminated) and error.signal is not None:
        word = _SIGNAL_WORDS.get(signal.Signals(error.signal))
        return f"signal: {word or signal.Signals(error.signal).name}"
    if isinstance(error, (ProcessDone, ProcessTerminated)):
        return f"exit status {error.exitCode or 0}"
    return str(error)


class ExecutionEnvironment(ProcessProtocol):
    """A runtime process, its Runtime API listener, and its state."""

    log = Logger(observer=observer)

    def __init__(
        self,
        index: int,
        config: RapidConfig,
        owner: EnvironmentOwner,
        reactor: object,
        output: Callable[[bytes], None],
    ) -> None:
        self.index = index
        self.state = State.STARTING
        self.current: Invocation | None = None
        self.answered = False
        self.delivered_at = 0.0
        self.init_duration: float | None = None
        self.init_error: tuple[str | None, bytes] | None = None
        self.invocations = 0
        self.idle_since = 0.0
        #: Set once we asked the runtime to stop: its exit is no news.
        self.stop_requested = False
        self.runtime_port = config.runtime_port + index
        self.pid: int | None = None
        self._config = config
        self._owner = owner
        self._reactor = reactor
        self._output = output
        self._spawned_at = 0.0
        self._waiting: Deferred[Invocation] | None = None
        self._port: IListeningPort | None = None
        self._partial: dict[int, bytearray] = {}
        self._log_buffer = bytearray()
        #: In JSON log format, what is kept of the function's output lines (its application level).
        self._keep: Callable[[bytes], bytes] | None = None
        if config.log_format == "JSON" and config.application_log_level is not None:
            self._keep = application_filter(config.application_log_level)
        self._peak_kb = 0
        self._output_closer: IDelayedCall | None = None
        self._output_count = 0
        self._marker = b""
        #: Run when the runtime has exited (its kill timers).
        self._on_exit: list[Callable[[], object]] = []
        #: Answered GET next requests this environment will never give an event.
        self._refused: list[Deferred[Invocation]] = []
        self._pending_answer: (
            tuple[Invocation, Outcome, bytes, str | None, Deferred[None]] | None
        ) = None
        self._settle_call: IDelayedCall | None = None
        self._settle_then: Callable[[], None] | None = None
        self._settle_seen = 0
        self._settle_turns = 0
        self._exited = False
        self._process_ended = False
        self._sweep_call: IDelayedCall | None = None
        self._port_closed = False
        self._released: list[Deferred[None]] = []
        self._ended: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<ExecutionEnvironment #{self.index} {self.state.value} pid={self.pid}>"

    # Life cycle

    async def start(self) -> None:
        """Listen for the runtime, then spawn it; fails if neither can be done."""
        self._port = await self._listen()
        self.runtime_port = self._port.getHost().port  # type: ignore[attr-defined]
        self._spawn()

    async def _listen(self) -> IListeningPort:
        site = RuntimeAPIFactory(self, self._reactor)
        host = self._config.runtime_host
        try:
            port: IListeningPort = await serverFromString(
                self._reactor, tcp_description(host, self.runtime_port)
            ).listen(site)
            return port
        except CannotListenError as error:
            self.log.warn(
                "Runtime API port {port} for environment #{index} is taken ({error}); "
                "using a free port instead",
                port=self.runtime_port,
                index=self.index,
                error=error.socketError,
            )
            fallback: IListeningPort = await serverFromString(
                self._reactor, tcp_description(host, 0)
            ).listen(site)
            return fallback

    def _environ(self) -> dict[str, str]:
        config = self._config
        function = config.function
        host = config.runtime_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y/%m/%d")
        environ = dict(config.runtime_environ)
        environ.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"{host}:{self.runtime_port}",
                "_HANDLER": config.handler,
                "AWS_LAMBDA_FUNCTION_NAME": function.name,
                "AWS_LAMBDA_FUNCTION_VERSION": function.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[{function.version}]{uuid.uuid4().hex}",
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_REGION": function.region,
                "AWS_DEFAULT_REGION": function.region,
            }
        )
        return environ

    def _spawn(self) -> None:
        command = self._config.command
        environ = self._environ()
        self._marker = f"{MARKER_VARIABLE}={environ[MARKER_VARIABLE]}".encode()
        # Lambda runs the runtime in its task root.
        task_root = environ.get("LAMBDA_TASK_ROOT")
        self._spawned_at = self._reactor.seconds()  # type: ignore[attr-defined]
        transport = self._reactor.spawnProcess(  # type: ignore[attr-defined]
            self,
            command[0],
            args=list(command),
            env=environ,
            path=task_root if task_root and os.path.isdir(task_root) else None,
        )
        self.pid = transport.pid
        transport.closeStdin()
        self.log.info(
            "runtime #{index} started (pid {pid}): {command}",
            index=self.index,
            command=" ".join(command),
            pid=self.pid,
        )
        self.log.debug(
            "runtime #{index} has its Runtime API on port {port}",
            index=self.index,
            port=self.runtime_port,
        )

    def kill(self) -> None:
        """SIGKILL the runtime and everything it started."""
        if self.state is not State.DEAD and self.pid is not None:
            self.state = State.STOPPING
            self.stop_requested = True
            proctree.signal_tree(self.pid, signal.SIGKILL)

    def terminate(self, grace: float) -> Deferred[None]:
        """SIGTERM the runtime's tree, SIGKILL it after C{grace} seconds; fires once it is gone."""
        if self.state is not State.DEAD and self.pid is not None:
            self.state = State.STOPPING
            self.stop_requested = True
            proctree.signal_tree(self.pid, signal.SIGTERM)
            killer = self._reactor.callLater(grace, self.kill)  # type: ignore[attr-defined]
            self._on_exit.append(lambda: killer.cancel() if killer.active() else None)
        return self.ended()

    def released(self) -> Deferred[None]:
        """Fires once the runtime has exited and its port is closed: its slot may be reused."""
        return self._when(self._released, self._port_closed and self._gone(self._exited))

    def ended(self) -> Deferred[None]:
        """
        Fires once the process has ended (exited, and its output pipes closed)
        and its port is closed: nothing of this environment is left.
        """
        return self._when(self._ended, self._port_closed and self._gone(self._process_ended))

    def _gone(self, flag: bool) -> bool:
        return flag or self.pid is None  # never spawned: nothing to wait for

    @staticmethod
    def _when(waiters: list[Deferred[None]], done: bool) -> Deferred[None]:
        if done:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        return waiter

    def _check_done(self) -> None:
        if not self._port_closed:
            return
        if self._gone(self._exited):
            waiters, self._released = self._released, []
            for waiter in waiters:
                waiter.callback(None)
        if self._gone(self._process_ended) and self._sweep_call is None:
            waiters, self._ended = self._ended, []
            for waiter in waiters:
                waiter.callback(None)

    # The Runtime API's calls

    def next_invocation(self) -> Deferred[Invocation]:
        """GET /next: a Deferred that fires with the next event for this runtime."""
        self._settle_now()  # an answer waiting for the runtime's output is taken first
        if self.state is State.BUSY:
            if not self.answered:
                raise errors.invalid_state_transition(
                    "next called while invocation "
                    f"{self.current.request_id if self.current else ''} is still running"
                )
            self.current = None
        elif self.state is State.IDLE:
            if self._waiting is not None:
                raise errors.invalid_state_transition(
                    "next called twice without an event between"
                )
            # The runtime hung up an earlier GET /next and asks again.
        elif self.state is State.STARTING:
            if self.init_error is not None:
                raise errors.invalid_state_transition("next called after init/error")
            self.init_duration = self._reactor.seconds() - self._spawned_at  # type: ignore[attr-defined]
        elif self.state is State.STOPPING:
            # No more events, ever: this one is answered when the runtime is gone.
            refused: Deferred[Invocation] = Deferred(self._refused_cancelled)
            self._refused.append(refused)
            return refused
        else:  # DEAD: a child the runtime left is asking.
            raise errors.container_error("this execution environment's runtime has exited")
        self.state = State.IDLE
        self.idle_since = self._reactor.seconds()  # type: ignore[attr-defined]
        waiting: Deferred[Invocation] = Deferred(self._next_cancelled)
        self._waiting = waiting
        self._owner.environment_ready(self)
        return waiting

    def _refused_cancelled(self, refused: Deferred[Invocation]) -> None:
        if refused in self._refused:
            self._refused.remove(refused)

    def _next_cancelled(self, waiting: Deferred[Invocation]) -> None:
        # The runtime hung up its GET /next: it is dying, or will ask again.
        if self._waiting is waiting:
            self._waiting = None

    @property
    def waiting(self) -> bool:
        """Whether the runtime is waiting in GET /next right now."""
        return self._waiting is not None

    def deliver(self, invocation: Invocation) -> None:
        """Hand C{invocation} to the runtime waiting in GET /next."""
        waiting, self._waiting = self._waiting, None
        assert waiting is not None and self.state is State.IDLE, self
        self.state = State.BUSY
        self.current = invocation
        self.answered = False
        self.invocations += 1
        self.delivered_at = self._reactor.seconds()  # type: ignore[attr-defined]
        del self._log_buffer[:]
        waiting.callback(invocation)

    def answer(
        self, request_id: str, outcome: Outcome, body: bytes, error_type: str | None = None
    ) -> Deferred[None] | None:
        """
        POST /response or /error for C{request_id}; raises the AWS error if out
        of turn. When the invocation's log is wanted (reports, C{Tail}) the
        answer is taken once the runtime's output is read, and the Deferred
        returned fires then; otherwise it is taken at once and None returned.
        """
        current = self.current
        if self.state is State.DEAD or current is None or current.request_id != request_id:
            raise errors.invalid_request_id(request_id)
        if self.answered:
            raise errors.invalid_state_transition(
                f"invocation {request_id} has already been answered"
            )
        self.answered = True
        if not self._wants_log(current):
            self._owner.environment_answered(self, outcome, body, error_type)
            return None
        taken: Deferred[None] = Deferred()
        self._pending_answer = (current, outcome, body, error_type, taken)
        self._after_output(self._take_answer)
        return taken

    def _wants_log(self, invocation: Invocation | None) -> bool:
        return self._config.print_reports or (invocation is not None and invocation.tail_log)

    def _take_answer(self) -> None:
        pending, self._pending_answer = self._pending_answer, None
        if pending is None:
            return
        invocation, outcome, body, error_type, taken = pending
        if self.current is invocation:  # not timed out meanwhile
            self._owner.environment_answered(self, outcome, body, error_type)
        taken.callback(None)

    def init_failed(self, error_type: str | None, body: bytes) -> None:
        """POST /init/error: keep the error for the invocation that caused this init."""
        if self.state is not State.STARTING or self.init_error is not None:
            raise errors.invalid_state_transition("init/error is only allowed during init")
        self.init_error = (error_type, body)
        killer = self._reactor.callLater(INIT_ERROR_EXIT_GRACE, self.kill)  # type: ignore[attr-defined]
        self._on_exit.append(lambda: killer.cancel() if killer.active() else None)

    # Output

    def take_log(self) -> bytes:
        """The current invocation's output so far (its last 4 KB at least)."""
        return bytes(self._log_buffer)

    def _after_output(self, then: Callable[[], None]) -> None:
        """
        Call C{then} once the output the runtime wrote before now has been read.

        A runtime writes its log lines before it posts its answer (or exits),
        but the reactor may read the answer's socket before the pipes, which
        already hold the lines. Every reactor turn reads the pipes (8 KB at a
        time), so wait for turns until one brings no output: one turn after
        the current one at least, L{MAX_OUTPUT_TURNS} at most. Only done when
        the log is wanted, and it costs a turn or two: microseconds.
        """
        self._settle_then = then
        self._settle_seen = self._output_count
        self._settle_turns = 0
        self._settle_call = self._reactor.callLater(0, self._settle_turn)  # type: ignore[attr-defined]

    def _settle_turn(self) -> None:
        self._settle_turns += 1
        fresh = self._output_count != self._settle_seen
        self._settle_seen = self._output_count
        if (fresh or self._settle_turns == 1) and self._settle_turns < MAX_OUTPUT_TURNS:
            self._settle_call = self._reactor.callLater(0, self._settle_turn)  # type: ignore[attr-defined]
        else:
            self._settle_call = None
            self._settle_now()

    def _settle_now(self) -> None:
        """Stop waiting for output: do now what was to be done once it was read."""
        call, self._settle_call = self._settle_call, None
        if call is not None and call.active():
            call.cancel()
        then, self._settle_then = self._settle_then, None
        if then is not None:
            then()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output_count += 1
        if self._keep is None:
            self._keep_for_tail(data)  # as written, partial lines too
        partial = self._partial.get(childFD)
        if partial is None:
            partial = self._partial[childFD] = bytearray()
        cut = data.rfind(b"\n") + 1
        if cut:
            if partial:
                self._emit(bytes(partial) + data[:cut])
                del partial[:]
            else:
                self._emit(data[:cut])
        partial += data[cut:]
        if len(partial) > MAX_LINE:
            # A line with no end in sight (a progress bar): forward what there is.
            self._emit(bytes(partial) + b"\n")
            del partial[:]

    def _keep_for_tail(self, data: bytes) -> None:
        buffer = self._log_buffer
        buffer += data
        if len(buffer) > 4 * LOG_TAIL_BYTES:
            del buffer[: -LOG_TAIL_BYTES * 2]

    def _emit(self, lines: bytes) -> None:
        """Forward whole lines of output; in JSON format only those at the application level."""
        if self._keep is not None:
            lines = self._keep(lines)
            if not lines:
                return
            self._keep_for_tail(lines)  # Tail holds what is printed, as on Lambda
        self._output(lines)

    def peak_memory_kb(self) -> int:
        """The peak RSS of the runtime's process tree, in kB (its last reading once it is gone)."""
        if self.pid is not None and self.state is not State.DEAD:
            self._peak_kb = max(self._peak_kb, proctree.peak_rss_kb(self.pid))
        return self._peak_kb

    # The process's end

    def processExited(self, reason: Failure) -> None:
        self._settle_now()  # an answer posted before the exit comes first
        why = exit_reason(reason)
        self.state = State.DEAD
        # What the runtime started goes with it (its children are no longer
        # its children: they were re-parented, so found by the marker).
        proctree.signal_marked(self._marker, signal.SIGKILL)
        self._sweep_call = self._reactor.callLater(  # type: ignore[attr-defined]
            LEFTOVER_SWEEP, self._sweep
        )
        self.log.info(
            "runtime #{index} (pid {pid}) exited: {reason}", index=self.index, pid=self.pid, reason=why
        )
        gone = errors.container_error(
            f"the runtime exited ({why}): this execution environment takes no more events"
        )
        waiting, self._waiting = self._waiting, None
        refused, self._refused = self._refused, []
        for each in ([waiting] if waiting is not None else []) + refused:
            each.errback(gone)
        if self._wants_log(self.current):
            self._after_output(lambda: self._exited_now(why))
        else:
            self._exited_now(why)

    def _exited_now(self, why: str) -> None:
        for partial in self._partial.values():
            if partial:
                self._emit(bytes(partial) + b"\n")
        self._partial.clear()
        self._exited = True
        callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback()
        self._owner.environment_exited(self, why)
        self.current = None  # an answer from now on is for an invocation that is over: 400
        # Its slot is free once its port is: whatever the runtime left may keep
        # its output pipes open for a while, and is no business of the slot.
        self.close()
        if not self._process_ended:
            self._output_closer = self._reactor.callLater(  # type: ignore[attr-defined]
                ORPHAN_OUTPUT_GRACE, self._close_output
            )

    def _sweep(self) -> None:
        """Kill what the runtime left once more; the environment has ended only after this."""
        self._sweep_call = None
        proctree.signal_marked(self._marker, signal.SIGKILL)
        self._check_done()

    def _close_output(self) -> None:
        """Stop reading pipes that processes the runtime left still hold, and kill those again."""
        self._output_closer = None
        proctree.signal_marked(self._marker, signal.SIGKILL)
        transport = self.transport
        if transport is not None:
            for fd in (1, 2):
                transport.closeChildFD(fd)  # type: ignore[attr-defined]

    def processEnded(self, reason: Failure) -> None:
        """The process has exited and its pipes are closed: nothing of it is left."""
        closer, self._output_closer = self._output_closer, None
        if closer is not None and closer.active():
            closer.cancel()
        self._process_ended = True
        self._check_done()

    def close(self) -> Deferred[None]:
        """Stop listening (at the end, or for an environment whose runtime never started)."""
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        closed = stopped if isinstance(stopped, Deferred) else succeed(None)
        return closed.addCallback(self._port_stopped)

    def _port_stopped(self, _: object) -> None:
        self._port_closed = True
        self._check_done()
