"""
The daemon's wiring: C{twistd lambda-rapid} and the C{lambda-rapid} script.

Configuration comes from the environment (see C{--help}); the positional
arguments are the runtime command, exactly as C{aws-lambda-rie} takes them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import errors, logs
from .config import ConfigError, RapidConfig, endpoint_description, rapid_config
from .invoke_api import InvokeAPI
from .invoke_protocol import InvokeAPIFactory
from .observers import NO_INVOCATIONS
from .pool import Pool
from .output import stdout_writer
from .program import ProgramOptions, ProgramService, hide_environment
from .listener import ListenerService

if TYPE_CHECKING:
    # What only some settings need is imported when they are set: a daemon
    # without them starts without pika, prometheus_client or the Function
    # URL's modules (docs/architecture.md, "Cold start").
    from .amqp.connection import AMQPConnectionService
    from .amqp.consumer import RPCConsumer
    from .metrics import DaemonMetrics

SYNOPSIS = "[OPTIONS] [RUNTIME_COMMAND [ARG ...]]"

HELP = """\
Runs a Lambda function's runtime (its Runtime Interface Client) and serves
the Lambda Invoke API, as `aws-lambda-rie RUNTIME_COMMAND...` does.

The handler is the last argument when there are two or more, else $_HANDLER.
With no command, the first of /var/task/bootstrap, /opt/bootstrap and
/var/runtime/bootstrap is run.

Options (the AWS RIE's, accepted before or after the runtime command):
  --runtime-interface-emulator-address HOST:PORT
                                   where the Invoke API listens (0.0.0.0:8080);
                                   sets INVOKE_API_HOST and PORT
  --runtime-api-address HOST:PORT  where runtimes find the Runtime API
                                   (127.0.0.1:9001); sets RUNTIME_API_HOST and
                                   RUNTIME_API_PORT
  --log-level LEVEL                sets LOG_LEVEL
  --enable-init-caching            accepted and ignored
  --help                           print this text
  --version                        print lambdarapid's version

Environment variables (default in parentheses):
  LOG_LEVEL                        PANIC FATAL ERROR WARNING INFO DEBUG TRACE (INFO)
  PRINT_REPORTS                    true: print START/END/REPORT lines (false)
  INVOKE_API_HOST, PORT            where the Invoke API listens (0.0.0.0, 8080)
  RUNTIME_API_HOST                 where runtimes find the Runtime API (127.0.0.1)
  RUNTIME_API_PORT                 first Runtime API port; runtime i gets +i (9001)
  MAX_CONCURRENCY                  runtimes run at once, spawned on demand (1)
  MAX_QUEUED_INVOCATIONS           invocations waiting for a runtime before 429 (1000)
  PROVISIONED_CONCURRENCY          runtimes initialised at start and never stopped
                                   for idleness, as Lambda's provisioned concurrency (0)
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
  AMQP_USERNAME, AMQP_PASSWORD     credentials missing from AMQP_URI (unset)
  AMQP_PREFETCH                    unacknowledged deliveries (5 x MAX_CONCURRENCY)
  ENABLE_OPENFAAS                  true: also serve the OpenFaaS watchdog routes (false)
  AWS_LAMBDA_LOG_FORMAT            Text or JSON: Lambda's log format (Text)
  AWS_LAMBDA_LOG_LEVEL             TRACE DEBUG INFO WARN ERROR FATAL: the function's
                                   log level in JSON format (INFO)
  METRICS_PORT                     serve GET /metrics (Prometheus), /healthz and
                                   /readyz on INVOKE_API_HOST:METRICS_PORT (unset: off)
  EXTENSIONS_DIR                   where the external extensions are: each executable
                                   file is one, started with every runtime (/opt/extensions)
  FUNCTION_URL_PORT                also serve the function as a Function URL on
                                   INVOKE_API_HOST:FUNCTION_URL_PORT: every HTTP request
                                   is one event, the result its response (unset: off)
  FUNCTION_URL_INVOKE_MODE         BUFFERED or RESPONSE_STREAM: the Function URL's
                                   invoke mode (BUFFERED)

Examples:
  lambda-rapid python3 -m awslambdaric echo.handler
  curl -d '{"hello":"world"}' \\
    http://localhost:8080/2015-03-31/functions/function/invocations
  FUNCTION_URL_PORT=8081 lambda-rapid python3 -m awslambdaric app.handler
  curl http://localhost:8081/items?q=1
"""

#: The AWS RIE's command-line options that take a value, and what each sets.
_RIE_VALUE_OPTIONS = {
    "--runtime-interface-emulator-address": ("INVOKE_API_HOST", "PORT"),
    "--runtime-api-address": ("RUNTIME_API_HOST", "RUNTIME_API_PORT"),
    "--log-level": ("LOG_LEVEL",),
}
#: The RIE's flags that take no value and change nothing here.
_RIE_IGNORED_FLAGS = frozenset({"--enable-init-caching"})


def _host_port(option: str, value: str) -> tuple[str, str]:
    """C{HOST:PORT} (C{[v6]:PORT} too) as a pair; one clear line if it is not."""
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not port.isdigit():
        raise ConfigError(f"{option}={value!r} is not valid: expected HOST:PORT")
    return host or "0.0.0.0", port


def rie_options(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """
    Take the AWS RIE's own options out of C{argv}, wherever they are (the RIE
    accepts them before and after the runtime command), as settings.

    Returns the rest of the arguments and the environment variables the
    options set. C{--} ends the options, as it does for the RIE.
    """
    rest: list[str] = []
    settings: dict[str, str] = {}
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            rest.extend(arguments)
            break
        name, equals, value = argument.partition("=")
        if name in _RIE_IGNORED_FLAGS and not equals:
            continue
        if name not in _RIE_VALUE_OPTIONS:
            rest.append(argument)
            continue
        if not equals:
            value = next(arguments, "")
            if not value:
                raise ConfigError(f"{name} needs a value")
        variables = _RIE_VALUE_OPTIONS[name]
        if len(variables) == 2:
            settings.update(zip(variables, _host_port(name, value)))
        else:
            settings[variables[0]] = value
    return rest, settings


class Options(ProgramOptions):
    """C{lambda-rapid [RIE options] [RUNTIME_COMMAND ...]}, configured by the environment."""

    program = "lambda-rapid"
    synopsis = SYNOPSIS
    help_text = HELP

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["command"] = ()
        self["settings"] = {}

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            rest, self["settings"] = rie_options(options)
        except ConfigError as error:
            raise SystemExit(f"lambda-rapid: {error}") from None
        super().parseOptions(rest)

    def parseArgs(self, *command: str) -> None:
        self["command"] = command

    def postOptions(self) -> None:
        environ = {**self._environ, **self["settings"]}
        try:
            self["config"] = rapid_config(self["command"], environ)
        except ConfigError as error:
            # One line, no usage text, no traceback: twistd lets SystemExit through.
            raise SystemExit(f"lambda-rapid: {error}") from None


class RapidService(MultiService):
    """The daemon: its pool and listeners; on stop, drains the pool first."""

    log = Logger(observer=logs.observer)

    def __init__(self, config: RapidConfig, pool: Pool) -> None:
        super().__init__()
        self.config = config
        self.pool = pool
        self.consumer: RPCConsumer | None = None
        self.amqp: AMQPConnectionService | None = None
        self.listener: ListenerService | None = None
        #: With FUNCTION_URL_PORT: the Function URL's listener.
        self.function_url_listener: ListenerService | None = None
        #: With METRICS_PORT: the daemon's metrics and their listener.
        self.metrics: DaemonMetrics | None = None
        self.metrics_listener: ListenerService | None = None

    def not_ready(self) -> str | None:
        """Why the daemon cannot take invocations now (None: it can), in one line."""
        if not self.pool.accepting:
            return "draining: the daemon is shutting down"
        if not self.running:
            return "not started"
        if self.amqp is not None and not self.amqp.connected:
            return "the AMQP broker is not connected"
        return None

    def ready(self) -> bool:
        """Whether the daemon can take invocations: running, not draining, broker up if used."""
        return self.not_ready() is None

    def startService(self) -> None:
        config = self.config
        self.log.info(
            "serving function {name} ({command}), up to {n} runtime(s)",
            name=config.function.name,
            command=" ".join(config.command),
            n=config.max_concurrency,
        )
        super().startService()
        self.pool.start()

    async def _stop(self) -> None:
        self.log.info("stopping: draining in-flight invocations")
        if self.consumer is not None:
            await self.consumer.stop_consuming()
        await self.pool.stop()
        await super().stopService()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def hurry(self) -> None:
        """Stop the runtimes now, without waiting for in-flight invocations."""
        self.pool.stop_now()


def make_rapid_service(
    config: RapidConfig, reactor: Any, output: Callable[[bytes], None]
) -> RapidService:
    """
    The daemon's services for C{config}, on C{reactor}, writing runtime output
    and reports to C{output}. Changes nothing process-wide: see L{makeService}.
    """
    metrics: DaemonMetrics | None = None
    if config.metrics_port is not None:
        from .metrics import DaemonMetrics

        metrics = DaemonMetrics(config.function.name)
    observer = metrics if metrics is not None else NO_INVOCATIONS
    pool = Pool(config, reactor, output, metrics=observer)
    service = RapidService(config, pool)
    if metrics is not None and config.metrics_port is not None:
        # The first child, so the last stopped; it answers throughout the drain.
        service.metrics = metrics
        # prometheus_client's resource is a WSGIResource on the global reactor
        # and its thread pool: made here, in the wiring, and nowhere else.
        from prometheus_client.twisted import MetricsResource

        from .web import metrics_listener

        service.metrics_listener = metrics_listener(
            reactor,
            endpoint_description(config.invoke_host, config.metrics_port),
            MetricsResource(metrics.registry),
            service.not_ready,
        )
        service.metrics_listener.setServiceParent(service)
    invoke_api = InvokeAPI(
        pool,
        reactor,
        config.function,
        openfaas=config.enable_openfaas,
        ready=service.ready,
        invocations=observer,
    )
    service.listener = ListenerService(
        reactor,
        endpoint_description(config.invoke_host, config.port),
        InvokeAPIFactory(invoke_api, reactor),
        "Invoke API",
    )
    service.listener.setServiceParent(service)
    if config.function_url_port is not None:
        from .function_url_api import FunctionURLResource, too_large as url_too_large
        from .web import QuietSite, bounded_request

        url = FunctionURLResource(
            pool,
            reactor,
            config.function_url_port,
            config.function,
            streaming=config.function_url_invoke_mode == "RESPONSE_STREAM",
            invocations=observer,
        )
        service.function_url_listener = ListenerService(
            reactor,
            endpoint_description(config.invoke_host, config.function_url_port),
            QuietSite(
                url,
                bounded_request(errors.MAX_SYNC_PAYLOAD),
                reactor,
                too_large=url_too_large,
            ),
            "Function URL",
        )
        service.function_url_listener.setServiceParent(service)
    if config.amqp_uri is not None:
        from .amqp.connection import AMQPConnectionService
        from .amqp.consumer import RPCConsumer
        from .amqp.parameters import parse_amqp_uri

        service.amqp = AMQPConnectionService(parse_amqp_uri(config.amqp_uri), reactor)
        service.consumer = RPCConsumer(
            pool, config.function, config.amqp_prefetch, reactor, metrics=observer
        )
        service.amqp.add_user(service.consumer)
        service.amqp.setServiceParent(service)
    if metrics is not None:
        amqp = service.amqp
        metrics.watch(
            lambda: pool.queued,
            pool.environment_states,
            (lambda: amqp.connected) if amqp is not None else None,
        )
    return service


def makeService(options: Options, reactor: Any = None) -> ProgramService:
    """
    twistd's (and the console script's) entry point: the daemon as a process
    of its own, whose log level, stdout, signals and children are its own.
    """
    if reactor is None:
        from twisted.internet import reactor
    config: RapidConfig = options["config"]
    logs.set_level(config.log_level)
    output = stdout_writer(config.log_format)
    daemon = make_rapid_service(config, reactor, output.write)
    if config.amqp_uri is not None:
        hide_environment()
    if os.getpid() == 1:
        from .reaper import orphan_reaper

        orphan_reaper().setServiceParent(daemon)
    return ProgramService("lambda-rapid", daemon, output, daemon.hurry, reactor)
