"""
The Extensions, Telemetry and Logs APIs end to end: real reactor, real
runtime processes (awslambdaric), real external extensions (the Python sample
in C{tests/functions/extensions} copied under the name it registers with, the
bash+curl one) and an internal one, invoked over HTTP.

Extensions record what they get in C{$EXT_RECORD_DIR/<name>.jsonl}; the tests
poll those files (L{wait_for_record}) with generous bounds, since the
extensions run beside the answers the tests wait for.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from lambdarapid.testing import InvokeResult, RunningDaemon, free_port

from .runtimes import FUNCTIONS, function_environ, kill_if_running, running, start_python, wait_until_gone

EXTENSIONS = os.path.join(FUNCTIONS, "extensions")
SAMPLE = os.path.join(EXTENSIONS, "sample.py")
BASH_EXTENSION = os.path.join(EXTENSIONS, "bash-extension")
#: Runs the sample after recording its pid ("launch") and an optional delay ("delayed").
RECORDING = os.path.join(EXTENSIONS, "recording.py")

FUNCTION_NAME = "ext-fn"
ARN = f"arn:aws:lambda:us-east-1:012345678912:function:{FUNCTION_NAME}"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def process_start_epoch(pid: int) -> float:
    """When process C{pid} started, as C{time.time()} (to a clock tick, 10 ms)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    ticks = int(fields[19])  # field 22, starttime, counted after the ")"
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def assert_near(test: TestCase, actual: float, expected: float, delta: float) -> None:
    """C{actual} is within C{delta} of C{expected} (trial's assertAlmostEqual has no delta)."""
    test.assertLessEqual(abs(actual - expected), delta, f"{actual} is not {expected} +- {delta}")


def records(directory: str, name: str) -> list[dict[str, Any]]:
    """What extension C{name} recorded so far, one dict per line."""
    path = os.path.join(directory, name + ".jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    # The last line may be half-written: keep only lines that parse.
    result = []
    for line in lines:
        try:
            result.append(json.loads(line))
        except ValueError:
            pass
    return result


def events(directory: str, name: str) -> list[dict[str, Any]]:
    """The events (from event/next) sample extension C{name} recorded."""
    return [each["value"] for each in records(directory, name) if each["kind"] == "event"]


def kinds(directory: str, name: str, kind: str) -> list[dict[str, Any]]:
    return [each for each in records(directory, name) if each["kind"] == kind]


def telemetry(directory: str, name: str) -> list[dict[str, Any]]:
    """Every Telemetry/Logs API event delivered to extension C{name}, batches concatenated."""
    delivered: list[dict[str, Any]] = []
    for each in kinds(directory, name, "telemetry"):
        delivered.extend(each["value"])
    return delivered


async def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll C{check} until it returns something true; fail the test after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last saw {value!r}")
        await sleep(interval)


def make_extensions_dir(test: TestCase, **files: str) -> str:
    """An EXTENSIONS_DIR holding a copy of C{source} under each C{name} (keyword: C{name=source})."""
    directory = test.mktemp()
    os.makedirs(directory)
    for name, source in files.items():
        shutil.copy(source, os.path.join(directory, name.replace("_", "-")))
    return directory


def make_record_dir(test: TestCase) -> str:
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    return directory


def extension_pids(test: TestCase, record_dir: str, name: str) -> list[int]:
    """The pids of the launches of C{recording.py} copied as C{name}; killed when the test ends."""
    pids = [each["value"] for each in kinds(record_dir, name, "launch")]
    for pid in pids:
        test.addCleanup(kill_if_running, pid)
    return pids


async def start(
    test: TestCase,
    handler: str,
    extensions_dir: str,
    record_dir: str,
    settings: dict[str, object] | None = None,
    **environ: str,
) -> RunningDaemon:
    """A daemon running C{handler} with C{extensions_dir}, stopped when C{test} ends."""
    every: dict[str, object] = {
        "EXTENSIONS_DIR": os.path.abspath(extensions_dir),
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_TIMEOUT": 5,
    }
    every.update(settings or {})
    return await start_python(
        test,
        handler,
        function_environ(EXT_RECORD_DIR=record_dir, EXT_SAMPLE=SAMPLE, **environ),
        **every,
    )


class CaptureLogs:
    """The daemon's Twisted log messages while a test runs (warnings go there, not to the output)."""

    def __init__(self, test: TestCase) -> None:
        self.messages: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.messages.append(formatEvent(event) or "")

        self._observer = observe
        globalLogPublisher.addObserver(observe)
        test.addCleanup(globalLogPublisher.removeObserver, observe)


class ExtensionFailureAssertions(TestCase):
    """Shared checks for answers to invocations an extension made fail."""

    def assert_extension_error(self, result: InvokeResult, error_type: str, cause: str | None) -> None:
        """The answer Lambda gives: 200, Unhandled, {errorType, "RequestId: <id> Error: <cause>"}."""
        self.assertEqual(result.status, 200, result.payload)
        self.assertEqual(result.function_error, "Unhandled", result.headers)
        body = result.json()
        self.assertEqual(body["errorType"], error_type, body)
        self.assertIsNotNone(result.request_id)
        prefix = f"RequestId: {result.request_id} Error: "
        self.assertTrue(body["errorMessage"].startswith(prefix), body)
        if cause is not None:
            self.assertEqual(body["errorMessage"], prefix + cause, body)


class PythonExtensionTests(TestCase):
    """An external extension in the shape of the aws-samples Python one."""

    timeout = 30

    async def test_register_and_invoke_events(self) -> None:
        """It registers, then gets an INVOKE event per invocation carrying that invocation's facts."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.echo",
            make_extensions_dir(self, python_extension=SAMPLE),
            record_dir,
            {"PRINT_REPORTS": True},
        )
        answers = []
        for number in range(2):
            before = time.time()
            result = await daemon.invoke({"n": number})
            self.assertEqual((result.status, result.function_error), (200, None), result.payload)
            self.assertEqual(result.json(), {"n": number})
            answers.append((before, result))
        got = await wait_for(
            "two INVOKE events", lambda: len(events(record_dir, "python-extension")) >= 2 and events(record_dir, "python-extension")
        )
        [register] = kinds(record_dir, "python-extension", "register")
        self.assertEqual(register["value"]["status"], 200)
        self.assertEqual(
            register["value"]["body"],
            {"functionName": FUNCTION_NAME, "functionVersion": "$LATEST", "handler": "handlers.echo"},
        )
        self.assertEqual(len(got), 2, got)
        for event, (before, result) in zip(got, answers):
            self.assertEqual(event["eventType"], "INVOKE")
            self.assertEqual(event["requestId"], result.request_id)
            self.assertEqual(event["invokedFunctionArn"], ARN)
            self.assertGreaterEqual(event["deadlineMs"], before * 1000 + 4500)
            self.assertLessEqual(event["deadlineMs"], time.time() * 1000 + 5000)
            self.assertEqual(event["tracing"]["type"], "X-Amzn-Trace-Id")
            self.assertRegex(event["tracing"]["value"], r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}")
            self.assertRegex(event["_eventId"], UUID)
            self.assertNotIn("payload", event)
        self.assertNotEqual(got[0]["requestId"], got[1]["requestId"])
        await daemon.wait_for_output(b"[python-extension] got INVOKE")
        self.assertIn(b"[python-extension] registered\n", daemon.output)
        self.assertIn(
            b"EXTENSION\tName: python-extension\tState: Ready\tEvents: [INVOKE,SHUTDOWN]\n",
            daemon.output,
        )

    async def test_output_in_tail(self) -> None:
        """What an extension prints during an invocation is in that invocation's Tail log."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self, "handlers.sleep", make_extensions_dir(self, python_extension=SAMPLE), record_dir
        )
        # The handler sleeps, so the extension's line is written before the answer.
        result = await daemon.invoke({"seconds": 0.3}, log_type="Tail")
        self.assertEqual((result.status, result.function_error), (200, None), result.payload)
        tail = result.log_result
        assert tail is not None, result.headers
        self.assertIn("sleeping 0.3", tail)
        self.assertIn("[python-extension] got INVOKE", tail)

    async def test_shutdown_on_stop(self) -> None:
        """Stopping the daemon (SIGTERM) sends SHUTDOWN, reason spindown, deadline now+2 s; the extension exits."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self, "handlers.echo", make_extensions_dir(self, python_extension=RECORDING), record_dir
        )
        result = await daemon.invoke({})
        self.assertEqual(result.status, 200)
        [pid] = extension_pids(self, record_dir, "python-extension")
        self.assertTrue(running(pid))
        stopping = time.time()
        await daemon.stop()
        shutdowns = [e for e in events(record_dir, "python-extension") if e["eventType"] == "SHUTDOWN"]
        self.assertEqual(len(shutdowns), 1, records(record_dir, "python-extension"))
        self.assertEqual(shutdowns[0]["shutdownReason"], "spindown")
        assert_near(self, shutdowns[0]["deadlineMs"], stopping * 1000 + 2000, 1000)
        self.assertTrue(await wait_until_gone(pid, 1.0))

    async def test_shutdown_on_idle(self) -> None:
        """Idle reaping sends SHUTDOWN (spindown, deadline now+2 s) and the extension exits."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.echo",
            make_extensions_dir(self, python_extension=RECORDING),
            record_dir,
            {"AWS_LAMBDA_FUNCTION_IDLETIMEOUT": 1},
        )
        result = await daemon.invoke({})
        self.assertEqual(result.status, 200)
        [pid] = extension_pids(self, record_dir, "python-extension")
        [shutdown] = await wait_for(
            "SHUTDOWN after idling",
            lambda: [
                each
                for each in records(record_dir, "python-extension")
                if each["kind"] == "event" and each["value"]["eventType"] == "SHUTDOWN"
            ],
        )
        self.assertEqual(shutdown["value"]["shutdownReason"], "spindown")
        assert_near(self, shutdown["value"]["deadlineMs"], shutdown["at"] * 1000 + 2000, 1000)
        self.assertTrue(await wait_until_gone(pid, 2.5))
        # The next invocation starts a fresh environment, extension included.
        again = await daemon.invoke({"again": True})
        self.assertEqual((again.status, again.json()), (200, {"again": True}))
        self.assertEqual(len(extension_pids(self, record_dir, "python-extension")), 2)

    async def test_ignoring_shutdown_is_killed_at_the_deadline(self) -> None:
        """An extension that ignores SHUTDOWN is SIGKILLed at the 2 s deadline: stop takes no longer."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.echo",
            make_extensions_dir(self, python_extension=RECORDING),
            record_dir,
            EXT_BEHAVIOUR="ignore-shutdown",
        )
        self.assertEqual((await daemon.invoke({})).status, 200)
        [pid] = extension_pids(self, record_dir, "python-extension")
        started = time.monotonic()
        await daemon.stop()
        took = time.monotonic() - started
        self.assertLess(took, 4.5)  # the budget, then the pipes' grace and the teardown, on a loaded machine
        self.assertGreater(took, 1.7)  # it was given its 2 s
        self.assertIn("SHUTDOWN", [e["eventType"] for e in events(record_dir, "python-extension")])
        self.assertTrue(await wait_until_gone(pid, 0.5))

    async def test_slow_post_invoke_does_not_hold_the_answer(self) -> None:
        """The answer comes when the runtime posts it; the next invocation waits for the extension's next."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.echo",
            make_extensions_dir(self, python_extension=SAMPLE),
            record_dir,
            EXT_BEHAVIOUR="slow-post-invoke",
            EXT_SLEEP="1.5",
        )
        first = await daemon.invoke({"n": 1})
        first_answered = time.time()
        second = await daemon.invoke({"n": 2})
        second_answered = time.time()
        for result, n in ((first, 1), (second, 2)):
            self.assertEqual((result.status, result.function_error), (200, None), result.payload)
            self.assertEqual(result.json(), {"n": n})
        # The extension records an event just after the runtime got it too: it may come after the answer.
        got = await wait_for(
            "two INVOKE events",
            lambda: len(events(record_dir, "python-extension")) >= 2 and events(record_dir, "python-extension"),
        )
        self.assertEqual([e["requestId"] for e in got], [first.request_id, second.request_id])
        invoke_at = [each["at"] for each in kinds(record_dir, "python-extension", "event")]
        # The first answer did not wait for the extension's 1.5 s...
        self.assertLess(first_answered - invoke_at[0], 1.4)
        # ...but the second invocation waited for it to ask for the next event.
        self.assertGreaterEqual(invoke_at[1] - invoke_at[0], 1.45)
        self.assertGreaterEqual(second_answered - invoke_at[0], 1.45)


class BashExtensionTests(TestCase):
    """The bash+curl extension of the aws-samples custom runtime demo."""

    timeout = 30

    async def test_invoke_and_shutdown(self) -> None:
        """It registers, gets INVOKE with the request id, and SHUTDOWN (spindown) when the daemon stops."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self, "handlers.echo", make_extensions_dir(self, bash_extension=BASH_EXTENSION), record_dir
        )
        result = await daemon.invoke({"x": 1})
        self.assertEqual((result.status, result.json()), (200, {"x": 1}))
        await wait_for("an INVOKE", lambda: records(record_dir, "bash-extension"))
        stopping = time.time()
        await daemon.stop()
        got = records(record_dir, "bash-extension")
        self.assertEqual([e["eventType"] for e in got], ["INVOKE", "SHUTDOWN"], got)
        self.assertEqual(got[0]["requestId"], result.request_id)
        self.assertEqual(got[0]["invokedFunctionArn"], ARN)
        self.assertEqual(got[1]["shutdownReason"], "spindown")
        assert_near(self, got[1]["deadlineMs"], stopping * 1000 + 2000, 1000)
        self.assertIn(b"[bash-extension] registered\n", daemon.output)
        self.assertIn(b'[bash-extension] event: {"eventType":"INVOKE"', daemon.output)


class InternalExtensionTests(TestCase):
    """An extension registered from inside the runtime process."""

    timeout = 30

    async def test_internal_extension_gets_invoke(self) -> None:
        """A thread of the runtime registered as an extension gets each invocation's INVOKE."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "internal_extension.handler",
            make_extensions_dir(self),
            record_dir,
            {"PRINT_REPORTS": True},
        )
        results = [await daemon.invoke({"n": n}) for n in range(2)]
        for result, n in zip(results, range(2)):
            self.assertEqual((result.status, result.function_error), (200, None), result.payload)
            self.assertEqual(result.json(), {"request_id": result.request_id, "event": {"n": n}})

        def got() -> list[dict[str, Any]]:
            path = os.path.join(record_dir, "internal-agent.jsonl")
            if not os.path.exists(path):
                return []
            with open(path) as f:
                lines = [json.loads(line) for line in f.read().splitlines() if line.endswith("}")]
            return lines if len(lines) >= 2 else []

        received = await wait_for("two INVOKE events", got)
        self.assertEqual([e["eventType"] for e in received], ["INVOKE", "INVOKE"])
        self.assertEqual([e["requestId"] for e in received], [r.request_id for r in results])
        self.assertEqual(received[0]["invokedFunctionArn"], ARN)
        self.assertIn(
            b"EXTENSION\tName: internal-agent\tState: Ready\tEvents: [INVOKE]\n", daemon.output
        )


class InitOrderTests(TestCase):
    """The runtime starts only once every external extension has registered."""

    timeout = 30

    async def test_runtime_waits_for_every_registration(self) -> None:
        """Two extensions, slow to register: the runtime starts after both did, and both get INVOKE."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.context",
            make_extensions_dir(self, ext_a=RECORDING, ext_b=RECORDING),
            record_dir,
            EXT_REGISTER_DELAY_EXT_A="0.3",
            EXT_REGISTER_DELAY_EXT_B="0.8",
        )
        result = await daemon.invoke({})
        self.assertEqual((result.status, result.function_error), (200, None), result.payload)
        runtime_started = process_start_epoch(result.json()["pid"])
        for name in ("ext-a", "ext-b"):
            extension_pids(self, record_dir, name)
            [delayed] = kinds(record_dir, name, "delayed")
            # It registered after "delayed"; the runtime started after that (to a clock tick).
            self.assertGreater(runtime_started, delayed["at"] - 0.02, name)
            await wait_for(f"{name}'s INVOKE", lambda: events(record_dir, name))
            self.assertEqual(events(record_dir, name)[0]["requestId"], result.request_id)


class ExtensionFailureTests(ExtensionFailureAssertions):
    """Extensions that fail: the invocation fails like an init error, and the next re-initialises."""

    timeout = 40

    async def failing(
        self, behaviour: str, error_type: str, cause: str | None, handler: str = "handlers.echo",
        payload: object = None,
    ) -> None:
        """Two invocations with extension behaviour C{behaviour}: both fail so, each from a fresh launch."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            handler,
            make_extensions_dir(self, python_extension=RECORDING),
            record_dir,
            EXT_BEHAVIOUR=behaviour,
        )
        for attempt in (1, 2):
            result = await daemon.invoke(payload if payload is not None else {})
            self.assert_extension_error(result, error_type, cause)
            # Relaunched for each invocation rather than left failed or spinning.
            pids = await wait_for(
                f"launch {attempt}",
                lambda: len(extension_pids(self, record_dir, "python-extension")) >= attempt
                and extension_pids(self, record_dir, "python-extension"),
            )
            self.assertEqual(len(pids), attempt)
            self.assertTrue(await wait_until_gone(pids[-1], 3.0))
        # No third launch behind our back.
        await sleep(0.3)
        self.assertEqual(len(extension_pids(self, record_dir, "python-extension")), 2)

    async def test_crash_before_register(self) -> None:
        """An extension that exits 3 before registering: Extension.Crash, exit status 3."""
        await self.failing("crash-before-register", "Extension.Crash", "exit status 3")

    async def test_crash_after_register(self) -> None:
        """An extension that exits 3 after registering: Extension.Crash, exit status 3."""
        await self.failing("crash-after-register", "Extension.Crash", "exit status 3")

    async def test_init_error(self) -> None:
        """init/error, then exit 0: Extension.InitError."""
        # RAPID says "exit code 0" for an extension that exits 0 (EXTENSIONS.md section 5).
        await self.failing("init-error", "Extension.InitError", "exit code 0")

    async def test_exit_error(self) -> None:
        """exit/error during Init, then exit 1: Extension.ExitError."""
        await self.failing("exit-error", "Extension.ExitError", "exit status 1")

    async def test_crash_on_invoke(self) -> None:
        """An extension that exits 4 on INVOKE while the handler still runs: Extension.Crash."""
        await self.failing(
            "crash-on-invoke", "Extension.Crash", "exit status 4", "handlers.sleep", {"seconds": 1}
        )

    async def test_not_executable(self) -> None:
        """A file in EXTENSIONS_DIR that cannot be executed: Extension.LaunchError; fixed, it works."""
        record_dir = make_record_dir(self)
        extensions_dir = make_extensions_dir(self, python_extension=SAMPLE, broken=SAMPLE)
        broken = os.path.join(extensions_dir, "broken")
        os.chmod(broken, 0o644)
        daemon = await start(self, "handlers.echo", extensions_dir, record_dir)
        for _ in range(2):
            result = await daemon.invoke({})
            self.assert_extension_error(result, "Extension.LaunchError", None)
            self.assertIn("permission denied", result.json()["errorMessage"].lower())
            self.assertIn("broken", result.json()["errorMessage"])
        os.chmod(broken, 0o755)
        result = await daemon.invoke({"fixed": True})
        self.assertEqual((result.status, result.function_error), (200, None), result.payload)
        self.assertEqual(result.json(), {"fixed": True})
        for name in ("python-extension", "broken"):
            await wait_for(f"{name}'s INVOKE", lambda: events(record_dir, name))

    async def test_too_many_extensions(self) -> None:
        """Eleven external extensions: Extension.LaunchError ErrTooManyExtensions; ten are fine."""
        record_dir = make_record_dir(self)
        extensions_dir = make_extensions_dir(
            self, **{f"bash_{n:02}": BASH_EXTENSION for n in range(11)}
        )
        daemon = await start(self, "handlers.echo", extensions_dir, record_dir)
        result = await daemon.invoke({})
        self.assert_extension_error(result, "Extension.LaunchError", "ErrTooManyExtensions")
        os.remove(os.path.join(extensions_dir, "bash-10"))
        result = await daemon.invoke({"ten": True})
        self.assertEqual((result.status, result.function_error), (200, None), result.payload)
        self.assertEqual(result.json(), {"ten": True})

    async def test_never_register_times_out_init(self) -> None:
        """An extension that never registers: Init fails after the 10 s init limit, then re-runs."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.echo",
            make_extensions_dir(self, python_extension=RECORDING),
            record_dir,
            {"AWS_LAMBDA_FUNCTION_TIMEOUT": 1},
            EXT_BEHAVIOUR="never-register",
        )
        started = time.monotonic()
        result = await daemon.invoke({})
        took = time.monotonic() - started
        self.assertGreater(took, 9.5)
        self.assertLess(took, 13)
        self.assertEqual((result.status, result.function_error), (200, "Unhandled"), result.payload)
        self.assertEqual(result.json()["errorType"], "Sandbox.Timedout", result.payload)
        self.assertIn("timed out after 10.00 seconds", result.json()["errorMessage"])
        [pid] = extension_pids(self, record_dir, "python-extension")
        self.assertTrue(await wait_until_gone(pid, 3.0))
        # The next invocation launches the extensions again (and would wait again: not awaited).
        pending = daemon.invoke({})
        await wait_for(
            "a second launch", lambda: len(extension_pids(self, record_dir, "python-extension")) == 2
        )
        pending.cancel()
        pending.addErrback(lambda _: None)


class ResetTests(ExtensionFailureAssertions):
    """A reset (timeout, failure) sends SHUTDOWN with its reason to the surviving extensions."""

    timeout = 30

    async def shutdown_of(self, record_dir: str, name: str) -> dict[str, Any]:
        [shutdown] = await wait_for(
            f"{name}'s SHUTDOWN",
            lambda: [e for e in events(record_dir, name) if e["eventType"] == "SHUTDOWN"],
        )
        return shutdown  # type: ignore[no-any-return]

    async def test_timeout_reset(self) -> None:
        """An invocation that times out: SHUTDOWN reason timeout, the extension exits, the next re-inits."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.sleep",
            make_extensions_dir(self, python_extension=RECORDING),
            record_dir,
            {"AWS_LAMBDA_FUNCTION_TIMEOUT": 1},
        )
        result = await daemon.invoke({"seconds": 3})
        self.assertEqual((result.status, result.function_error), (200, "Unhandled"), result.payload)
        self.assertEqual(result.json()["errorType"], "Sandbox.Timedout")
        shutdown = await self.shutdown_of(record_dir, "python-extension")
        self.assertEqual(shutdown["shutdownReason"], "timeout")
        [pid] = extension_pids(self, record_dir, "python-extension")
        self.assertTrue(await wait_until_gone(pid, 2.5))
        again = await daemon.invoke({"seconds": 0})
        self.assertEqual((again.status, again.function_error), (200, None), again.payload)
        self.assertEqual(len(extension_pids(self, record_dir, "python-extension")), 2)

    async def test_failure_reset(self) -> None:
        """One extension crashes on INVOKE: the other gets SHUTDOWN reason failure and exits."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.sleep",
            make_extensions_dir(self, crasher=SAMPLE, survivor=RECORDING),
            record_dir,
            EXT_CRASHER="crash-on-invoke",
        )
        result = await daemon.invoke({"seconds": 1})
        self.assert_extension_error(result, "Extension.Crash", "exit status 4")
        shutdown = await self.shutdown_of(record_dir, "survivor")
        self.assertEqual(shutdown["shutdownReason"], "failure")
        [pid] = extension_pids(self, record_dir, "survivor")
        self.assertTrue(await wait_until_gone(pid, 2.5))


class TelemetryTests(TestCase):
    """The Telemetry API (2022-07-01) and the Logs API (2020-08-15) deliver to a subscribed extension."""

    timeout = 30

    def assert_envelope(self, event: dict[str, Any]) -> None:
        self.assertEqual(set(event), {"time", "type", "record"}, event)
        self.assertRegex(event["time"], "^" + ISO_TIME + "$")

    async def received(
        self, result: InvokeResult, record_dir: str, name: str
    ) -> list[dict[str, Any]]:
        """
        What extension C{name} received, once its subscription was accepted
        and C{result}'s platform.report has arrived.
        """
        self.assertEqual((result.status, result.json()), (200, "logged"))
        [subscribe] = kinds(record_dir, name, "subscribe")
        self.assertEqual(subscribe["value"], {"status": 200, "body": "OK"})

        def reported() -> list[dict[str, Any]]:
            got = telemetry(record_dir, name)
            done = any(
                e["type"] == "platform.report" and e["record"].get("requestId") == result.request_id
                for e in got
            )
            return got if done else []

        return await wait_for("platform.report", reported)

    async def test_telemetry_api(self) -> None:
        """platform.initStart first, then start/runtimeDone/report for the request, and the function's line."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.log",
            make_extensions_dir(self, telemetry_extension=SAMPLE),
            record_dir,
            {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": 256},
            EXT_BEHAVIOUR="telemetry",
            EXT_TYPES="platform,function",
        )
        result = await daemon.invoke({"lines": ["hello from the handler"]})
        got = await self.received(result, record_dir, "telemetry-extension")
        for event in got:
            self.assert_envelope(event)
        types = [e["type"] for e in got]
        self.assertEqual(types[0], "platform.initStart", types)
        self.assertEqual(got[0]["record"]["initializationType"], "on-demand")
        self.assertEqual(got[0]["record"]["phase"], "init")
        mine = {
            e["type"]: e["record"]
            for e in got
            if isinstance(e["record"], dict) and e["record"].get("requestId") == result.request_id
        }
        for wanted in ("platform.start", "platform.runtimeDone", "platform.report"):
            self.assertIn(wanted, mine, types)
        order = [t for t in types if t in ("platform.start", "platform.runtimeDone", "platform.report")]
        self.assertEqual(order, ["platform.start", "platform.runtimeDone", "platform.report"])
        self.assertEqual(mine["platform.runtimeDone"]["status"], "success")
        report = mine["platform.report"]
        self.assertEqual(report["status"], "success")
        self.assertGreater(report["metrics"]["durationMs"], 0)
        self.assertGreaterEqual(report["metrics"]["billedDurationMs"], 1)
        self.assertEqual(report["metrics"]["memorySizeMB"], 256)
        self.assertGreater(report["metrics"]["maxMemoryUsedMB"], 0)
        lines = [e["record"] for e in got if e["type"] == "function"]
        self.assertIn("hello from the handler", [str(line).rstrip("\n") for line in lines])
        # Only the types subscribed to.
        self.assertNotIn("extension", types)

    async def test_logs_api(self) -> None:
        """Logs API with schema 2021-03-18: platform.start, runtimeDone, end, report and function lines."""
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.log",
            make_extensions_dir(self, logs_extension=SAMPLE),
            record_dir,
            EXT_BEHAVIOUR="logs",
            EXT_TYPES="platform,function",
        )
        result = await daemon.invoke({"lines": ["hello logs api"]})
        got = await self.received(result, record_dir, "logs-extension")
        for event in got:
            self.assert_envelope(event)
        mine = [
            e["type"]
            for e in got
            if isinstance(e["record"], dict) and e["record"].get("requestId") == result.request_id
        ]
        self.assertEqual(
            mine, ["platform.start", "platform.runtimeDone", "platform.end", "platform.report"], got
        )
        done = [e["record"] for e in got if e["type"] == "platform.runtimeDone"]
        self.assertEqual(done[0]["status"], "success")
        report = [e["record"] for e in got if e["type"] == "platform.report"][0]
        self.assertGreater(report["metrics"]["durationMs"], 0)
        lines = [str(e["record"]).rstrip("\n") for e in got if e["type"] == "function"]
        self.assertIn("hello logs api", lines)


class ConcurrencyTests(ExtensionFailureAssertions):
    """Each environment runs its own copy of every extension, on one host network."""

    timeout = 30

    async def test_fixed_port_collides(self) -> None:
        """Two environments, an extension binding a fixed port: the second copy crashes, with advice."""
        logs = CaptureLogs(self)
        record_dir = make_record_dir(self)
        daemon = await start(
            self,
            "handlers.sleep",
            make_extensions_dir(self, port_extension=SAMPLE),
            record_dir,
            {"MAX_CONCURRENCY": 2},
            EXT_BEHAVIOUR="bind-fixed-port",
            EXT_PORT=str(free_port()),
        )
        results = await gatherResults(
            [daemon.invoke({"seconds": 1}), daemon.invoke({"seconds": 1})]
        )
        ok = [r for r in results if r.function_error is None]
        failed = [r for r in results if r.function_error is not None]
        self.assertEqual(len(ok), 1, [r.payload for r in results])
        self.assertEqual(ok[0].json()["slept"], 1)
        self.assert_extension_error(failed[0], "Extension.Crash", None)
        # The advice is a warning of the daemon's log (stderr when run as a program), not
        # the function's output: RunningDaemon.output does not have it.
        warnings = [m for m in logs.messages if "MAX_CONCURRENCY=1" in m]
        self.assertEqual(len(warnings), 1, logs.messages[-20:])
        self.assertIn("fixed port", warnings[0])
