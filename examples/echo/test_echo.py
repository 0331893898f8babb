"""
Unit tests of the echo function image, with trial and lambdarapid.testing:
a real runtime process, invoked over the real Invoke API.

    python -m twisted.trial test_echo.py
"""

import os
import sys

from twisted.trial.unittest import TestCase

from lambdarapid.testing import start_daemon

HERE = os.path.dirname(os.path.abspath(__file__))


class PythonEchoTests(TestCase):
    """The Python echo function, run by awslambdaric."""

    async def start(self, **settings: object):
        daemon = await start_daemon(
            [sys.executable, "-m", "awslambdaric", "echo.handler"],
            {**os.environ, "LAMBDA_TASK_ROOT": os.path.join(HERE, "python")},
            **settings,
        )
        self.addCleanup(daemon.stop)
        return daemon

    async def test_echoes_the_event(self) -> None:
        """The function returns the event it was given."""
        daemon = await self.start()
        result = await daemon.invoke({"hello": "world", "n": [1, 2, 3]})
        self.assertEqual(result.status, 200)
        self.assertIsNone(result.function_error)
        self.assertEqual(result.json(), {"hello": "world", "n": [1, 2, 3]})

    async def test_reports_a_duration(self) -> None:
        """The tail of the invocation's log ends with Lambda's REPORT line."""
        daemon = await self.start()
        result = await daemon.invoke({"tail": True}, log_type="Tail")
        self.assertIn("REPORT RequestId: " + result.request_id, result.log_result)


class BashEchoTests(TestCase):
    """The bash + curl custom runtime."""

    async def test_echoes_the_event(self) -> None:
        """The custom runtime's handler echoes the event."""
        bash = os.path.join(HERE, "bash")
        daemon = await start_daemon(
            [os.path.join(bash, "bootstrap")],
            {**os.environ, "LAMBDA_TASK_ROOT": bash, "_HANDLER": "function.handler"},
            AWS_LAMBDA_FUNCTION_NAME="echo",
        )
        self.addCleanup(daemon.stop)
        result = await daemon.invoke({"shell": "yes"})
        self.assertEqual(result.json(), {"shell": "yes"})
