"""
Fixtures for the AMQP-RPC end-to-end tests: a real RabbitMQ, real runtimes.

Daemons and Lambda Servers run in this process on the trial reactor (fast to
start, and their log errors fail the test), or, for a daemon that a test must
SIGKILL, as a C{lambda-rapid} subprocess in its own process group. Every
function gets a fresh name (so a fresh queue) and every listener a free
port, so tests never see each other's messages. A test that makes the broker
close connections does it in a private vhost, so that nothing else using the
broker is disturbed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, cast
from urllib.parse import quote

import pika
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from lambdarapid.amqp.connection import AMQPConnectionService
from lambdarapid.config import DAEMON_VARIABLES, rapid_config, server_config
from lambdarapid.rapid_tap import RapidService, make_rapid_service
from lambdarapid.server_tap import make_server_service

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672
FUNCTIONS = Path(__file__).resolve().parent / "functions"
#: The runtime every daemon here runs: awslambdaric with tests/functions/amqp_handlers.py.
RUNTIME = (sys.executable, "-m", "awslambdaric", "amqp_handlers.handler")
LAMBDA_RAPID = str(Path(sys.executable).parent / "lambda-rapid")
INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def function_name(prefix: str = "echo") -> str:
    """A function (and queue) name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def amqp_uri(port: int = BROKER_PORT, vhost: str = "/", retry_delay: float = 0.2) -> str:
    """An AMQP_URI for the local broker (or a forwarder to it), retrying quickly."""
    return (
        f"amqp://guest:guest@{BROKER_HOST}:{port}/{quote(vhost, safe='')}"
        f"?retry_delay={retry_delay}"
    )


def within(waiting: Deferred[Any] | Awaitable[Any], seconds: float, reactor: Any) -> Deferred[Any]:
    """C{waiting}, failing with C{TimeoutError} after C{seconds}: nothing here may hang."""
    if not isinstance(waiting, Deferred):
        waiting = Deferred.fromCoroutine(waiting)  # type: ignore[arg-type]
    return waiting.addTimeout(seconds, reactor)


async def eventually(
    reactor: Any, check: Callable[[], bool], seconds: float, what: str, interval: float = 0.05
) -> float:
    """Wait until C{check()} holds; return how long it took, or fail after C{seconds}."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"after {seconds} s, still not {what}")
        await deferLater(reactor, interval, lambda: None)
    return time.monotonic() - start


def runtime_environ(name: str, uri: str | None, **settings: object) -> dict[str, str]:
    """A daemon's whole environment: ours minus any daemon settings, plus C{settings}."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in DAEMON_VARIABLES
        and not key.startswith(("AWS_LAMBDA_", "AMQP_"))
        and key not in ("_HANDLER", "LAMBDA_TASK_ROOT")
    }
    environ.update(
        PYTHONPATH=str(FUNCTIONS),
        LAMBDA_TASK_ROOT=str(FUNCTIONS),
        AWS_LAMBDA_FUNCTION_NAME=name,
        INVOKE_API_HOST="127.0.0.1",
        PORT=str(free_port()),
        RUNTIME_API_PORT=str(free_port()),
    )
    if uri is not None:
        environ["AMQP_URI"] = uri
    environ.update({key: str(value) for key, value in settings.items()})
    return environ


def count_starts(output: bytes | bytearray) -> int:
    """How many invocations a daemon started (PRINT_REPORTS=true START lines)."""
    return output.count(b"START RequestId: ")


class Daemon:
    """A lambda-rapid daemon on the trial reactor; output is what it prints."""

    def __init__(self, reactor: Any, environ: Mapping[str, str]) -> None:
        self._reactor = reactor
        self.config = rapid_config(RUNTIME, environ)
        self.output = bytearray()
        self.service: RapidService = make_rapid_service(self.config, reactor, self.output.extend)

    @property
    def name(self) -> str:
        return self.config.function.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def connected(self) -> bool:
        return self.service.amqp is not None and self.service.amqp.connected

    def start(self) -> None:
        self.service.startService()

    async def wait_connected(self, seconds: float = 10.0) -> None:
        await eventually(self._reactor, lambda: self.connected, seconds, "consuming its queue")

    async def stop(self) -> None:
        if self.service.running:
            await within(self.service.stopService(), 15, self._reactor)


class Server:
    """A lambda-server on the trial reactor."""

    def __init__(self, reactor: Any, uri: str, **settings: object) -> None:
        self._reactor = reactor
        environ = {
            "AMQP_URI": uri,
            "INVOKE_API_HOST": "127.0.0.1",
            "PORT": str(free_port()),
            **{key: str(value) for key, value in settings.items()},
        }
        self.config = server_config(environ)
        self.service = make_server_service(self.config, reactor)
        self.amqp = next(s for s in self.service if isinstance(s, AMQPConnectionService))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def service_invoker(self) -> Any:
        """The server's AMQPInvoker (for tests that reach into its channels)."""
        return self.amqp._users[0]

    @property
    def connected(self) -> bool:
        return self.amqp.connected

    def start(self) -> None:
        self.service.startService()

    async def wait_connected(self, seconds: float = 10.0) -> None:
        await eventually(self._reactor, lambda: self.connected, seconds, "connected to the broker")

    async def stop(self) -> None:
        if self.service.running:
            await within(self.service.stopService(), 20, self._reactor)


class DaemonProcess(ProcessProtocol):
    """
    A C{lambda-rapid} subprocess, leading its own process group (via setsid)
    so that a signal reaches the daemon and its runtimes together.
    """

    def __init__(self, reactor: Any, environ: Mapping[str, str]) -> None:
        self._reactor = reactor
        self._environ = dict(environ)
        self.output = bytearray()
        self.ended: Deferred[Any] = Deferred()
        self.pid: int | None = None
        self.exit_reason: Any = None

    def start(self) -> None:
        setsid = shutil.which("setsid") or "/usr/bin/setsid"
        transport = self._reactor.spawnProcess(
            self, setsid, [setsid, LAMBDA_RAPID, *RUNTIME], env=self._environ
        )
        self.pid = transport.pid

    def outReceived(self, data: bytes) -> None:
        self.output.extend(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exit_reason = reason.value
        self.ended.callback(None)

    @property
    def running(self) -> bool:
        return not self.ended.called

    async def wait_for(self, needle: bytes, seconds: float = 10.0) -> None:
        await eventually(
            self._reactor,
            lambda: needle in self.output or not self.running,
            seconds,
            f"{needle!r} in the daemon's output: {bytes(self.output[-2000:])!r}",
        )
        if needle not in self.output:
            raise AssertionError(
                f"the daemon ended ({self.exit_reason}) before printing {needle!r}: "
                f"{bytes(self.output[-2000:])!r}"
            )

    def kill_group(self, signum: int) -> None:
        if self.running and self.pid is not None:
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """SIGTERM the group; SIGKILL it if it has not ended in 10 s."""
        if not self.running:
            return
        self.kill_group(signal.SIGTERM)
        try:
            await within(_observe(self.ended), 10, self._reactor)
        except Exception:
            self.kill_group(signal.SIGKILL)
            await within(_observe(self.ended), 5, self._reactor)


def _observe(fired: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires when C{fired} does; cancelling it leaves C{fired} alone."""
    observer: Deferred[None] = Deferred()

    def passed_on(result: object) -> object:
        if not observer.called:
            observer.callback(None)
        return result

    fired.addBoth(passed_on)
    return observer


@dataclass
class Answer:
    """What an Invoke API call answered."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def log_tail(self) -> str:
        return base64.b64decode(self.headers.get("x-amz-log-result", "")).decode()


class Caller:
    """An HTTP client of the Invoke API, as boto3 or curl would call it."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 32
        self._http = HTTPClient(Agent(reactor, pool=self._pool))

    def invoke(
        self,
        base_url: str,
        name: str,
        payload: object,
        seconds: float = 15.0,
        query: str = "",
        **headers: str,
    ) -> Deferred[Answer]:
        """POST the invocation; headers by keyword (C{x_amz_invocation_type="Event"}), C{query} as C{Qualifier=v9}."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = Headers({b"content-type": [b"application/json"]})
        for key, value in headers.items():
            sent.setRawHeaders(key.replace("_", "-").encode(), [value.encode()])
        url = base_url + INVOKE_PATH.format(name=name) + (f"?{query}" if query else "")
        return within(self._invoke(url, body, sent), seconds, self._reactor)

    async def _invoke(self, url: str, body: bytes, headers: Headers) -> Answer:
        start = time.monotonic()
        response = await self._http.post(url, data=body, headers=headers)
        content: bytes = await response.content()
        received = {
            name.decode().lower(): b", ".join(values).decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, content, received, time.monotonic() - start)

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


async def rabbitmqctl(reactor: Any, *arguments: str) -> str:
    """Run C{rabbitmqctl ARGUMENTS}; fail unless it exits 0."""
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    out, err, code = await within(
        getProcessOutputAndValue(executable, ("-q", *arguments), env=os.environ, reactor=reactor),
        30,
        reactor,
    )
    if code != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(arguments)} exited {code}: {err!r}")
    return out.decode()


async def private_vhost(test: Any, reactor: Any) -> str:
    """A vhost only this test uses (guest may use it); deleted after everything else."""
    name = f"lambdarapid-test-{uuid.uuid4().hex[:8]}"
    await rabbitmqctl(reactor, "add_vhost", name)
    test.addCleanup(rabbitmqctl, reactor, "delete_vhost", name)
    await rabbitmqctl(reactor, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


class _TrackingProxyFactory(ProxyFactory):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.proxies: list[ProxyServer] = []

    def buildProtocol(self, addr: Any) -> ProxyServer | None:
        proxy = super().buildProtocol(addr)
        if isinstance(proxy, ProxyServer):
            self.proxies.append(proxy)
        return proxy


class Forwarder:
    """
    A TCP forwarder to the broker on a port of its own: the broker is
    "unreachable" at that port until the test starts the forwarder.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.port = free_port()
        self._factory = _TrackingProxyFactory(BROKER_HOST, BROKER_PORT)
        self._listening: Any = None

    def start(self) -> None:
        self._listening = self._reactor.listenTCP(self.port, self._factory, interface="127.0.0.1")

    async def stop_listening(self) -> None:
        """Refuse new connections (those made stay up); C{start} listens again."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()

    async def stop(self) -> None:
        """Refuse new connections and cut those made."""
        await self.stop_listening()
        for proxy in self._factory.proxies:
            for side in (proxy, proxy.peer):
                transport: Any = getattr(side, "transport", None)
                if transport is not None:
                    transport.abortConnection()
        await deferLater(self._reactor, 0.05, lambda: None)


# A client in upstream's AMQP-RPC format: pika's BlockingConnection (run it in
# a thread), its own exclusive reply queue, no mandatory flag.


@dataclass
class Reply:
    correlation_id: str | None
    body: bytes
    headers: dict[str, str]
    content_type: str | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def upstream_rpc(
    uri: str,
    queue: str,
    bodies: list[bytes],
    seconds: float = 15.0,
    linger: float = 0.5,
    headers: Mapping[str, str] | None = None,
    timestamp: int | None = None,
    correlation_ids: list[str] | None = None,
) -> tuple[list[str], list[Reply]]:
    """
    Publish one request per body as upstream's clients do, and collect every
    reply until all are in (plus C{linger} seconds to catch duplicates) or
    C{seconds} pass. Blocking: call it through C{deferToThread}.
    """
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        channel = connection.channel()
        reply_to = channel.queue_declare(queue="", exclusive=True).method.queue
        ids = []
        for index, body in enumerate(bodies):
            correlation_id = correlation_ids[index] if correlation_ids else str(uuid.uuid4())
            ids.append(correlation_id)
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(
                    content_type="application/json",
                    correlation_id=correlation_id,
                    reply_to=reply_to,
                    timestamp=int(time.time()) if timestamp is None else timestamp,
                    headers=dict(headers) if headers else None,
                ),
            )
        replies: list[Reply] = []
        deadline = time.monotonic() + seconds
        complete_at: float | None = None
        for method, properties, body in channel.consume(
            reply_to, auto_ack=True, inactivity_timeout=0.1
        ):
            now = time.monotonic()
            if method is not None:
                replies.append(
                    Reply(
                        properties.correlation_id,
                        body,
                        {k: _text(v) for k, v in (properties.headers or {}).items()},
                        properties.content_type,
                    )
                )
                if complete_at is None and len(replies) >= len(bodies):
                    complete_at = now
            if now > deadline or (complete_at is not None and now > complete_at + linger):
                break
        channel.cancel()
        return ids, replies
    finally:
        connection.close()


def upstream_event(uri: str, queue: str, body: bytes) -> None:
    """An Event the upstream way: a request with no reply_to. Blocking."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        connection.channel().basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(
                content_type="application/json",
                correlation_id=str(uuid.uuid4()),
                timestamp=int(time.time()),
            ),
        )
    finally:
        connection.close()


def declare_like_upstream(uri: str, queue: str, durable: bool = False) -> bool:
    """
    Whether the broker accepts declaring C{queue} as upstream's daemon does
    (non-durable, auto-delete, non-exclusive, no arguments): RabbitMQ refuses
    a redeclaration whose properties differ. Blocking.
    """
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        connection.channel().queue_declare(
            queue=queue, durable=durable, auto_delete=True, exclusive=False
        )
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def delete_queue(uri: str, queue: str) -> None:
    """Delete C{queue} as an operator would; its consumers get basic.cancel. Blocking."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        connection.channel().queue_delete(queue=queue)
    finally:
        connection.close()


def deploy(test: Any, reactor: Any, name: str, uri: str | None = None, **settings: Any) -> Daemon:
    """Start a daemon serving C{name} on the broker at C{uri}; stopped after the test."""
    daemon = Daemon(reactor, runtime_environ(name, amqp_uri() if uri is None else uri, **settings))
    test.addCleanup(daemon.stop)
    daemon.start()
    return daemon


def lambda_server(test: Any, reactor: Any, uri: str | None = None, **settings: Any) -> Server:
    """Start a Lambda Server on the broker at C{uri}; stopped after the test."""
    server = Server(reactor, amqp_uri() if uri is None else uri, **settings)
    test.addCleanup(server.stop)
    server.start()
    return server


def caller(test: Any, reactor: Any) -> Caller:
    """An Invoke API client whose connections close after the test."""
    client = Caller(reactor)
    test.addCleanup(client.close)
    return client


def ready_messages(uri: str, queue: str) -> int:
    """How many messages wait in C{queue} (a passive declare). Blocking."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        declared = connection.channel().queue_declare(queue=queue, passive=True)
        count: int = declared.method.message_count
        return count
    finally:
        connection.close()


class LogLines:
    """lambdarapid's log lines while a test runs, formatted, for waiting on what they say."""

    def __init__(self, test: Any) -> None:
        self.lines: list[str] = []
        observer = cast(ILogObserver, self._observe)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def _observe(self, event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("lambdarapid"):
            self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    async def wait_for(self, reactor: Any, text: str, seconds: float = 10.0) -> str:
        """The first line containing C{text}, once logged."""
        await eventually(reactor, lambda: bool(self.matching(text)), seconds, f"{text!r} logged: {self.lines[-5:]}")
        return self.matching(text)[0]
