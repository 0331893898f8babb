"""
The pool with real execution environments on a fake reactor: the test plays
the runtime (next / answer / init error) and its process (output, exit).
"""

from __future__ import annotations

import json
import signal
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import environment as environment_module
from lambdarapid.environment import LEFTOVER_SWEEP, ExecutionEnvironment, State
from lambdarapid.errors import APIError
from lambdarapid.invocation import (
    Invocation,
    InvocationType,
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
    Withdrawn,
)
from lambdarapid.pool import KILL_GRACE, Pool

from .fakes import FakeProcess, fake_process_reactor, make_config


class PoolTestCase(SynchronousTestCase):
    """A pool of real environments whose processes and clock are fake."""

    def setUp(self) -> None:
        self.reactor = fake_process_reactor(self)
        self.output: list[bytes] = []

    def make_pool(self, **settings: Any) -> Pool:
        self.config = make_config(**settings)
        self.pool = Pool(self.config, self.reactor, self.output.append)
        return self.pool

    def invoke(self, payload: bytes = b"{}", **fields: Any) -> tuple[Invocation, Deferred[Result]]:
        invocation = Invocation(payload=payload, **fields)
        return invocation, self.pool.invoke(invocation)

    def environment(self, index: int = 0) -> ExecutionEnvironment:
        """The pool's environment with C{index}."""
        [found] = [each for each in self.pool.environments if each.index == index]
        return found

    def process(self, environment: ExecutionEnvironment) -> FakeProcess:
        return self.reactor.process(environment.pid)

    def next_event(self, environment: ExecutionEnvironment) -> Invocation:
        """The runtime's GET /next, which must be answered at once."""
        return self.successResultOf(environment.next_invocation())

    def wait_next(self, environment: ExecutionEnvironment) -> Deferred[Invocation]:
        """The runtime's GET /next, left waiting (and cancelled, harmlessly, if the runtime exits)."""
        waiting = environment.next_invocation()
        self.assertNoResult(waiting)
        return waiting.addErrback(lambda failure: failure.trap(CancelledError, APIError))

    def run_one(self, environment: ExecutionEnvironment, body: bytes = b'"ok"') -> Invocation:
        """Take the next event and answer it with success."""
        invocation = self.next_event(environment)
        environment.answer(invocation.request_id, Outcome.SUCCESS, body)
        self.reactor.advance(0)  # with reports, taken once the runtime's output is read
        return invocation

    def idle_environment(self) -> ExecutionEnvironment:
        """An environment that ran one invocation and now waits in GET /next."""
        _, result = self.invoke()
        environment = self.environment()
        self.run_one(environment)
        self.successResultOf(result)
        self.wait_next(environment)
        return environment


class DispatchTests(PoolTestCase):
    """Spawning on demand, dispatching, queueing."""

    def test_no_runtime_before_first_invocation(self) -> None:
        """A new pool spawns no runtime until an invocation arrives."""
        self.make_pool(max_concurrency=4)
        self.assertEqual(self.reactor.processes, [])

    def test_first_invocation_spawns_runtime(self) -> None:
        """The first invocation spawns one runtime with the Runtime API address and stdin closed."""
        self.make_pool()
        _, result = self.invoke()
        [process] = self.reactor.processes
        self.assertEqual(process.args, ["/bin/true"])
        self.assertEqual(process.env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001")
        self.assertEqual(process.env["_HANDLER"], "echo.handler")
        self.assertTrue(process.stdin_closed)
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [9001])
        self.assertNoResult(result)

    def test_runtime_gets_invocation_and_its_answer_is_the_result(self) -> None:
        """The runtime's first next gets the queued event; its answer fires the caller's Deferred."""
        self.make_pool()
        invocation, result = self.invoke(b'{"a":1}')
        environment = self.environment()
        event = self.next_event(environment)
        self.assertIs(event, invocation)
        self.assertEqual(event.payload, b'{"a":1}')
        self.assertNoResult(result)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b'"done"')
        outcome = self.successResultOf(result)
        self.assertEqual(
            (outcome.outcome, outcome.body, outcome.request_id, outcome.function_error),
            (Outcome.SUCCESS, b'"done"', invocation.request_id, None),
        )

    def test_function_error_is_unhandled(self) -> None:
        """An /error answer is a FUNCTION_ERROR result with its body verbatim and X-Amz-Function-Error Unhandled."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        environment.answer(invocation.request_id, Outcome.FUNCTION_ERROR, b'{"x":1}', "MyError")
        outcome = self.successResultOf(result)
        self.assertEqual(
            (outcome.outcome, outcome.body, outcome.error_type, outcome.function_error),
            (Outcome.FUNCTION_ERROR, b'{"x":1}', "MyError", "Unhandled"),
        )

    def test_dispatches_to_idle_environment(self) -> None:
        """An invocation goes straight to a runtime waiting in next, spawning nothing."""
        self.make_pool(max_concurrency=2)
        environment = self.idle_environment()
        self.assertIs(environment.state, State.IDLE)
        invocation, result = self.invoke(b"second")
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(self.pool.queued, 0)
        self.assertIs(environment.current, invocation)
        self.assertEqual(environment.state, State.BUSY)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"2")
        self.assertEqual(self.successResultOf(result).body, b"2")

    def test_pending_next_fires_with_dispatched_event(self) -> None:
        """The Deferred of a runtime's pending next fires with the invocation dispatched to it."""
        self.make_pool()
        _, first = self.invoke()
        environment = self.environment()
        self.run_one(environment)
        waiting = self.wait_next(environment)
        invocation, _ = self.invoke(b"later")
        self.assertIs(self.successResultOf(waiting), invocation)

    def test_spawns_up_to_max_concurrency_and_no_more(self) -> None:
        """Queued invocations spawn one runtime each up to MAX_CONCURRENCY, on consecutive ports."""
        self.make_pool(max_concurrency=3)
        results = [self.invoke()[1] for _ in range(5)]
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual(
            sorted(p.env["AWS_LAMBDA_RUNTIME_API"] for p in self.reactor.processes),
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
        )
        self.assertEqual(self.pool.queued, 5)
        for index in range(3):
            self.run_one(self.environment(index))
        self.assertEqual(self.pool.queued, 2)
        self.assertEqual(len(self.reactor.processes), 3)
        for result in results[:3]:
            self.successResultOf(result)

    def test_does_not_spawn_more_than_queued(self) -> None:
        """A single invocation spawns a single runtime even when more are allowed."""
        self.make_pool(max_concurrency=5)
        self.invoke()
        self.assertEqual(len(self.reactor.processes), 1)

    def test_queue_is_fifo(self) -> None:
        """Queued invocations are handed out in arrival order."""
        self.make_pool(max_concurrency=1)
        sent = [self.invoke(payload)[0] for payload in (b"1", b"2", b"3", b"4")]
        environment = self.environment()
        taken = [self.run_one(environment) for _ in sent]
        self.assertEqual([each.request_id for each in taken], [each.request_id for each in sent])

    def test_too_many_requests_when_queue_full(self) -> None:
        """With every runtime busy and MAX_QUEUED_INVOCATIONS waiting, the next invocation fails with TooManyRequests."""
        self.make_pool(max_concurrency=1, max_queued=2)
        _, running = self.invoke(b"running")
        environment = self.environment()
        self.next_event(environment)
        _, second = self.invoke(b"queued 1")
        _, third = self.invoke(b"queued 2")
        _, refused = self.invoke(b"refused")
        self.failureResultOf(refused, TooManyRequests)
        self.assertEqual(self.pool.queued, 2)
        refused_event = self.pool.accept_event(
            Invocation(b"event", invocation_type=InvocationType.EVENT)
        )
        self.failureResultOf(refused_event, TooManyRequests)
        self.assertNoResult(second)
        self.assertNoResult(third)

    def test_queue_has_room_again_once_drained(self) -> None:
        """Once a queued invocation is taken, another one fits in the queue."""
        self.make_pool(max_concurrency=1, max_queued=1)
        self.invoke()  # queued until the runtime starts
        self.failureResultOf(self.invoke()[1], TooManyRequests)
        environment = self.environment()
        self.run_one(environment)
        _, accepted = self.invoke()
        self.assertNoResult(accepted)
        self.assertEqual(self.pool.queued, 1)

    def test_accept_event_fires_once_queued_and_runs(self) -> None:
        """accept_event fires at once; the Event invocation then runs on a runtime like any other."""
        self.make_pool()
        invocation = Invocation(b'{"e":1}', invocation_type=InvocationType.EVENT)
        accepted = self.pool.accept_event(invocation)
        self.assertIsNone(self.successResultOf(accepted))
        environment = self.environment()
        event = self.next_event(environment)
        self.assertIs(event, invocation)
        environment.answer(invocation.request_id, Outcome.FUNCTION_ERROR, b"{}", "Oops")
        self.wait_next(environment)
        self.assertEqual(environment.state, State.IDLE)

    def test_dry_run_succeeds_without_running(self) -> None:
        """dry_run fires without spawning a runtime."""
        self.make_pool()
        self.assertIsNone(self.successResultOf(self.pool.dry_run(Invocation(b"{}"))))
        self.assertEqual(self.reactor.processes, [])

    def test_listen_failure_falls_back_to_free_port(self) -> None:
        """A taken Runtime API port makes the environment listen on a free one and tell the runtime so."""
        self.make_pool()
        listen = self.reactor.listenTCP

        def listen_tcp(port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
            if port == 9001:
                raise CannotListenError(interface, port, OSError("taken"))
            return listen(port, factory, backlog, interface)

        self.patch(self.reactor, "listenTCP", listen_tcp)
        self.invoke()
        [process] = self.reactor.processes
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [0])
        self.assertEqual(process.env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:0")

    def test_start_failure_answers_the_invocation(self) -> None:
        """An environment that cannot start answers the invocation that wanted it with Runtime.ExitError."""
        self.make_pool()

        def listen_tcp(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("127.0.0.1", 0, OSError("no ports"))

        self.patch(self.reactor, "listenTCP", listen_tcp)
        invocation, result = self.invoke()
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.outcome, Outcome.RUNTIME_EXIT)
        self.assertEqual(json.loads(outcome.body)["errorType"], "Runtime.ExitError")
        self.assertIn(invocation.request_id, json.loads(outcome.body)["errorMessage"])
        self.assertEqual(self.reactor.processes, [])
        self.assertEqual(self.pool.environments, [])
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)


class WithdrawTests(PoolTestCase):
    """Transports taking back invocations that have not started (AMQP after a reconnection)."""

    def test_queued_invocation_is_withdrawn(self) -> None:
        """A queued invocation can be withdrawn: it leaves the queue and its Deferred fails with Withdrawn."""
        self.make_pool(max_concurrency=1)
        running, _ = self.invoke(b"first")
        queued, result = self.invoke(b"second")
        self.assertEqual(self.pool.queued, 2)  # the runtime is still starting
        self.assertTrue(self.pool.withdraw(queued))
        self.assertEqual(self.pool.queued, 1)
        self.failureResultOf(result, Withdrawn)
        self.assertEqual(self.next_event(self.environment()).payload, b"first")

    def test_running_invocation_is_not_withdrawn(self) -> None:
        """An invocation a runtime has taken cannot be withdrawn."""
        self.make_pool()
        invocation, result = self.invoke()
        self.next_event(self.environment())
        self.assertFalse(self.pool.withdraw(invocation))
        self.assertNoResult(result)


class AnswerTests(PoolTestCase):
    """The runtime's answers out of turn."""

    def test_second_answer_is_invalid_state_transition(self) -> None:
        """Answering the same invocation twice is 403 InvalidStateTransition and leaves the first answer."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"first")
        error = self.assertRaises(
            APIError, environment.answer, invocation.request_id, Outcome.SUCCESS, b"second"
        )
        self.assertEqual((error.status, error.error_type), (403, "InvalidStateTransition"))
        self.assertEqual(self.successResultOf(result).body, b"first")

    def test_unknown_request_id_is_invalid_request_id(self) -> None:
        """Answering an id that is not in flight is 400 InvalidRequestID."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        error = self.assertRaises(APIError, environment.answer, "nope", Outcome.SUCCESS, b"x")
        self.assertEqual((error.status, error.error_type), (400, "InvalidRequestID"))
        self.assertEqual(json.loads(error.body)["errorType"], "InvalidRequestID")
        self.assertNoResult(result)

    def test_finished_request_id_is_invalid_request_id(self) -> None:
        """After the runtime asked for its next event, the previous id is unknown (400)."""
        self.make_pool()
        environment = self.idle_environment()
        invocation, _ = self.invoke()
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"x")
        self.wait_next(environment)
        error = self.assertRaises(
            APIError, environment.answer, invocation.request_id, Outcome.SUCCESS, b"x"
        )
        self.assertEqual(error.status, 400)

    def test_next_while_running_is_invalid_state_transition(self) -> None:
        """Asking for the next event before answering the current one is 403."""
        self.make_pool()
        self.invoke()
        environment = self.environment()
        self.next_event(environment)
        error = self.assertRaises(APIError, environment.next_invocation)
        self.assertEqual((error.status, error.error_type), (403, "InvalidStateTransition"))

    def test_late_answer_after_cancel_is_ignored(self) -> None:
        """Cancelling invoke's Deferred neither stops the run nor makes the later answer raise."""
        self.make_pool()
        invocation, result = self.invoke()
        result.cancel()
        self.failureResultOf(result, CancelledError)
        environment = self.environment()
        self.assertIs(self.next_event(environment), invocation)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"late")
        self.assertEqual(environment.state, State.BUSY)
        self.assertTrue(environment.answered)
        self.wait_next(environment)

    def test_cancel_while_running_then_answer(self) -> None:
        """Cancelling a delivered invocation's Deferred keeps the runtime running it; its answer frees it."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertIs(environment.current, invocation)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"late")
        self.reactor.advance(10)  # the timeout timer was cancelled, not left to fire
        self.assertEqual(self.process(environment).signals, [])
        second, result2 = self.invoke()
        self.assertIs(self.next_event(environment), second)


class TimeoutTests(PoolTestCase):
    """The per-invocation timer."""

    def test_timeout_fires_at_exactly_the_function_timeout(self) -> None:
        """At exactly AWS_LAMBDA_FUNCTION_TIMEOUT the caller gets Sandbox.Timedout and the runtime is SIGKILLed."""
        self.make_pool(timeout=3.0)
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.reactor.advance(2.9)
        self.assertNoResult(result)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.1)
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.outcome, Outcome.TIMEOUT)
        self.assertEqual(outcome.error_type, "Sandbox.Timedout")
        self.assertEqual(outcome.function_error, "Unhandled")
        self.assertEqual(
            json.loads(outcome.body),
            {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {invocation.request_id} Error: "
                "Task timed out after 3.00 seconds",
            },
        )
        self.assertEqual(self.process(environment).signals, [signal.SIGKILL])
        self.assertEqual(environment.state, State.STOPPING)

    def test_timeout_counts_from_delivery(self) -> None:
        """The timer starts when the runtime takes the event, not while it initialises."""
        self.make_pool(timeout=3.0)
        _, result = self.invoke()
        self.reactor.advance(1.0)
        environment = self.environment()
        event = self.next_event(environment)
        self.assertEqual(event.deadline, 4.0)
        self.reactor.advance(2.9)
        self.assertNoResult(result)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.TIMEOUT)

    def test_fractional_timeout_wording(self) -> None:
        """A fractional timeout fires on time and is worded with two decimals."""
        self.make_pool(timeout=0.25)
        invocation, result = self.invoke()
        self.next_event(self.environment())
        self.reactor.advance(0.24)
        self.assertNoResult(result)
        self.reactor.advance(0.01)
        body = json.loads(self.successResultOf(result).body)
        self.assertEqual(
            body["errorMessage"],
            f"RequestId: {invocation.request_id} Error: Task timed out after 0.25 seconds",
        )

    def test_caller_deadline_is_kept(self) -> None:
        """An invocation arriving with its own deadline (AMQP) times out at that deadline."""
        self.make_pool(timeout=3.0)
        self.reactor.advance(100)
        _, result = self.invoke(deadline=101.5)
        event = self.next_event(self.environment())
        self.assertEqual(event.deadline, 101.5)
        self.reactor.advance(1.4)
        self.assertNoResult(result)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.TIMEOUT)

    def test_answer_after_timeout_is_refused(self) -> None:
        """A runtime answering after its timeout gets 400 InvalidRequestID (it is over), and the caller keeps the timeout."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.reactor.advance(3.0)
        error = self.assertRaises(
            APIError, environment.answer, invocation.request_id, Outcome.SUCCESS, b"late"
        )
        self.assertEqual((error.status, error.error_type), (400, "InvalidRequestID"))
        self.assertEqual(self.successResultOf(result).outcome, Outcome.TIMEOUT)

    def test_expired_invocation_is_not_delivered(self) -> None:
        """An invocation whose caller's deadline has passed is answered Sandbox.Timedout without reaching a runtime."""
        self.make_pool()
        first, first_result = self.invoke()
        environment = self.environment()
        late, late_result = self.invoke(deadline=self.reactor.seconds() + 0.5)
        self.reactor.advance(1.0)
        self.assertEqual(self.next_event(environment).request_id, first.request_id)
        environment.answer(first.request_id, Outcome.SUCCESS, b"1")
        self.assertNoResult(environment.next_invocation())  # the late one is skipped
        self.assertEqual(json.loads(self.successResultOf(late_result).body)["errorType"], "Sandbox.Timedout")
        self.assertEqual(self.process(environment).signals, [])

    def test_answered_invocation_does_not_time_out(self) -> None:
        """An answer cancels the timer: nothing is killed at the timeout."""
        self.make_pool()
        environment = self.idle_environment()
        self.reactor.advance(5)
        self.assertEqual(self.process(environment).signals, [])
        self.assertEqual(environment.state, State.IDLE)

    def test_timed_out_runtime_is_replaced_for_queued_work(self) -> None:
        """After a timed-out runtime dies, a new one is spawned for the queued invocation."""
        self.make_pool(max_concurrency=1)
        self.invoke()
        _, queued = self.invoke(b"queued")
        environment = self.environment()
        self.next_event(environment)
        self.reactor.advance(3.0)
        self.assertEqual(len(self.reactor.processes), 1)
        self.process(environment).die(signal.SIGKILL)
        self.assertEqual(len(self.reactor.processes), 2)
        replacement = self.environment()
        self.assertIsNot(replacement, environment)
        self.assertEqual(self.next_event(replacement).payload, b"queued")
        self.assertNoResult(queued)

    def test_runtime_stuck_in_init_times_out(self) -> None:
        """A runtime that never finishes init (never calls next, never exits) does not hang its caller forever."""
        self.make_pool(timeout=3.0)
        _, result = self.invoke()
        environment = self.environment()
        self.reactor.advance(9.9)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.1)
        self.assertIn(signal.SIGKILL, self.process(environment).signals)
        self.process(environment).die(signal.SIGKILL)
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.function_error, "Unhandled")
        self.assertEqual(json.loads(outcome.body)["errorType"], "Sandbox.Timedout")



class ExitTests(PoolTestCase):
    """Runtimes that exit."""

    def test_exit_mid_invocation_answers_exit_status(self) -> None:
        """A runtime exiting with status 3 mid-invocation answers Runtime.ExitError 'exit status 3' at once."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).exit(3)
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.outcome, Outcome.RUNTIME_EXIT)
        self.assertEqual(outcome.error_type, "Runtime.ExitError")
        self.assertEqual(outcome.function_error, "Unhandled")
        self.assertEqual(
            json.loads(outcome.body),
            {
                "errorType": "Runtime.ExitError",
                "errorMessage": f"RequestId: {invocation.request_id} Error: "
                "Runtime exited with error: exit status 3",
            },
        )
        self.reactor.advance(LEFTOVER_SWEEP)  # the second look for what it left
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.pool.environments, [])

    def test_killed_mid_invocation_answers_signal_killed(self) -> None:
        """A runtime killed by SIGKILL mid-invocation answers 'signal: killed'."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).die(signal.SIGKILL)
        message = json.loads(self.successResultOf(result).body)["errorMessage"]
        self.assertEqual(
            message,
            f"RequestId: {invocation.request_id} Error: Runtime exited with error: signal: killed",
        )

    def test_exit_zero_mid_invocation(self) -> None:
        """A runtime exiting cleanly mid-invocation answers 'exit status 0'."""
        self.make_pool()
        _, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).exit(0)
        message = json.loads(self.successResultOf(result).body)["errorMessage"]
        self.assertTrue(message.endswith("Runtime exited with error: exit status 0"), message)

    def test_exit_respawns_for_queued_invocations(self) -> None:
        """After a runtime exits mid-invocation, a new one is spawned for the queued invocation."""
        self.make_pool(max_concurrency=1)
        _, first = self.invoke(b"1")
        _, second = self.invoke(b"2")
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).exit(1)
        self.assertEqual(self.successResultOf(first).outcome, Outcome.RUNTIME_EXIT)
        self.assertEqual(len(self.reactor.alive), 1)
        replacement = self.environment()
        self.assertEqual(self.next_event(replacement).payload, b"2")
        self.assertNoResult(second)

    def test_exit_while_idle_spawns_fresh_runtime_on_next_invocation(self) -> None:
        """A runtime that died while idle is not given the next invocation; a new one is spawned."""
        self.make_pool()
        environment = self.idle_environment()
        self.process(environment).exit(0)
        self.assertEqual(self.pool.environments, [])
        invocation, result = self.invoke()
        self.assertEqual(len(self.reactor.processes), 2)
        replacement = self.environment()
        self.assertIs(self.next_event(replacement), invocation)

    def test_exit_while_idle_does_not_respawn_by_itself(self) -> None:
        """A runtime that exits with nothing queued is not replaced until work arrives."""
        self.make_pool()
        environment = self.idle_environment()
        self.process(environment).exit(1)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 1)


class InitFailureTests(PoolTestCase):
    """Runtimes whose init fails."""

    INIT_ERROR = (
        b'{"errorMessage":"No module named \'echo\'","errorType":"Runtime.ImportModuleError"}'
    )

    def test_init_error_answers_one_queued_invocation(self) -> None:
        """init/error then exit answers exactly one queued invocation with the init error body, verbatim."""
        self.make_pool(max_concurrency=1)
        _, first = self.invoke(b"1")
        _, second = self.invoke(b"2")
        environment = self.environment()
        environment.init_failed("Runtime.ImportModuleError", self.INIT_ERROR)
        self.process(environment).exit(1)
        outcome = self.successResultOf(first)
        self.assertEqual(
            (outcome.outcome, outcome.body, outcome.error_type, outcome.function_error),
            (Outcome.INIT_ERROR, self.INIT_ERROR, "Runtime.ImportModuleError", "Unhandled"),
        )
        self.assertNoResult(second)
        self.assertEqual(self.pool.queued, 1)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_init_error_does_not_respawn_without_work(self) -> None:
        """After an init failure with nothing else queued, no runtime is spawned again (no spin)."""
        self.make_pool(max_concurrency=3)
        _, result = self.invoke()
        environment = self.environment()
        environment.init_failed("Runtime.ImportModuleError", self.INIT_ERROR)
        self.process(environment).exit(1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.INIT_ERROR)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(self.pool.environments, [])

    def test_each_queued_invocation_gets_a_fresh_init(self) -> None:
        """With N queued and a runtime that always fails init, N runtimes are spawned and N answers given."""
        self.make_pool(max_concurrency=1)
        results = [self.invoke()[1] for _ in range(3)]
        for _ in range(3):
            [process] = self.reactor.alive
            environment = self.environment()
            environment.init_failed("Runtime.ImportModuleError", self.INIT_ERROR)
            process.exit(1)
        self.assertEqual(
            [self.successResultOf(each).outcome for each in results], [Outcome.INIT_ERROR] * 3
        )
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual(self.reactor.alive, [])

    def test_exit_during_init_without_init_error(self) -> None:
        """A runtime exiting before its first next, with no init/error, answers Runtime.ExitError."""
        self.make_pool()
        invocation, result = self.invoke()
        self.process(self.environment()).exit(2)
        outcome = self.successResultOf(result)
        self.assertEqual(outcome.outcome, Outcome.RUNTIME_EXIT)
        self.assertEqual(
            json.loads(outcome.body)["errorMessage"],
            f"RequestId: {invocation.request_id} Error: Runtime exited with error: exit status 2",
        )

    def test_init_error_kills_runtime_that_does_not_exit(self) -> None:
        """A runtime that reported init/error but keeps running is SIGKILLed after the grace period."""
        self.make_pool()
        _, result = self.invoke()
        environment = self.environment()
        environment.init_failed(None, b"{}")
        grace = environment_module.INIT_ERROR_EXIT_GRACE
        self.reactor.advance(grace - 0.01)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.01)
        self.assertEqual(self.process(environment).signals, [signal.SIGKILL])
        self.process(environment).die(signal.SIGKILL)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.INIT_ERROR)

    def test_second_init_error_is_refused(self) -> None:
        """init/error twice, or after init, is 403."""
        self.make_pool()
        self.invoke()
        environment = self.environment()
        environment.init_failed(None, b"{}")
        error = self.assertRaises(APIError, environment.init_failed, None, b"{}")
        self.assertEqual(error.status, 403)

    def test_next_after_init_error_takes_no_invocation(self) -> None:
        """A runtime that calls next after init/error is refused (403) and the queued invocation gets the init error."""
        self.make_pool()
        _, result = self.invoke()
        environment = self.environment()
        environment.init_failed("Runtime.ImportModuleError", self.INIT_ERROR)
        error = self.assertRaises(APIError, environment.next_invocation)
        self.assertEqual((error.status, error.error_type), (403, "InvalidStateTransition"))
        self.assertEqual(self.pool.queued, 1)
        self.reactor.advance(environment_module.INIT_ERROR_EXIT_GRACE)
        self.process(environment).die(signal.SIGKILL)
        self.assertEqual(self.successResultOf(result).body, self.INIT_ERROR)


    def test_init_error_after_init_is_refused(self) -> None:
        """init/error once the runtime has called next is 403 InvalidStateTransition."""
        self.make_pool()
        environment = self.idle_environment()
        error = self.assertRaises(APIError, environment.init_failed, "X", b"{}")
        self.assertEqual((error.status, error.error_type), (403, "InvalidStateTransition"))


class IdleTests(PoolTestCase):
    """Reaping idle runtimes."""

    def test_reaped_exactly_idle_timeout_after_last_idle(self) -> None:
        """A runtime is SIGTERMed exactly AWS_LAMBDA_FUNCTION_IDLETIMEOUT after it last went idle."""
        self.make_pool(idle_timeout=10.0)
        environment = self.idle_environment()  # idle from t=0
        self.reactor.advance(5)
        invocation, result = self.invoke()
        self.reactor.advance(1)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"x")
        self.wait_next(environment)  # idle again from t=6
        self.reactor.advance(9.9)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])
        self.assertEqual(environment.state, State.STOPPING)

    def test_not_reaped_while_busy(self) -> None:
        """A runtime busy for longer than the idle timeout is not reaped; the clock restarts when it is idle."""
        self.make_pool(idle_timeout=10.0, timeout=30.0)
        environment = self.idle_environment()  # idle from t=0
        self.reactor.advance(1)
        invocation, result = self.invoke()
        self.reactor.advance(24)  # t=25: idle timers fired at 10 and 20
        self.assertEqual(self.process(environment).signals, [])
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"x")
        self.successResultOf(result)
        self.wait_next(environment)  # idle from t=25
        self.reactor.advance(9.9)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])

    def test_reaped_runtime_gets_sigkill_after_grace(self) -> None:
        """A reaped runtime that ignores SIGTERM gets SIGKILL KILL_GRACE seconds later, then is released."""
        self.make_pool(idle_timeout=10.0)
        environment = self.idle_environment()
        self.reactor.advance(10.0)
        process = self.process(environment)
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.reactor.advance(KILL_GRACE - 0.01)
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.reactor.advance(0.01)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])
        process.die(signal.SIGKILL)
        self.assertEqual(self.pool.environments, [])
        self.assertEqual(len(self.reactor.processes), 1)

    def test_reaped_runtime_is_not_given_work(self) -> None:
        """An invocation arriving after a runtime was reaped goes to a new runtime once the old one is gone."""
        self.make_pool(idle_timeout=10.0)
        environment = self.idle_environment()
        self.reactor.advance(10.0)
        invocation, result = self.invoke()
        self.assertIsNone(environment.current)
        self.process(environment).die(signal.SIGTERM)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertIs(self.next_event(self.environment()), invocation)

    def test_starting_runtime_is_not_reaped(self) -> None:
        """A runtime still initialising is not reaped by the idle timer (only the init timeout stops it)."""
        self.make_pool(idle_timeout=1.0)
        self.invoke()
        environment = self.environment()
        self.reactor.advance(9.9)
        self.assertEqual(self.process(environment).signals, [])


class StopTests(PoolTestCase):
    """Draining on stop()."""

    def test_stop_with_nothing_running_fires_at_once(self) -> None:
        """stop() on a pool with no runtime fires at once."""
        self.make_pool()
        self.assertIsNone(self.successResultOf(self.pool.stop()))
        self.assertFalse(self.pool.accepting)

    def test_stop_refuses_new_invocations(self) -> None:
        """After stop(), invoke, accept_event and dry_run fail with ServiceUnavailable."""
        self.make_pool()
        self.pool.stop()
        self.failureResultOf(self.pool.invoke(Invocation(b"{}")), ServiceUnavailable)
        self.failureResultOf(self.pool.accept_event(Invocation(b"{}")), ServiceUnavailable)
        self.failureResultOf(self.pool.dry_run(Invocation(b"{}")), ServiceUnavailable)

    def test_in_flight_invocation_finishes(self) -> None:
        """An invocation running when stop() is called still gets its answer; then the runtime is stopped."""
        self.make_pool(shutdown_timeout=10.0)
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        stopped = self.pool.stop()
        self.assertNoResult(stopped)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(1)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b"finished")
        self.assertEqual(self.successResultOf(result).body, b"finished")
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])
        self.assertNoResult(stopped)
        self.process(environment).die(signal.SIGTERM)
        self.reactor.advance(LEFTOVER_SWEEP)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_queued_invocation_runs_within_shutdown_timeout(self) -> None:
        """An invocation queued at stop() still runs if a runtime frees up before the shutdown timeout."""
        self.make_pool(shutdown_timeout=10.0)
        first, _ = self.invoke()
        second, queued = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.pool.stop()
        environment.answer(first.request_id, Outcome.SUCCESS, b"1")
        self.assertIs(self.next_event(environment), second)
        environment.answer(second.request_id, Outcome.SUCCESS, b"2")
        self.assertEqual(self.successResultOf(queued).body, b"2")

    def test_queued_invocations_fail_after_shutdown_timeout(self) -> None:
        """Invocations still queued at SHUTDOWN_TIMEOUT fail with ServiceUnavailable and runtimes are stopped."""
        self.make_pool(shutdown_timeout=10.0, timeout=30.0)
        invocation, running = self.invoke()
        _, queued = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        stopped = self.pool.stop()
        self.reactor.advance(9.9)
        self.assertNoResult(queued)
        self.assertEqual(self.process(environment).signals, [])
        self.reactor.advance(0.1)
        self.failureResultOf(queued, ServiceUnavailable)
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])
        self.process(environment).die(signal.SIGTERM)
        self.assertEqual(
            json.loads(self.successResultOf(running).body)["errorMessage"],
            f"RequestId: {invocation.request_id} Error: Runtime exited with error: signal: terminated",
        )
        self.reactor.advance(LEFTOVER_SWEEP)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(self.reactor.processes), 1)

    def test_idle_runtimes_are_stopped_at_once(self) -> None:
        """stop() SIGTERMs idle runtimes at once and fires when they have exited."""
        self.make_pool(max_concurrency=2)
        environment = self.idle_environment()
        stopped = self.pool.stop()
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])
        self.assertNoResult(stopped)
        self.process(environment).exit(0)
        self.reactor.advance(LEFTOVER_SWEEP)
        self.successResultOf(stopped)

    def test_stop_twice(self) -> None:
        """Both of two stop() calls fire when the pool has drained."""
        self.make_pool()
        environment = self.idle_environment()
        first, second = self.pool.stop(), self.pool.stop()
        self.process(environment).exit(0)
        self.reactor.advance(LEFTOVER_SWEEP)
        self.successResultOf(first)
        self.successResultOf(second)


class ReportTests(PoolTestCase):
    """START / END / REPORT lines and the log tail."""

    def lines(self) -> list[bytes]:
        return b"".join(self.output).splitlines()

    def answer(self, environment: ExecutionEnvironment, request_id: str, body: bytes) -> None:
        """Answer with success; the answer is taken once the runtime's output is read (a turn)."""
        environment.answer(request_id, Outcome.SUCCESS, body)
        self.reactor.advance(0)

    def test_answer_is_taken_after_the_output(self) -> None:
        """With reports, an answer is taken a reactor turn later, with output read in between in it."""
        self.make_pool(print_reports=True)
        environment = self.idle_environment()
        invocation, result = self.invoke()
        taken = environment.answer(invocation.request_id, Outcome.SUCCESS, b"x")
        self.assertNoResult(result)
        self.process(environment).write_output(b"read after the answer\n")
        self.reactor.advance(0)
        assert taken is not None
        self.successResultOf(taken)
        self.assertEqual(self.successResultOf(result).body, b"x")
        self.assertEqual(self.lines()[-3], b"read after the answer")

    def test_reports_around_an_invocation(self) -> None:
        """START before the run, END and REPORT after, same request id, Init Duration on the first only."""
        self.make_pool(print_reports=True)
        first, result = self.invoke()
        self.reactor.advance(0.25)
        environment = self.environment()
        self.reactor.memory_kb[self.process(environment).pid] = 41 * 1024 - 100
        self.next_event(environment)
        rid = first.request_id
        self.assertEqual(self.lines(), [f"START RequestId: {rid} Version: $LATEST".encode()])
        self.process(environment).write_output(b"hello\n")
        self.reactor.advance(0.5)
        self.answer(environment, rid, b"x")
        self.assertEqual(
            self.lines(),
            [
                f"START RequestId: {rid} Version: $LATEST".encode(),
                b"hello",
                f"END RequestId: {rid}".encode(),
                f"REPORT RequestId: {rid}\tDuration: 500.00 ms\tBilled Duration: 500 ms\t"
                "Memory Size: 3008 MB\tMax Memory Used: 41 MB\tInit Duration: 250.00 ms".encode(),
            ],
        )
        result_value = self.successResultOf(result)
        self.assertEqual(result_value.init_duration, 0.25)
        self.assertEqual(result_value.max_memory_mb, 41)

    def test_init_duration_only_on_first_invocation(self) -> None:
        """The second invocation on the same runtime has no Init Duration."""
        self.make_pool(print_reports=True)
        environment = self.idle_environment()
        del self.output[:]
        invocation, result = self.invoke()
        self.reactor.advance(0.01)
        self.answer(environment, invocation.request_id, b"x")
        lines = self.lines()
        self.assertEqual(lines[1], f"END RequestId: {invocation.request_id}".encode())
        self.assertTrue(
            lines[2].startswith(f"REPORT RequestId: {invocation.request_id}\t".encode())
        )
        self.assertNotIn(b"Init Duration", lines[2])
        self.assertIsNone(self.successResultOf(result).init_duration)

    def test_reports_for_timed_out_invocation(self) -> None:
        """A timed-out invocation still gets its END and REPORT lines."""
        self.make_pool(print_reports=True)
        invocation, _ = self.invoke()
        self.next_event(self.environment())
        self.reactor.advance(3.0)
        lines = self.lines()
        self.assertEqual(lines[-2], f"END RequestId: {invocation.request_id}".encode())
        self.assertTrue(
            lines[-1].startswith(
                f"REPORT RequestId: {invocation.request_id}\tDuration: 3000.00 ms\t".encode()
            )
        )

    def test_reports_for_init_failure(self) -> None:
        """An invocation answered by an init failure gets START, END and REPORT all the same."""
        self.make_pool(print_reports=True)
        invocation, _ = self.invoke()
        environment = self.environment()
        environment.init_failed("E", b"{}")
        self.process(environment).exit(1)
        self.reactor.advance(0)  # the exit is taken once the runtime's last output is read
        rid = invocation.request_id
        lines = self.lines()
        self.assertEqual(lines[0], f"START RequestId: {rid} Version: $LATEST".encode())
        self.assertEqual(lines[1], f"END RequestId: {rid}".encode())
        self.assertTrue(lines[2].startswith(f"REPORT RequestId: {rid}\t".encode()))

    def test_no_reports_by_default(self) -> None:
        """Without PRINT_REPORTS only the runtime's own output is written."""
        self.make_pool()
        invocation, _ = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).write_output(b"log line\n")
        self.answer(environment, invocation.request_id, b"x")
        self.assertEqual(self.lines(), [b"log line"])

    def test_partial_output_line_is_held_until_complete(self) -> None:
        """Runtime output is forwarded line by line; a partial line waits for its end."""
        self.make_pool()
        self.invoke()
        process = self.process(self.environment())
        process.write_output(b"one\ntw")
        self.assertEqual(b"".join(self.output), b"one\n")
        process.write_output(b"o\n")
        self.assertEqual(b"".join(self.output), b"one\ntwo\n")

    def test_partial_output_is_flushed_on_exit(self) -> None:
        """A last line without a newline is written, with one, when the runtime exits."""
        self.make_pool()
        self.invoke()
        process = self.process(self.environment())
        process.write_output(b"last words", fd=2)
        process.exit(1)
        self.assertEqual(b"".join(self.output), b"last words\n")

    def test_log_tail(self) -> None:
        """With Tail, the result carries START, the invocation's output, END and REPORT."""
        self.make_pool()
        environment = self.idle_environment()
        invocation, result = self.invoke(tail_log=True)
        self.process(environment).write_output(b"tail me\n")
        self.reactor.advance(0.002)
        self.answer(environment, invocation.request_id, b"x")
        rid = invocation.request_id
        tail = self.successResultOf(result).log_tail.splitlines()
        self.assertEqual(tail[0], f"START RequestId: {rid} Version: $LATEST".encode())
        self.assertEqual(tail[1], b"tail me")
        self.assertEqual(tail[2], f"END RequestId: {rid}".encode())
        self.assertTrue(
            tail[3].startswith(f"REPORT RequestId: {rid}\tDuration: 2.00 ms\t".encode())
        )
        self.assertEqual(len(tail), 4)

    def test_log_tail_is_last_4_kb(self) -> None:
        """The log tail is at most 4 KB, ending with the REPORT line."""
        self.make_pool()
        environment = self.idle_environment()
        invocation, result = self.invoke(tail_log=True)
        for index in range(200):
            self.process(environment).write_output(b"%04d " % index + b"x" * 95 + b"\n")
        self.answer(environment, invocation.request_id, b"x")
        tail = self.successResultOf(result).log_tail
        self.assertEqual(len(tail), 4096)
        self.assertIn(b"0199 xxx", tail)
        self.assertNotIn(b"0150 xxx", tail)
        self.assertTrue(tail.endswith(b" MB\n"))


class EndedTests(PoolTestCase):
    """An environment has ended once its process has ended and its port is closed."""

    def test_slot_is_reused_once_the_port_is_closed(self) -> None:
        """A runtime whose leftover children hold its pipes still frees its slot at its exit."""
        self.make_pool(max_concurrency=1)
        _, first = self.invoke(b"1")
        _, second = self.invoke(b"2")
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).exit(1, holding_pipes=True)
        self.assertEqual(self.successResultOf(first).outcome, Outcome.RUNTIME_EXIT)
        replacement = self.environment()
        self.assertIsNot(replacement, environment)
        self.assertEqual(self.next_event(replacement).payload, b"2")
        self.assertNoResult(second)

    def test_environment_ends_when_its_process_ends(self) -> None:
        """ended() does not fire at the runtime's exit while its pipes are open, only once they close."""
        self.make_pool()
        environment = self.idle_environment()
        ended = environment.ended()
        process = self.process(environment)
        process.exit(0, holding_pipes=True)
        self.assertNoResult(ended)
        process.close_pipes()
        self.assertNoResult(ended)  # nor before the second look for what it left
        self.reactor.advance(LEFTOVER_SWEEP)
        self.successResultOf(ended)

    def test_stop_waits_for_every_process_to_end(self) -> None:
        """stop() fires only once the stopped runtime's pipes are closed too, with no timer left."""
        self.make_pool()
        environment = self.idle_environment()
        stopped = self.pool.stop()
        process = self.process(environment)
        process.die(signal.SIGTERM, holding_pipes=True)
        self.assertNoResult(stopped)
        process.close_pipes()
        self.reactor.advance(LEFTOVER_SWEEP)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_leftover_pipes_are_closed_after_a_grace(self) -> None:
        """Pipes a runtime's leftovers still hold are closed ORPHAN_OUTPUT_GRACE after its exit, which ends it."""
        self.make_pool()
        environment = self.idle_environment()
        stopped = self.pool.stop()
        process = self.process(environment)
        process.die(signal.SIGTERM, holding_pipes=True)
        self.reactor.advance(environment_module.ORPHAN_OUTPUT_GRACE - 0.01)
        self.assertNoResult(stopped)
        self.reactor.advance(0.01)
        self.assertEqual(process.open_fds, set())
        self.successResultOf(stopped)


class LeftoverTests(PoolTestCase):
    """What a runtime started is killed with its environment, even once the runtime is gone."""

    def marker(self, environment: ExecutionEnvironment) -> bytes:
        stream = self.process(environment).env["AWS_LAMBDA_LOG_STREAM_NAME"]
        return b"AWS_LAMBDA_LOG_STREAM_NAME=" + stream.encode()

    def test_leftovers_are_killed_when_the_runtime_exits_on_its_own(self) -> None:
        """A runtime exiting by itself gets every process carrying its environment's marker SIGKILLed."""
        self.make_pool()
        environment = self.idle_environment()
        self.assertEqual(self.reactor.marked_signals, [])
        self.process(environment).exit(0)
        self.assertIn((self.marker(environment), signal.SIGKILL), self.reactor.marked_signals)

    def test_environments_have_distinct_markers(self) -> None:
        """Each environment's runtime gets a marker of its own, so one's leftovers are not another's."""
        self.make_pool(max_concurrency=2)
        self.invoke()
        self.invoke()
        first, second = self.environment(0), self.environment(1)
        self.assertNotEqual(self.marker(first), self.marker(second))


class LateAnswerTests(PoolTestCase):
    """Answers that come after the runtime is gone."""

    def test_answer_after_exit_is_invalid_request_id(self) -> None:
        """An answer posted after the runtime exited (by a child it left) is 400 InvalidRequestID."""
        self.make_pool()
        invocation, result = self.invoke()
        environment = self.environment()
        self.next_event(environment)
        self.process(environment).exit(1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.RUNTIME_EXIT)
        error = self.assertRaises(
            APIError, environment.answer, invocation.request_id, Outcome.SUCCESS, b"late"
        )
        self.assertEqual((error.status, error.error_type), (400, "InvalidRequestID"))


    def test_next_while_stopping_is_refused_when_the_runtime_exits(self) -> None:
        """A GET next asked while the runtime is being stopped gets no event, and a ContainerError once it exits."""
        self.make_pool()
        environment = self.idle_environment()
        self.pool.stop()
        self.assertEqual(environment.state, State.STOPPING)
        late = environment.next_invocation()
        self.assertNoResult(late)
        self.process(environment).die(signal.SIGTERM)
        error = self.failureResultOf(late, APIError).value
        self.assertEqual((error.status, error.error_type), (500, "ContainerError"))
        self.assertIn("signal: terminated", json.loads(error.body)["errorMessage"])

class LogTests(PoolTestCase):
    """What the daemon tells its users at INFO about their runtimes."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def info(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") is LogLevel.info
            and event.get("log_namespace", "").startswith("lambdarapid")
        ]

    def test_start_and_exit_are_logged(self) -> None:
        """The runtime's start (index, pid, command) and its exit (pid, status) are logged at INFO."""
        self.make_pool()
        self.invoke()
        environment = self.environment()
        pid = environment.pid
        self.assertEqual(self.info(), [f"runtime #0 started (pid {pid}): /bin/true"])
        self.next_event(environment)
        self.process(environment).exit(1)
        self.assertEqual(self.info()[-1], f"runtime #0 (pid {pid}) exited: exit status 1")

    def test_stopped_runtime_exit_is_logged(self) -> None:
        """A runtime the daemon stopped has its exit logged too, with the signal that ended it."""
        self.make_pool()
        environment = self.idle_environment()
        pid = environment.pid
        self.pool.stop()
        self.process(environment).die(signal.SIGTERM)
        self.assertEqual(self.info()[-1], f"runtime #0 (pid {pid}) exited: signal: terminated")


class ProvisionedConcurrencyTests(PoolTestCase):
    """PROVISIONED_CONCURRENCY: environments initialised ahead of invocations, kept."""

    def test_started_before_any_invocation(self) -> None:
        """start() initialises PROVISIONED_CONCURRENCY environments, told they are provisioned."""
        self.make_pool(max_concurrency=4, provisioned_concurrency=2)
        self.assertEqual(self.reactor.processes, [])
        self.pool.start()
        self.assertEqual(len(self.reactor.processes), 2)
        for process in self.reactor.processes:
            self.assertEqual(
                process.env["AWS_LAMBDA_INITIALIZATION_TYPE"], "provisioned-concurrency"
            )

    def test_first_invocation_is_warm(self) -> None:
        """An invocation after a provisioned Init goes straight to it: no spawn, no Init Duration."""
        self.make_pool(max_concurrency=2, provisioned_concurrency=1)
        self.pool.start()
        environment = self.environment()
        self.reactor.advance(0.5)
        self.wait_next(environment)  # its Init is over: idle
        invocation, result = self.invoke()
        self.assertIs(environment.current, invocation)
        environment.answer(invocation.request_id, Outcome.SUCCESS, b'"ok"')
        self.assertIsNone(self.successResultOf(result).init_duration)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_burst_spawns_on_demand_beyond(self) -> None:
        """Beyond the provisioned ones, environments start on demand, as on-demand."""
        self.make_pool(max_concurrency=3, provisioned_concurrency=1)
        self.pool.start()
        self.wait_next(self.environment(0))
        self.invoke()
        self.invoke()
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(
            self.reactor.processes[1].env["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand"
        )

    def test_never_reaped_below(self) -> None:
        """Idle reaping stops at PROVISIONED_CONCURRENCY environments."""
        self.make_pool(max_concurrency=2, provisioned_concurrency=1, idle_timeout=10.0)
        self.pool.start()
        self.wait_next(self.environment(0))
        self.reactor.advance(100)
        self.assertEqual(self.process(self.environment(0)).signals, [])

    def test_replaced_when_it_dies(self) -> None:
        """A provisioned environment whose runtime exits is replaced at once."""
        self.make_pool(max_concurrency=2, provisioned_concurrency=1)
        self.pool.start()
        environment = self.environment()
        self.wait_next(environment)
        self.process(environment).exit(1)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(len(self.pool.environments), 1)

    def test_failed_init_is_retried_later(self) -> None:
        """A provisioned Init that fails is tried again PROVISION_RETRY seconds later, not in a loop."""
        from lambdarapid.pool import PROVISION_RETRY

        self.make_pool(max_concurrency=1, provisioned_concurrency=1)
        self.pool.start()
        environment = self.environment()
        environment.init_failed("Runtime.ImportModuleError", InitFailureTests.INIT_ERROR)
        self.process(environment).exit(1)
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(PROVISION_RETRY - 0.1)
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stop_ends_them(self) -> None:
        """On stop, provisioned environments are stopped like the others."""
        self.make_pool(max_concurrency=1, provisioned_concurrency=1)
        self.pool.start()
        environment = self.environment()
        self.wait_next(environment)
        stopped = self.pool.stop()
        self.assertEqual(self.process(environment).signals, [signal.SIGTERM])
        self.process(environment).exit(0)
        self.reactor.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.processes), 1)
