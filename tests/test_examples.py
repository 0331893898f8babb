"""
The examples, run as their READMEs tell a user to run them: the echo functions
(Python, bash, Node), the four clients, the example's own trial tests, and the
self-contained executable running the Node function with no Python on PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import uuid
from typing import Any, Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from .executable import built_executable
from .runtimes import node_example
from lambdarapid.testing import InvokeClient, free_port, free_port_block, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO = os.path.join(ROOT, "examples", "echo")
CLIENTS = os.path.join(ECHO, "clients")
BIN = os.path.dirname(sys.executable)
#: Build products the slow tests reuse between runs (git-ignored).
ARTIFACTS = os.path.join(ROOT, "build", "test-artifacts")
AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"


def run(
    command: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> Deferred[tuple[bytes, bytes, int]]:
    """Run a command to its end without blocking the reactor."""
    environ = dict(os.environ if env is None else env)
    environ["PATH"] = BIN + os.pathsep + environ.get("PATH", os.defpath)
    return getProcessOutputAndValue(command[0], list(command[1:]), env=environ, path=cwd)


class ExampleTestsTests(TestCase):
    """The echo example's own trial tests."""

    timeout = 120

    async def test_example_tests_pass(self) -> None:
        """`python -m twisted.trial examples/echo/test_echo.py` passes, as the README says."""
        workdir = self.mktemp()
        os.makedirs(workdir)
        out, err, code = await run(
            [sys.executable, "-m", "twisted.trial", os.path.join(ECHO, "test_echo.py")],
            cwd=workdir,
        )
        self.assertEqual(code, 0, out.decode() + err.decode())
        self.assertIn(b"PASSED (successes=3)", out)


class ClientTests(TestCase):
    """Each client of the example against a daemon running the Python echo function."""

    timeout = 60

    async def start_echo(self, **settings: Any) -> Any:
        daemon = await start_daemon(
            [sys.executable, "-m", "awslambdaric", "echo.handler"],
            {**os.environ, "LAMBDA_TASK_ROOT": os.path.join(ECHO, "python")},
            **settings,
        )
        self.addCleanup(daemon.stop)
        return daemon

    async def test_curl(self) -> None:
        """invoke_curl.sh gets the echo, 202 for Event and 204 for DryRun."""
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        daemon = await self.start_echo(AWS_LAMBDA_FUNCTION_NAME="echo")
        out, err, code = await run([os.path.join(CLIENTS, "invoke_curl.sh"), daemon.url])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.decode().splitlines(), ['{"hello": "curl"}', "Event: 202", "DryRun: 204"]
        )

    async def test_boto3(self) -> None:
        """invoke_boto3.py prints status 200, no function error and the echo."""
        daemon = await self.start_echo(AWS_LAMBDA_FUNCTION_NAME="echo")
        out, err, code = await run(
            [sys.executable, os.path.join(CLIENTS, "invoke_boto3.py"), daemon.url]
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().strip(), '200  {"hello": "boto3"}')

    async def test_aws_cli(self) -> None:
        """invoke_awscli.sh (aws lambda invoke --endpoint-url) writes the echo."""
        if not os.path.exists(os.path.join(BIN, "aws")):
            raise SkipTest("the AWS CLI is not installed next to this Python")
        daemon = await self.start_echo(AWS_LAMBDA_FUNCTION_NAME="echo")
        out, err, code = await run([os.path.join(CLIENTS, "invoke_awscli.sh"), daemon.url])
        self.assertEqual(code, 0, err)
        self.assertIn(b'{"hello": "aws cli"}', out)
        self.assertIn(b'"StatusCode": 200', out)

    async def test_pika(self) -> None:
        """invoke_pika.py, an upstream-format AMQP-RPC client, gets the echo from the daemon's queue."""
        name = f"echo-example-{uuid.uuid4().hex[:8]}"
        daemon = await self.start_echo(AWS_LAMBDA_FUNCTION_NAME=name, AMQP_URI=AMQP_URI)
        for _ in range(100):  # until the daemon consumes its queue
            if daemon.service.amqp.connected:
                break
            await deferLater(reactor, 0.05, lambda: None)
        out, err, code = await run(
            [sys.executable, os.path.join(CLIENTS, "invoke_pika.py"), AMQP_URI, name]
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().strip(), '{"hello": "pika"}')


class NodeAndExecutableTests(TestCase):
    """
    The Node echo function (npm aws-lambda-ric), run by the self-contained
    executable with a PATH that has no Python on it.
    """

    timeout = 600

    async def build(self) -> tuple[str, str]:
        """The Node example with its node_modules, and the executable; built once, then reused."""
        node_dir = await node_example()
        executable = await built_executable()
        return node_dir, executable

    async def test_node_echo_through_the_executable_without_python(self) -> None:
        """The executable serves the Node echo function where no python is on PATH."""
        node_dir, executable = await self.build()
        bare_path = os.path.abspath(self.mktemp())
        os.makedirs(bare_path)
        os.symlink(shutil.which("node"), os.path.join(bare_path, "node"))  # type: ignore[arg-type]
        port, runtime_port = free_port(), free_port_block(1)
        environ = {
            "PATH": bare_path,
            "HOME": os.environ.get("HOME", "/"),
            "PORT": str(port),
            "RUNTIME_API_PORT": str(runtime_port),
            "INVOKE_API_HOST": "127.0.0.1",
            "PRINT_REPORTS": "true",
        }
        self.assertIsNone(shutil.which("python3", path=bare_path))
        collect = _Collect()
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            collect,
            executable,
            [executable, "node", "node_modules/.bin/aws-lambda-ric", "index.handler"],
            env=environ,
            path=node_dir,
        )
        self.addCleanup(_stop, process, collect)
        client = InvokeClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)
        for _ in range(200):
            try:
                result = await client.invoke({"node": "without python"})
                break
            except Exception:
                await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail(f"the executable never answered: {collect.output!r}")
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json(), {"node": "without python"})
        self.assertEqual(result.executed_version, "$LATEST")


class _Collect(ProcessProtocol):
    """A process protocol keeping a process's output, for failure messages."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


async def _stop(process: Any, collect: _Collect) -> None:
    if process.pid is not None:
        process.signalProcess(signal.SIGTERM)
    await collect.ended
