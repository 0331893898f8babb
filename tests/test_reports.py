"""
The console report lines, byte for byte (PROTOCOLS section 3).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import reports
from lambdarapid.invocation import Outcome, Result

RID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"


def result(duration: float, init_duration: float | None = None, memory: int | None = 41) -> Result:
    return Result(
        Outcome.SUCCESS,
        b"",
        RID,
        duration=duration,
        init_duration=init_duration,
        max_memory_mb=memory,
    )


class ReportLineTests(SynchronousTestCase):
    """START, END and REPORT."""

    def test_start_line(self) -> None:
        """START names the request id and the version."""
        self.assertEqual(
            reports.start_line(RID, "$LATEST"),
            f"START RequestId: {RID} Version: $LATEST\n".encode(),
        )
        self.assertEqual(reports.start_line("x", "7"), b"START RequestId: x Version: 7\n")

    def test_end_line(self) -> None:
        """END names the request id."""
        self.assertEqual(reports.end_line(RID), f"END RequestId: {RID}\n".encode())

    def test_report_line_with_init_duration(self) -> None:
        """REPORT is tab-separated, durations to two decimals, billed rounded up, Init Duration last."""
        line = reports.report_line(result(0.01234, init_duration=0.1052), 3008)
        self.assertEqual(
            line,
            f"REPORT RequestId: {RID}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t"
            "Memory Size: 3008 MB\tMax Memory Used: 41 MB\tInit Duration: 105.20 ms\n".encode(),
        )

    def test_report_line_without_init_duration(self) -> None:
        """Without an init duration REPORT ends with Max Memory Used."""
        line = reports.report_line(result(1.5), 128)
        self.assertEqual(
            line,
            f"REPORT RequestId: {RID}\tDuration: 1500.00 ms\tBilled Duration: 1500 ms\t"
            "Memory Size: 128 MB\tMax Memory Used: 41 MB\n".encode(),
        )

    def test_billed_duration_at_least_one_ms(self) -> None:
        """A run shorter than a millisecond is billed 1 ms."""
        self.assertIn(
            b"\tDuration: 0.00 ms\tBilled Duration: 1 ms\t", reports.report_line(result(0.0), 3008)
        )
        self.assertIn(
            b"\tDuration: 0.40 ms\tBilled Duration: 1 ms\t",
            reports.report_line(result(0.0004), 3008),
        )

    def test_billed_duration_rounds_up(self) -> None:
        """Any fraction of a millisecond is billed as a whole one."""
        self.assertIn(
            b"\tDuration: 2.01 ms\tBilled Duration: 3 ms\t",
            reports.report_line(result(0.00201), 3008),
        )

    def test_billed_duration_agrees_with_printed_duration(self) -> None:
        """A duration printed as a whole number of ms is billed as exactly that many ms."""
        # 0.003 - 0.002 and friends are what reactor.seconds() differences give.
        for duration in (0.003 - 0.002, 0.07 - 0.06, 1.1 - 1.0):
            line = reports.report_line(result(duration), 3008)
            printed = line.split(b"\tDuration: ")[1].split(b" ms")[0]
            billed = line.split(b"\tBilled Duration: ")[1].split(b" ms")[0]
            if printed.endswith(b".00"):
                self.assertEqual(printed[:-3], billed, line)


    def test_unknown_memory_is_zero(self) -> None:
        """A result without a memory reading reports 0 MB used."""
        self.assertIn(
            b"\tMax Memory Used: 0 MB\n", reports.report_line(result(0.001, memory=None), 3008)
        )

    def test_same_request_id_on_all_lines(self) -> None:
        """START, END and REPORT all carry the same request id."""
        lines = [
            reports.start_line(RID, "$LATEST"),
            reports.end_line(RID),
            reports.report_line(result(0.001), 3008),
        ]
        for line in lines:
            self.assertIn(f"RequestId: {RID}".encode(), line)
            self.assertTrue(line.endswith(b"\n"))
            self.assertEqual(line.count(b"\n"), 1)
