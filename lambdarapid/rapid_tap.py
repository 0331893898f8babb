"""
The daemon's wiring: C{twistd lambda-rapid} and the C{lambda-rapid} script.

Configuration comes from the environment (see C{--help}); the positional
arguments are the runtime command, exactly as C{aws-lambda-rie} takes them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from . import errors, logs
from .amqp.connection import AMQPConnectionService
from .amqp.consumer import RPCConsumer
from .amqp.parameters import parse_amqp_uri
from .config import ConfigError, RapidConfig, endpoint_description, rapid_config
from .invoke_api import InvokeAPI, InvokeAPIResource
from .pool import Pool
from .reaper import orphan_reaper
from .web import ListenerService, QuietSite, bounded_request

#: prctl(2)'s option controlling core dumps and ownership of /proc/<pid> files.
PR_SET_DUMPABLE = 4

ENVIRONMENT_HELP = """\
Runs a Lambda function's runtime (its Runtime Interface Client) and serves
the Lambda Invoke API, as `aws-lambda-rie RUNTIME_COMMAND...` does.

The handler is the last argument when there are two or more, else $_HANDLER.
With no command, the first of /var/task/bootstrap, /opt/bootstrap and
/var/runtime/bootstrap is run.

Environment variables:
  LOG_LEVEL                        PANIC FATAL ERROR WARNING INFO DEBUG TRACE (INFO)
  PRINT_REPORTS                    true: print START/END/REPORT lines (false)
  INVOKE_API_HOST, PORT            where the Invoke API listens (0.0.0.0, 8080)
  RUNTIME_API_HOST                 where runtimes find the Runtime API (127.0.0.1)
  RUNTIME_API_PORT                 first Runtime API port; runtime i gets +i (9001)
  MAX_CONCURRENCY                  runtimes run at once, spawned on demand (1)
  MAX_QUEUED_INVOCATIONS           invocations waiting for a runtime before 429 (1000)
  AWS_LAMBDA_FUNCTION_NAME         the function's name (the handler's module)
  AWS_LAMBDA_FUNCTION_VERSION      ($LATEST)
  AWS_LAMBDA_FUNCTION_TIMEOUT      seconds per invocation, fractions allowed (3)
  AWS_LAMBDA_FUNCTION_IDLETIMEOUT  seconds before an idle runtime is stopped (1800)
  AWS_LAMBDA_FUNCTION_MEMORY_SIZE  megabytes, as reported to the function (3008)
  AWS_REGION                       region in ARNs (us-east-1)
  SHUTDOWN_TIMEOUT                 seconds in-flight invocations get on SIGTERM (10)
  AMQP_URI                         amqp[s]://user:pass@host:port/vhost?...: also
                                   serve invocations from the queue named after
                                   the function (unset: HTTP only)
  AMQP_USERNAME, AMQP_PASSWORD     credentials missing from AMQP_URI
  AMQP_PREFETCH                    unacknowledged deliveries (5 x MAX_CONCURRENCY)
  ENABLE_OPENFAAS                  true: also serve the OpenFaaS watchdog routes

Example:
  lambda-rapid python3 -m awslambdaric echo.handler
  curl -d '{"hello":"world"}' \\
    http://localhost:8080/2015-03-31/functions/function/invocations
"""


class Options(usage.Options):
    """C{lambda-rapid [RUNTIME_COMMAND ...]}, configured by the environment."""

    synopsis = "[RUNTIME_COMMAND [ARG ...]]"
    longdesc = ENVIRONMENT_HELP

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["command"] = ()

    def parseArgs(self, *command: str) -> None:
        self["command"] = command

    def postOptions(self) -> None:
        try:
            self["config"] = rapid_config(self["command"], self._environ)
        except ConfigError as error:
            # One line, no usage text, no traceback: twistd lets SystemExit through.
            raise SystemExit(f"lambda-rapid: {error}") from None


def stdout_writer() -> Callable[[bytes], None]:
    """Write runtime output and reports straight to our stdout, unbuffered."""
    stream = sys.stdout.buffer

    def write(data: bytes) -> None:
        try:
            stream.write(data)
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads our stdout any more: the runtimes still run

    return write


class RapidService(MultiService):
    """The daemon: its pool and listeners; on stop, drains the pool first."""

    log = Logger(observer=logs.observer)

    def __init__(self, config: RapidConfig, pool: Pool, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.pool = pool
        #: Set by the start commands: a second SIGTERM/SIGINT while draining stops at once.
        self.reactor_for_signals: Any = reactor
        self.consumer: RPCConsumer | None = None
        self.amqp: AMQPConnectionService | None = None
        self.listener: ListenerService | None = None

    def ready(self) -> bool:
        """Whether the daemon can take invocations: running, not draining, broker up if used."""
        return (
            bool(self.running)
            and self.pool.accepting
            and (self.amqp is None or self.amqp.connected)
        )

    def startService(self) -> None:
        config = self.config
        self.log.info(
            "serving function {name} ({command}) on port {port}, up to {n} runtime(s)",
            name=config.function.name,
            command=" ".join(config.command),
            port=config.port,
            n=config.max_concurrency,
        )
        super().startService()

    async def _stop(self) -> None:
        self.log.info("stopping: draining in-flight invocations")
        self._hurry_on_second_signal()
        if self.consumer is not None:
            await self.consumer.stop_consuming()
        await self.pool.stop()
        await super().stopService()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def _hurry_on_second_signal(self) -> None:
        reactor = self.reactor_for_signals
        if reactor is None:
            return

        def hurry(signum: int, frame: object) -> None:
            reactor.callFromThread(self._hurry)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, hurry)

    def _hurry(self) -> None:
        self.log.warn("asked again to stop: stopping the runtimes now")
        self.pool.stop_now()


def hide_environment() -> None:
    """
    Keep the function from reading the broker's credentials in our
    /proc/<pid>/environ: a process that is not "dumpable" has its /proc files
    owned by root. A function running as root can still read them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


def make_rapid_service(
    config: RapidConfig, reactor: Any, output: Callable[[bytes], None]
) -> RapidService:
    """The daemon's services for C{config}, on C{reactor}."""
    logs.set_level(config.log_level)
    pool = Pool(config, reactor, output)
    service = RapidService(config, pool)
    invoke_api = InvokeAPI(
        pool,
        reactor,
        config.function,
        openfaas=config.enable_openfaas,
        ready=service.ready,
    )
    site = QuietSite(
        InvokeAPIResource(invoke_api), bounded_request(errors.MAX_SYNC_PAYLOAD), reactor
    )
    service.listener = ListenerService(
        reactor, endpoint_description(config.invoke_host, config.port), site, "Invoke API"
    )
    service.listener.setServiceParent(service)
    if config.amqp_uri is not None:
        hide_environment()
        service.amqp = AMQPConnectionService(parse_amqp_uri(config.amqp_uri), reactor)
        service.consumer = RPCConsumer(pool, config.function, config.amqp_prefetch, reactor)
        service.amqp.add_user(service.consumer)
        service.amqp.setServiceParent(service)
    if os.getpid() == 1:
        orphan_reaper().setServiceParent(service)
    return service


def makeService(options: Options, reactor: Any = None) -> RapidService:
    """twistd's (and the script's) entry point: a process of its own, whose signals are ours."""
    if reactor is None:
        from twisted.internet import reactor
    service = make_rapid_service(options["config"], reactor, stdout_writer())
    service.reactor_for_signals = reactor
    return service
