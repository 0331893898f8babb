"""
The daemon as a container's PID 1 (in a PID namespace of its own, made by
C{unshare}): a process its runtime left behind is killed and reaped.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from lambdarapid import proctree
from lambdarapid.testing import InvokeClient, free_port, free_port_block

from .runtimes import LEFTOVER_FUNCTION, function_environ
from .test_daemon_e2e import sleep

#: The daemon, as the console script runs it (the interpreter of the tests).
DAEMON = [sys.executable, "-c", "import sys; from lambdarapid.scripts import rapid; rapid(sys.argv[1:])"]


class _Daemon(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def processes_running(argument: bytes) -> list[int]:
    """The pids (as this namespace sees them) of live processes with C{argument} on their command line."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                arguments = f.read().split(b"\0")
        except OSError:
            continue
        if argument in arguments:
            found.append(int(name))
    return found


class PidOneTests(TestCase):
    """What a runtime leaves is killed and reaped when the daemon is PID 1."""

    timeout = 60

    def setUp(self) -> None:
        unshare = shutil.which("unshare")
        if os.getuid() != 0 or unshare is None:
            raise SkipTest("needs root and unshare(1) for a PID namespace")
        self.unshare = unshare

    @staticmethod
    def stop_daemon(unshare_pid: int) -> None:
        """SIGTERM the daemon (unshare's child, PID 1 in its namespace): unshare then exits with it."""
        for pid in proctree.children(unshare_pid):
            os.kill(pid, signal.SIGTERM)

    async def test_leftover_is_killed_and_reaped(self) -> None:
        """A runtime exits leaving `sleep` behind: the daemon, as PID 1, kills it and reaps it."""
        seconds = f"1000.{os.getpid()}{int(time.monotonic() * 1000) % 100000}"
        port = free_port()
        environ = function_environ(
            LAMBDA_TASK_ROOT=LEFTOVER_FUNCTION,
            LEFTOVER_SECONDS=seconds,
            PORT=str(port),
            INVOKE_API_HOST="127.0.0.1",
            RUNTIME_API_PORT=str(free_port_block(1)),
        )
        daemon = _Daemon()
        command = [self.unshare, "--pid", "--fork", "--mount-proc", "--kill-child"] + DAEMON
        command.append(os.path.join(LEFTOVER_FUNCTION, "bootstrap"))
        transport = reactor.spawnProcess(daemon, command[0], command, env=environ)
        self.addCleanup(lambda: daemon.ended)
        self.addCleanup(self.stop_daemon, transport.pid)
        client = InvokeClient(f"http://127.0.0.1:{port}", reactor)
        self.addCleanup(client.close)
        deadline = time.monotonic() + 20
        while True:
            try:
                result = await client.invoke({})
                break
            except ConnectError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the daemon never listened: {bytes(daemon.output)!r}")
                await sleep(0.1)
        self.assertEqual(result.json()["errorType"], "Runtime.ExitError", result.payload)
        # The leftover, seen from outside the namespace: gone, not even a zombie.
        deadline = time.monotonic() + 10
        while processes_running(seconds.encode()):
            if time.monotonic() > deadline:
                for pid in processes_running(seconds.encode()):
                    os.kill(pid, signal.SIGKILL)
                raise AssertionError("the runtime's leftover survived under PID 1")
            await sleep(0.05)
