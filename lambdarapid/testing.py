"""
Test a Lambda function with a real daemon, from your own trial tests.

Start a daemon in-process around your runtime command, on free loopback
ports, invoke it over real HTTP exactly as boto3 or curl would, and stop it
when the test ends::

    import os
    from twisted.trial.unittest import TestCase
    from lambdarapid.testing import start_daemon

    TASK_ROOT = os.path.dirname(os.path.abspath(__file__))

    class EchoTests(TestCase):
        async def test_echo(self) -> None:
            daemon = await start_daemon(
                ["python3", "-m", "awslambdaric", "app.handler"],
                {**os.environ, "LAMBDA_TASK_ROOT": TASK_ROOT},
                AWS_LAMBDA_FUNCTION_TIMEOUT=5,
            )
            self.addCleanup(daemon.stop)
            result = await daemon.invoke({"hello": "world"})
            self.assertEqual(result.json(), {"hello": "world"})

The runtime processes are real, so what is tested is what runs in the image:
the handler's imports, its environment, its output, its exit. As on Lambda,
the runtime starts in C{LAMBDA_TASK_ROOT} (when that directory exists), where
awslambdaric finds the handler's module.

L{InvokeClient} alone calls a daemon started some other way (a container).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, cast
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http_headers import Headers

from .config import DAEMON_VARIABLES, RapidConfig, rapid_config
from .rapid_tap import RapidService, make_rapid_service

__all__ = [
    "InvokeClient",
    "InvokeResult",
    "RunningDaemon",
    "free_port",
    "free_port_block",
    "start_daemon",
]

#: Settings C{start_daemon} takes as keywords besides the daemon's own: the
#: function's identity, which the daemon also reads from its environment.
FUNCTION_VARIABLES = frozenset(
    {
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "LAMBDA_TASK_ROOT",
        "_HANDLER",
    }
)
SETTINGS = DAEMON_VARIABLES | FUNCTION_VARIABLES

_LOOPBACK = "127.0.0.1"
_LISTEN_ATTEMPTS = 5
_PENDING = object()


def _setting_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _settings_environ(settings: Mapping[str, object]) -> dict[str, str]:
    """Keyword settings as environment variables; unknown names are a TypeError."""
    environ: dict[str, str] = {}
    for name, value in settings.items():
        variable = name.upper()
        if variable not in SETTINGS:
            raise TypeError(
                f"start_daemon() got an unknown setting {name!r}; "
                f"expected one of {', '.join(sorted(SETTINGS))}"
            )
        environ[variable] = _setting_value(value)
    return environ


def free_port(host: str = _LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def free_port_block(count: int, host: str = _LOOPBACK) -> int:
    """
    The first of C{count} consecutive free ports: runtime I{i} listens on
    C{RUNTIME_API_PORT + i}. (Should one be taken by the time it listens, the
    environment falls back to another free port, so this need not be exact.)
    """
    for _ in range(50):
        first = free_port(host)
        if first + count - 1 > 65535:
            continue
        probes: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind((host, port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return first
    raise RuntimeError(f"found no block of {count} free ports on {host}")


@dataclass(frozen=True)
class InvokeResult:
    """
    What an Invoke API call answered, as boto3 would read it: the status, the
    payload bytes and the headers botocore turns into C{FunctionError},
    C{LogResult} and C{ExecutedVersion}.
    """

    status: int
    payload: bytes
    #: Response headers, names lower-cased, repeated values joined by ", ".
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)

    @property
    def function_error(self) -> str | None:
        """C{Unhandled} when the function failed, timed out or exited; else None."""
        return self.headers.get("x-amz-function-error")

    @property
    def log_result(self) -> str | None:
        """The decoded C{X-Amz-Log-Result}: the invocation's log tail (with C{log_type="Tail"})."""
        raw = self.headers.get("x-amz-log-result")
        if raw is None:
            return None
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8", "replace")
        except binascii.Error:
            return raw

    @property
    def executed_version(self) -> str | None:
        """The version that ran (C{$LATEST}): botocore's C{ExecutedVersion}."""
        return self.headers.get("x-amz-executed-version")

    @property
    def request_id(self) -> str | None:
        """The invocation's request id, the one START/END/REPORT lines carry."""
        return self.headers.get("x-amzn-requestid")

    @property
    def error_type(self) -> str | None:
        """An Invoke API error's C{x-amzn-ErrorType} (404, 413, 429...); None for a run."""
        return self.headers.get("x-amzn-errortype")


def _encode_payload(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload).encode("utf-8")


def _encode_client_context(context: Mapping[str, Any] | str | bytes) -> bytes:
    """A mapping is JSON-encoded then base64-ed; strings are sent as they are."""
    if isinstance(context, bytes):
        return context
    if isinstance(context, str):
        return context.encode("ascii")
    return base64.b64encode(json.dumps(context).encode("utf-8"))


class InvokeClient:
    """
    An Invoke API caller over real HTTP, for any daemon: one started by
    L{start_daemon}, or one running elsewhere (a container under test).

    It keeps connections open between calls, as SDKs do; L{close} them when done.
    """

    def __init__(self, url: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = url.rstrip("/")
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, pool=self._pool)

    def invoke(
        self,
        payload: object = b"{}",
        *,
        invocation_type: str = "RequestResponse",
        log_type: str | None = None,
        client_context: Mapping[str, Any] | str | bytes | None = None,
        qualifier: str | None = None,
        function_name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[InvokeResult]:
        """
        C{POST /2015-03-31/functions/{function_name}/invocations}.

        C{payload} is sent as is when bytes, UTF-8 encoded when a string, and
        as JSON otherwise. C{client_context} is a mapping to send as base64
        JSON (or a string sent verbatim, to test bad ones). C{function_name}
        defaults to the RIE's C{function}. Invoke API errors (404, 413, 429,
        503) are results too: check C{status}. Cancelling the Deferred hangs
        up, as a caller that gives up does.
        """
        name = function_name if function_name is not None else "function"
        url = f"{self.url}/2015-03-31/functions/{quote(name, safe=':')}/invocations"
        if qualifier is not None:
            url += f"?Qualifier={quote(qualifier, safe='')}"
        sent = Headers({b"content-type": [b"application/json"]})
        sent.setRawHeaders(b"x-amz-invocation-type", [invocation_type.encode()])
        if log_type is not None:
            sent.setRawHeaders(b"x-amz-log-type", [log_type.encode()])
        if client_context is not None:
            sent.setRawHeaders(b"x-amz-client-context", [_encode_client_context(client_context)])
        for key, value in (headers or {}).items():
            sent.setRawHeaders(key.encode("latin-1"), [value.encode("latin-1")])
        return Deferred.fromCoroutine(self._invoke(url, _encode_payload(payload), sent))

    async def _invoke(self, url: str, body: bytes, headers: Headers) -> InvokeResult:
        try:
            response = await self._agent.request(
                b"POST", url.encode("ascii"), headers, FileBodyProducer(io.BytesIO(body))
            )
        except ResponseNeverReceived as error:
            # What the Agent makes of a cancel: make it the CancelledError it was.
            if any(reason.check(CancelledError) for reason in error.reasons):
                raise CancelledError() from None
            raise
        content: bytes = await readBody(response)
        received = {
            name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in response.headers.getAllRawHeaders()
        }
        return InvokeResult(status=response.code, payload=content, headers=received)

    def close(self) -> Deferred[None]:
        """Close the kept-open connections (trial fails a test that leaves them)."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


class RunningDaemon:
    """
    A daemon started by L{start_daemon}: its address, its output so far, and
    C{invoke}/C{stop}.
    """

    _log = Logger()

    def __init__(self, config: RapidConfig, reactor: Any) -> None:
        self.config = config
        self._reactor = reactor
        self._output = bytearray()
        self._output_waiters: list[tuple[bytes, Deferred[None]]] = []
        self.service: RapidService = make_rapid_service(config, reactor, self._received)
        self.client = InvokeClient(f"http://{_LOOPBACK}:{config.port}", reactor)
        self._stopping: Deferred[None] | None = None
        self._stop_outcome: object = _PENDING
        self._stop_waiters: list[Deferred[None]] = []
        self.port = config.port
        #: With METRICS_PORT: where C{/metrics}, C{/healthz} and C{/readyz} are served.
        self.metrics_url: str | None = None
        #: With FUNCTION_URL_PORT: the Function URL's base URL (no trailing slash).
        self.function_url: str | None = None

    async def _start(self) -> None:
        listener = self.service.listener
        assert listener is not None
        self.service.startService()  # a taken port raises CannotListenError here
        port = await listener.listening
        self.port = cast(IPv4Address, port.getHost()).port
        host = self.config.invoke_host
        if host in ("0.0.0.0", "::", ""):
            host = _LOOPBACK
        elif ":" in host:
            host = f"[{host}]"
        self.client.url = f"http://{host}:{self.port}"
        if self.service.metrics_listener is not None:
            metrics_port = await self.service.metrics_listener.listening
            self.metrics_url = f"http://{host}:{cast(IPv4Address, metrics_port.getHost()).port}"
        if self.service.function_url_listener is not None:
            url_port = await self.service.function_url_listener.listening
            self.function_url = f"http://{host}:{cast(IPv4Address, url_port.getHost()).port}"

    # What the daemon wrote

    def _received(self, data: bytes) -> None:
        """The daemon's output callable: runtime logs and reports."""
        self._output += data
        self._log.debug("{output}", output=data.decode("utf-8", "replace").rstrip("\n"))
        for waiter in list(self._output_waiters):
            needle, waiting = waiter
            if needle in self._output:
                self._output_waiters.remove(waiter)
                waiting.callback(None)

    @property
    def output(self) -> bytes:
        """
        Everything written so far: the runtimes' stdout and stderr, and with
        PRINT_REPORTS the START/END/REPORT lines (what the real daemon prints).
        """
        return bytes(self._output)

    def wait_for_output(self, needle: bytes, timeout: float = 5.0) -> Deferred[None]:
        """
        Fire once C{needle} has been written; fail with L{defer.TimeoutError} after
        C{timeout} seconds. A runtime's log lines may arrive just after the
        answer they came before, since pipes and sockets are read in turn.
        """
        if needle in self._output:
            waiting: Deferred[None] = Deferred()
            waiting.callback(None)
            return waiting

        def cancelled(d: Deferred[None]) -> None:
            self._output_waiters[:] = [w for w in self._output_waiters if w[1] is not d]

        waiting = Deferred(cancelled)
        self._output_waiters.append((needle, waiting))

        def timed_out(failure: Failure) -> Any:
            if failure.check(CancelledError, defer.TimeoutError):
                why = "the daemon stopped" if self._stopping else f"waited {timeout} s"
                raise defer.TimeoutError(
                    f"{needle!r} never written ({why}); "
                    f"output so far: {self.output[-2000:]!r}"
                )
            return failure

        return waiting.addTimeout(timeout, self._reactor).addErrback(timed_out)

    # Invoking

    @property
    def url(self) -> str:
        """The Invoke API's base URL: boto3's C{endpoint_url}."""
        return self.client.url

    def invoke(
        self,
        payload: object = b"{}",
        *,
        invocation_type: str = "RequestResponse",
        log_type: str | None = None,
        client_context: Mapping[str, Any] | str | bytes | None = None,
        qualifier: str | None = None,
        function_name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[InvokeResult]:
        """Invoke this daemon's function: see L{InvokeClient.invoke}."""
        return self.client.invoke(
            payload,
            invocation_type=invocation_type,
            log_type=log_type,
            client_context=client_context,
            qualifier=qualifier,
            function_name=function_name,
            headers=headers,
        )

    # Stopping

    def stop(self) -> Deferred[None]:
        """
        Stop as on SIGTERM: refuse new invocations, let in-flight ones finish
        (within SHUTDOWN_TIMEOUT), stop the runtimes, close our connections.
        Safe to call twice, so it suits C{addCleanup}.
        """
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
            self._stopping.addBoth(self._stop_done)
        waiter: Deferred[None] = Deferred()
        if self._stop_outcome is _PENDING:
            self._stop_waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def _stop_done(self, outcome: None | Failure) -> None:
        self._stop_outcome = outcome
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[None]) -> None:
        outcome = self._stop_outcome
        if isinstance(outcome, Failure):
            waiter.errback(outcome)
        else:
            waiter.callback(None)

    async def _stop(self) -> None:
        try:
            if self.service.running:
                await self.service.stopService()
            listeners = (
                self.service.listener,
                self.service.function_url_listener,
                self.service.metrics_listener,
            )
            for listener in listeners:
                if listener is not None:
                    # Callers' keep-alive connections (boto3's) outlive the port.
                    await listener.close_connections()
        finally:
            for _, waiting in list(self._output_waiters):
                waiting.cancel()
            await self.client.close()


async def start_daemon(
    command: Sequence[str],
    environ: Mapping[str, str] | None = None,
    reactor: Any = None,
    **settings: object,
) -> RunningDaemon:
    """
    Start a daemon running C{command} (the runtime, as C{aws-lambda-rie}
    takes it) in this process, and return once its Invoke API listens.

    C{environ} is the whole environment the daemon reads, as its own process
    environment would be (default: C{os.environ}); the runtime gets it minus
    the daemon's settings. Keyword C{settings} override it by variable name
    (C{MAX_CONCURRENCY=4}, C{print_reports=True}); unknown names are a
    TypeError. The Invoke API listens on a free port on 127.0.0.1 and the
    runtimes' Runtime API on a free block of ports, unless C{PORT},
    C{RUNTIME_API_PORT} or C{INVOKE_API_HOST} are given as settings. With a
    C{METRICS_PORT} setting the daemon also serves C{/metrics}, C{/healthz}
    and C{/readyz}, at L{RunningDaemon.metrics_url}; C{METRICS_PORT=0} picks
    a free port. So does C{FUNCTION_URL_PORT=0}: the function is then also
    a Function URL, at L{RunningDaemon.function_url}.

    A bad setting raises L{lambdarapid.config.ConfigError}, as the daemon
    would refuse to start. Runtimes are spawned on the first invocation.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    given = _settings_environ(settings)
    #: METRICS_PORT=0: any free port, as for a listening socket.
    pick_metrics_port = given.get("METRICS_PORT") == "0"
    if pick_metrics_port:
        del given["METRICS_PORT"]
    pick_url_port = given.get("FUNCTION_URL_PORT") == "0"
    if pick_url_port:
        del given["FUNCTION_URL_PORT"]
    base = {key: value for key, value in (os.environ if environ is None else environ).items()}
    base.update(given)
    for attempt in range(_LISTEN_ATTEMPTS):
        daemon_environ = dict(base)
        if "INVOKE_API_HOST" not in given:
            daemon_environ["INVOKE_API_HOST"] = _LOOPBACK
        if "PORT" not in given:
            daemon_environ["PORT"] = str(free_port())
        if pick_metrics_port:
            daemon_environ["METRICS_PORT"] = str(free_port())
        if pick_url_port:
            daemon_environ["FUNCTION_URL_PORT"] = str(free_port())
        if "RUNTIME_API_PORT" not in given:
            # Validates every setting once with placeholder ports, and tells
            # how many Runtime API ports the block needs.
            wanted = rapid_config(command, {**daemon_environ, "RUNTIME_API_PORT": "1"})
            daemon_environ["RUNTIME_API_PORT"] = str(free_port_block(wanted.max_concurrency))
        daemon = RunningDaemon(rapid_config(command, daemon_environ), reactor)
        try:
            await daemon._start()
        except BaseException as error:
            await daemon.stop()
            # The port picked was taken in the meantime: pick another.
            retry = (
                isinstance(error, CannotListenError)
                and "PORT" not in given
                and "METRICS_PORT" not in given
                and "FUNCTION_URL_PORT" not in given
            )
            if retry and attempt < _LISTEN_ATTEMPTS - 1:
                continue
            raise
        return daemon
    raise AssertionError("unreachable")
