"""
The Lambda Server's wiring: C{twistd lambda-server} and the C{lambda-server}
script. The Invoke API for every function, as an HTTP to AMQP-RPC proxy: the
function name in the URL is the routing key, RabbitMQ is the router.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from twisted.application.service import MultiService

from . import errors, logs
from .amqp.connection import AMQPConnectionService
from .amqp.invoker import AMQPInvoker
from .amqp.parameters import parse_amqp_uri
from .config import ConfigError, ServerConfig, endpoint_description, server_config
from .invoke_api import InvokeAPI
from .invoke_protocol import InvokeAPIFactory
from .listener import ListenerService
from .output import stdout_writer
from .program import ProgramOptions, ProgramService

if TYPE_CHECKING:
    from .metrics import ServerMetrics

SYNOPSIS = "[OPTIONS]"

HELP = """\
Serves the Lambda Invoke API for every function and forwards each invocation
over AMQP-RPC to the daemons (lambda-rapid with AMQP_URI set) consuming the
queue named after the function. Unknown functions answer 404 at once.

Options:
  --help                        print this text
  --version                     print lambdarapid's version

Environment variables (default in parentheses):
  LOG_LEVEL                     PANIC FATAL ERROR WARNING INFO DEBUG TRACE (INFO)
  INVOKE_API_HOST, PORT         where the Invoke API listens (0.0.0.0, 8080)
  AMQP_URI                      the broker (amqp://guest:guest@localhost:5672
                                ?connection_attempts=20&retry_delay=10&heartbeat=0)
  AMQP_USERNAME, AMQP_PASSWORD  credentials missing from AMQP_URI (unset)
  AWS_LAMBDA_FUNCTION_TIMEOUT   fail-safe seconds to wait for a reply (1800)
  AWS_REGION                    region in ARNs (us-east-1)
  AWS_LAMBDA_LOG_FORMAT         Text or JSON: the server's log lines (Text)
  METRICS_PORT                  serve GET /metrics (Prometheus), /healthz and
                                /readyz on INVOKE_API_HOST:METRICS_PORT (unset: off)
  FUNCTION_URL_PORT             also serve every function as a Function URL on
                                INVOKE_API_HOST:FUNCTION_URL_PORT, at
                                /<function>/<its path> (unset: off)
  FUNCTION_URL_INVOKE_MODE      BUFFERED or RESPONSE_STREAM: the Function URLs'
                                invoke mode (BUFFERED)

Examples:
  AMQP_URI=amqp://guest:guest@localhost:5672/ lambda-server
  curl -d '{"hello":"world"}' \\
    http://localhost:8080/2015-03-31/functions/echo/invocations
"""


class Options(ProgramOptions):
    """C{lambda-server}, configured by the environment."""

    program = "lambda-server"
    synopsis = SYNOPSIS
    help_text = HELP

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        try:
            self["config"] = server_config(self._environ)
        except ConfigError as error:
            raise SystemExit(f"lambda-server: {error}") from None


class ServerService(MultiService):
    """The Lambda Server: its broker connection and its Invoke API listener."""

    listener: ListenerService | None = None
    #: With FUNCTION_URL_PORT: the Function URLs' listener.
    function_url_listener: ListenerService | None = None
    amqp: AMQPConnectionService | None = None
    #: With METRICS_PORT: the server's metrics and their listener.
    metrics: ServerMetrics | None = None
    metrics_listener: ListenerService | None = None

    def not_ready(self) -> str | None:
        """Why the server cannot serve now (None: it can), in one line."""
        if self.amqp is None or not self.amqp.connected:
            return "the AMQP broker is not connected"
        return None


def make_server_service(config: ServerConfig, reactor: Any) -> ServerService:
    """The Lambda Server's services for C{config}, on C{reactor}; nothing process-wide."""
    service = ServerService()
    if config.metrics_port is not None:
        # A WSGIResource on the global reactor's thread pool: made here only.
        from prometheus_client.twisted import MetricsResource

        from .metrics import ServerMetrics
        from .web import metrics_listener

        service.metrics = ServerMetrics()
        service.metrics_listener = metrics_listener(
            reactor,
            endpoint_description(config.invoke_host, config.metrics_port),
            MetricsResource(service.metrics.registry),
            service.not_ready,
        )
        service.metrics_listener.setServiceParent(service)
    connection = AMQPConnectionService(parse_amqp_uri(config.amqp_uri), reactor)
    service.amqp = connection
    invoker = AMQPInvoker(reactor, config.timeout)
    connection.add_user(invoker)
    connection.setServiceParent(service)
    if service.metrics is not None:
        service.metrics.watch(lambda: invoker.pending, lambda: connection.connected)
    invoke_api = InvokeAPI(invoker, reactor, region=config.region, requests=service.metrics)
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

        urls = FunctionURLResource(
            invoker,
            reactor,
            config.function_url_port,
            region=config.region,
            streaming=config.function_url_invoke_mode == "RESPONSE_STREAM",
        )
        service.function_url_listener = ListenerService(
            reactor,
            endpoint_description(config.invoke_host, config.function_url_port),
            QuietSite(
                urls, bounded_request(errors.MAX_SYNC_PAYLOAD), reactor, too_large=url_too_large
            ),
            "Function URLs",
        )
        service.function_url_listener.setServiceParent(service)
    return service


def makeService(options: Options, reactor: Any = None) -> ProgramService:
    """twistd's (and the console script's) entry point: the server as a process of its own."""
    if reactor is None:
        from twisted.internet import reactor
    config: ServerConfig = options["config"]
    logs.set_level(config.log_level)
    server = make_server_service(config, reactor)
    return ProgramService("lambda-server", server, stdout_writer(config.log_format))
