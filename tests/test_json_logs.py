"""
Lambda's JSON log format (AWS_LAMBDA_LOG_FORMAT=JSON): platform events, the
daemon's own log lines, and function output filtered at the application level.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lambdarapid.config import Function
from lambdarapid.invocation import Outcome, Result
from lambdarapid.logs import JSONLineObserver, application_filter, iso_time
from lambdarapid.reports import PlatformLines

from .runtimes import function_environ, python_runtime
from lambdarapid.testing import start_daemon


def json_lines(output: bytes) -> list[dict[str, Any]]:
    """The lines of C{output} that are JSON objects, parsed."""
    found = []
    for line in output.splitlines():
        if line.startswith(b"{"):
            found.append(json.loads(line))
    return found


class JSONLineObserverTests(SynchronousTestCase):
    """The daemon's own events as one JSON object a line."""

    def events(self) -> tuple[Logger, list[bytes]]:
        written: list[bytes] = []
        return Logger(namespace="lambdarapid.pool.Pool", observer=JSONLineObserver(written.append)), written

    def test_fields(self) -> None:
        """timestamp (ISO, ms), level in Lambda's names, the formatted message, the logger, and the request id in it."""
        log, written = self.events()
        log.warn("{message}", message="RequestId: 6d68ca91-49c9 Error: Task timed out after 3.00 seconds")
        (line,) = written
        self.assertTrue(line.endswith(b"\n") and line.count(b"\n") == 1)
        record = json.loads(line)
        self.assertRegex(record["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(record["level"], "WARN")
        self.assertEqual(record["logger"], "lambdarapid.pool.Pool")
        self.assertEqual(record["requestId"], "6d68ca91-49c9")
        self.assertIn("Task timed out", record["message"])

    def test_failure(self) -> None:
        """A failure carries errorType, errorMessage and the stack trace as a list; critical is FATAL."""
        log, written = self.events()
        try:
            raise ValueError("broken")
        except ValueError:
            log.failure("it failed", level=__import__("twisted.logger").logger.LogLevel.critical)
        record = json.loads(written[0])
        self.assertEqual(record["level"], "FATAL")
        self.assertEqual((record["errorType"], record["errorMessage"]), ("ValueError", "broken"))
        self.assertIsInstance(record["stackTrace"], list)
        self.assertIn("ValueError: broken", record["stackTrace"][-1])

    def test_iso_time(self) -> None:
        """Times are UTC with milliseconds, as Lambda writes them."""
        self.assertEqual(iso_time(1764577649.4129), "2025-12-01T08:27:29.412Z")


class ApplicationFilterTests(SynchronousTestCase):
    """Function output at the application level: JSON lines by their level, any other line is INFO."""

    def test_warn_drops_info_and_plain_lines(self) -> None:
        """At WARN a plain print() and INFO/DEBUG records disappear; WARN(ING), ERROR, log_level records stay, verbatim."""
        keep = application_filter("WARN")
        lines = (
            b"plain\n"
            b'{"level":"INFO","message":"i"}\n'
            b'{"level":"warning","message":"w"}\n'
            b'{"log_level":"ERROR","errorMessage":"e"}\n'
            b'{"level":"DEBUG"}\n'
            b"{not json\n"
        )
        self.assertEqual(
            keep(lines), b'{"level":"warning","message":"w"}\n{"log_level":"ERROR","errorMessage":"e"}\n'
        )

    def test_info_keeps_plain_lines(self) -> None:
        """At INFO only records below INFO go."""
        keep = application_filter("info")
        self.assertEqual(keep(b"a\nb\n"), b"a\nb\n")
        self.assertEqual(keep(b'x\n{"level": "TRACE"}\n{"level":"FATAL"}\n'), b'x\n{"level":"FATAL"}\n')


class PlatformLinesTests(SynchronousTestCase):
    """platform.initStart / start / report in JSON format, START/END/REPORT in Text."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1764577649.412)
        self.function = Function(name="echo", memory_size=128)

    def result(self, outcome: Outcome, error_type: str | None = None, **extra: Any) -> Result:
        return Result(
            outcome=outcome, body=b"{}", request_id="id-1", error_type=error_type,
            duration=0.01164, max_memory_mb=67, **extra,
        )  # fmt: skip

    def test_json_events(self) -> None:
        """Lambda's envelope, the record fields, and no END."""
        lines = PlatformLines(self.function, "JSON", self.clock)
        init = json.loads(lines.init_start())
        self.assertEqual(init["type"], "platform.initStart")
        self.assertEqual(init["time"], "2025-12-01T08:27:29.412Z")
        self.assertEqual(init["record"]["functionName"], "echo")
        start = json.loads(lines.start("id-1"))
        self.assertEqual(start, {"time": init["time"], "type": "platform.start",
                                 "record": {"requestId": "id-1", "version": "$LATEST"}})  # fmt: skip
        self.assertEqual(lines.end("id-1"), b"")
        report = json.loads(lines.report(self.result(Outcome.SUCCESS, init_duration=0.17406)))
        self.assertEqual(report["type"], "platform.report")
        self.assertEqual(
            report["record"],
            {"requestId": "id-1", "status": "success",
             "metrics": {"durationMs": 11.64, "billedDurationMs": 12, "memorySizeMB": 128,
                         "maxMemoryUsedMB": 67, "initDurationMs": 174.06}},
        )  # fmt: skip

    def test_report_status(self) -> None:
        """timeout; error with errorType for function errors and exits; failure for Sandbox faults."""
        lines = PlatformLines(self.function, "JSON", self.clock)
        cases = [
            (self.result(Outcome.TIMEOUT, "Sandbox.Timedout"), ("timeout", None)),
            (self.result(Outcome.FUNCTION_ERROR, "ValueError"), ("error", "ValueError")),
            (self.result(Outcome.RUNTIME_EXIT, "Runtime.ExitError"), ("error", "Runtime.ExitError")),
            (self.result(Outcome.INIT_ERROR, "Sandbox.Timedout"), ("failure", "Sandbox.Timedout")),
        ]
        for result, (status, error_type) in cases:
            record = json.loads(lines.report(result))["record"]
            self.assertEqual((record["status"], record.get("errorType")), (status, error_type))
            self.assertNotIn("initDurationMs", record["metrics"])

    def test_text_unchanged(self) -> None:
        """Text format is START / END / REPORT, and no initStart line."""
        lines = PlatformLines(self.function, "Text", self.clock)
        self.assertEqual(lines.init_start(), b"")
        self.assertEqual(lines.start("id-1"), b"START RequestId: id-1 Version: $LATEST\n")
        self.assertEqual(lines.end("id-1"), b"END RequestId: id-1\n")
        self.assertTrue(lines.report(self.result(Outcome.SUCCESS)).startswith(b"REPORT RequestId: id-1\t"))


class JSONModeEndToEndTests(TestCase):
    """A real awslambdaric runtime under a daemon in JSON format."""

    timeout = 60

    async def run_function(self, **extra: str) -> tuple[Any, Any]:
        environ = function_environ(AWS_LAMBDA_LOG_FORMAT="JSON", **extra)
        daemon = await start_daemon(python_runtime("json_logging.handler"), environ, PRINT_REPORTS=True)
        self.addCleanup(daemon.stop)
        result = await daemon.invoke({}, log_type="Tail")
        self.assertEqual(result.json(), {"ok": True})
        await daemon.wait_for_output(b'"platform.report"')
        return daemon, result

    async def test_platform_events_and_runtime_json(self) -> None:
        """Platform events carry the invocation's id; awslambdaric logs JSON records; print() stays plain; no START text."""
        daemon, result = await self.run_function()
        output = daemon.output
        self.assertNotIn(b"START RequestId", output)
        self.assertNotIn(b"END RequestId", output)
        records = json_lines(output)
        kinds = [record.get("type") for record in records if "type" in record]
        self.assertEqual(kinds, ["platform.initStart", "platform.start", "platform.report"])
        start, report = records[[r.get("type") for r in records].index("platform.start")], records[-1]
        self.assertEqual(start["record"]["requestId"], result.request_id)
        self.assertEqual(report["record"]["requestId"], result.request_id)
        self.assertEqual(report["record"]["status"], "success")
        self.assertIn("initDurationMs", report["record"]["metrics"])
        logged = {r["message"]: r for r in records if "message" in r and "type" not in r}
        self.assertEqual(logged["info from logging"]["level"], "INFO")
        self.assertEqual(logged["info from logging"]["requestId"], result.request_id)
        self.assertEqual(logged["error from logging"]["level"], "ERROR")
        self.assertIn(b"\nplain from print\n", output)
        self.assertNotIn(b"debug of my own", output)  # below the default INFO
        self.assertIn('"platform.report"', result.log_result or "")
        self.assertIn("info from logging", result.log_result or "")

    async def test_application_level_filters_function_output(self) -> None:
        """At AWS_LAMBDA_LOG_LEVEL=ERROR, INFO records and plain print() lines are dropped, from stdout and Tail alike."""
        daemon, result = await self.run_function(AWS_LAMBDA_LOG_LEVEL="ERROR")
        self.assertIn(b"error from logging", daemon.output)
        for dropped in (b"info from logging", b"plain from print", b"debug of my own"):
            self.assertNotIn(dropped, daemon.output)
            self.assertNotIn(dropped.decode(), result.log_result or "")

    async def test_text_mode_unchanged(self) -> None:
        """Without AWS_LAMBDA_LOG_FORMAT, output is as before: START/END/REPORT and every line of the function."""
        environ = function_environ()
        daemon = await start_daemon(python_runtime("json_logging.handler"), environ, PRINT_REPORTS=True)
        self.addCleanup(daemon.stop)
        await daemon.invoke({})
        await daemon.wait_for_output(b"REPORT RequestId")
        for expected in (b"START RequestId", b"END RequestId", b"plain from print", b"debug of my own"):
            self.assertIn(expected, daemon.output)
        self.assertNotIn(b'"platform.', daemon.output)
