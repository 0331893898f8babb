"""
The daemon's invoker: a pool of execution environments.

Invocations wait in one FIFO; environments are spawned on demand up to
MAX_CONCURRENCY, each running one invocation at a time under its own timer,
and are stopped after AWS_LAMBDA_FUNCTION_IDLETIMEOUT without work. Every
decision is made here, on reactor time, so it can be tested with a Clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import errors, reports
from .config import RapidConfig
from .environment import (
    INIT_TIMEOUT,
    KILL_GRACE,
    LOG_TAIL_BYTES,
    EnvironmentFailure,
    EnvironmentOwner,
    ExecutionEnvironment,
    State,
)
from .invocation import (
    IInvoker,
    Invocation,
    InvocationType,
    InvokeError,
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    Withdrawn,
)
from .logs import observer
from .observers import NO_INVOCATIONS, UNAVAILABLE, InvocationObserver
from .streams import ResponseStream

__all__ = ["INIT_TIMEOUT", "KILL_GRACE", "Pool"]

#: Seconds before a provisioned environment whose Init failed is tried again
#: (an init that always fails must not respawn in a tight loop).
PROVISION_RETRY = 5.0

EnvironmentFactory = Callable[
    [int, RapidConfig, EnvironmentOwner, object, Callable[[bytes], None]], ExecutionEnvironment
]


@dataclass(eq=False)
class _Job:
    """An invocation on its way through the pool, with its caller's Deferred."""

    invocation: Invocation
    result: Deferred[Result] = field(default_factory=Deferred)
    timer: IDelayedCall | None = None
    #: The response streamed to its caller, once the runtime began it.
    stream: ResponseStream | None = None


@implementer(IInvoker)
class Pool:
    """Runs invocations on up to C{max_concurrency} runtime processes."""

    log = Logger(observer=observer)

    def __init__(
        self,
        config: RapidConfig,
        reactor: object,
        output: Callable[[bytes], None],
        environment_factory: EnvironmentFactory = ExecutionEnvironment,
        metrics: InvocationObserver = NO_INVOCATIONS,
    ) -> None:
        self._config = config
        #: Told every run's outcome and every init. Refusals are counted by the
        #: transport that answers them: an AMQP delivery refused here is
        #: requeued, not answered, and counted where it finally runs.
        self._metrics = metrics
        self._function = config.function
        self._reactor = reactor
        self._output = output
        self._platform = reports.PlatformLines(config.function, config.log_format, reactor)
        self._make_environment = environment_factory
        self._queue: deque[_Job] = deque()
        self._environments: dict[int, ExecutionEnvironment] = {}
        #: Every environment not yet ended, slot released or not: stop() waits for them.
        self._alive: set[ExecutionEnvironment] = set()
        self._idle: list[ExecutionEnvironment] = []
        self._jobs: dict[ExecutionEnvironment, _Job] = {}
        self._idle_timers: dict[ExecutionEnvironment, IDelayedCall] = {}
        self._init_timers: dict[ExecutionEnvironment, IDelayedCall] = {}
        self._stopping = False
        self._drained: Deferred[None] | None = None
        self._grace_timer: IDelayedCall | None = None
        #: Set while provisioning waits after a failed Init (PROVISION_RETRY).
        self._provision_timer: IDelayedCall | None = None

    # What the pool looks like, for health checks and tests

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return not self._stopping

    @property
    def environments(self) -> list[ExecutionEnvironment]:
        return list(self._environments.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def environment_states(self) -> dict[str, int]:
        """How many environments are in each state (for the metrics gauge; safe from a thread)."""
        counts: dict[str, int] = {}
        for environment in tuple(self._environments.values()):  # one atomic copy
            state = environment.state.value
            counts[state] = counts.get(state, 0) + 1
        return counts

    # IInvoker

    def invoke(self, invocation: Invocation) -> Deferred[Result]:
        try:
            return self._submit(invocation).result
        except (TooManyRequests, ServiceUnavailable):
            return fail()

    def accept_event(self, invocation: Invocation) -> Deferred[None]:
        try:
            job = self._submit(invocation)
        except (TooManyRequests, ServiceUnavailable):
            return fail()
        job.result.addCallbacks(self._event_done, self._event_failed)
        return succeed(None)

    def dry_run(self, invocation: Invocation) -> Deferred[None]:
        if self._stopping:
            return fail(ServiceUnavailable("the daemon is shutting down"))
        return succeed(None)

    def withdraw(self, invocation: Invocation) -> bool:
        for job in self._queue:
            if job.invocation is invocation:
                self._queue.remove(job)
                if not job.result.called:
                    job.result.errback(Withdrawn("taken back before it started"))
                return True
        return False

    def _submit(self, invocation: Invocation) -> _Job:
        if self._stopping:
            raise ServiceUnavailable("the daemon is shutting down")
        job = _Job(invocation)
        if self._expired(job):
            return job
        environment = self._take_idle()
        if environment is not None:
            self._run(environment, job)
        elif len(self._queue) >= self._config.max_queued:
            raise TooManyRequests("all environments are busy and the queue is full")
        else:
            self._queue.append(job)
            self._spawn_as_needed()
        return job

    def _take_idle(self) -> ExecutionEnvironment | None:
        """The most recently idle environment still waiting in GET /next."""
        while self._idle:
            environment = self._idle.pop()
            if environment.state is State.IDLE:
                return environment
        return None

    def _event_done(self, result: Result) -> None:
        self.log.info(
            "Event invocation {request_id} finished: {outcome}",
            request_id=result.request_id,
            outcome=result.outcome.value,
        )

    def _event_failed(self, failure: Failure) -> None:
        if failure.check(ServiceUnavailable):
            # Accepted (202), then dropped by the shutdown: nobody else hears of it.
            self._metrics.refused(InvocationType.EVENT, UNAVAILABLE)
        if failure.check(InvokeError):
            self.log.warn("Event invocation not run: {error}", error=failure.value)
        else:
            self.log.failure("Event invocation failed", failure)

    # Running invocations

    def _run(self, environment: ExecutionEnvironment, job: _Job) -> None:
        invocation = job.invocation
        now: float = self._reactor.seconds()  # type: ignore[attr-defined]
        if invocation.deadline is None:
            invocation.deadline = now + self._function.timeout
        job.timer = self._reactor.callLater(  # type: ignore[attr-defined]
            max(0.0, invocation.deadline - now), self._timed_out, environment, job
        )
        self._jobs[environment] = job
        if self._config.print_reports:
            self._output(self._platform.start(invocation.request_id))
        environment.deliver(invocation)

    def _expired(self, job: _Job) -> bool:
        """
        Answer C{job} with a timeout if its deadline (set by its caller, as AMQP
        requests' are) has passed: no runtime gets an event it cannot finish.
        """
        deadline = job.invocation.deadline
        if deadline is None or deadline > self._reactor.seconds():  # type: ignore[attr-defined]
            return False
        result = Result(
            outcome=Outcome.TIMEOUT,
            body=errors.timed_out_body(job.invocation.request_id, self._function.timeout),
            request_id=job.invocation.request_id,
            executed_version=self._function.version,
            error_type="Sandbox.Timedout",
        )
        self._metrics.ran(job.invocation, result, False)
        if not job.result.called:
            job.result.callback(result)
        return True

    def _timed_out(self, environment: ExecutionEnvironment, job: _Job) -> None:
        del self._jobs[environment]
        job.timer = None
        request_id = job.invocation.request_id
        timeout = self._function.timeout
        self._finish(
            environment,
            job,
            Outcome.TIMEOUT,
            errors.timed_out_body(request_id, timeout),
            "Sandbox.Timedout",
        )
        self.log.warn("{message}", message=errors.timed_out_message(request_id, timeout))
        environment.time_out()

    def _finish(
        self,
        environment: ExecutionEnvironment,
        job: _Job,
        outcome: Outcome,
        body: bytes,
        error_type: str | None,
        content_type: str | None = None,
    ) -> None:
        invocation = job.invocation
        delivered = environment.current is invocation
        now: float = self._reactor.seconds()  # type: ignore[attr-defined]
        result = Result(
            outcome=outcome,
            body=body,
            request_id=invocation.request_id,
            executed_version=self._function.version,
            error_type=error_type,
            duration=now - environment.delivered_at if delivered else 0.0,
            # Only an on-demand cold start has an Init Duration in its REPORT.
            init_duration=(
                environment.init_duration
                if environment.invocations <= 1
                and environment.initialization_type == reports.ON_DEMAND
                else None
            ),
            content_type=content_type,
        )
        if self._config.print_reports or invocation.tail_log:
            self._add_log_and_reports(environment, invocation, result, delivered)
        # Counted even when the caller has hung up (its Deferred was cancelled): it ran.
        self._metrics.ran(invocation, result, delivered)
        if job.stream is not None:
            job.stream.close(result)  # however it ended: complete, an error, a timeout, an exit
        if not job.result.called:
            job.result.callback(result)
        if self._drained is not None:
            self._check_drained()

    def _add_log_and_reports(
        self,
        environment: ExecutionEnvironment,
        invocation: Invocation,
        result: Result,
        delivered: bool,
    ) -> None:
        log = environment.take_log()
        result.max_memory_mb = math.ceil(environment.peak_memory_kb() / 1024)
        start = self._platform.start(invocation.request_id)
        end = self._platform.end(invocation.request_id)
        report = self._platform.report(result)
        if self._config.print_reports:
            if not delivered:
                self._output(start)
            self._output(end + report)
        if invocation.tail_log:
            if log and not log.endswith(b"\n"):
                log += b"\n"
            result.log_tail = (start + log + end + report)[-LOG_TAIL_BYTES:]

    # What environments tell the pool

    def environment_ready(self, environment: ExecutionEnvironment) -> None:
        init_timer = self._init_timers.pop(environment, None)
        if init_timer is not None:  # its first GET /next: init is over
            init_timer.cancel()
            if environment.init_duration is not None:
                self._metrics.initialised(environment.init_duration)
        while self._queue:
            job = self._queue.popleft()
            if not self._expired(job):
                self._run(environment, job)
                return
        if environment not in self._idle:
            self._idle.append(environment)
        if self._drained is not None:
            self._check_drained()
        elif environment not in self._idle_timers:
            self._arm_idle_timer(environment, self._config.idle_timeout)

    def environment_answered(
        self,
        environment: ExecutionEnvironment,
        outcome: Outcome,
        body: bytes,
        error_type: str | None,
        content_type: str | None = None,
    ) -> None:
        job = self._jobs.pop(environment)
        if job.timer is not None:
            job.timer.cancel()
        self._finish(environment, job, outcome, body, error_type, content_type)

    def environment_streaming(
        self, environment: ExecutionEnvironment, stream: ResponseStream
    ) -> None:
        """
        The caller gets its answer now, as a stream: its bytes follow as the
        runtime sends them, and the stream closes with the run's L{Result}
        (the timer still runs until then).
        """
        job = self._jobs[environment]
        job.stream = stream
        if job.result.called:  # the caller hung up before: its bytes are read and dropped
            stream.stopProducing()
        else:
            job.result.callback(
                Result(
                    outcome=Outcome.SUCCESS,
                    body=b"",
                    request_id=job.invocation.request_id,
                    executed_version=self._function.version,
                    stream=stream,
                    content_type=stream.content_type,
                )
            )

    def environment_failed(
        self, environment: ExecutionEnvironment, failure: EnvironmentFailure
    ) -> None:
        self._forget(environment)
        job = self._jobs.pop(environment, None)
        if job is None and failure.during_init and self._queue:
            # Init failed: the error is the answer to one invocation, the one
            # this init was for. The next queued one gets a fresh init.
            job = self._queue.popleft()
        if job is not None:
            if job.timer is not None:
                job.timer.cancel()
            body = failure.body(job.invocation.request_id)
            self._finish(environment, job, failure.outcome, body, failure.error_type)
        if (
            failure.error_type == "Extension.Crash"
            and failure.during_init
            and len(self._environments) > 1
        ):
            self.log.warn(
                "an extension of environment #{index} exited during Init while other "
                "environments run their own copies: extensions that listen on a fixed port "
                "(the AWS samples use 4243) collide on one network; run such an image with "
                "MAX_CONCURRENCY=1 (one function instance per container)",
                index=environment.index,
            )

    def environment_ended(self, environment: ExecutionEnvironment) -> None:
        self._forget(environment)
        job = self._jobs.pop(environment, None)
        if job is not None:  # stopped while running (the shutdown timeout ran out)
            if job.timer is not None:
                job.timer.cancel()
            self._answer_exit(environment, job, environment.exit_reason or "signal: killed")
        environment.released().addCallback(lambda _: self._release(environment))

    def _forget(self, environment: ExecutionEnvironment) -> None:
        """C{environment} takes nothing more: it is no longer idle, its timers are moot."""
        if environment in self._idle:
            self._idle.remove(environment)
        for timers in (self._idle_timers, self._init_timers):
            timer = timers.pop(environment, None)
            if timer is not None:
                timer.cancel()

    def _answer_exit(self, environment: ExecutionEnvironment, job: _Job, reason: str) -> None:
        message = (
            f"RequestId: {job.invocation.request_id} Error: Runtime exited with error: {reason}"
        )
        self._finish(
            environment,
            job,
            Outcome.RUNTIME_EXIT,
            errors.function_error_body("Runtime.ExitError", message),
            "Runtime.ExitError",
        )

    def _release(self, environment: ExecutionEnvironment) -> None:
        if self._environments.get(environment.index) is environment:
            del self._environments[environment.index]
        if self._drained is not None:
            self._check_drained()
        elif environment.init_duration is None and self._config.provisioned_concurrency:
            # It never finished its Init: provisioning waits before trying again.
            self._spawn_as_needed(provision=False)
            if self._provision_timer is None:
                self._provision_timer = self._reactor.callLater(  # type: ignore[attr-defined]
                    PROVISION_RETRY, self._provision_again
                )
        else:
            self._spawn_as_needed()

    def _provision_again(self) -> None:
        self._provision_timer = None
        self._spawn_as_needed()

    # Spawning and reaping

    def start(self) -> None:
        """Initialise the PROVISIONED_CONCURRENCY environments, ahead of any invocation."""
        self._spawn_as_needed()

    def _spawn_as_needed(self, provision: bool = True) -> None:
        if len(self._environments) >= self._config.max_concurrency:
            return
        # Provisioned environments first: PROVISIONED_CONCURRENCY is a floor (until shutdown).
        provision = provision and not self._stopping
        while provision and len(self._environments) < self._config.provisioned_concurrency:
            self._spawn(reports.PROVISIONED)
        starting = sum(
            1 for each in self._environments.values() if each.state is State.STARTING
        )
        wanted = len(self._queue) - starting
        while wanted > 0 and len(self._environments) < self._config.max_concurrency:
            self._spawn()
            wanted -= 1

    def _spawn(self, initialization_type: str = reports.ON_DEMAND) -> None:
        index = next(i for i in range(self._config.max_concurrency) if i not in self._environments)
        environment = self._make_environment(
            index, self._config, self, self._reactor, self._output
        )
        environment.initialization_type = initialization_type
        self._environments[index] = environment
        self._alive.add(environment)
        if self._config.print_reports:
            self._output(self._platform.init_start(initialization_type))
        environment.ended().addCallback(lambda _: self._ended(environment))
        self._init_timers[environment] = self._reactor.callLater(  # type: ignore[attr-defined]
            max(INIT_TIMEOUT, self._function.timeout), self._init_timed_out, environment
        )
        Deferred.fromCoroutine(environment.start()).addErrback(
            self._start_failed, environment
        )

    def _ended(self, environment: ExecutionEnvironment) -> None:
        self._alive.discard(environment)
        if self._drained is not None:
            self._check_drained()

    def _init_timed_out(self, environment: ExecutionEnvironment) -> None:
        """An Init that never ends fails, like one that crashes."""
        del self._init_timers[environment]
        environment.time_out()

    def _start_failed(self, failure: Failure, environment: ExecutionEnvironment) -> None:
        init_timer = self._init_timers.pop(environment, None)
        if init_timer is not None:
            init_timer.cancel()
        self.log.failure(
            "runtime #{index} could not be started", failure, index=environment.index
        )
        if self._queue:
            self._answer_exit(environment, self._queue.popleft(), str(failure.value))
        environment.close().addCallback(lambda _: self._release(environment))

    def _arm_idle_timer(self, environment: ExecutionEnvironment, delay: float) -> None:
        self._idle_timers[environment] = self._reactor.callLater(  # type: ignore[attr-defined]
            delay, self._check_idle, environment
        )

    def _check_idle(self, environment: ExecutionEnvironment) -> None:
        del self._idle_timers[environment]
        if environment.state is State.DEAD or self._drained is not None:
            return
        if environment not in self._idle:
            self._arm_idle_timer(environment, self._config.idle_timeout)
            return
        now: float = self._reactor.seconds()  # type: ignore[attr-defined]
        left = environment.idle_since + self._config.idle_timeout - now
        if left > 1e-6:
            self._arm_idle_timer(environment, left)
            return
        if len(self._environments) <= self._config.provisioned_concurrency:
            # Provisioned concurrency is never reaped: it stays initialised.
            self._arm_idle_timer(environment, self._config.idle_timeout)
            return
        self.log.info(
            "runtime #{index} idle for {seconds:.0f} s: stopping it",
            index=environment.index,
            seconds=now - environment.idle_since,
        )
        self._idle.remove(environment)
        environment.shut_down("spindown")

    # Shutdown

    def stop(self) -> Deferred[None]:
        """
        Take no more invocations; let queued and running ones finish within the
        shutdown timeout; then stop every runtime. Fires when every
        environment has ended (process ended, port closed).
        """
        if self._drained is None:
            self._stopping = True
            self._drained = Deferred()
            for timer in self._idle_timers.values():
                timer.cancel()
            self._idle_timers.clear()
            if self._provision_timer is not None:
                self._provision_timer.cancel()
                self._provision_timer = None
            self._grace_timer = self._reactor.callLater(  # type: ignore[attr-defined]
                self._config.shutdown_timeout, self._grace_expired
            )
            self._check_drained()
        waiter: Deferred[None] = Deferred()
        self._drained.addCallback(lambda _: waiter.callback(None))
        return waiter

    def stop_now(self) -> None:
        """Stop without waiting any longer (a second SIGTERM): as if the shutdown timeout ran out."""
        if self._drained is None:
            self.stop()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_expired()

    def _grace_expired(self) -> None:
        self._grace_timer = None
        queued, self._queue = self._queue, deque()
        for job in queued:
            if not job.result.called:
                job.result.errback(ServiceUnavailable("the daemon shut down first"))
        self._check_drained(force=True)

    def _check_drained(self, force: bool = False) -> None:
        assert self._drained is not None
        if not force and (self._queue or self._jobs):
            return
        for environment in self._environments.values():
            if environment.state not in (State.STOPPING, State.DEAD):
                environment.shut_down("spindown")
        if self._environments or self._alive or self._drained.called:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._drained.callback(None)
