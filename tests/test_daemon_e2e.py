"""
The daemon end to end: real reactor, real ports, real runtime processes
(awslambdaric and a bash custom runtime), invoked over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import time

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from lambdarapid.environment import ExecutionEnvironment
from lambdarapid.testing import RunningDaemon, start_daemon

from .runtimes import (
    BASH_FUNCTION,
    FUNCTIONS,
    LEFTOVER_FUNCTION,
    function_environ,
    kill_if_running,
    start_python,
    wait_until_gone,
)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def kill_timers() -> list[IDelayedCall]:
    """Pending C{ExecutionEnvironment.kill} timers on the global reactor."""
    return [
        call
        for call in reactor.getDelayedCalls()
        if getattr(getattr(call, "func", None), "__func__", None) is ExecutionEnvironment.kill
    ]


async def leftover_pid(daemon: RunningDaemon, label: bytes) -> int:
    """The pid a runtime printed after C{label} (C{b"child pid "})."""
    await daemon.wait_for_output(label)
    match = re.search(re.escape(label) + rb"(\d+)", daemon.output)
    assert match is not None, daemon.output
    return int(match.group(1))


class InvocationTests(TestCase):
    """What a caller gets back for each way a function can end."""

    timeout = 30

    async def test_echo(self) -> None:
        """A successful invocation answers 200 with the function's result and botocore's headers."""
        daemon = await start_python(self, "handlers.echo")
        result = await daemon.invoke({"hello": "world", "n": [1, 2]})
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json(), {"hello": "world", "n": [1, 2]})
        self.assertIsNone(result.function_error)
        self.assertEqual(result.executed_version, "$LATEST")
        self.assertRegex(result.request_id or "", UUID)
        self.assertIsNone(result.log_result)

    async def test_function_error(self) -> None:
        """A handler that raises answers 200 with X-Amz-Function-Error: Unhandled and its error JSON."""
        daemon = await start_python(self, "handlers.fail")
        result = await daemon.invoke({"x": 1})
        self.assertEqual(result.status, 200)
        self.assertEqual(result.function_error, "Unhandled")
        body = result.json()
        self.assertEqual(body["errorType"], "ValueError")
        self.assertIn("the function failed on purpose", body["errorMessage"])
        again = await daemon.invoke({"x": 2})
        self.assertEqual(again.json()["errorType"], "ValueError")

    async def test_timeout(self) -> None:
        """Past AWS_LAMBDA_FUNCTION_TIMEOUT the caller gets Sandbox.Timedout at once, and a fresh runtime serves the next call."""
        daemon = await start_python(
            self, "handlers.dispatch", AWS_LAMBDA_FUNCTION_TIMEOUT=1
        )
        before = (await daemon.invoke({"call": "context"})).json()["pid"]
        started = time.monotonic()
        result = await daemon.invoke({"call": "sleep", "seconds": 5})
        elapsed = time.monotonic() - started
        self.assertEqual(result.status, 200)
        self.assertEqual(result.function_error, "Unhandled")
        self.assertEqual(
            result.json(),
            {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {result.request_id} Error: Task timed out after 1.00 seconds",
            },
        )
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 4.5)  # not the 5 s the function sleeps
        after = await daemon.invoke({"call": "context"})
        self.assertEqual(after.status, 200)
        self.assertIsNone(after.function_error)
        self.assertNotEqual(after.json()["pid"], before)

    async def test_runtime_exit(self) -> None:
        """A runtime exiting mid-invocation answers Runtime.ExitError with its exit status promptly, not at the timeout."""
        daemon = await start_python(
            self, "handlers.dispatch", AWS_LAMBDA_FUNCTION_TIMEOUT=10
        )
        started = time.monotonic()
        result = await daemon.invoke({"call": "exit3"})
        elapsed = time.monotonic() - started
        self.assertEqual(result.status, 200)
        self.assertEqual(result.function_error, "Unhandled")
        self.assertEqual(
            result.json(),
            {
                "errorType": "Runtime.ExitError",
                "errorMessage": f"RequestId: {result.request_id} Error: Runtime exited with error: exit status 3",
            },
        )
        self.assertLess(elapsed, 8.0)  # not the 10 s timeout
        after = await daemon.invoke({"call": "echo", "ok": True})
        self.assertEqual(after.json(), {"call": "echo", "ok": True})

    async def test_exit_leaving_a_child_frees_the_runtime(self) -> None:
        """A runtime that exits while a child of its own holds its output pipes is replaced at once, and the child killed."""
        daemon = await start_python(
            self, "handlers.dispatch", AWS_LAMBDA_FUNCTION_TIMEOUT=10
        )
        result = await daemon.invoke({"call": "exit_leaving_a_child", "child_seconds": 30})
        self.assertEqual(result.json()["errorType"], "Runtime.ExitError", result.payload)
        child = await leftover_pid(daemon, b"child pid ")
        self.addCleanup(kill_if_running, child)
        started = time.monotonic()
        after = await daemon.invoke({"call": "echo", "ok": True})
        self.assertEqual(after.json(), {"call": "echo", "ok": True})
        self.assertLess(time.monotonic() - started, 20.0)  # not held until the child's 30 s are up
        self.assertTrue(await wait_until_gone(child), "the runtime's child outlived it")

    async def test_process_left_by_a_runtime_is_killed(self) -> None:
        """A process started by a runtime that then exited on its own is killed with its environment."""
        environ = function_environ(_HANDLER="function.handler", LAMBDA_TASK_ROOT=LEFTOVER_FUNCTION)
        daemon = await start_daemon([os.path.join(LEFTOVER_FUNCTION, "bootstrap")], environ)
        self.addCleanup(daemon.stop)
        result = await daemon.invoke({})
        self.assertEqual(result.json()["errorType"], "Runtime.ExitError", result.payload)
        leftover = await leftover_pid(daemon, b"leftover pid ")
        self.addCleanup(kill_if_running, leftover)
        self.assertTrue(await wait_until_gone(leftover), "sleep 1000 outlived its runtime")

    async def test_import_error(self) -> None:
        """A failed init answers exactly the invocation that caused it, each time, with no respawning in between."""
        daemon = await start_python(self, "import_error.handler")
        for attempt in (1, 2):
            result = await daemon.invoke({"attempt": attempt})
            self.assertEqual(result.status, 200)
            self.assertEqual(result.function_error, "Unhandled")
            body = result.json()
            self.assertEqual(body["errorType"], "Runtime.ImportModuleError")
            self.assertIn("Unable to import module 'import_error'", body["errorMessage"])
            self.assertIn("lambdarapid_tests_no_such_module", body["errorMessage"])
        # A runtime (wrongly) spawned with no work would be spawned as the failed one's slot is freed.
        pool = daemon.service.pool
        for environment in pool.environments:
            await environment.ended()
        self.assertEqual(pool.environments, [])
        self.assertEqual(daemon.output.count(b"Unable to import module 'import_error'"), 2)

    async def test_init_error_leaves_no_timer(self) -> None:
        """Once a runtime whose init failed has exited, none of its timers is left pending."""
        daemon = await start_python(self, "import_error.handler")
        result = await daemon.invoke({})
        self.assertEqual(result.json()["errorType"], "Runtime.ImportModuleError")
        await daemon.stop()
        self.assertEqual(kill_timers(), [])


    async def test_tail(self) -> None:
        """X-Amz-Log-Type: Tail returns the invocation's own log lines, framed by START/END/REPORT."""
        daemon = await start_python(self, "handlers.log")
        await daemon.invoke({"lines": ["first call"]})
        result = await daemon.invoke({"lines": ["line one", "line two"]}, log_type="Tail")
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json(), "logged")
        log = result.log_result or ""
        self.assertIn("line one\nline two\n", log)
        self.assertIn("a line on stderr", log)
        self.assertNotIn("first call", log)
        lines = log.splitlines()
        self.assertEqual(lines[0], f"START RequestId: {result.request_id} Version: $LATEST")
        self.assertIn(f"END RequestId: {result.request_id}", lines)
        self.assertTrue(lines[-1].startswith(f"REPORT RequestId: {result.request_id}\t"), lines[-1])

    async def test_reports(self) -> None:
        """PRINT_REPORTS prints START/END/REPORT with one request id each, Init Duration only on the first."""
        daemon = await start_python(self, "handlers.echo", PRINT_REPORTS=True)
        first = await daemon.invoke({"n": 1})
        second = await daemon.invoke({"n": 2})
        lines = daemon.output.decode().splitlines()
        for result in (first, second):
            request_id = result.request_id
            self.assertIn(f"START RequestId: {request_id} Version: $LATEST", lines)
            self.assertIn(f"END RequestId: {request_id}", lines)
            reports = [line for line in lines if line.startswith(f"REPORT RequestId: {request_id}\t")]
            self.assertEqual(len(reports), 1, lines)
            self.assertRegex(
                reports[0],
                r"\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\tMemory Size: 3008 MB"
                r"\tMax Memory Used: [1-9]\d* MB",
            )
        first_report = next(line for line in lines if line.startswith(f"REPORT RequestId: {first.request_id}"))
        second_report = next(line for line in lines if line.startswith(f"REPORT RequestId: {second.request_id}"))
        self.assertRegex(first_report, r"\tInit Duration: \d+\.\d\d ms$")
        self.assertNotIn("Init Duration", second_report)
        self.assertEqual(len([line for line in lines if line.startswith("START ")]), 2)

    async def test_concurrency(self) -> None:
        """MAX_CONCURRENCY=4 runs four 1-second invocations at once, in four runtimes."""
        daemon = await start_python(self, "handlers.sleep", MAX_CONCURRENCY=4)
        started = time.monotonic()
        results = await gatherResults([daemon.invoke({"seconds": 1}) for _ in range(4)])
        elapsed = time.monotonic() - started
        self.assertEqual([result.status for result in results], [200] * 4)
        self.assertEqual([result.function_error for result in results], [None] * 4)
        self.assertEqual(len({result.json()["pid"] for result in results}), 4)
        self.assertLess(elapsed, 3.5)  # one after another would take 4 s

    async def test_bash_custom_runtime(self) -> None:
        """A bash+curl custom runtime (the AWS tutorial's bootstrap) serves invocations."""
        environ = function_environ(_HANDLER="function.handler", LAMBDA_TASK_ROOT=BASH_FUNCTION)
        daemon = await start_daemon([os.path.join(BASH_FUNCTION, "bootstrap")], environ)
        self.addCleanup(daemon.stop)
        for n in (1, 2):
            result = await daemon.invoke({"n": n})
            self.assertEqual(result.status, 200)
            self.assertIsNone(result.function_error)
            self.assertEqual(result.json(), {"echo": {"n": n}})
        await daemon.wait_for_output(b'{"n": 2}\n')

    async def test_caller_disconnects(self) -> None:
        """A caller hanging up mid-invocation leaves the daemon healthy: the next call is answered."""
        daemon = await start_python(self, "handlers.dispatch")
        abandoned = daemon.invoke({"call": "sleep", "seconds": 0.5})
        await daemon.wait_for_output(b"sleeping 0.5")
        abandoned.cancel()
        with self.assertRaises(CancelledError):
            await abandoned
        result = await daemon.invoke({"call": "echo", "after": "hang-up"})
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json(), {"call": "echo", "after": "hang-up"})


class RuntimeEnvironmentTests(TestCase):
    """What the runtime is told, in its context object and its environment (PROTOCOLS §1, §6)."""

    timeout = 30

    async def test_context_and_environment(self) -> None:
        """The RIC gets the function's identity, deadline, client context and trace id; no daemon setting or secret leaks."""
        environ = function_environ(
            AMQP_URI="amqp://rabbit:s3cret-pass@127.0.0.1:1/%2F",
            AMQP_USERNAME="rabbit",
            AMQP_PASSWORD="s3cret-pass",
            LOG_LEVEL="WARNING",
            MY_OWN_VARIABLE="passed through",
        )
        daemon = await start_python(
            self,
            "handlers.context",
            environ,
            AWS_LAMBDA_FUNCTION_NAME="my-function",
            PRINT_REPORTS=True,
            MAX_CONCURRENCY=2,
            SHUTDOWN_TIMEOUT=5,
        )
        trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        result = await daemon.invoke(
            {},
            qualifier="$LATEST",
            client_context={"custom": {"k": "v"}, "env": {"platform": "test"}},
            headers={"X-Amzn-Trace-Id": trace},
        )
        self.assertEqual(result.status, 200, result.payload)
        seen = result.json()
        self.assertEqual(seen["aws_request_id"], result.request_id)
        self.assertEqual(
            seen["invoked_function_arn"],
            "arn:aws:lambda:us-east-1:012345678912:function:my-function:$LATEST",
        )
        self.assertEqual(seen["function_name"], "my-function")
        self.assertEqual(seen["function_version"], "$LATEST")
        self.assertEqual(str(seen["memory_limit_in_mb"]), "3008")
        self.assertEqual(seen["log_group_name"], "/aws/lambda/my-function")
        self.assertGreater(seen["remaining_time_in_millis"], 2000)
        self.assertLessEqual(seen["remaining_time_in_millis"], 3000)
        self.assertEqual(
            seen["client_context"], {"custom": {"k": "v"}, "env": {"platform": "test"}}
        )
        runtime_environ = seen["environ"]
        self.assertRegex(runtime_environ["AWS_LAMBDA_RUNTIME_API"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(runtime_environ["_HANDLER"], "handlers.context")
        self.assertEqual(runtime_environ["AWS_LAMBDA_FUNCTION_NAME"], "my-function")
        self.assertEqual(runtime_environ["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST")
        self.assertEqual(runtime_environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "3008")
        self.assertEqual(runtime_environ["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/my-function")
        self.assertRegex(
            runtime_environ["AWS_LAMBDA_LOG_STREAM_NAME"], r"^\d{4}/\d\d/\d\d/\[\$LATEST\]\w+$"
        )
        self.assertEqual(runtime_environ["AWS_REGION"], "us-east-1")
        self.assertEqual(runtime_environ["AWS_DEFAULT_REGION"], "us-east-1")
        self.assertEqual(runtime_environ["LAMBDA_TASK_ROOT"], FUNCTIONS)
        self.assertIn("LAMBDA_RUNTIME_DIR", runtime_environ)
        self.assertEqual(runtime_environ["_X_AMZN_TRACE_ID"], trace)
        self.assertEqual(runtime_environ["MY_OWN_VARIABLE"], "passed through")
        for setting in (
            "AMQP_URI",
            "AMQP_USERNAME",
            "AMQP_PASSWORD",
            "LOG_LEVEL",
            "PRINT_REPORTS",
            "MAX_CONCURRENCY",
            "SHUTDOWN_TIMEOUT",
            "PORT",
            "RUNTIME_API_PORT",
            "INVOKE_API_HOST",
            "AWS_LAMBDA_FUNCTION_TIMEOUT",
        ):
            self.assertNotIn(setting, runtime_environ)
        self.assertNotIn("s3cret-pass", json.dumps(runtime_environ))

    async def test_function_name_from_handler(self) -> None:
        """Without AWS_LAMBDA_FUNCTION_NAME the function is named after the handler's module, and answers to that name too."""
        daemon = await start_python(self, "handlers.context")
        result = await daemon.invoke({}, function_name="handlers")
        self.assertEqual(result.status, 200, result.payload)
        self.assertEqual(
            result.json()["invoked_function_arn"],
            "arn:aws:lambda:us-east-1:012345678912:function:handlers",
        )
        missing = await daemon.invoke({}, function_name="another-function")
        self.assertEqual(missing.status, 404)
        self.assertEqual(missing.error_type, "ResourceNotFoundException")

    async def test_trace_id_generated(self) -> None:
        """Without X-Amzn-Trace-Id the runtime still gets an X-Ray trace header of its own."""
        daemon = await start_python(self, "handlers.context")
        result = await daemon.invoke({})
        trace = result.json()["environ"]["_X_AMZN_TRACE_ID"]
        self.assertRegex(trace, r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=[01]$")

