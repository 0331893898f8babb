"""
The program's edge: stdout that never blocks, the AWS RIE's options, secrets
kept out of reprs, and service factories that leave the process alone.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lambdarapid import logs
from lambdarapid.config import ConfigError, rapid_config, server_config
from lambdarapid.output import OutputWriter
from lambdarapid.rapid_tap import make_rapid_service, rie_options
from lambdarapid.server_tap import make_server_service
from lambdarapid.testing import free_port, free_port_block
from lambdarapid.listener import ListenerService

from .fakes import make_config

PR_GET_DUMPABLE = 3


def read_available(fd: int, until: bytes, timeout: float = 5.0) -> bytes:
    """Read C{fd} (made non-blocking) until C{until} shows up or C{timeout} passes."""
    os.set_blocking(fd, False)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        try:
            data += os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
    return bytes(data)


class OutputWriterTests(SynchronousTestCase):
    """L{OutputWriter}: writes that never block, bounded, with drops counted."""

    def pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        return read_end, write_end

    def test_writes_arrive_in_order(self) -> None:
        """What is written comes out whole and in order."""
        read_end, write_end = self.pipe()
        writer = OutputWriter(write_end)
        for number in range(100):
            writer.write(b"line %d\n" % number)
        writer.close()
        os.close(write_end)
        expected = b"".join(b"line %d\n" % number for number in range(100))
        self.assertEqual(read_available(read_end, expected), expected)

    def test_unread_pipe_never_blocks_and_drops_are_counted(self) -> None:
        """With nobody reading, writes return at once; past the limit they are dropped, then reported."""
        read_end, write_end = self.pipe()
        self.addCleanup(os.close, write_end)
        writer = OutputWriter(write_end, limit=100_000)
        self.addCleanup(writer.close, 0.1)
        line = b"y" * 999 + b"\n"
        for _ in range(1000):  # 1 MB into a 64 KB pipe and a 100 KB buffer
            writer.write(line)  # would block for good if it blocked at all
        self.assertGreater(writer.dropped_lines, 700)
        written = read_available(read_end, b"lambdarapid: dropped")
        self.assertRegex(written, rb"lambdarapid: dropped \d+ line\(s\) \(\d+ bytes\) of output")

    def test_json_notice(self) -> None:
        """In JSON log format the drop notice is a JSON log record, like every other line of ours."""
        read_end, write_end = self.pipe()
        self.addCleanup(os.close, write_end)
        writer = OutputWriter(write_end, limit=100_000, json_notices=True)
        self.addCleanup(writer.close, 0.1)
        for _ in range(1000):
            writer.write(b'{"level":"INFO","message":"' + b"z" * 980 + b'"}\n')
        written = read_available(read_end, b"dropped")
        (notice,) = [line for line in written.splitlines() if b"dropped" in line]
        record = json.loads(notice)
        self.assertEqual((record["level"], record["logger"]), ("WARN", "lambdarapid.output"))
        self.assertRegex(record["message"], r"^dropped \d+ line\(s\)")

    def test_closed_reader(self) -> None:
        """A reader that went away (EPIPE) stops the writing, never the writer's caller."""
        read_end, write_end = os.pipe()
        os.close(read_end)
        writer = OutputWriter(write_end)
        writer.write(b"nobody reads this\n")
        writer.close()
        writer.write(b"nor this\n")
        os.close(write_end)


class ListenerServiceTests(SynchronousTestCase):
    """L{ListenerService} on a memory reactor."""

    def test_restart(self) -> None:
        """Stopped and started again, it listens again and says so, with no error."""
        memory = MemoryReactorClock()
        listener = ListenerService(memory, "tcp:0:interface=127.0.0.1", Factory(), "Invoke API")
        for _ in range(2):
            listener.startService()
            self.assertIsNotNone(self.successResultOf(listener.listening))
            self.successResultOf(listener.stopService())
        self.assertEqual(len(memory.tcpServers), 2)
        self.assertEqual(self.flushLoggedErrors(), [])


class RIEOptionsTests(SynchronousTestCase):
    """The AWS RIE's own options, taken wherever they are, as the emulator takes them."""

    def test_sam_cli_shape(self) -> None:
        """SAM CLI's C{--log-level error} before the runtime command sets LOG_LEVEL."""
        rest, settings = rie_options(["--log-level", "error", "/var/runtime/bootstrap"])
        self.assertEqual(rest, ["/var/runtime/bootstrap"])
        self.assertEqual(settings, {"LOG_LEVEL": "error"})

    def test_addresses_after_the_handler(self) -> None:
        """Options after the handler are options, not the handler."""
        rest, settings = rie_options(
            [
                "python3",
                "-m",
                "awslambdaric",
                "app.handler",
                "--runtime-interface-emulator-address=0.0.0.0:9000",
                "--runtime-api-address",
                "127.0.0.1:9100",
                "--enable-init-caching",
            ]
        )
        self.assertEqual(rest, ["python3", "-m", "awslambdaric", "app.handler"])
        self.assertEqual(
            settings,
            {
                "INVOKE_API_HOST": "0.0.0.0",
                "PORT": "9000",
                "RUNTIME_API_HOST": "127.0.0.1",
                "RUNTIME_API_PORT": "9100",
            },
        )
        config = rapid_config(["python3", "-m", "awslambdaric", "app.handler"], settings)
        self.assertEqual((config.port, config.runtime_port), (9000, 9100))
        self.assertEqual(config.handler, "app.handler")

    def test_ipv6_address(self) -> None:
        """C{[::1]:8080} is host C{::1}, port 8080."""
        _, settings = rie_options(["--runtime-interface-emulator-address", "[::1]:8080"])
        self.assertEqual(settings, {"INVOKE_API_HOST": "::1", "PORT": "8080"})

    def test_double_dash_ends_options(self) -> None:
        """After C{--}, a RIE option belongs to the runtime command."""
        rest, settings = rie_options(["--", "bootstrap", "--log-level", "debug"])
        self.assertEqual(rest, ["bootstrap", "--log-level", "debug"])
        self.assertEqual(settings, {})

    def test_malformed(self) -> None:
        """A missing value or port is a one-line ConfigError naming the option."""
        for argv in (["--log-level"], ["--runtime-api-address", "localhost"]):
            with self.assertRaises(ConfigError) as raised:
                rie_options(argv)
            self.assertIn(argv[0], str(raised.exception))


class SecretTests(SynchronousTestCase):
    """The broker password never shows in a configuration's repr (and so in no log)."""

    def test_reprs(self) -> None:
        """Neither RapidConfig nor ServerConfig reprs carry the AMQP URI."""
        environ = {"AMQP_URI": "amqp://user:s3cret@broker:5672/vh", "PATH": os.environ["PATH"]}
        daemon = rapid_config(["true"], environ)
        server = server_config(environ)
        self.assertIn("s3cret", daemon.amqp_uri or "")
        self.assertNotIn("s3cret", repr(daemon))
        self.assertNotIn("s3cret", repr(server))
        credentials = server_config({"AMQP_URI": "amqp://broker/", "AMQP_PASSWORD": "pw0rd"})
        self.assertNotIn("pw0rd", repr(credentials))


class ProcessStateTests(TestCase):
    """The service factories change nothing process-wide: that is the edge's job."""

    def dumpable(self) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))

    async def test_daemon_factory_leaves_the_process_alone(self) -> None:
        """Building, starting and stopping a daemon with AMQP keeps log level, signal handlers and dumpability."""
        await deferLater(reactor, 0, lambda: None)  # trial's reactor has its handlers now
        before = (
            signal.getsignal(signal.SIGTERM),
            signal.getsignal(signal.SIGINT),
            self.dumpable(),
        )
        level = logs._levels.logLevelForNamespace("lambdarapid")
        config = make_config(
            port=free_port(),
            invoke_host="127.0.0.1",
            runtime_port=free_port_block(1),
            log_level=LogLevel.critical,
            amqp_uri="amqp://guest:guest@127.0.0.1:5672/",
        )
        service = make_rapid_service(config, reactor, lambda data: None)
        service.startService()
        await service.stopService()
        after = (
            signal.getsignal(signal.SIGTERM),
            signal.getsignal(signal.SIGINT),
            self.dumpable(),
        )
        self.assertEqual(before, after)
        self.assertEqual(logs._levels.logLevelForNamespace("lambdarapid"), level)

    async def test_server_factory_leaves_the_log_level_alone(self) -> None:
        """Building the Lambda Server keeps the process's log level."""
        level = logs._levels.logLevelForNamespace("lambdarapid")
        make_server_service(server_config({"LOG_LEVEL": "error"}), reactor)
        self.assertEqual(logs._levels.logLevelForNamespace("lambdarapid"), level)


class PlainInstallTests(SynchronousTestCase):
    """C{lambdarapid.testing} imports from a plain install: it needs none of the test extra."""

    def test_testing_imports_without_treq(self) -> None:
        """With treq unimportable, lambdarapid.testing still imports."""
        code = (
            "import sys; sys.modules['treq'] = None\n"
            "import lambdarapid.testing\n"
            "print('imported')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertEqual(done.stdout.strip(), "imported")
