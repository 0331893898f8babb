"""
lambdarapid.testing, the API users call from their own tests: it must start
daemons that never collide, say clearly what went wrong, and clean up.
"""

from __future__ import annotations

import base64
import socket

from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lambdarapid import testing
from lambdarapid.config import ConfigError
from lambdarapid.testing import InvokeResult, free_port, free_port_block, start_daemon

from .runtimes import function_environ, python_runtime, start_python


class InvokeResultTests(SynchronousTestCase):
    """InvokeResult reads botocore's headers."""

    def test_headers(self) -> None:
        """function_error, log_result (decoded), executed_version, request_id and error_type come from the headers."""
        result = InvokeResult(
            status=200,
            payload=b'{"errorType": "E"}',
            headers={
                "x-amz-function-error": "Unhandled",
                "x-amz-log-result": base64.b64encode(b"START ...\nline\n").decode(),
                "x-amz-executed-version": "$LATEST",
                "x-amzn-requestid": "id-1",
            },
        )
        self.assertEqual(result.json(), {"errorType": "E"})
        self.assertEqual(result.function_error, "Unhandled")
        self.assertEqual(result.log_result, "START ...\nline\n")
        self.assertEqual(result.executed_version, "$LATEST")
        self.assertEqual(result.request_id, "id-1")
        self.assertIsNone(result.error_type)

    def test_absent_headers(self) -> None:
        """A plain success has no function error and no log result."""
        result = InvokeResult(status=200, payload=b"1")
        self.assertIsNone(result.function_error)
        self.assertIsNone(result.log_result)


class FreePortTests(SynchronousTestCase):
    """The port pickers."""

    def test_block(self) -> None:
        """free_port_block(n) returns the first of n consecutive ports that can all be bound."""
        first = free_port_block(3)
        sockets = []
        try:
            for port in range(first, first + 3):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
        finally:
            for probe in sockets:
                probe.close()


class StartDaemonTests(TestCase):
    """start_daemon, RunningDaemon and InvokeClient against a real echo runtime."""

    timeout = 30

    async def test_free_ports(self) -> None:
        """Two daemons started at once listen on distinct free loopback ports, never 8080, and both answer."""
        first = await start_python(self, "handlers.echo")
        second = await start_python(self, "handlers.echo")
        self.assertNotEqual(first.port, second.port)
        self.assertNotIn(8080, (first.port, second.port))
        self.assertNotEqual(first.config.runtime_port, second.config.runtime_port)
        self.assertEqual(first.url, f"http://127.0.0.1:{first.port}")
        answers = await defer.gatherResults([first.invoke({"n": 1}), second.invoke({"n": 2})])
        self.assertEqual([answer.json() for answer in answers], [{"n": 1}, {"n": 2}])

    async def test_payloads(self) -> None:
        """Bytes are sent as they are, strings UTF-8 encoded, anything else as JSON."""
        daemon = await start_python(self, "handlers.echo")
        self.assertEqual((await daemon.invoke(b'{"raw": true}')).json(), {"raw": True})
        self.assertEqual((await daemon.invoke('"caf\u00e9"')).json(), "caf\u00e9")
        self.assertEqual((await daemon.invoke([1, None])).json(), [1, None])

    async def test_api_errors_are_results(self) -> None:
        """An Invoke API error comes back as a result with its status and error type, not an exception."""
        daemon = await start_python(self, "handlers.echo")
        result = await daemon.invoke({}, function_name="not-this-one")
        self.assertEqual(result.status, 404)
        self.assertEqual(result.error_type, "ResourceNotFoundException")

    async def test_cancel(self) -> None:
        """Cancelling an invocation fails it with CancelledError (the caller hung up)."""
        daemon = await start_python(self, "handlers.sleep")
        invocation = daemon.invoke({"seconds": 0.3})
        await daemon.wait_for_output(b"sleeping")
        invocation.cancel()
        with self.assertRaises(CancelledError):
            await invocation

    async def test_output(self) -> None:
        """The runtime's output is captured; wait_for_output times out with what was written."""
        daemon = await start_python(self, "handlers.log", print_reports=True)
        await daemon.invoke({"lines": ["captured line"]})
        await daemon.wait_for_output(b"captured line\n")
        self.assertIn(b"START RequestId: ", daemon.output)
        with self.assertRaises(defer.TimeoutError) as caught:
            await daemon.wait_for_output(b"never written", timeout=0.2)
        self.assertIn("captured line", str(caught.exception))

    async def test_stop(self) -> None:
        """stop() lets the in-flight invocation finish, can be called twice, and leaves nothing listening."""
        daemon = await start_python(self, "handlers.sleep")
        in_flight = daemon.invoke({"seconds": 0.3})
        await daemon.wait_for_output(b"sleeping")
        first, second = daemon.stop(), daemon.stop()
        await first
        await second
        self.assertEqual((await in_flight).json()["slept"], 0.3)
        await daemon.stop()
        self.assertEqual(daemon.service.pool.environments, [])
        with self.assertRaises(ConnectionRefusedError):
            await daemon.invoke({})

    async def test_unknown_setting(self) -> None:
        """A misspelt setting is a TypeError, not a variable silently passed to the function."""
        with self.assertRaises(TypeError) as caught:
            await start_daemon(python_runtime("handlers.echo"), function_environ(), max_concurency=2)
        self.assertIn("max_concurency", str(caught.exception))

    async def test_bad_setting(self) -> None:
        """A bad setting raises ConfigError naming it, as the daemon refuses to start."""
        with self.assertRaises(ConfigError) as caught:
            await start_daemon(python_runtime("handlers.echo"), function_environ(), MAX_CONCURRENCY=0)
        self.assertIn("MAX_CONCURRENCY", str(caught.exception))

    async def test_given_port_taken(self) -> None:
        """A PORT given and taken raises CannotListenError in the test, never SystemExit."""
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        with self.assertRaises(CannotListenError):
            await start_daemon(
                python_runtime("handlers.echo"), function_environ(), PORT=holder.getsockname()[1]
            )

    async def test_picked_port_taken(self) -> None:
        """A picked port taken before the daemon listens is replaced by another free one."""
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        picks = iter([holder.getsockname()[1]])
        self.patch(testing, "free_port", lambda *host: next(picks, None) or free_port(*host))
        daemon = await start_python(self, "handlers.echo")
        self.assertNotEqual(daemon.port, holder.getsockname()[1])
        self.assertEqual((await daemon.invoke({"n": 1})).json(), {"n": 1})

    async def test_given_port(self) -> None:
        """A PORT given as a setting is used."""
        port = free_port()
        daemon = await start_python(self, "handlers.echo", PORT=port)
        self.assertEqual(daemon.port, port)
        self.assertEqual((await daemon.invoke({"on": port})).json(), {"on": port})
