"""
One execution environment, as Lambda means it: a sandbox of processes (the
runtime and its external extensions) going through Init, Invoke ... and
Shutdown, with its own Runtime API port.

Each environment listens on its own loopback port, so which process asked is
known from the socket it asked on (and, for extensions, from their
identifier). The environment owns its whole life cycle: the L{Pool} sends it
commands (L{deliver}, L{time_out}, L{shut_down}) and hears of it through the
L{EnvironmentOwner} callbacks (ready, answered, failed, ended). Its
processes are its L{Sandbox}'s; what they print, its L{OutputCapture}'s; who
registered, its L{Extensions}'; who subscribed, its L{TelemetryHub}'s.

An environment is I{released} once all its processes have exited and its
port is closed (its slot may be reused), and has I{ended} once their pipes
are closed too (nothing of it is left in the reactor).
"""

from __future__ import annotations

import datetime
import os
import signal
import uuid
from typing import Any, Callable

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger

from . import errors, proctree, reports
from .capture import FUNCTION, LOG_TAIL_BYTES, OutputCapture
from .config import ACCOUNT_ID, RapidConfig
from .config import endpoint_description as tcp_description
from .extensions import (
    INVOKE,
    MAX_EXTENSIONS,
    SHUTDOWN,
    Extension,
    Extensions,
    ExtensionState,
    discover,
    extension_environ,
)
from .invocation import Invocation, Outcome
from .lifecycle import EnvironmentFailure, EnvironmentOwner, State
from .logs import application_filter, observer
from .reports import PlatformLines
from .runtime_api import RuntimeAPIFactory
from .sandbox import LEFTOVER_SWEEP, ORPHAN_OUTPUT_GRACE, Sandbox
from .sandbox_process import SandboxProcess, exit_reason
from .streams import ResponseStream
from .telemetry import TelemetryHub

__all__ = [
    "LEFTOVER_SWEEP",
    "LOG_TAIL_BYTES",
    "ORPHAN_OUTPUT_GRACE",
    "EnvironmentFailure",
    "EnvironmentOwner",
    "ExecutionEnvironment",
    "State",
    "exit_reason",
]

#: How long a runtime gets between SIGTERM and SIGKILL when it is stopped (no extensions).
KILL_GRACE = 2.0
#: Lambda's limit for the init phase; a longer function timeout extends it, as
#: Lambda retries a slow init within the first invocation's timeout.
INIT_TIMEOUT = 10.0
#: How long a runtime that reported an init error gets to exit by itself.
INIT_ERROR_EXIT_GRACE = 2.0
#: The variable whose value, unique to an environment, marks the processes its runtime started.
MARKER_VARIABLE = "AWS_LAMBDA_LOG_STREAM_NAME"
#: Lambda's Shutdown phase with extensions: everything is gone by then.
SHUTDOWN_BUDGET = 2.0
#: The runtime's share of it (more when an internal extension must flush).
RUNTIME_SHUTDOWN_SHARE = 0.3
RUNTIME_SHUTDOWN_SHARE_INTERNAL = 0.5
#: How often telemetry's reports read the runtime's peak memory from /proc at most.
MEMORY_READ_INTERVAL = 0.1
#: How long telemetry still gets to deliver at the end of a Shutdown.
TELEMETRY_FLUSH_TIMEOUT = 0.5


def _json_record(line: bytes) -> Any:
    """A function's log line in JSON log format: its object, as telemetry gives it; else its text."""
    if line.startswith(b"{"):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return line


def _epoch_ms(seconds: float) -> int:
    return int(seconds * 1000)


class ExecutionEnvironment:
    """A runtime, its external extensions, its Runtime API listener, and its phase."""

    log = Logger(observer=observer)

    def __init__(
        self,
        index: int,
        config: RapidConfig,
        owner: EnvironmentOwner,
        reactor: Any,
        output: Callable[[bytes], None],
    ) -> None:
        self.index = index
        self.state = State.STARTING
        #: on-demand, or provisioned-concurrency for one started ahead of any
        #: invocation (PROVISIONED_CONCURRENCY): set before L{start}.
        self.initialization_type = reports.ON_DEMAND
        self.current: Invocation | None = None
        self.answered = False
        self.delivered_at = 0.0
        self.init_duration: float | None = None
        self.init_error: tuple[str | None, bytes] | None = None
        self.invocations = 0
        self.idle_since = 0.0
        #: Set once it was asked to stop: its processes' exits are no news.
        self.stop_requested = False
        self.runtime_port = config.runtime_port + index
        #: How the runtime ended, in Lambda's words, once it has.
        self.exit_reason: str | None = None
        self._config = config
        self._owner = owner
        self._reactor = reactor
        self._platform = PlatformLines(config.function, config.log_format, reactor)
        self._print = output
        keep = None
        if config.log_format == "JSON" and config.application_log_level is not None:
            keep = application_filter(config.application_log_level)
        self.capture = OutputCapture(output, reactor, keep)
        self.capture.observer = self._log_lines
        self.telemetry = TelemetryHub(reactor, config.function)
        self.sandbox = Sandbox(
            reactor, self.capture, self._runtime_exited, self._extension_exited, self._check_done
        )
        external, refused = discover(config.extensions_dir)
        self._external_paths = external
        self._launch_refused = refused
        self.extensions = Extensions(
            [os.path.basename(path) for path in external], self._check_phase
        )
        self._started_at = 0.0
        self._spawned_at = 0.0
        self._environ: dict[str, str] = {}
        self._port: IListeningPort | None = None
        self._port_closed = False
        self._peak_kb = 0
        self._peak_read_at = float("-inf")
        self._runtime_waiting: Deferred[Invocation] | None = None
        #: Answered GET next requests this environment will never give an event.
        self._refused: list[Deferred[Invocation]] = []
        self._pending_answer: (
            tuple[Invocation, Outcome, bytes, str | None, str | None, Deferred[None]] | None
        ) = None
        #: The runtime's process has exited: nothing it sends counts any more.
        self._runtime_exited_at: float | None = None
        #: The invocation whose phase is under way (it runs on after the runtime's answer).
        self._phase: Invocation | None = None
        self._phase_timer: IDelayedCall | None = None
        self._runtime_done = False
        self._answered_at = 0.0
        self._answer_status = "success"
        self._produced = 0
        self._failure: EnvironmentFailure | None = None
        #: Shutdown's timers: cancelled once everything has exited.
        self._timers: list[IDelayedCall] = []
        #: What Shutdown does once the runtime has exited.
        self._after_runtime: Callable[[], None] | None = None
        self._shutdown: Deferred[None] | None = None
        self._released: list[Deferred[None]] = []
        self._ended: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<ExecutionEnvironment #{self.index} {self.state.value} pid={self.pid}>"

    @property
    def runtime(self) -> SandboxProcess | None:
        return self.sandbox.runtime

    @property
    def pid(self) -> int | None:
        """The runtime's process id, once it is started."""
        runtime = self.sandbox.runtime
        return runtime.pid if runtime is not None else None

    @property
    def _has_extensions(self) -> bool:
        return bool(self._external_paths or self._launch_refused or len(self.extensions))

    def _now(self) -> float:
        return float(self._reactor.seconds())

    def _later(self, delay: float, call: Callable[..., object], *args: object) -> IDelayedCall:
        timer: IDelayedCall = self._reactor.callLater(delay, call, *args)
        self._timers.append(timer)
        return timer

    # Init

    async def start(self) -> None:
        """Listen, launch the external extensions, and the runtime once they have registered."""
        try:
            await self._start()
        except BaseException:
            self.state = State.DEAD  # nothing of it runs: the pool closes it
            raise

    async def _start(self) -> None:
        self._port = await self._listen()
        self.runtime_port = self._port.getHost().port  # type: ignore[attr-defined]
        self._started_at = self._now()
        self._environ = self._runtime_environ()
        self.telemetry.platform(
            "platform.initStart",
            reports.init_start_record(self._config.function, self.initialization_type),
        )
        if self._launch_extensions():
            self._spawn_runtime_when_registered()

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

    def _runtime_environ(self) -> dict[str, str]:
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
                "AWS_LAMBDA_INITIALIZATION_TYPE": self.initialization_type,
                "AWS_REGION": function.region,
                "AWS_DEFAULT_REGION": function.region,
            }
        )
        return environ

    def _launch_extensions(self) -> bool:
        """Start every external extension at once; False if one cannot be (a LaunchError)."""
        if self._launch_refused:
            cause: str | None = self._launch_refused[0][1]
        elif len(self._external_paths) > MAX_EXTENSIONS:
            cause = "ErrTooManyExtensions"
        else:
            cause = self.sandbox.launch_extensions(
                self._external_paths, extension_environ(self._environ)
            )
        for name, process in self.sandbox.external.items():
            self.log.info(
                "extension {name} of environment #{index} started (pid {pid})",
                name=name,
                index=self.index,
                pid=process.pid,
            )
        if cause is not None:
            self._fail(
                EnvironmentFailure(
                    Outcome.INIT_ERROR, "Extension.LaunchError", cause, during_init=True
                )
            )
            return False
        return True

    def _spawn_runtime_when_registered(self) -> None:
        if (
            self.sandbox.runtime is None
            and self.state is State.STARTING
            and self.extensions.externals_registered
        ):
            self._spawned_at = self._now()
            runtime = self.sandbox.spawn_runtime(
                self._config.command, self._environ, MARKER_VARIABLE
            )
            self.log.info(
                "runtime #{index} started (pid {pid}): {command}",
                index=self.index,
                command=" ".join(self._config.command),
                pid=runtime.pid,
            )
            self.log.debug(
                "runtime #{index} has its Runtime API on port {port}",
                index=self.index,
                port=self.runtime_port,
            )

    def _init_done(self) -> None:
        """The runtime and every extension asked for an event: Init is over."""
        now = self._now()
        self.init_duration = now - (
            self._started_at if self.sandbox.external else self._spawned_at
        )
        if self.telemetry.subscribed:
            self.telemetry.platform(
                "platform.initRuntimeDone",
                reports.init_done_record("success", initialization_type=self.initialization_type),
            )
        for extension in self.extensions:
            self._report_extension(extension)
        if self.telemetry.subscribed:
            self.telemetry.platform(
                "platform.initReport",
                reports.init_report_record(
                    self.init_duration, "success", self.initialization_type
                ),
            )
        self.telemetry.close_subscriptions()
        self._become_idle()

    def _report_extension(self, extension: Extension) -> None:
        """The EXTENSION line (with reports) and the platform.extension event."""
        events = list(extension.events)
        state = extension.state.value
        if self.telemetry.subscribed:
            record: dict[str, Any] = {"name": extension.name, "state": state, "events": events}
            if extension.error_type:
                record["errorType"] = extension.error_type
            self.telemetry.platform("platform.extension", record)
        if self._config.print_reports:
            self._print(
                self._platform.extension(extension.name, state, events, extension.error_type)
            )

    # Commands from the pool

    def deliver(self, invocation: Invocation) -> None:
        """Hand C{invocation} to the runtime and to the extensions subscribed to INVOKE."""
        waiting, self._runtime_waiting = self._runtime_waiting, None
        assert waiting is not None and self.state is State.IDLE, self
        self.state = State.BUSY
        self.current = self._phase = invocation
        self.answered = self._runtime_done = False
        self.invocations += 1
        self.delivered_at = self._now()
        self._answered_at = 0.0
        self._produced = 0
        self.capture.restart_window()
        if self.telemetry.subscribed:
            self.telemetry.platform(
                "platform.start",
                {"requestId": invocation.request_id, "version": self._config.function.version},
            )
        if len(self.extensions):
            event: dict[str, Any] = {
                "eventType": INVOKE,
                "deadlineMs": _epoch_ms(invocation.deadline or self._now()),
                "requestId": invocation.request_id,
                "invokedFunctionArn": invocation.function_arn,
            }
            if invocation.trace_id:
                event["tracing"] = {"type": "X-Amzn-Trace-Id", "value": invocation.trace_id}
            self.extensions.send(INVOKE, event)
        waiting.callback(invocation)

    def time_out(self) -> None:
        """
        The invocation (or, while starting, Init) ran out of time: the caller
        has its answer; the environment is reset.
        """
        if self.state is State.STARTING:
            seconds = max(INIT_TIMEOUT, self._config.function.timeout)
            message = f"Runtime init timed out after {seconds:.2f} seconds"
            if self.init_error is None:
                self.init_error = (
                    "Sandbox.Timedout",
                    errors.function_error_body("Sandbox.Timedout", message),
                )
            error_type, document = self.init_error
            self._fail(
                EnvironmentFailure(Outcome.INIT_ERROR, error_type, message, document, True),
                "timeout",
            )
            return
        self.answered = True
        self.current = None  # a late answer is for an invocation that is over: 400
        self._emit_runtime_done("timeout")
        self.shut_down("timeout")

    def shut_down(self, reason: str = "spindown") -> Deferred[None]:
        """
        The Shutdown phase (C{reason}: C{spindown}, C{timeout} or C{failure});
        fires once the environment has ended.
        """
        if self._shutdown is not None or self.state is State.DEAD:
            return self.ended()
        self.state = State.STOPPING
        self.stop_requested = True
        self._shutdown = Deferred()
        if self._phase_timer is not None and self._phase_timer.active():
            self._phase_timer.cancel()
        if self._has_extensions:
            self._stop_sandbox(reason)
        elif reason == "spindown":  # no extensions: the runtime is stopped as it always was
            self.sandbox.signal_runtime(signal.SIGTERM)
            self._later(KILL_GRACE, self.kill)
        else:
            self.kill()
        self._maybe_all_exited()
        return self.ended()

    def _stop_sandbox(self, reason: str) -> None:
        """SIGTERM the runtime, then SHUTDOWN to the extensions, all within the 2 s budget."""
        deadline = self._now() + SHUTDOWN_BUDGET
        internal = self.extensions.any_internal
        share = RUNTIME_SHUTDOWN_SHARE_INTERNAL if internal else RUNTIME_SHUTDOWN_SHARE
        self.sandbox.signal_runtime(signal.SIGTERM)
        self._later(share, self.sandbox.signal_runtime, signal.SIGKILL)
        self._later(SHUTDOWN_BUDGET, self.kill)

        def shut_extensions_down() -> None:
            self.extensions.send(
                SHUTDOWN,
                {
                    "eventType": SHUTDOWN,
                    "deadlineMs": _epoch_ms(deadline),
                    "shutdownReason": reason,
                },
            )
            for name in self.sandbox.external:
                extension = self.extensions.by_name.get(name)
                if extension is None or not extension.subscribed(SHUTDOWN):
                    self.sandbox.signal_extension(name, signal.SIGKILL)

        runtime = self.sandbox.runtime
        if runtime is None or runtime.has_exited:
            shut_extensions_down()
        else:
            self._after_runtime = shut_extensions_down

    def kill(self) -> None:
        """SIGKILL every process of the environment and everything they started."""
        if self.state is not State.DEAD:
            self.state = State.STOPPING
        self.stop_requested = True
        self.sandbox.kill()

    def released(self) -> Deferred[None]:
        """Fires once every process has exited and the port is closed: its slot may be reused."""
        return self._when(self._released, self._port_closed and self.sandbox.exited)

    def ended(self) -> Deferred[None]:
        """
        Fires once every process has ended (exited, and its output pipes
        closed) and the port is closed: nothing of this environment is left.
        """
        return self._when(self._ended, self._port_closed and self.sandbox.ended)

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
        for done, waiters in (
            (self.sandbox.exited, self._released),
            (self.sandbox.ended, self._ended),
        ):
            if done:
                for waiter in list(waiters):
                    waiters.remove(waiter)
                    waiter.callback(None)

    # The Runtime API's calls

    def next_invocation(self) -> Deferred[Invocation]:
        """GET /next: a Deferred that fires with the next event for this runtime."""
        self.capture.settle_now()  # an answer waiting for the runtime's output is taken first
        if self.state is State.BUSY:
            if self._runtime_done:
                # It hung up its next while the extensions finish, and asks again.
                if self._runtime_waiting is not None:
                    raise errors.invalid_state_transition(
                        "next called twice without an event between"
                    )
            elif not self.answered:
                raise errors.invalid_state_transition(
                    "next called while invocation "
                    f"{self.current.request_id if self.current else ''} is still running"
                )
            else:
                self.current = None
                self._runtime_done = True
                self._emit_runtime_done(self._answer_status)
        elif self.state is State.IDLE:
            raise errors.invalid_state_transition("next called twice without an event between")
        elif self.state is State.STARTING:
            if self.init_error is not None:
                raise errors.invalid_state_transition("next called after init/error")
            if self._runtime_waiting is not None:
                raise errors.invalid_state_transition(
                    "next called twice without an event between"
                )
            self.extensions.registration_open = False
        elif self.state is State.STOPPING:
            # No more events, ever: this one is answered when the runtime is gone.
            refused: Deferred[Invocation] = Deferred(self._refused_cancelled)
            self._refused.append(refused)
            return refused
        elif self.state is State.DEAD:  # a child the runtime left is asking
            raise errors.container_error("this execution environment's runtime has exited")
        # AWAY: the runtime hung up an earlier GET /next and asks again.
        waiting: Deferred[Invocation] = Deferred(self._next_cancelled)
        self._runtime_waiting = waiting
        self._check_phase()
        return waiting

    def _check_phase(self) -> None:
        """Whether Init or the invocation's phase is over: the runtime and its extensions wait."""
        if self._runtime_waiting is None:
            return
        if self.state is State.STARTING:
            if self.extensions.all_waiting():
                self._init_done()
        elif self.state is State.BUSY:
            if self.extensions.all_waiting(INVOKE):
                self._phase_done()
        elif self.state is State.AWAY:
            self._become_idle()

    def _become_idle(self) -> None:
        self.state = State.IDLE
        self.idle_since = self._now()
        self._owner.environment_ready(self)

    def _phase_done(self) -> None:
        invocation, self._phase = self._phase, None
        timer, self._phase_timer = self._phase_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if invocation is not None and self.telemetry.subscribed:
            now = self._now()
            self.telemetry.platform(
                "platform.report",
                reports.report_record(
                    invocation.request_id,
                    self._config.function,
                    self.delivered_at,
                    self._answered_at or now,
                    now,
                    -(-self._recent_peak_memory_kb() // 1024),
                    self.init_duration if self.invocations == 1 else None,
                    self._answer_status,
                    invocation.trace_id,
                ),
            )
        self._become_idle()

    def _emit_runtime_done(self, status: str) -> None:
        invocation = self._phase
        if invocation is None or not self.telemetry.subscribed:
            return
        end = self._answered_at if self.answered and self._answered_at else self._now()
        self.telemetry.platform(
            "platform.runtimeDone",
            reports.runtime_done_record(
                invocation.request_id,
                status,
                self.delivered_at,
                end,
                self._produced,
                invocation.trace_id,
            ),
        )

    def _refused_cancelled(self, refused: Deferred[Invocation]) -> None:
        if refused in self._refused:
            self._refused.remove(refused)

    def _next_cancelled(self, waiting: Deferred[Invocation]) -> None:
        # The runtime hung up its GET /next: it is dying, or will ask again.
        if self._runtime_waiting is waiting:
            self._runtime_waiting = None
            if self.state is State.IDLE:
                self.state = State.AWAY

    def begin_stream(self, request_id: str, content_type: str) -> ResponseStream | None:
        """
        A response POST in C{streaming} mode has begun: for a caller that takes
        a stream, the stream its bytes go to; None for one that does not (the
        response is then read whole, within the buffered limit, as on Lambda).
        """
        current = self._answerable(request_id)
        if not current.accept_stream:
            return None
        stream = ResponseStream(content_type)
        self._owner.environment_streaming(self, stream)
        return stream

    def _answerable(self, request_id: str) -> Invocation:
        """The current invocation, if C{request_id} may answer it now; else the AWS error."""
        current = self.current
        if (
            self.state is State.DEAD
            or self._runtime_exited_at is not None
            or current is None
            or current.request_id != request_id
        ):
            raise errors.invalid_request_id(request_id)
        if self.answered:
            raise errors.invalid_state_transition(
                f"invocation {request_id} has already been answered"
            )
        return current

    def answer(
        self,
        request_id: str,
        outcome: Outcome,
        body: bytes,
        error_type: str | None = None,
        content_type: str | None = None,
    ) -> Deferred[None] | None:
        """
        POST /response or /error for C{request_id}; raises the AWS error if out
        of turn. When the invocation's log is wanted (reports, C{Tail}) the
        answer is taken once the runtime's output is read, and the Deferred
        returned fires then; otherwise it is taken at once and None returned.
        The caller gets it at once: extensions' work after it is not waited for.
        """
        current = self._answerable(request_id)
        self.answered = True
        self._answered_at = self._now()
        self._answer_status = "success" if outcome is Outcome.SUCCESS else "error"
        self._produced = len(body)
        if len(self.extensions) and current.deadline is not None and self.state is State.BUSY:
            # The pool's timer ends with the answer; the extensions still have until the deadline.
            self._phase_timer = self._reactor.callLater(
                max(0.0, current.deadline - self._now()), self._phase_timed_out, current
            )
        if not self._wants_log(current):
            self._owner.environment_answered(self, outcome, body, error_type, content_type)
            return None
        taken: Deferred[None] = Deferred()
        self._pending_answer = (current, outcome, body, error_type, content_type, taken)
        self.capture.after_output(self._take_answer)
        return taken

    def _phase_timed_out(self, invocation: Invocation) -> None:
        self._phase_timer = None
        if self._phase is not invocation or self.state is not State.BUSY:
            return
        busy = [
            each.name
            for each in self.extensions
            if each.waiting is None and each.subscribed(INVOKE)
        ]
        self.log.warn(
            "extensions {names} of environment #{index} did not finish invocation {request_id} "
            "by its deadline: resetting the environment",
            names=", ".join(busy),
            index=self.index,
            request_id=invocation.request_id,
        )
        self.shut_down("timeout")

    def _wants_log(self, invocation: Invocation | None) -> bool:
        return self._config.print_reports or (invocation is not None and invocation.tail_log)

    def _take_answer(self) -> None:
        pending, self._pending_answer = self._pending_answer, None
        if pending is None:
            return
        invocation, outcome, body, error_type, content_type, taken = pending
        if self.current is invocation:  # not timed out meanwhile
            self._owner.environment_answered(self, outcome, body, error_type, content_type)
        taken.callback(None)

    def init_failed(self, error_type: str | None, body: bytes) -> None:
        """POST /init/error: keep the error for the invocation that caused this init."""
        if self.state is not State.STARTING or self.init_error is not None:
            raise errors.invalid_state_transition("init/error is only allowed during init")
        self.init_error = (error_type, body)
        self._later(INIT_ERROR_EXIT_GRACE, self.sandbox.signal_runtime, signal.SIGKILL)

    # The Extensions API's calls

    def register_extension(
        self, name: str | None, body: bytes, account: bool
    ) -> tuple[str, dict[str, Any]]:
        """POST /extension/register: the identifier and the document to answer with."""
        if self.state is not State.STARTING:
            raise errors.registration_closed()
        extension = self.extensions.register(name, body)
        self.log.info(
            "extension {name} of environment #{index} registered ({kind}, events {events})",
            name=extension.name,
            index=self.index,
            kind="internal" if extension.internal else "external",
            events=",".join(extension.events) or "none",
        )
        function = self._config.function
        document: dict[str, Any] = {
            "functionName": function.name,
            "functionVersion": function.version,
            "handler": self._config.handler,
        }
        if account:
            document["accountId"] = ACCOUNT_ID
        try:
            self._spawn_runtime_when_registered()
        except OSError as error:
            self._fail(
                EnvironmentFailure(
                    Outcome.INIT_ERROR, "Runtime.ExitError", str(error), during_init=True
                )
            )
        return extension.identifier, document

    def extension_next(self, identifier: bytes | None) -> Deferred[tuple[str, bytes]]:
        """GET /extension/event/next."""
        extension = self.extensions.find(identifier)
        if self.state is State.DEAD and not extension.pending:
            raise errors.container_error("this execution environment has shut down")
        return self.extensions.next_event(extension)

    def extension_error(
        self, identifier: bytes | None, error_type: str | None, exiting: bool
    ) -> None:
        """POST /extension/init/error or /exit/error: the error is decided when it exits."""
        extension = self.extensions.find(identifier)
        self.extensions.report_error(extension, error_type, exiting)
        self.log.warn(
            "extension {name} of environment #{index} reported {which}: {error_type}",
            name=extension.name,
            index=self.index,
            which="exit/error" if exiting else "init/error",
            error_type=error_type,
        )
        if extension.internal:
            # An internal extension has no process of its own to exit: its report is the failure.
            self._fail(self._extension_failure(extension, "exit code 0"))

    def subscribe(self, api: str, identifier: bytes | None, body: bytes) -> None:
        """PUT /telemetry or /logs."""
        extension = self.extensions.find(identifier)
        self.telemetry.subscribe(api, extension.name, body)

    # Failures

    def _extension_failure(self, extension: Extension | None, cause: str) -> EnvironmentFailure:
        if extension is not None and extension.state is ExtensionState.INIT_ERROR:
            error_type = "Extension.InitError"
        elif extension is not None and extension.state is ExtensionState.EXIT_ERROR:
            error_type = "Extension.ExitError"
        else:
            error_type = "Extension.Crash"
        starting = self.state is State.STARTING
        outcome = Outcome.INIT_ERROR if starting else Outcome.RUNTIME_EXIT
        return EnvironmentFailure(outcome, error_type, cause, during_init=starting)

    def _fail(self, failure: EnvironmentFailure, reason: str = "failure") -> None:
        """The first fatal error decides the answer; the environment then shuts down."""
        if self._failure is not None or self.stop_requested:
            return
        self._failure = failure
        self.log.error(
            "environment #{index} failed: {error_type}: {cause}",
            index=self.index,
            error_type=failure.error_type,
            cause=failure.cause,
        )
        if self.telemetry.subscribed:
            if failure.during_init:
                self.telemetry.platform(
                    "platform.initRuntimeDone",
                    reports.init_done_record(
                        "error", failure.error_type, self.initialization_type
                    ),
                )
            elif self._phase is not None and not self._runtime_done:
                self._emit_runtime_done("failure")
            self.telemetry.flush()
        if self._config.print_reports and failure.during_init and self._has_extensions:
            self._print(
                self._platform.init_report_error(
                    self._now() - self._started_at,
                    failure.error_type or "Unknown",
                    self.initialization_type,
                )
            )
            for extension in self.extensions:
                self._report_extension(extension)
        self._owner.environment_failed(self, failure)
        self.current = None
        self.shut_down(reason)

    # The processes' ends

    def _extension_exited(self, process: SandboxProcess, why: str) -> None:
        process.finish_output()
        if not self.stop_requested:
            self.log.warn(
                "extension {name} of environment #{index} exited: {why}",
                name=process.name,
                index=self.index,
                why=why,
            )
            # RAPID's words for an extension's clean exit are "exit code 0".
            cause = "exit code 0" if process.exit_status == 0 else why
            self._fail(self._extension_failure(self.extensions.by_name.get(process.name), cause))
        elif process.exit_status != 0:
            self.log.warn(
                "extension {name} of environment #{index} ShutdownFailed: {why}",
                name=process.name,
                index=self.index,
                why=why,
            )
        if process.group:  # what it started in its group goes with it
            proctree.signal_group(process.pid or 0, signal.SIGKILL)
        self.sandbox.done_with(process)
        self._maybe_all_exited()

    def _runtime_exited(self, process: SandboxProcess, why: str) -> None:
        self.capture.settle_now()  # an answer posted before the exit comes first
        self._runtime_exited_at = self._now()  # what it sent after this is no answer
        self.log.info(
            "runtime #{index} (pid {pid}) exited: {reason}",
            index=self.index,
            pid=process.pid,
            reason=why,
        )
        if self._wants_log(self.current):
            self.capture.after_output(lambda: self._runtime_gone(process, why))
        else:
            self._runtime_gone(process, why)

    def _runtime_gone(self, process: SandboxProcess, why: str) -> None:
        process.finish_output()
        self.exit_reason = why
        gone = errors.container_error(
            f"the runtime exited ({why}): this execution environment takes no more events"
        )
        waiting, self._runtime_waiting = self._runtime_waiting, None
        refused, self._refused = self._refused, []
        for each in ([waiting] if waiting is not None else []) + refused:
            each.errback(gone)
        if not self.stop_requested:
            if self.init_error is not None and self.state is State.STARTING:
                error_type, document = self.init_error
                failure = EnvironmentFailure(Outcome.INIT_ERROR, error_type, why, document, True)
            else:
                failure = EnvironmentFailure(
                    Outcome.RUNTIME_EXIT,
                    "Runtime.ExitError",
                    why,
                    during_init=self.state is State.STARTING,
                )
            self._fail(failure)
        elif self.init_error is not None and self._failure is None:
            self.log.error(
                "runtime #{index} failed to initialise: {error}",
                index=self.index,
                error=self.init_error[1].decode("utf-8", "replace"),
            )
        self.current = None  # an answer from now on is for an invocation that is over: 400
        self.sandbox.done_with(process)
        after, self._after_runtime = self._after_runtime, None
        if after is not None:
            after()
        self._maybe_all_exited()

    def _maybe_all_exited(self) -> None:
        runtime = self.sandbox.runtime
        runtime_pending = runtime is not None and runtime.has_exited and self.exit_reason is None
        if self.sandbox.exited and not runtime_pending:
            self._all_exited()

    def _all_exited(self) -> None:
        """Nothing of the sandbox runs: it takes nothing more; its port closes."""
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        self.stop_requested = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._phase_timer is not None and self._phase_timer.active():
            self._phase_timer.cancel()
        self.extensions.cancel_waits()
        self._owner.environment_ended(self)
        if self.telemetry.subscribed:
            # The last events go out before the port closes (the slot waits that long at most).
            stopped = self.telemetry.stop(TELEMETRY_FLUSH_TIMEOUT)
            # Bounded whole: closing a subscriber's connection can wait on its reading too.
            stopped.addTimeout(2 * TELEMETRY_FLUSH_TIMEOUT, self._reactor)
            stopped.addBoth(lambda _: self.close())
        else:
            self.telemetry.stop(0)
            self.close()
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown.callback(None)

    def close(self) -> Deferred[None]:
        """Stop listening (at the end, or for an environment whose runtime never started)."""
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        closed = stopped if isinstance(stopped, Deferred) else succeed(None)
        return closed.addCallback(self._port_stopped)

    def _port_stopped(self, _: object) -> None:
        self._port_closed = True
        self._check_done()

    # Output

    def take_log(self) -> bytes:
        """The current invocation's output so far (its last 4 KB at least)."""
        return self.capture.window()

    def _log_lines(self, source: str, lines: bytes) -> None:
        if not self.telemetry.subscribed:
            return
        structured = self._config.log_format == "JSON" and source == FUNCTION
        for line in lines.splitlines():
            self.telemetry.log_line(source, _json_record(line) if structured else line)

    def _recent_peak_memory_kb(self) -> int:
        """
        The peak RSS for telemetry's reports: read from /proc at most every
        L{MEMORY_READ_INTERVAL} (a peak only grows: a reading that recent is
        at most a little low), as reading a process tree costs more than the
        rest of an invocation's telemetry.
        """
        now = self._now()
        if now - self._peak_read_at >= MEMORY_READ_INTERVAL:
            self._peak_read_at = now
            return self.peak_memory_kb()
        return self._peak_kb

    def peak_memory_kb(self) -> int:
        """The peak RSS of the runtime's process tree, in kB (its last reading once it is gone)."""
        runtime = self.sandbox.runtime
        if runtime is not None and runtime.pid is not None and not runtime.has_exited:
            self._peak_kb = max(self._peak_kb, proctree.peak_rss_kb(runtime.pid))
        return self._peak_kb
