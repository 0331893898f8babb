"""
Both start commands as real processes: C{twistd -n lambda-rapid ...} and the
C{lambda-rapid} console script, as a container's ENTRYPOINT runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from typing import Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lambdarapid import __version__
from lambdarapid.config import DAEMON_VARIABLES
from lambdarapid.scripts import leave_out_tls
from lambdarapid.testing import InvokeClient, InvokeResult, free_port, free_port_block

from .runtimes import BIN, FUNCTIONS, function_environ

TWISTD = os.path.join(BIN, "twistd")
LAMBDA_RAPID = os.path.join(BIN, "lambda-rapid")
LAMBDA_SERVER = os.path.join(BIN, "lambda-server")
RUNTIME = ["python3", "-m", "awslambdaric"]


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Child(ProcessProtocol):
    """A command run by a test: its output so far and how it ended."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.ended: Deferred[int | str] = Deferred()
        self.exit: int | str | None = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        error = reason.value
        exit: int | str = str(error)
        if isinstance(error, ProcessTerminated) and error.signal is not None:
            exit = f"signal {error.signal}"
        elif isinstance(error, (ProcessDone, ProcessTerminated)):
            exit = error.exitCode or 0
        self.exit = exit
        self.ended.callback(exit)

    def signal(self, signum: int) -> None:
        if self.exit is None:
            self.transport.signalProcess(signum)  # type: ignore[union-attr]

    async def wait_for(self, needle: bytes, timeout: float = 10.0) -> None:
        """Wait until C{needle} is in stdout or stderr."""
        deadline = time.monotonic() + timeout
        while needle not in self.stdout and needle not in self.stderr:
            if self.exit is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{needle!r} never written (exit {self.exit}); "
                    f"stdout {bytes(self.stdout)!r}, stderr {bytes(self.stderr)!r}"
                )
            await sleep(0.05)

    async def finished(self, timeout: float) -> int | str:
        """The exit status, within C{timeout} seconds (else SIGKILL and fail)."""
        deadline = time.monotonic() + timeout
        while self.exit is None and time.monotonic() < deadline:
            await sleep(0.05)
        if self.exit is None:
            self.signal(signal.SIGKILL)
            await self.ended
            raise AssertionError(
                f"still running after {timeout} s; stdout {bytes(self.stdout)!r}, "
                f"stderr {bytes(self.stderr)!r}"
            )
        return self.exit


class CommandTests:
    """Every start command's behaviour; subclasses say which command."""

    timeout = 30
    prefix: Sequence[str] = ()
    #: How the process ends after a clean drain on SIGTERM.
    sigterm_exit: int | str = 0

    def spawn(self, args: Sequence[str], **environ: str) -> Child:
        """Start C{prefix + args} in the fixtures' directory; killed at the end of the test."""
        test: TestCase = self  # type: ignore[assignment]
        child = Child()
        command = [*self.prefix, *args]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child, command[0], command, env=function_environ(**environ), path=FUNCTIONS
        )

        async def kill() -> None:
            if child.exit is None:
                child.signal(signal.SIGKILL)
                await child.ended

        test.addCleanup(kill)
        return child

    def start(self, handler: str, **environ: str) -> tuple[Child, InvokeClient]:
        """Start the daemon on free ports, with a caller for it."""
        port = free_port()
        child = self.spawn(
            [*RUNTIME, handler],
            PORT=str(port),
            RUNTIME_API_PORT=str(free_port_block(1)),
            INVOKE_API_HOST="127.0.0.1",
            **environ,
        )
        client = InvokeClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)  # type: ignore[attr-defined]
        return child, client

    async def first_invoke(self, child: Child, client: InvokeClient, payload: object) -> InvokeResult:
        """Invoke as soon as the daemon listens (within 10 s)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return await client.invoke(payload)
            except ConnectionRefusedError:
                if child.exit is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"never listened (exit {child.exit}); stdout {bytes(child.stdout)!r}, "
                        f"stderr {bytes(child.stderr)!r}"
                    )
                await sleep(0.05)

    async def test_invoke(self) -> None:
        """The command serves the Invoke API: an invocation is answered with the function's result."""
        test: TestCase = self  # type: ignore[assignment]
        child, client = self.start("handlers.echo")
        result = await self.first_invoke(child, client, {"hello": "world"})
        test.assertEqual(result.status, 200)
        test.assertEqual(result.json(), {"hello": "world"})
        test.assertEqual(result.executed_version, "$LATEST")

    async def assert_refused(self, variable: str, value: str) -> None:
        test: TestCase = self  # type: ignore[assignment]
        started = time.monotonic()
        child = self.spawn([*RUNTIME, "handlers.echo"], **{variable: value})
        status = await child.finished(timeout=10)
        test.assertNotEqual(status, 0)
        test.assertLess(time.monotonic() - started, 5)
        lines = bytes(child.stderr).decode().splitlines()
        test.assertEqual(len(lines), 1, bytes(child.stderr))
        test.assertIn(variable, lines[0])
        test.assertNotIn(b"Traceback", child.stdout + child.stderr)

    async def test_bad_concurrency(self) -> None:
        """MAX_CONCURRENCY=0 stops the command at once with one stderr line naming it, no traceback."""
        await self.assert_refused("MAX_CONCURRENCY", "0")

    async def test_bad_port(self) -> None:
        """PORT=abc stops the command at once with one stderr line naming it, no traceback."""
        await self.assert_refused("PORT", "abc")

    async def test_port_taken(self) -> None:
        """A PORT another socket holds stops the command at once with one stderr line, instead of serving nothing."""
        test: TestCase = self  # type: ignore[assignment]
        import socket

        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        test.addCleanup(holder.close)
        child = self.spawn(
            [*RUNTIME, "handlers.echo"],
            PORT=str(holder.getsockname()[1]),
            INVOKE_API_HOST="127.0.0.1",
            RUNTIME_API_PORT=str(free_port_block(1)),
        )
        status = await child.finished(timeout=5)
        test.assertNotEqual(status, 0)
        # twistd has sent stderr to its log (stdout) by the time it listens.
        written = bytes(child.stderr + child.stdout).decode()
        message = f"lambda-rapid: cannot listen on 127.0.0.1:{holder.getsockname()[1]}: "
        test.assertEqual(written.count(message), 1, written)
        test.assertNotIn("Traceback", written)

    async def test_help(self) -> None:
        """--help exits 0 and documents every environment variable the daemon reads."""
        test: TestCase = self  # type: ignore[assignment]
        child = self.spawn(["--help"])
        status = await child.finished(timeout=10)
        test.assertEqual(status, 0, bytes(child.stderr))
        text = bytes(child.stdout).decode()
        for variable in sorted(DAEMON_VARIABLES) + [
            "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_FUNCTION_VERSION",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_REGION",
        ]:
            test.assertIn(variable, text)

    async def test_sigterm_drains(self) -> None:
        """On SIGTERM new calls get 503 while the in-flight one completes with 200, then the process exits 0."""
        test: TestCase = self  # type: ignore[assignment]
        child, client = self.start("handlers.sleep")
        warm = await self.first_invoke(child, client, {"seconds": 0})
        test.assertEqual(warm.status, 200)
        in_flight = client.invoke({"seconds": 2})
        await child.wait_for(b"sleeping 2.0")
        signalled = time.monotonic()
        child.signal(signal.SIGTERM)
        await child.wait_for(b"draining")
        refused = await client.invoke({"seconds": 0})
        test.assertEqual(refused.status, 503, refused.payload)
        test.assertEqual(refused.error_type, "ServiceException")
        answered = await in_flight
        test.assertEqual(answered.status, 200)
        test.assertEqual(answered.json()["slept"], 2.0)
        test.assertEqual(await child.finished(timeout=10), self.sigterm_exit)
        test.assertLess(time.monotonic() - signalled, 5)
        test.assertNotIn(b"Traceback", child.stdout + child.stderr)

    async def test_sigterm_shuts_extensions_down(self) -> None:
        """On SIGTERM an extension gets SHUTDOWN (spindown, a 2 s deadline) and is gone when the process exits."""
        test: TestCase = self  # type: ignore[assignment]
        directory = os.path.abspath(test.mktemp())  # the daemon runs in the fixtures' directory
        os.makedirs(directory)
        shutil.copy(os.path.join(FUNCTIONS, "extensions", "bash-extension"), directory)
        child, client = self.start("handlers.echo", EXTENSIONS_DIR=directory, EXT_RECORD_DIR=directory)
        warm = await self.first_invoke(child, client, {"x": 1})
        test.assertEqual(warm.status, 200)
        signalled, signalled_epoch = time.monotonic(), time.time()
        child.signal(signal.SIGTERM)
        test.assertEqual(await child.finished(timeout=10), self.sigterm_exit)
        test.assertLess(time.monotonic() - signalled, 5)
        with open(os.path.join(directory, "bash-extension.jsonl")) as f:
            events = [json.loads(line) for line in f]
        test.assertEqual([e["eventType"] for e in events], ["INVOKE", "SHUTDOWN"])
        test.assertEqual(events[1]["shutdownReason"], "spindown")
        test.assertLess(abs(events[1]["deadlineMs"] / 1000 - (signalled_epoch + 2)), 1)
        test.assertIn(b"[bash-extension] event:", bytes(child.stdout))
        test.assertNotIn(b"Traceback", child.stdout + child.stderr)

    async def test_second_sigterm_stops_at_once(self) -> None:
        """A second SIGTERM while draining stops the runtimes now: the in-flight caller gets Runtime.ExitError."""
        test: TestCase = self  # type: ignore[assignment]
        child, client = self.start(
            "handlers.sleep", SHUTDOWN_TIMEOUT="30", AWS_LAMBDA_FUNCTION_TIMEOUT="60"
        )
        warm = await self.first_invoke(child, client, {"seconds": 0})
        test.assertEqual(warm.status, 200)
        in_flight = client.invoke({"seconds": 20})
        await child.wait_for(b"sleeping 20.0")
        child.signal(signal.SIGTERM)
        await child.wait_for(b"draining")
        signalled = time.monotonic()
        child.signal(signal.SIGTERM)
        answered = await in_flight
        test.assertEqual(answered.json()["errorType"], "Runtime.ExitError")
        await child.finished(timeout=10)
        test.assertLess(time.monotonic() - signalled, 5)
        test.assertNotIn(b"Traceback", child.stdout + child.stderr)


    async def test_help_is_readable(self) -> None:
        """--help prints the usage line with the program's name, one setting a line with its default, and the examples as written."""
        test: TestCase = self  # type: ignore[assignment]
        child = self.spawn(["--help"])
        test.assertEqual(await child.finished(timeout=10), 0, bytes(child.stderr))
        lines = bytes(child.stdout).decode().splitlines()
        test.assertRegex(lines[0], r"^Usage: (twistd \[twistd options\] )?lambda-rapid ")
        test.assertRegex(
            "\n".join(lines), r"\n  MAX_CONCURRENCY +runtimes run at once, spawned on demand \(1\)\n"
        )
        test.assertRegex("\n".join(lines), r"\n  AWS_LAMBDA_FUNCTION_TIMEOUT +.*\(3\)\n")
        test.assertIn("  lambda-rapid python3 -m awslambdaric echo.handler", lines)
        for option in ("--runtime-interface-emulator-address", "--log-level", "--version"):
            test.assertTrue(any(line.startswith(f"  {option}") for line in lines), option)

    async def test_version(self) -> None:
        """--version prints lambdarapid's version, not Twisted's."""
        test: TestCase = self  # type: ignore[assignment]
        child = self.spawn(["--version"])
        test.assertEqual(await child.finished(timeout=10), 0, bytes(child.stderr))
        test.assertEqual(
            bytes(child.stdout).decode().strip(), f"lambda-rapid (lambdarapid) {__version__}"
        )

    async def test_rie_options_anywhere(self) -> None:
        """The AWS RIE's four options are taken before and after the runtime command, as the emulator takes them."""
        test: TestCase = self  # type: ignore[assignment]
        port, runtime_port = free_port(), free_port_block(1)
        child = self.spawn(
            [
                "--log-level",
                "error",
                f"--runtime-interface-emulator-address=127.0.0.1:{port}",
                *RUNTIME,
                "handlers.context",
                "--runtime-api-address",
                f"127.0.0.1:{runtime_port}",
                "--enable-init-caching",
            ]
        )
        client = InvokeClient(f"http://127.0.0.1:{port}")
        test.addCleanup(client.close)
        result = await self.first_invoke(child, client, {})
        test.assertEqual(result.status, 200, result.payload)
        context = result.json()
        test.assertEqual(context["environ"]["_HANDLER"], "handlers.context")
        test.assertEqual(
            context["environ"]["AWS_LAMBDA_RUNTIME_API"], f"127.0.0.1:{runtime_port}"
        )
        child.signal(signal.SIGTERM)
        await child.finished(timeout=10)
        # --log-level error: no INFO line was printed.
        test.assertNotIn(b"listening on", child.stdout + child.stderr)

    async def test_bad_rie_address(self) -> None:
        """A malformed --runtime-api-address stops the command with one line naming it."""
        test: TestCase = self  # type: ignore[assignment]
        child = self.spawn([*RUNTIME, "handlers.echo", "--runtime-api-address", "nowhere"])
        test.assertNotEqual(await child.finished(timeout=10), 0)
        lines = bytes(child.stderr).decode().splitlines()
        test.assertEqual(len(lines), 1, bytes(child.stderr))
        test.assertIn("--runtime-api-address", lines[0])

    async def test_start_says_where_it_listens(self) -> None:
        """At INFO the daemon says where its Invoke API listens, in the product's words."""
        test: TestCase = self  # type: ignore[assignment]
        child, client = self.start("handlers.echo")
        await self.first_invoke(child, client, {})
        port = client.url.rsplit(":", 1)[1]
        await child.wait_for(f"Invoke API listening on 127.0.0.1:{port}".encode())
        child.signal(signal.SIGTERM)
        await child.finished(timeout=10)
        return None


class TwistdTests(CommandTests, TestCase):
    """C{twistd -n --pidfile= lambda-rapid RUNTIME...}."""

    prefix = (TWISTD, "-n", "--pidfile=", "lambda-rapid")
    #: twistd re-raises the signal that stopped it once it has shut down
    #: cleanly (twisted.application.app._exitWithSignal), so a supervisor sees
    #: "terminated by SIGTERM"; the console script exits 0.
    sigterm_exit = f"signal {signal.SIGTERM.value}"


class ScriptTests(CommandTests, TestCase):
    """The C{lambda-rapid RUNTIME...} console script."""

    prefix = (LAMBDA_RAPID,)

    async def test_no_twisted_chatter(self) -> None:
        """A plain start, invocation and stop print no Twisted internals (factories, port numbers closing)."""
        child, client = self.start("handlers.echo")
        await self.first_invoke(child, client, {})
        child.signal(signal.SIGTERM)
        await child.finished(timeout=10)
        written = bytes(child.stdout + child.stderr).decode()
        self.assertIn("Invoke API listening on", written)
        self.assertNotIn("starting on", written)
        self.assertNotIn("Port", written)
        self.assertNotIn("Site", written)
        self.assertNotIn("Factory", written)

    async def test_starts_without_tls(self) -> None:
        """Without an amqps:// broker the script runs with no pyOpenSSL or cryptography loaded (a leaner cold start), and serves."""
        child, client = self.start("handlers.echo")
        result = await self.first_invoke(child, client, {"tls": False})
        self.assertEqual(result.json(), {"tls": False})
        assert child.transport is not None
        with open(f"/proc/{child.transport.pid}/maps") as maps:
            loaded = maps.read()
        self.assertNotIn("cryptography", loaded)
        self.assertNotIn("OpenSSL", loaded)

    async def test_json_log_format(self) -> None:
        """With AWS_LAMBDA_LOG_FORMAT=JSON every line the daemon itself prints is one JSON object; the function's print() lines pass as they are."""
        child, client = self.start(
            "handlers.dispatch", AWS_LAMBDA_LOG_FORMAT="JSON", PRINT_REPORTS="true"
        )
        await self.first_invoke(child, client, {"call": "log", "lines": ["from the function"]})
        await child.wait_for(b'"platform.report"')
        child.signal(signal.SIGTERM)
        self.assertEqual(await child.finished(timeout=10), 0)
        printed = bytes(child.stdout).decode().splitlines()
        ours = [line for line in printed if line not in ("from the function", "a line on stderr")]
        self.assertEqual(len(ours), len(printed) - 2, printed)
        records = [json.loads(line) for line in ours]  # each parses
        self.assertTrue(all(isinstance(record, dict) for record in records))
        listening = [r for r in records if "Invoke API listening" in r.get("message", "")]
        self.assertEqual(listening[0]["level"], "INFO")
        self.assertEqual(listening[0]["logger"], "lambdarapid.listener.ListenerService")
        kinds = [r["type"] for r in records if "type" in r]
        self.assertEqual(kinds, ["platform.initStart", "platform.start", "platform.report"])

    async def test_stalled_stdout_stalls_nothing(self) -> None:
        """
        With stdout a pipe nobody reads and a function printing 1 MB an
        invocation, invocations, timeouts and Tail keep working; output that
        could not be written is dropped with a counted line.
        """
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        port = free_port()
        child = Child()
        environ = function_environ(
            PORT=str(port),
            RUNTIME_API_PORT=str(free_port_block(1)),
            INVOKE_API_HOST="127.0.0.1",
            AWS_LAMBDA_FUNCTION_TIMEOUT="1",
            PRINT_REPORTS="true",
        )
        command = [LAMBDA_RAPID, *RUNTIME, "handlers.dispatch"]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child, command[0], command, env=environ, path=FUNCTIONS,
            childFDs={0: "w", 1: write_end, 2: "r"},
        )
        os.close(write_end)

        async def kill() -> None:
            if child.exit is None:
                child.signal(signal.SIGKILL)
                await child.ended

        self.addCleanup(kill)
        client = InvokeClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)
        megabyte = {"call": "log", "lines": ["x" * 999] * 1024}
        first = await self.first_invoke(child, client, megabyte)
        self.assertEqual(first.status, 200, first.payload)
        for _ in range(5):  # 6 MB in all: more than the daemon holds for its stdout
            again = await client.invoke(megabyte).addTimeout(10, reactor)
            self.assertEqual(again.json(), "logged")
        timed_out = await client.invoke({"call": "sleep", "seconds": 5}).addTimeout(10, reactor)
        self.assertEqual(timed_out.json()["errorType"], "Sandbox.Timedout")
        tail = await client.invoke(
            {"call": "log", "lines": ["the tail line"]}, log_type="Tail"
        ).addTimeout(10, reactor)
        self.assertIn("the tail line", tail.log_result or "")
        # Now read: what could not be written was dropped, and said so.
        os.set_blocking(read_end, False)
        written = bytearray()
        deadline = time.monotonic() + 10
        while b"lambdarapid: dropped" not in written and time.monotonic() < deadline:
            try:
                written += os.read(read_end, 1 << 20)
            except BlockingIOError:
                await sleep(0.05)
        notice = re.search(rb"lambdarapid: dropped \d+ line\(s\)", written)
        self.assertIsNotNone(notice, f"no drop notice in {len(written)} bytes written")
        child.signal(signal.SIGTERM)
        self.assertEqual(await child.finished(timeout=15), 0)


class ServerCommandTests(TestCase):
    """The Lambda Server's start commands: help and configuration errors."""

    timeout = 30

    async def run_server(self, prefix: Sequence[str], args: Sequence[str], **environ: str) -> Child:
        child = Child()
        command = [*prefix, *args]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child, command[0], command, env=function_environ(**environ), path=FUNCTIONS
        )
        await child.finished(timeout=15)
        return child

    async def test_help(self) -> None:
        """`lambda-server --help` and `twistd lambda-server --help` list the server's variables."""
        for prefix in ((LAMBDA_SERVER,), (TWISTD, "-n", "--pidfile=", "lambda-server")):
            child = await self.run_server(prefix, ["--help"])
            self.assertEqual(child.exit, 0, bytes(child.stderr))
            for variable in ("AMQP_URI", "AMQP_USERNAME", "PORT", "AWS_LAMBDA_FUNCTION_TIMEOUT"):
                self.assertIn(variable, bytes(child.stdout).decode())
            lines = bytes(child.stdout).decode().splitlines()
            self.assertRegex(lines[0], r"^Usage: (twistd \[twistd options\] )?lambda-server")
            self.assertIn("  AWS_REGION                    region in ARNs (us-east-1)", lines)

    async def test_version(self) -> None:
        """`lambda-server --version` prints lambdarapid's version."""
        for prefix in ((LAMBDA_SERVER,), (TWISTD, "-n", "--pidfile=", "lambda-server")):
            child = await self.run_server(prefix, ["--version"])
            self.assertEqual(child.exit, 0, bytes(child.stderr))
            self.assertEqual(
                bytes(child.stdout).decode().strip(), f"lambda-server (lambdarapid) {__version__}"
            )

    async def test_bad_setting(self) -> None:
        """A bad AMQP_URI stops the server at once with one line naming it, no traceback, and no password."""
        for prefix in ((LAMBDA_SERVER,), (TWISTD, "-n", "--pidfile=", "lambda-server")):
            child = await self.run_server(prefix, [], AMQP_URI="http://user:s3cret@host/")
            self.assertNotEqual(child.exit, 0)
            lines = bytes(child.stderr).decode().splitlines()
            self.assertEqual(len(lines), 1, bytes(child.stderr))
            self.assertIn("AMQP_URI", lines[0])
            self.assertNotIn(b"s3cret", child.stdout + child.stderr)
            self.assertNotIn(b"Traceback", child.stdout + child.stderr)


class LeaveOutTLSTests(SynchronousTestCase):
    """The console scripts' decision to start without pyOpenSSL."""

    def test_left_out_without_amqps(self) -> None:
        """No broker, or an amqp:// one: pyOpenSSL is made unimportable."""
        for environ in ({}, {"AMQP_URI": "amqp://guest:guest@localhost:5672/"}):
            modules: dict[str, object] = {}
            self.assertTrue(leave_out_tls(environ, modules))
            self.assertIn("OpenSSL", modules)
            self.assertIsNone(modules["OpenSSL"])

    def test_kept_for_amqps(self) -> None:
        """An amqps:// broker (any case) keeps TLS."""
        modules: dict[str, object] = {}
        self.assertFalse(leave_out_tls({"AMQP_URI": " AMQPS://broker:5671/"}, modules))
        self.assertEqual(modules, {})

    def test_kept_when_already_imported(self) -> None:
        """A process that has pyOpenSSL already keeps it (a test runner's, say)."""
        loaded = object()
        modules: dict[str, object] = {"OpenSSL": loaded}
        self.assertFalse(leave_out_tls({}, modules))
        self.assertIs(modules["OpenSSL"], loaded)
