"""
The console scripts' reactor (L{lambdarapid.reactor}): events reach their
protocols as on Twisted's epoll reactor, and a protocol that raises loses
its connection without stopping the others. Each test runs a reactor of its
own, beside trial's.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, cast

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid.reactor import DirectEPollReactor


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("a handler's bug")
        assert self.transport is not None
        self.transport.write(data)


class _Client(Protocol):
    def __init__(self, send: bytes, done: list[tuple[bytes, str]], reactor: Any, expected: int) -> None:
        self.send = send
        self.received = b""
        self.done = done
        self.reactor = reactor
        self.expected = expected

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.send)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == self.send:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.done.append((self.received, type(reason.value).__name__))
        if len(self.done) == self.expected:
            self.reactor.stop()


class _ClientFactory(ClientFactory):
    def __init__(self, send: bytes, done: list[tuple[bytes, str]], reactor: Any, expected: int) -> None:
        self._args = (send, done, reactor, expected)

    def buildProtocol(self, addr: Any) -> _Client:
        return _Client(*self._args)


class DirectEPollReactorTests(SynchronousTestCase):
    def converse(self, messages: list[bytes]) -> list[tuple[bytes, str]]:
        """Each of C{messages} sent to an echo server on a fresh reactor: what each client got back, and how it ended."""
        reactor = DirectEPollReactor()
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        done: list[tuple[bytes, str]] = []
        for message in messages:
            reactor.connectTCP(
                "127.0.0.1", port.getHost().port, _ClientFactory(message, done, reactor, len(messages))
            )
        reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        port.stopListening()
        return sorted(done)

    def test_echo(self) -> None:
        """Reads and writes reach their protocols: every client gets its bytes back and closes cleanly."""
        messages = [b"hello %d" % n for n in range(20)]
        self.assertEqual(self.converse(messages), [(m, "ConnectionDone") for m in sorted(messages)])

    def test_raising_protocol(self) -> None:
        """A protocol that raises loses its connection, the error is logged, and the others are served."""
        logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        result = self.converse([b"boom", b"fine"])
        self.assertEqual(result[0], (b"", "ConnectionDone"))
        self.assertEqual(result[1], (b"fine", "ConnectionDone"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        failures = [event.get("log_failure") or event.get("failure") for event in logged]
        self.assertTrue(any(f is not None and f.check(RuntimeError) for f in failures))


class ConsoleReactorTests(SynchronousTestCase):
    def reactor_after(self, before: str = "", after: str = "") -> str:
        """The global reactor's class in a fresh interpreter that runs C{before}, the scripts' install, then C{after}."""
        script = (
            f"import sys\n{before}\n"
            "from lambdarapid.scripts import install_reactor\n"
            f"install_reactor()\n{after}\n"
            "from twisted.internet import reactor\n"
            "print(type(reactor).__name__)\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr.decode())
        return run.stdout.decode().strip()

    def test_console_scripts_install_it(self) -> None:
        """The console scripts install it as the global reactor, before pika (which imports the reactor) can install the default."""
        after = "import lambdarapid.rapid_tap, lambdarapid.server_tap, pika.adapters.twisted_connection"
        self.assertEqual(self.reactor_after(after=after), "DirectEPollReactor")

    def test_without_epoll_the_default_is_used(self) -> None:
        """Where there is no epoll (macOS), the console scripts run on Twisted's default reactor."""
        before = "sys.modules['twisted.internet.epollreactor'] = None"
        self.assertNotEqual(self.reactor_after(before=before), "DirectEPollReactor")
