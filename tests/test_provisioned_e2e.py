"""
PROVISIONED_CONCURRENCY end to end: awslambdaric runtimes initialised when
the daemon starts, told they are provisioned, their first invocation warm.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from lambdarapid.environment import State

from .amqp_support import eventually
from .runtimes import function_environ, start_python


class ProvisionedTests(TestCase):
    """A daemon with PROVISIONED_CONCURRENCY=2 of MAX_CONCURRENCY=3."""

    async def test_initialised_before_any_invocation(self) -> None:
        """Both runtimes run their Init at start; the first invocation is warm (no Init Duration in its REPORT)."""
        daemon = await start_python(
            self,
            "handlers.dispatch",
            MAX_CONCURRENCY=3,
            PROVISIONED_CONCURRENCY=2,
            PRINT_REPORTS=True,
            AWS_LAMBDA_FUNCTION_TIMEOUT=30,
        )
        pool = daemon.service.pool
        await eventually(
            reactor,
            lambda: [e.state for e in pool.environments] == [State.IDLE, State.IDLE],
            20,
            "two provisioned runtimes idle before any invocation",
        )
        answer = await daemon.invoke({"call": "context"})
        environ = answer.json()["environ"]
        self.assertEqual(environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "provisioned-concurrency")
        request_id = answer.request_id
        assert request_id is not None
        report_start = b"REPORT RequestId: " + request_id.encode()
        await daemon.wait_for_output(report_start)
        [report] = [line for line in daemon.output.splitlines() if line.startswith(report_start)]
        self.assertNotIn(b"Init Duration", report)
        self.assertEqual(len(pool.environments), 2)

    async def test_reported_as_provisioned(self) -> None:
        """In JSON format the provisioned runtime's platform.initStart says initializationType provisioned-concurrency."""
        daemon = await start_python(
            self,
            "handlers.echo",
            function_environ(AWS_LAMBDA_LOG_FORMAT="JSON"),
            PROVISIONED_CONCURRENCY=1,
            PRINT_REPORTS=True,
        )
        await daemon.wait_for_output(b'"platform.initStart"', timeout=20)
        [init] = [
            json.loads(line)
            for line in daemon.output.splitlines()
            if b'"platform.initStart"' in line
        ]
        self.assertEqual(init["record"]["initializationType"], "provisioned-concurrency")
