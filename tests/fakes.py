"""
Fakes for the fast unit tests: no sockets, no real processes.

L{FakeProcessReactor} is a L{MemoryReactorClock} that also spawns fake
processes, which a test makes write, exit or die. L{InMemoryHTTP} drives any
L{Site} (with its own request factory, unlike treq's C{StubTreq}) through a
real twisted.web client over an in-memory connection.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from typing import Any, Mapping, Sequence

from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

import treq
from lambdarapid import proctree
from lambdarapid.config import Function, RapidConfig

#: Fake pids start above any Linux pid_max (at most 2**22), so that even a
#: signal that escaped the fakes could reach no real process.
FIRST_FAKE_PID = 5_000_000


class FakeProcess:
    """
    What L{FakeProcessReactor.spawnProcess} returns: a process transport that
    records what is done to it, and that a test makes write or end.
    """

    def __init__(
        self,
        reactor: FakeProcessReactor,
        protocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str],
        pid: int,
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = dict(env)
        self.pid = pid
        self.stdin_closed = False
        #: The child fds whose pipes are still open: the runtime, or a child it left, holds them.
        self.open_fds = {0, 1, 2}
        #: Every signal sent to the process or its tree, in order.
        self.signals: list[int | str] = []
        #: processExited was called (the process itself is gone).
        self.exited = False
        #: processEnded was called too (the process is gone and its pipes are closed).
        self.ended = False
        self._reason: Failure | None = None

    # IProcessTransport, as far as lambdarapid uses it

    def closeStdin(self) -> None:
        self.stdin_closed = True
        self.closeChildFD(0)

    def closeChildFD(self, descriptor: int) -> None:
        self.open_fds.discard(descriptor)
        self._maybe_end()

    def signalProcess(self, signalID: int | str) -> None:
        self.signals.append(signalID)

    def loseConnection(self) -> None:
        self.closeStdin()

    # What a test makes the process do

    def write_output(self, data: bytes, fd: int = 1) -> None:
        """The process writes C{data} to its stdout (or C{fd})."""
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int = 0, holding_pipes: bool = False) -> None:
        """
        The process exits with status C{code}; with C{holding_pipes}, children
        it left keep its output pipes open (until L{close_pipes} or C{closeChildFD}).
        """
        if code == 0:
            self._exit(Failure(ProcessDone(0)), holding_pipes)
        else:
            self._exit(Failure(ProcessTerminated(exitCode=code)), holding_pipes)

    def die(self, signum: int = signal.SIGKILL, holding_pipes: bool = False) -> None:
        """The process is killed by C{signum}."""
        self._exit(Failure(ProcessTerminated(exitCode=None, signal=signum)), holding_pipes)

    def close_pipes(self) -> None:
        """The last holders of the process's pipes (children it left) let go of them."""
        self.open_fds.clear()
        self._maybe_end()

    def _exit(self, reason: Failure, holding_pipes: bool) -> None:
        assert not self.exited, f"fake process {self.pid} exited twice"
        self.exited = True
        self._reason = reason
        self.protocol.processExited(reason)
        if not holding_pipes:
            self.close_pipes()

    def _maybe_end(self) -> None:
        # As Twisted does: processEnded once the process is reaped and every pipe is closed.
        if self.exited and not self.open_fds and not self.ended:
            self.ended = True
            assert self._reason is not None
            self.protocol.processEnded(self._reason)


class FakeProcessReactor(MemoryReactorClock):
    """A L{MemoryReactorClock} whose C{spawnProcess} records L{FakeProcess}es."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        #: Peak RSS, in kB, that L{peak_rss_kb} reports for a pid.
        self.memory_kb: dict[int, int] = {}
        #: What L{signal_marked} was asked: (marker, signal), in order.
        self.marked_signals: list[tuple[bytes, int]] = []
        #: What L{signal_group} was asked: (process group, signal), in order.
        self.group_signals: list[tuple[int, int]] = []
        self._next_pid = FIRST_FAKE_PID

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, object] | None = None,
    ) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(self, processProtocol, executable, args, env or {}, self._next_pid)
        self.processes.append(process)
        processProtocol.makeConnection(process)  # type: ignore[arg-type]
        return process

    def process(self, pid: int | None) -> FakeProcess:
        """The fake process with C{pid}."""
        for each in self.processes:
            if each.pid == pid:
                return each
        raise KeyError(pid)

    @property
    def alive(self) -> list[FakeProcess]:
        """The fake processes that have not exited."""
        return [each for each in self.processes if not each.exited]

    # Stand-ins for lambdarapid.proctree, installed by fake_process_reactor()

    def signal_tree(self, pid: int, signum: int = signal.SIGKILL) -> None:
        self.process(pid).signals.append(signum)

    def signal_marked(self, marker: bytes, signum: int = signal.SIGKILL) -> None:
        self.marked_signals.append((marker, signum))

    def signal_group(self, pgid: int, signum: int) -> None:
        self.group_signals.append((pgid, signum))

    def peak_rss_kb(self, pid: int) -> int:
        return self.memory_kb.get(pid, 0)


def fake_process_reactor(case: SynchronousTestCase) -> FakeProcessReactor:
    """
    A L{FakeProcessReactor}, with C{lambdarapid.proctree}'s signals and
    memory readings routed to it for the duration of C{case}.
    """
    reactor = FakeProcessReactor()
    case.patch(proctree, "signal_tree", reactor.signal_tree)
    case.patch(proctree, "peak_rss_kb", reactor.peak_rss_kb)
    case.patch(proctree, "signal_marked", reactor.signal_marked)
    case.patch(proctree, "signal_group", reactor.signal_group)
    return reactor


def make_config(timeout: float = 3.0, **overrides: Any) -> RapidConfig:
    """A L{RapidConfig} for a function called C{echo}, with C{overrides}."""
    settings: dict[str, Any] = {
        "command": ("/bin/true",),
        "handler": "echo.handler",
        "function": Function(name="echo", timeout=timeout),
    }
    settings.update(overrides)
    return RapidConfig(**settings)


# In-memory HTTP


@implementer(IBodyProducer)
class BytesProducer:
    """A body producer that writes all of its bytes at once."""

    def __init__(self, body: bytes | str) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self._reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self._reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class SiteAgent:
    """
    An L{IAgent} whose every request is served by C{site} over an in-memory
    connection: treq's C{RequestTraversalAgent}, but for a given L{Site}, so
    that the site's request factory (a C{BoundedRequest}) is the one used.
    """

    def __init__(self, site: Any) -> None:
        self._reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._reactor, _MemoryEndpoints(self._reactor))
        self._site = site
        self._pumps: set[iosim.IOPump] = set()

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        response = self._agent.request(method, uri, headers, bodyProducer)
        if response.called:
            return response
        _, port, factory, _, _ = self._reactor.tcpClients[-1]
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server = self._site.buildProtocol(client_address)
        client = factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, hostAddress=server_address, peerAddress=client_address
            ),
            client,
            iosim.FakeTransport(
                client, isServer=False, hostAddress=client_address, peerAddress=server_address
            ),
        )
        self._pumps.add(pump)
        return response

    def flush(self) -> None:
        """Move whatever the server wrote since (for answers that came later)."""
        pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            pump.flush()
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected):
                self._pumps.add(pump)


@dataclasses.dataclass
class Reply:
    """An HTTP response, read whole."""

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The (last) value of header C{name}, or None."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class InMemoryHTTP:
    """A treq client for C{site}, with no sockets."""

    def __init__(self, site: Any) -> None:
        self.agent = SiteAgent(site)
        self.client = HTTPClient(self.agent, data_to_body_producer=BytesProducer)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[Reply]:
        """C{method} C{path}; fires with the whole L{Reply}."""
        response = self.client.request(
            method,
            "http://localhost" + path,
            data=body if method in ("POST", "PUT") else None,
            headers=Headers({name: [value] for name, value in (headers or {}).items()}),
        )
        return response.addCallback(self._read)

    @staticmethod
    def _read(response: IResponse) -> Deferred[Reply]:
        return treq.content(response).addCallback(
            lambda body: Reply(response.code, response.headers, body)
        )

    def flush(self) -> None:
        self.agent.flush()
