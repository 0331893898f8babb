"""
Every setting of the daemon and the server, read from the environment once.

A bad value is a L{ConfigError} whose message names the variable, so the
program can stop at start with one clear line instead of failing later.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.logger import LogLevel

if TYPE_CHECKING:
    import pika

T = TypeVar("T")

#: Where the AWS RIE looks for a runtime when it is given no command.
DEFAULT_BOOTSTRAPS = ("/var/task/bootstrap", "/opt/bootstrap", "/var/runtime/bootstrap")

#: The Lambda Server's broker when AMQP_URI is unset (upstream's default).
DEFAULT_SERVER_AMQP_URI = (
    "amqp://guest:guest@localhost:5672?connection_attempts=20&retry_delay=10&heartbeat=0"
)

#: LOG_LEVEL names (upstream's, which are logrus's) to twisted.logger levels.
LOG_LEVELS = {
    "PANIC": LogLevel.critical,
    "FATAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "WARNING": LogLevel.warn,
    "WARN": LogLevel.warn,
    "INFO": LogLevel.info,
    "DEBUG": LogLevel.debug,
    "TRACE": LogLevel.debug,
}

#: The daemon's own settings and secrets: never passed on to the function.
DAEMON_VARIABLES = frozenset(
    {
        "LOG_LEVEL",
        "PRINT_REPORTS",
        "INVOKE_API_HOST",
        "PORT",
        "RUNTIME_API_HOST",
        "RUNTIME_API_PORT",
        "MAX_CONCURRENCY",
        "MAX_QUEUED_INVOCATIONS",
        "PROVISIONED_CONCURRENCY",
        "AMQP_URI",
        "AMQP_USERNAME",
        "AMQP_PASSWORD",
        "AMQP_PREFETCH",
        "ENABLE_OPENFAAS",
        "METRICS_PORT",
        "FUNCTION_URL_PORT",
        "FUNCTION_URL_INVOKE_MODE",
        "EXTENSIONS_DIR",
        "SHUTDOWN_TIMEOUT",
        "AWS_LAMBDA_FUNCTION_TIMEOUT",
        "AWS_LAMBDA_FUNCTION_IDLETIMEOUT",
    }
)

#: Where Lambda, and so every image, keeps its external extensions.
DEFAULT_EXTENSIONS_DIR = "/opt/extensions"

#: The account id in ARNs we make up; the same one the AWS RIE uses.
ACCOUNT_ID = "012345678912"
#: The name the AWS RIE answers to, whatever the function is called.
RIE_FUNCTION_NAME = "function"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def function_arn(region: str, name: str, qualifier: str | None = None) -> str:
    """A function's ARN in our made-up account, with its qualifier if any."""
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def endpoint_description(host: str, port: int) -> str:
    """A TCP server endpoint description for C{host}:C{port} (IPv6 colons escaped)."""
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


@dataclass(frozen=True)
class Function:
    """Who the daemon's one function is: what ARNs and reports call it."""

    name: str
    version: str = "$LATEST"
    region: str = "us-east-1"
    memory_size: int = 3008
    timeout: float = 3.0

    def arn(self, qualifier: str | None = None) -> str:
        """The function's ARN, with the qualifier the caller used, if any."""
        return function_arn(self.region, self.name, qualifier)

    def serves(self, name: str, qualifier: str | None) -> bool:
        """
        Whether an invocation of C{name} (already split from its qualifier) is
        this function's: its own name or the RIE's C{function}, unqualified,
        C{$LATEST} or its version. Every transport decides the same way.
        """
        return name in (self.name, RIE_FUNCTION_NAME) and qualifier in (
            None,
            "$LATEST",
            self.version,
        )


@dataclass(frozen=True)
class RapidConfig:
    """The daemon's settings."""

    command: tuple[str, ...]
    handler: str
    function: Function
    invoke_host: str = "0.0.0.0"
    port: int = 8080
    runtime_host: str = "127.0.0.1"
    runtime_port: int = 9001
    max_concurrency: int = 1
    max_queued: int = 1000
    #: Environments initialised from the start and never reaped below (0: on demand only).
    provisioned_concurrency: int = 0
    idle_timeout: float = 1800.0
    shutdown_timeout: float = 10.0
    log_level: LogLevel = LogLevel.info
    print_reports: bool = False
    enable_openfaas: bool = False
    #: Where /metrics, /healthz and /readyz are served; None: not at all.
    metrics_port: int | None = None
    #: AWS_LAMBDA_LOG_FORMAT: "Text" or "JSON" (how platform lines and our own log lines look).
    log_format: str = "Text"
    #: AWS_LAMBDA_LOG_LEVEL, the application level function output is filtered at (JSON only).
    application_log_level: str | None = None
    #: Holds the broker's password: kept out of repr, and so out of every log.
    amqp_uri: str | None = field(default=None, repr=False)
    amqp_prefetch: int = 5
    runtime_environ: Mapping[str, str] = field(default_factory=dict)
    #: Where the external extensions are (EXTENSIONS_DIR); None: no extensions.
    extensions_dir: str | None = None
    #: Where the function is also served as a Function URL; None: not at all.
    function_url_port: int | None = None
    #: FUNCTION_URL_INVOKE_MODE: "BUFFERED" or "RESPONSE_STREAM".
    function_url_invoke_mode: str = "BUFFERED"


@dataclass(frozen=True)
class ServerConfig:
    """The Lambda Server's settings."""

    #: Holds the broker's password: kept out of repr, and so out of every log.
    amqp_uri: str = field(default=DEFAULT_SERVER_AMQP_URI, repr=False)
    invoke_host: str = "0.0.0.0"
    port: int = 8080
    timeout: float = 1800.0
    region: str = "us-east-1"
    log_level: LogLevel = LogLevel.info
    #: Where /metrics, /healthz and /readyz are served; None: not at all.
    metrics_port: int | None = None
    #: AWS_LAMBDA_LOG_FORMAT for the server's own log lines.
    log_format: str = "Text"
    #: Where every function is also a Function URL, at /<function>/...; None: not at all.
    function_url_port: int | None = None
    #: FUNCTION_URL_INVOKE_MODE: "BUFFERED" or "RESPONSE_STREAM", for every function.
    function_url_invoke_mode: str = "BUFFERED"


#: FUNCTION_URL_INVOKE_MODE values, as Lambda spells them (any case accepted).
FUNCTION_URL_INVOKE_MODES = ("BUFFERED", "RESPONSE_STREAM")

#: AWS_LAMBDA_LOG_FORMAT values, any case, as Lambda spells them.
LOG_FORMATS = {"text": "Text", "json": "JSON"}
#: AWS_LAMBDA_LOG_LEVEL values (Lambda's application levels).
APPLICATION_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


def _log_format(raw: str) -> str:
    return LOG_FORMATS[raw.lower()]


def _invoke_mode(raw: str) -> str:
    mode = raw.upper()
    if mode not in FUNCTION_URL_INVOKE_MODES:
        raise ValueError(raw)
    return mode


def _function_url_invoke_mode(environ: Mapping[str, str]) -> str:
    return _get(
        environ,
        "FUNCTION_URL_INVOKE_MODE",
        _invoke_mode,
        "BUFFERED",
        " or ".join(FUNCTION_URL_INVOKE_MODES),
    )


def _check_function_url_port(
    port: int | None, invoke_port: int, metrics_port: int | None, runtime_ports: range
) -> None:
    """A Function URL port must be a port of its own: one clear line if it is not."""
    if port is None:
        return
    if port == invoke_port:
        raise ConfigError(f"FUNCTION_URL_PORT={port} is also PORT, the Invoke API's port")
    if port == metrics_port:
        raise ConfigError(f"FUNCTION_URL_PORT={port} is also METRICS_PORT")
    if runtime_ports and port in runtime_ports:
        raise ConfigError(
            f"FUNCTION_URL_PORT={port} is one of the Runtime API ports "
            f"({runtime_ports.start}-{runtime_ports.stop - 1})"
        )


def _application_level(raw: str) -> str:
    level = raw.upper()
    if level not in APPLICATION_LOG_LEVELS:
        raise ValueError(raw)
    return level


def _get(
    environ: Mapping[str, str],
    name: str,
    parse: Callable[[str], T],
    default: T,
    expected: str,
) -> T:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, KeyError):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _whole_number(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(raw)
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 < value < 1e9:
        raise ValueError(raw)
    return value


def _boolean(raw: str) -> bool:
    return {"true": True, "false": False, "1": True, "0": False}[raw.lower()]


def _level(raw: str) -> LogLevel:
    return LOG_LEVELS[raw.upper()]


def _with_credentials(uri: str, environ: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    if parts.username or not (environ.get("AMQP_USERNAME") or environ.get("AMQP_PASSWORD")):
        return uri
    user = quote(environ.get("AMQP_USERNAME", "guest"), safe="")
    password = quote(environ.get("AMQP_PASSWORD", "guest"), safe="")
    netloc = f"{user}:{password}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def parse_amqp_uri(uri: str) -> pika.URLParameters:
    """pika connection parameters for C{uri}; L{ConfigError} if it is malformed."""
    import pika  # only when a broker is configured
    scheme = urlsplit(uri).scheme
    if scheme not in ("amqp", "amqps"):
        raise ConfigError("AMQP_URI is not valid: it must start with amqp:// or amqps://")
    try:
        return pika.URLParameters(uri)
    except Exception as error:  # pika raises a mix of ValueError and others
        # Never echo the URI: it may hold a password.
        raise ConfigError(f"AMQP_URI is not valid: {type(error).__name__}") from None


def _amqp_uri(environ: Mapping[str, str], default: str | None) -> str | None:
    """AMQP_URI with AMQP_USERNAME/AMQP_PASSWORD filled in, checked by pika's parser."""
    uri = environ.get("AMQP_URI", "").strip() or default
    if uri is None:
        return None
    complete = _with_credentials(uri, environ)
    parse_amqp_uri(complete)
    return complete


def handler_of(command: Sequence[str], environ: Mapping[str, str]) -> str:
    """The handler: the last argument when there are two or more, else _HANDLER."""
    if len(command) >= 2:
        return command[-1]
    return environ.get("_HANDLER", "")


def _resolve_command(command: Sequence[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    if not command:
        for candidate in DEFAULT_BOOTSTRAPS:
            if os.path.isfile(candidate):
                command = [candidate]
                break
        else:
            raise ConfigError(
                "no runtime command given and none of "
                + ", ".join(DEFAULT_BOOTSTRAPS)
                + " exists"
            )
    executable = shutil.which(command[0], path=environ.get("PATH", os.defpath))
    if executable is None:
        raise ConfigError(f"runtime command not found or not executable: {command[0]}")
    return (executable, *command[1:])


def _runtime_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """
    What the daemon passes on to the function: everything but its own settings,
    its secrets, and what a self-contained (PyInstaller) build of the daemon
    added for itself, such as a library path to its bundled libssl.
    """
    runtime_environ = {
        key: value
        for key, value in environ.items()
        if key not in DAEMON_VARIABLES and not key.startswith("_PYI_")
    }
    original_library_path = runtime_environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if getattr(sys, "frozen", False):
        if original_library_path is None:
            runtime_environ.pop("LD_LIBRARY_PATH", None)
        else:
            runtime_environ["LD_LIBRARY_PATH"] = original_library_path
    return runtime_environ


def _task_root(environ: Mapping[str, str]) -> str:
    if environ.get("LAMBDA_TASK_ROOT"):
        return environ["LAMBDA_TASK_ROOT"]
    return "/var/task" if os.path.isdir("/var/task") else os.getcwd()


def rapid_config(command: Sequence[str], environ: Mapping[str, str]) -> RapidConfig:
    """Read the daemon's settings; raise L{ConfigError} naming a bad one."""
    executable_command = _resolve_command(command, environ)
    handler = handler_of(command, environ)
    default_name = handler.split(".", 1)[0] if handler else ""
    if not default_name:
        default_name = os.path.basename(executable_command[0]) or "function"
    name = environ.get("AWS_LAMBDA_FUNCTION_NAME", "").strip() or default_name
    region = (
        environ.get("AWS_REGION", "").strip()
        or environ.get("AWS_DEFAULT_REGION", "").strip()
        or "us-east-1"
    )
    function = Function(
        name=name,
        version=environ.get("AWS_LAMBDA_FUNCTION_VERSION", "").strip() or "$LATEST",
        region=region,
        memory_size=_get(
            environ, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", _positive_int, 3008, "megabytes"
        ),
        timeout=_get(
            environ, "AWS_LAMBDA_FUNCTION_TIMEOUT", _seconds, 3.0, "a number of seconds > 0"
        ),
    )
    max_concurrency = _get(
        environ, "MAX_CONCURRENCY", _positive_int, 1, "a whole number >= 1"
    )
    provisioned = _get(
        environ, "PROVISIONED_CONCURRENCY", _whole_number, 0, "a whole number >= 0"
    )
    if provisioned > max_concurrency:
        raise ConfigError(
            f"PROVISIONED_CONCURRENCY={provisioned} is more than MAX_CONCURRENCY={max_concurrency}"
        )
    runtime_port = _get(environ, "RUNTIME_API_PORT", _port, 9001, "a port number")
    if runtime_port + max_concurrency - 1 > 65535:
        raise ConfigError(
            f"RUNTIME_API_PORT={runtime_port} leaves no room for MAX_CONCURRENCY="
            f"{max_concurrency} Runtime API ports"
        )
    runtime_environ = _runtime_environ(environ)
    runtime_environ.setdefault("LAMBDA_TASK_ROOT", _task_root(environ))
    runtime_environ.setdefault("LAMBDA_RUNTIME_DIR", "/var/runtime")
    log_format = _get(environ, "AWS_LAMBDA_LOG_FORMAT", _log_format, "Text", "JSON or Text")
    application_log_level = _get(
        environ,
        "AWS_LAMBDA_LOG_LEVEL",
        _application_level,
        None,
        "one of " + " ".join(APPLICATION_LOG_LEVELS),
    )
    if log_format == "JSON" and application_log_level is None:
        application_log_level = "INFO"  # Lambda's default application level in JSON mode
    if application_log_level is not None:
        runtime_environ["AWS_LAMBDA_LOG_LEVEL"] = application_log_level
    port = _get(environ, "PORT", _port, 8080, "a port number")
    metrics_port = _get(environ, "METRICS_PORT", _port, None, "a port number")
    function_url_port = _get(environ, "FUNCTION_URL_PORT", _port, None, "a port number")
    _check_function_url_port(
        function_url_port,
        port,
        metrics_port,
        range(runtime_port, runtime_port + max_concurrency),
    )
    return RapidConfig(
        command=executable_command,
        handler=handler,
        function=function,
        invoke_host=environ.get("INVOKE_API_HOST", "").strip() or "0.0.0.0",
        port=port,
        runtime_host=environ.get("RUNTIME_API_HOST", "").strip() or "127.0.0.1",
        runtime_port=runtime_port,
        max_concurrency=max_concurrency,
        provisioned_concurrency=provisioned,
        max_queued=_get(
            environ, "MAX_QUEUED_INVOCATIONS", _positive_int, 1000, "a whole number >= 1"
        ),
        idle_timeout=_get(
            environ,
            "AWS_LAMBDA_FUNCTION_IDLETIMEOUT",
            _seconds,
            1800.0,
            "a number of seconds > 0",
        ),
        shutdown_timeout=_get(
            environ, "SHUTDOWN_TIMEOUT", _seconds, 10.0, "a number of seconds > 0"
        ),
        log_level=_get(environ, "LOG_LEVEL", _level, LogLevel.info, _LEVEL_NAMES),
        print_reports=_get(environ, "PRINT_REPORTS", _boolean, False, "true or false"),
        enable_openfaas=_get(environ, "ENABLE_OPENFAAS", _boolean, False, "true or false"),
        metrics_port=metrics_port,
        function_url_port=function_url_port,
        function_url_invoke_mode=_function_url_invoke_mode(environ),
        log_format=log_format,
        application_log_level=application_log_level,
        amqp_uri=_amqp_uri(environ, None),
        amqp_prefetch=_get(
            environ,
            "AMQP_PREFETCH",
            _positive_int,
            5 * max_concurrency,
            "a whole number >= 1",
        ),
        runtime_environ=runtime_environ,
        extensions_dir=environ.get("EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR).strip() or None,
    )


def server_config(environ: Mapping[str, str]) -> ServerConfig:
    """Read the Lambda Server's settings; raise L{ConfigError} naming a bad one."""
    uri = _amqp_uri(environ, DEFAULT_SERVER_AMQP_URI)
    assert uri is not None
    port = _get(environ, "PORT", _port, 8080, "a port number")
    metrics_port = _get(environ, "METRICS_PORT", _port, None, "a port number")
    function_url_port = _get(environ, "FUNCTION_URL_PORT", _port, None, "a port number")
    _check_function_url_port(function_url_port, port, metrics_port, range(0))
    return ServerConfig(
        amqp_uri=uri,
        invoke_host=environ.get("INVOKE_API_HOST", "").strip() or "0.0.0.0",
        port=port,
        timeout=_get(
            environ,
            "AWS_LAMBDA_FUNCTION_TIMEOUT",
            _seconds,
            1800.0,
            "a number of seconds > 0",
        ),
        region=(
            environ.get("AWS_REGION", "").strip()
            or environ.get("AWS_DEFAULT_REGION", "").strip()
            or "us-east-1"
        ),
        log_level=_get(environ, "LOG_LEVEL", _level, LogLevel.info, _LEVEL_NAMES),
        metrics_port=metrics_port,
        log_format=_get(environ, "AWS_LAMBDA_LOG_FORMAT", _log_format, "Text", "JSON or Text"),
        function_url_port=function_url_port,
        function_url_invoke_mode=_function_url_invoke_mode(environ),
    )


_LEVEL_NAMES = "one of PANIC FATAL ERROR WARNING INFO DEBUG TRACE"
