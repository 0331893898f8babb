"""
Extensions' phase logic on a fake reactor: the test plays the runtime and an
external extension (register, next, exit), the pool and its environment are
real, and every timer runs on the fake clock.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lambdarapid import errors
from lambdarapid.environment import (
    RUNTIME_SHUTDOWN_SHARE,
    SHUTDOWN_BUDGET,
    ExecutionEnvironment,
    State,
)
from lambdarapid.extensions import MAX_EXTENSIONS, Extensions, ExtensionState, extension_environ
from lambdarapid.invocation import Invocation, Outcome, Result
from lambdarapid.pool import Pool

from .fakes import FakeProcess, fake_process_reactor, make_config

INVOKE_AND_SHUTDOWN = json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode()


class RegistryTests(SynchronousTestCase):
    """The Extensions API's bookkeeping: who may register, and how identifiers are checked."""

    def setUp(self) -> None:
        self.extensions = Extensions(["external-one"])

    def refusal(self, name: str | None, body: bytes = b"") -> errors.APIError:
        return self.assertRaises(errors.APIError, self.extensions.register, name, body)

    def test_external_by_file_name_internal_otherwise(self) -> None:
        """A name equal to a launched file's is external; any other is internal."""
        external = self.extensions.register("external-one", INVOKE_AND_SHUTDOWN)
        internal = self.extensions.register("agent", b'{"events": ["INVOKE"]}')
        self.assertEqual((external.internal, internal.internal), (False, True))
        self.assertEqual(external.events, ("INVOKE", "SHUTDOWN"))
        self.assertTrue(self.extensions.externals_registered)

    def test_refusals(self) -> None:
        """Each malformed registration gets its own AWS error type, all 403."""
        cases = [
            (None, b"", "Extension.InvalidExtensionName"),
            ("x", b"{not json", "InvalidRequestFormat"),
            ("x", b'{"configurationKeys": ["a"]}', "InvalidRequestFormat"),
            ("x", b'{"events": ["PING"]}', "Extension.InvalidEventType"),
            ("agent", b'{"events": ["SHUTDOWN"]}', "Extension.InvalidEventType"),
        ]
        for name, body, error_type in cases:
            error = self.refusal(name, body)
            self.assertEqual((error.status, error.error_type), (403, error_type), (name, body))

    def test_twice_closed_and_too_many(self) -> None:
        """Registering twice, after the runtime's first next, or past ten extensions is refused."""
        self.extensions.register("agent", b"")
        self.assertEqual(self.refusal("agent").error_type, "Extension.InvalidExtensionState")
        for number in range(MAX_EXTENSIONS - 1):
            self.extensions.register(f"agent-{number}", b"")
        self.assertEqual(self.refusal("eleventh").error_type, "Extension.TooManyExtensions")
        self.extensions.registration_open = False
        self.assertEqual(self.refusal("late").error_type, "Extension.RegistrationClosed")

    def test_identifier_checks(self) -> None:
        """A missing, malformed or unknown identifier each has its own error."""
        for identifier, error_type in [
            (None, "Extension.MissingExtensionIdentifier"),
            (b"not-a-uuid", "Extension.InvalidExtensionIdentifier"),
            (b"0efdee88-5c92-4811-a900-1150737556d4", "Extension.UnknownExtensionIdentifier"),
        ]:
            error = self.assertRaises(errors.APIError, self.extensions.find, identifier)
            self.assertEqual(error.error_type, error_type)

    def test_events_wait_for_next(self) -> None:
        """An event sent while the extension works is given at its next call."""
        extension = self.extensions.register("external-one", INVOKE_AND_SHUTDOWN)
        self.extensions.send("INVOKE", {"eventType": "INVOKE"})
        _, body = self.successResultOf(self.extensions.next_event(extension))
        self.assertEqual(json.loads(body), {"eventType": "INVOKE"})
        self.assertIs(extension.state, ExtensionState.BUSY)

    def test_init_error_only_before_next(self) -> None:
        """init/error is refused once the extension asked for an event; after either error, next is refused."""
        extension = self.extensions.register("external-one", INVOKE_AND_SHUTDOWN)
        self.extensions.next_event(extension)
        error = self.assertRaises(
            errors.APIError, self.extensions.report_error, extension, "Extension.Bad", False
        )
        self.assertEqual(error.error_type, "Extension.InvalidExtensionState")
        missing = self.assertRaises(
            errors.APIError, self.extensions.report_error, extension, None, True
        )
        self.assertEqual(missing.error_type, "Extension.MissingHeader")

    def test_environment_of_an_extension(self) -> None:
        """Extensions get the function's variables minus the runtime's own."""
        environ = extension_environ(
            {
                "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
                "_HANDLER": "echo.handler",
                "LAMBDA_TASK_ROOT": "/var/task",
                "AWS_LAMBDA_LOG_STREAM_NAME": "x",
                "MY_SETTING": "1",
            }
        )
        self.assertEqual(environ, {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001", "MY_SETTING": "1"})


class PhaseTestCase(SynchronousTestCase):
    """A pool whose function image has one external extension, C{ext}."""

    def setUp(self) -> None:
        self.reactor = fake_process_reactor(self)
        self.output: list[bytes] = []
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "ext")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(path, 0o755)
        self.directory = directory

    def make_pool(self, **settings: Any) -> Pool:
        settings.setdefault("extensions_dir", self.directory)
        self.pool = Pool(make_config(**settings), self.reactor, self.output.append)
        return self.pool

    def invoke(self) -> tuple[Invocation, Deferred[Result]]:
        invocation = Invocation(payload=b"{}")
        return invocation, self.pool.invoke(invocation)

    @property
    def environment(self) -> ExecutionEnvironment:
        [environment] = self.pool.environments
        return environment

    def process_named(self, name: str) -> FakeProcess:
        [found] = [p for p in self.reactor.processes if os.path.basename(p.args[-1]) == name]
        return found

    def register(self, body: bytes = INVOKE_AND_SHUTDOWN) -> bytes:
        identifier, _ = self.environment.register_extension("ext", body, account=False)
        return identifier.encode()

    def runtime_waits(self) -> Deferred[Invocation]:
        """The runtime's GET /next, left waiting (it fails harmlessly once the runtime is gone)."""
        waiting = self.environment.next_invocation()
        return waiting.addErrback(lambda failure: failure.trap(errors.APIError))

    def started(self) -> tuple[bytes, Deferred[tuple[str, bytes]], Deferred[Invocation]]:
        """Register the extension, let both it and the runtime ask for an event."""
        identifier = self.register()
        extension_next = self.environment.extension_next(identifier)
        runtime_next = self.runtime_waits()
        return identifier, extension_next, runtime_next


class InitTests(PhaseTestCase):
    def test_runtime_waits_for_external_registration(self) -> None:
        """Only the extension is started until it registers; then the runtime is."""
        self.make_pool()
        self.invoke()
        [extension] = self.reactor.processes
        self.assertEqual(os.path.basename(extension.args[-1]), "ext")
        self.assertNotIn("_HANDLER", extension.env)
        self.register()
        self.assertEqual(len(self.reactor.processes), 2)
        runtime = self.reactor.processes[1]
        self.assertEqual(runtime.env["_HANDLER"], "echo.handler")

    def test_init_ends_when_runtime_and_extension_wait(self) -> None:
        """The queued invocation is delivered only once both called next, to both at once."""
        self.make_pool()
        invocation, _ = self.invoke()
        identifier = self.register()
        runtime_next = self.runtime_waits()
        self.assertNoResult(runtime_next)
        self.assertIs(self.environment.state, State.STARTING)
        extension_next = self.environment.extension_next(identifier)
        self.assertIs(self.successResultOf(runtime_next), invocation)
        _, body = self.successResultOf(extension_next)
        event = json.loads(body)
        self.assertEqual(event["eventType"], "INVOKE")
        self.assertEqual(event["requestId"], invocation.request_id)
        self.assertEqual(event["deadlineMs"], int(invocation.deadline * 1000))  # type: ignore[operator]
        self.assertEqual(event["invokedFunctionArn"], invocation.function_arn)

    def test_registration_closes_at_the_runtime_next(self) -> None:
        """An internal extension registering after the runtime's first next is refused."""
        self.make_pool()
        self.invoke()
        self.register()
        self.runtime_waits()
        error = self.assertRaises(
            errors.APIError, self.environment.register_extension, "late", b"", False
        )
        self.assertEqual(error.error_type, "Extension.RegistrationClosed")

    def test_crash_during_init_answers_extension_crash(self) -> None:
        """An extension exiting before Init ends fails the invocation with Extension.Crash; its runtime is stopped."""
        self.make_pool()
        invocation, result = self.invoke()
        self.register()
        self.process_named("ext").exit(3)
        answer = self.successResultOf(result)
        self.assertEqual(answer.outcome, Outcome.INIT_ERROR)
        self.assertEqual(answer.function_error, "Unhandled")
        self.assertEqual(
            json.loads(answer.body),
            {
                "errorType": "Extension.Crash",
                "errorMessage": f"RequestId: {invocation.request_id} Error: exit status 3",
            },
        )
        runtime = self.reactor.processes[1]
        self.assertIn(signal.SIGTERM, runtime.signals)

    def test_init_error_then_exit(self) -> None:
        """init/error followed by the exit answers Extension.InitError."""
        self.make_pool()
        _, result = self.invoke()
        identifier = self.register()
        self.environment.extension_error(identifier, "Extension.ConfigInvalid", exiting=False)
        self.assertNoResult(result)  # decided when it exits
        self.process_named("ext").exit(0)
        self.assertEqual(self.successResultOf(result).error_type, "Extension.InitError")

    def test_launch_error_for_a_file_that_cannot_run(self) -> None:
        """A non-executable file in EXTENSIONS_DIR is a LaunchError, and nothing is spawned."""
        os.chmod(os.path.join(self.directory, "ext"), 0o644)
        self.make_pool()
        _, result = self.invoke()
        self.assertEqual(self.successResultOf(result).error_type, "Extension.LaunchError")
        self.assertEqual(self.reactor.processes, [])


class InvokeTests(PhaseTestCase):
    def test_answer_is_not_held_for_the_extension(self) -> None:
        """The caller has the answer at once; the next invocation waits for the extension's next."""
        self.make_pool()
        first, first_result = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.environment.answer(first.request_id, Outcome.SUCCESS, b'"one"')
        self.assertEqual(self.successResultOf(first_result).body, b'"one"')
        second, second_result = self.invoke()
        runtime_again = self.environment.next_invocation()
        self.assertNoResult(runtime_again)  # the extension is still at work
        self.assertIs(self.environment.state, State.BUSY)
        self.environment.extension_next(identifier)
        self.assertIs(self.successResultOf(runtime_again), second)

    def test_post_invoke_work_is_bounded_by_the_deadline(self) -> None:
        """An extension still busy at the deadline resets the environment: SHUTDOWN says timeout."""
        self.make_pool(timeout=3.0)
        invocation, result = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.environment.answer(invocation.request_id, Outcome.SUCCESS, b"{}")
        self.successResultOf(result)
        self.runtime_waits()
        self.reactor.advance(3.0)
        self.assertIs(self.environment.state, State.STOPPING)
        self.reactor.processes[1].die(signal.SIGTERM)
        _, body = self.successResultOf(self.environment.extension_next(identifier))
        self.assertEqual(json.loads(body)["shutdownReason"], "timeout")


class ShutdownTests(PhaseTestCase):
    def test_shutdown_sequence(self) -> None:
        """SIGTERM the runtime, SIGKILL it at its share, SHUTDOWN to the extension, SIGKILL it at the budget."""
        self.make_pool()
        invocation, result = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.environment.answer(invocation.request_id, Outcome.SUCCESS, b"{}")
        self.runtime_waits()
        waiting = self.environment.extension_next(identifier)
        environment = self.environment
        started = self.reactor.seconds()
        stopped = self.pool.stop()
        runtime, extension = self.reactor.processes[1], self.process_named("ext")
        self.assertEqual(runtime.signals, [signal.SIGTERM])
        self.assertNoResult(waiting)  # SHUTDOWN comes after the runtime is gone
        self.reactor.advance(RUNTIME_SHUTDOWN_SHARE)
        self.assertEqual(runtime.signals, [signal.SIGTERM, signal.SIGKILL])
        runtime.die(signal.SIGKILL)
        _, body = self.successResultOf(waiting)
        event = json.loads(body)
        self.assertEqual(event["eventType"], "SHUTDOWN")
        self.assertEqual(event["shutdownReason"], "spindown")
        self.assertEqual(event["deadlineMs"], int((started + SHUTDOWN_BUDGET) * 1000))
        self.assertNotIn(signal.SIGKILL, extension.signals)
        self.reactor.advance(SHUTDOWN_BUDGET - RUNTIME_SHUTDOWN_SHARE)
        self.assertIn(signal.SIGKILL, extension.signals)
        self.assertIn((extension.pid, signal.SIGKILL), self.reactor.group_signals)
        extension.die(signal.SIGKILL)
        self.successResultOf(stopped)
        self.assertIs(environment.state, State.DEAD)

    def test_extension_exiting_on_shutdown_ends_the_environment(self) -> None:
        """An extension that exits on SHUTDOWN ends the environment well before the budget."""
        self.make_pool(idle_timeout=5.0)
        invocation, _ = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.environment.answer(invocation.request_id, Outcome.SUCCESS, b"{}")
        self.runtime_waits()
        waiting = self.environment.extension_next(identifier)
        environment = self.environment
        self.reactor.advance(5.0)  # idle reaping
        self.reactor.processes[1].die(signal.SIGTERM)
        self.assertEqual(json.loads(self.successResultOf(waiting)[1])["shutdownReason"], "spindown")
        ended = environment.ended()
        self.process_named("ext").exit(0)
        self.reactor.advance(1.0)  # the last look for what the runtime left
        self.successResultOf(ended)
        self.assertEqual(self.pool.environments, [])


class TelemetryLinesTests(PhaseTestCase):
    def subscribed_lines(self, **settings: Any) -> list[tuple[str, Any]]:
        """Subscribe the extension to function and extension lines; what telemetry is told."""
        self.make_pool(**settings)
        self.invoke()
        identifier = self.register()
        told: list[tuple[str, Any]] = []
        self.patch(self.environment.telemetry, "log_line", lambda *line: told.append(line))
        body = {
            "schemaVersion": "2022-12-13",
            "types": ["function", "extension"],
            "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:4243/"},
        }
        self.environment.subscribe("telemetry", identifier, json.dumps(body).encode())
        return told

    def test_lines_by_source(self) -> None:
        """The runtime's lines are function lines, the extension's extension lines, one by one."""
        told = self.subscribed_lines()
        self.process_named("ext").write_output(b"agent ready\n")
        self.reactor.processes[1].write_output(b"one\ntwo\n")
        self.assertEqual(
            told, [("extension", b"agent ready"), ("function", b"one"), ("function", b"two")]
        )

    def test_json_format_lines_are_objects(self) -> None:
        """In JSON log format a function's JSON line is given as its object; other lines as text."""
        told = self.subscribed_lines(log_format="JSON", application_log_level="INFO")
        runtime = self.reactor.processes[1]
        runtime.write_output(b'{"level": "INFO", "message": "hi"}\nplain\n')
        self.assertEqual(
            told, [("function", {"level": "INFO", "message": "hi"}), ("function", b"plain")]
        )


class RaceTests(PhaseTestCase):
    """What crosses: exits, answers, hung-up nexts, at awkward moments."""

    def answered_and_waiting(self) -> tuple[bytes, Invocation]:
        invocation, result = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.environment.answer(invocation.request_id, Outcome.SUCCESS, b"{}")
        self.reactor.advance(0)
        self.successResultOf(result)
        return identifier, invocation

    def test_runtime_asks_again_while_extensions_finish(self) -> None:
        """A runtime whose next hung up while an extension works may ask again; the phase then ends."""
        self.make_pool()
        identifier, _ = self.answered_and_waiting()
        hung_up = self.environment.next_invocation()
        hung_up.addErrback(lambda failure: failure.trap(CancelledError))
        hung_up.cancel()
        again = self.runtime_waits()
        self.environment.extension_next(identifier)
        self.assertIs(self.environment.state, State.IDLE)
        second, _ = self.invoke()
        self.assertIs(self.successResultOf(again), second)

    def test_answer_after_exit_is_refused_and_the_environment_ends(self) -> None:
        """With reports on, an answer read after the runtime's exit is refused and nothing hangs."""
        self.make_pool(print_reports=True)
        invocation, result = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(runtime_next)
        environment = self.environment
        self.reactor.processes[1].exit(0)
        error = self.assertRaises(
            errors.APIError, environment.answer, invocation.request_id, Outcome.SUCCESS, b"{}"
        )
        self.assertEqual(error.error_type, "InvalidRequestID")
        self.reactor.advance(0.01)
        self.assertEqual(self.successResultOf(result).error_type, "Runtime.ExitError")
        stopped = self.pool.stop()
        self.process_named("ext").exit(0)
        self.reactor.advance(3.0)
        self.successResultOf(stopped)
        self.assertIs(environment.state, State.DEAD)

    def test_no_timer_outlives_the_environment(self) -> None:
        """An answer during Shutdown arms no post-invoke timer: nothing is left once it has ended."""
        self.make_pool(timeout=300.0)
        invocation, _ = self.invoke()
        identifier, extension_next, runtime_next = self.started()
        self.successResultOf(extension_next)
        self.successResultOf(runtime_next)
        self.pool.stop_now()
        self.environment.answer(invocation.request_id, Outcome.SUCCESS, b"{}")
        self.reactor.processes[1].die(signal.SIGKILL)
        self.process_named("ext").exit(0)
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_what_an_extension_left_is_killed(self) -> None:
        """When an extension exits, its process group (what it started) is SIGKILLed."""
        self.make_pool()
        self.invoke()
        self.register()
        extension = self.process_named("ext")
        if not extension.args[0].endswith("setsid"):
            raise SkipTest("no setsid here: extensions get no process group of their own")
        extension.exit(3, holding_pipes=True)
        self.assertIn((extension.pid, signal.SIGKILL), self.reactor.group_signals)
