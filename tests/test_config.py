"""
Reading the daemon's and the server's settings from an environment mapping.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import rapid_tap
from lambdarapid.config import (
    DAEMON_VARIABLES,
    DEFAULT_BOOTSTRAPS,
    DEFAULT_SERVER_AMQP_URI,
    ConfigError,
    RapidConfig,
    rapid_config,
    server_config,
)

#: A runtime command that exists everywhere the tests run.
PYTHON = sys.executable
RIC = (PYTHON, "-m", "awslambdaric", "echo.handler")
#: A minimal environment: enough PATH to resolve nothing by accident.
BASE = {"PATH": "/usr/bin:/bin"}


def config(environ: dict[str, str] | None = None, command: tuple[str, ...] = RIC) -> RapidConfig:
    return rapid_config(command, {**BASE, **(environ or {})})


class DefaultTests(SynchronousTestCase):
    """What an empty environment gives."""

    def test_defaults(self) -> None:
        """With no settings, every value is the documented default."""
        settings = config()
        self.assertEqual(settings.command, RIC)
        self.assertEqual(
            (
                settings.invoke_host,
                settings.port,
                settings.runtime_host,
                settings.runtime_port,
                settings.max_concurrency,
                settings.max_queued,
                settings.idle_timeout,
                settings.shutdown_timeout,
                settings.log_level,
                settings.print_reports,
                settings.enable_openfaas,
                settings.amqp_uri,
                settings.amqp_prefetch,
            ),
            (
                "0.0.0.0",
                8080,
                "127.0.0.1",
                9001,
                1,
                1000,
                1800.0,
                10.0,
                LogLevel.info,
                False,
                False,
                None,
                5,
            ),
        )
        function = settings.function
        self.assertEqual(
            (
                function.name,
                function.version,
                function.region,
                function.memory_size,
                function.timeout,
            ),
            ("echo", "$LATEST", "us-east-1", 3008, 3.0),
        )
        self.assertEqual(function.arn(), "arn:aws:lambda:us-east-1:012345678912:function:echo")

    def test_command_is_resolved_on_path(self) -> None:
        """A bare command name is resolved on the environment's PATH."""
        directory, name = os.path.split(PYTHON)
        settings = rapid_config((name, "app.handler"), {"PATH": directory})
        self.assertEqual(settings.command, (os.path.join(directory, name), "app.handler"))

    def test_settings_are_read(self) -> None:
        """Each variable sets its value."""
        settings = config(
            {
                "PORT": "9000",
                "INVOKE_API_HOST": "127.0.0.2",
                "RUNTIME_API_HOST": "127.0.0.3",
                "RUNTIME_API_PORT": "9500",
                "MAX_CONCURRENCY": "4",
                "MAX_QUEUED_INVOCATIONS": "7",
                "AWS_LAMBDA_FUNCTION_IDLETIMEOUT": "60",
                "SHUTDOWN_TIMEOUT": "2.5",
                "LOG_LEVEL": "debug",
                "PRINT_REPORTS": "true",
                "ENABLE_OPENFAAS": "1",
                "AWS_LAMBDA_FUNCTION_NAME": "named",
                "AWS_LAMBDA_FUNCTION_VERSION": "3",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
                "AWS_REGION": "eu-west-3",
            }
        )
        self.assertEqual(
            (
                settings.port,
                settings.invoke_host,
                settings.runtime_host,
                settings.runtime_port,
                settings.max_concurrency,
                settings.max_queued,
                settings.idle_timeout,
                settings.shutdown_timeout,
                settings.log_level,
                settings.print_reports,
                settings.enable_openfaas,
                settings.amqp_prefetch,
            ),
            (9000, "127.0.0.2", "127.0.0.3", 9500, 4, 7, 60.0, 2.5, LogLevel.debug, True, True, 20),
        )
        function = settings.function
        self.assertEqual(
            (function.name, function.version, function.memory_size, function.region),
            ("named", "3", 512, "eu-west-3"),
        )

    def test_default_region_fallback(self) -> None:
        """AWS_DEFAULT_REGION is used when AWS_REGION is unset."""
        self.assertEqual(config({"AWS_DEFAULT_REGION": "ap-south-1"}).function.region, "ap-south-1")

    def test_blank_values_are_defaults(self) -> None:
        """A variable set to blanks counts as unset."""
        self.assertEqual(config({"PORT": "  ", "MAX_CONCURRENCY": ""}).port, 8080)

    def test_fractional_timeout(self) -> None:
        """AWS_LAMBDA_FUNCTION_TIMEOUT accepts fractions of a second."""
        self.assertEqual(config({"AWS_LAMBDA_FUNCTION_TIMEOUT": "0.25"}).function.timeout, 0.25)


class HandlerTests(SynchronousTestCase):
    """The handler and the default function name."""

    def test_handler_is_last_argument(self) -> None:
        """With two or more arguments the handler is the last one, whatever _HANDLER says."""
        settings = config(
            {"_HANDLER": "ignored.handler"}, (PYTHON, "-m", "awslambdaric", "app.main")
        )
        self.assertEqual(settings.handler, "app.main")
        self.assertEqual(settings.function.name, "app")

    def test_two_arguments(self) -> None:
        """Exactly two arguments: the second is the handler."""
        self.assertEqual(config(command=(PYTHON, "mod.fn")).handler, "mod.fn")

    def test_handler_from_environment_with_one_argument(self) -> None:
        """With a single argument the handler is _HANDLER."""
        settings = config({"_HANDLER": "lib.handle"}, (PYTHON,))
        self.assertEqual(settings.handler, "lib.handle")
        self.assertEqual(settings.function.name, "lib")

    def test_name_is_handler_before_first_dot(self) -> None:
        """The default function name is the handler's part before the first dot."""
        self.assertEqual(config(command=(PYTHON, "pkg.mod.fn")).function.name, "pkg")

    def test_explicit_name_wins(self) -> None:
        """AWS_LAMBDA_FUNCTION_NAME overrides the name from the handler."""
        self.assertEqual(config({"AWS_LAMBDA_FUNCTION_NAME": "mine"}).function.name, "mine")

    def test_no_handler_names_after_executable(self) -> None:
        """With no handler at all the function is named after the executable."""
        settings = config(command=(PYTHON,))
        self.assertEqual(settings.handler, "")
        self.assertEqual(settings.function.name, os.path.basename(PYTHON))


class BadValueTests(SynchronousTestCase):
    """Malformed settings are ConfigErrors naming the variable."""

    def assert_rejected(self, name: str, value: str) -> None:
        error = self.assertRaises(ConfigError, config, {name: value})
        self.assertIn(name, str(error))
        self.assertNotIn("\n", str(error))

    def test_bad_values(self) -> None:
        """Zero, negative, non-numeric, unknown-level and non-boolean values each name their variable."""
        cases = [
            ("MAX_CONCURRENCY", "0"),
            ("MAX_CONCURRENCY", "1.5"),
            ("MAX_QUEUED_INVOCATIONS", "-3"),
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("RUNTIME_API_PORT", "0"),
            ("LOG_LEVEL", "loud"),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "-1"),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "0"),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "nan"),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "soon"),
            ("AWS_LAMBDA_FUNCTION_IDLETIMEOUT", "inf"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
            ("SHUTDOWN_TIMEOUT", "-5"),
            ("PRINT_REPORTS", "maybe"),
            ("ENABLE_OPENFAAS", "yes please"),
            ("AMQP_PREFETCH", "0"),
            ("METRICS_PORT", "metrics"),
            ("PROVISIONED_CONCURRENCY", "-1"),
            ("PROVISIONED_CONCURRENCY", "2"),  # more than MAX_CONCURRENCY (1)
            ("AWS_LAMBDA_LOG_FORMAT", "xml"),
            ("AWS_LAMBDA_LOG_LEVEL", "loud"),
        ]
        for name, value in cases:
            self.assert_rejected(name, value)

    def test_no_room_for_runtime_ports(self) -> None:
        """RUNTIME_API_PORT + MAX_CONCURRENCY past 65535 is a ConfigError naming both."""
        error = self.assertRaises(
            ConfigError, config, {"RUNTIME_API_PORT": "65535", "MAX_CONCURRENCY": "2"}
        )
        self.assertIn("RUNTIME_API_PORT", str(error))
        self.assertIn("MAX_CONCURRENCY", str(error))

    def test_bad_amqp_uri(self) -> None:
        """A non-AMQP URI is a ConfigError naming AMQP_URI, without echoing the URI."""
        error = self.assertRaises(ConfigError, config, {"AMQP_URI": "http://user:s3cret@host/"})
        self.assertIn("AMQP_URI", str(error))
        self.assertNotIn("s3cret", str(error))

    def test_missing_runtime_command(self) -> None:
        """A runtime command that does not exist is a ConfigError naming it."""
        error = self.assertRaises(ConfigError, config, {}, ("/nonexistent/runtime", "h.h"))
        self.assertIn("/nonexistent/runtime", str(error))

    def test_runtime_command_not_on_path(self) -> None:
        """A bare command name missing from PATH is a ConfigError."""
        self.assertRaises(ConfigError, config, {}, ("no-such-runtime-xyz",))

    def test_no_command_and_no_bootstrap(self) -> None:
        """No command and none of the bootstrap files is a ConfigError listing them."""
        error = self.assertRaises(ConfigError, config, {}, ())
        for path in DEFAULT_BOOTSTRAPS:
            self.assertIn(path, str(error))

    if any(os.path.exists(path) for path in DEFAULT_BOOTSTRAPS):
        test_no_command_and_no_bootstrap.skip = "a bootstrap exists on this machine"  # type: ignore[attr-defined]


class RuntimeEnvironTests(SynchronousTestCase):
    """What the runtime's environment inherits."""

    def test_daemon_settings_and_secrets_are_not_passed_on(self) -> None:
        """The daemon's own settings and AMQP credentials never reach runtime_environ; the rest does."""
        environ = {
            "PORT": "9000",
            "LOG_LEVEL": "INFO",
            "PRINT_REPORTS": "true",
            "MAX_CONCURRENCY": "2",
            "AMQP_URI": "amqp://alice:s3cret@broker:5672/%2F",
            "AMQP_USERNAME": "bob",
            "AMQP_PASSWORD": "hunter2",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "5",
            "MY_APP_SETTING": "kept",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        }
        runtime = config(environ).runtime_environ
        for name in DAEMON_VARIABLES:
            self.assertNotIn(name, runtime)
        self.assertNotIn("s3cret", "".join(runtime.values()))
        self.assertNotIn("hunter2", "".join(runtime.values()))
        self.assertEqual(runtime["MY_APP_SETTING"], "kept")
        self.assertEqual(runtime["AWS_ACCESS_KEY_ID"], "AKIDEXAMPLE")
        self.assertEqual(runtime["PATH"], BASE["PATH"])

    def test_task_root_and_runtime_dir(self) -> None:
        """LAMBDA_TASK_ROOT is kept when given; LAMBDA_RUNTIME_DIR defaults to /var/runtime."""
        runtime = config({"LAMBDA_TASK_ROOT": "/srv/task"}).runtime_environ
        self.assertEqual(runtime["LAMBDA_TASK_ROOT"], "/srv/task")
        self.assertEqual(runtime["LAMBDA_RUNTIME_DIR"], "/var/runtime")

    def test_amqp_uri_kept_for_the_daemon(self) -> None:
        """AMQP_URI is kept in the daemon's config (with credentials from AMQP_USERNAME/PASSWORD)."""
        settings = config(
            {"AMQP_URI": "amqp://broker:5672/%2F", "AMQP_USERNAME": "bob", "AMQP_PASSWORD": "pw"}
        )
        assert settings.amqp_uri is not None
        self.assertTrue(settings.amqp_uri.startswith("amqp://"))
        self.assertIn("broker:5672", settings.amqp_uri)


class FrozenRuntimeEnvironTests(SynchronousTestCase):
    """What a self-contained (PyInstaller) daemon must not pass on to runtimes."""

    BOOTLOADER = {
        "PATH": os.environ["PATH"],
        "LD_LIBRARY_PATH": "/tmp/_MEI123:/var/lang/lib",
        "LD_LIBRARY_PATH_ORIG": "/var/lang/lib",
        "_PYI_ARCHIVE_FILE": "/usr/local/bin/aws-lambda-rie",
        "_PYI_APPLICATION_HOME_DIR": "/tmp/_MEI123",
    }

    def freeze(self) -> None:
        """Look like a PyInstaller executable for this test (sys.frozen)."""
        sys.frozen = True  # type: ignore[attr-defined]
        self.addCleanup(delattr, sys, "frozen")

    def test_frozen_daemon_restores_the_library_path(self) -> None:
        """Frozen, the runtime gets the library path the daemon was started with and no _PYI_ variables."""
        self.freeze()
        environ = config(dict(self.BOOTLOADER)).runtime_environ
        self.assertEqual(environ["LD_LIBRARY_PATH"], "/var/lang/lib")
        self.assertEqual(
            [key for key in environ if key.startswith("_PYI_") or key == "LD_LIBRARY_PATH_ORIG"], []
        )

    def test_frozen_daemon_without_original_path_drops_it(self) -> None:
        """Frozen, with no library path before the bootloader's, the runtime gets none."""
        self.freeze()
        bootloader = dict(self.BOOTLOADER)
        del bootloader["LD_LIBRARY_PATH_ORIG"]
        self.assertNotIn("LD_LIBRARY_PATH", config(bootloader).runtime_environ)

    def test_unfrozen_daemon_keeps_the_library_path(self) -> None:
        """Not frozen, LD_LIBRARY_PATH is the user's own and passes through unchanged."""
        environ = config({"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/opt/lib"}).runtime_environ
        self.assertEqual(environ["LD_LIBRARY_PATH"], "/opt/lib")


class ServerConfigTests(SynchronousTestCase):
    """The Lambda Server's settings."""

    def test_defaults(self) -> None:
        """With no settings the server uses the local broker, port 8080 and a 1800 s fail-safe timeout."""
        settings = server_config({})
        self.assertEqual(settings.amqp_uri, DEFAULT_SERVER_AMQP_URI)
        self.assertEqual(
            (
                settings.invoke_host,
                settings.port,
                settings.timeout,
                settings.region,
                settings.log_level,
            ),
            ("0.0.0.0", 8080, 1800.0, "us-east-1", LogLevel.info),
        )

    def test_settings(self) -> None:
        """PORT, AWS_LAMBDA_FUNCTION_TIMEOUT, AWS_REGION and LOG_LEVEL are read."""
        settings = server_config(
            {
                "PORT": "8081",
                "AWS_LAMBDA_FUNCTION_TIMEOUT": "2.5",
                "AWS_REGION": "eu-north-1",
                "LOG_LEVEL": "ERROR",
            }
        )
        self.assertEqual(
            (settings.port, settings.timeout, settings.region, settings.log_level),
            (8081, 2.5, "eu-north-1", LogLevel.error),
        )

    def test_bad_values(self) -> None:
        """Bad server settings are ConfigErrors naming the variable."""
        for name, value in [
            ("PORT", "abc"),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "-1"),
            ("LOG_LEVEL", "loud"),
            ("AMQP_URI", "redis://x"),
        ]:
            error = self.assertRaises(ConfigError, server_config, {name: value})
            self.assertIn(name, str(error))


class OptionsTests(SynchronousTestCase):
    """The twistd plugin's options."""

    def test_good_options(self) -> None:
        """The positional arguments are the runtime command; the config is read from the given environ."""
        options = rapid_tap.Options(environ={**BASE, "PORT": "8123"})
        options.parseOptions(list(RIC))
        self.assertEqual(options["config"].port, 8123)
        self.assertEqual(options["config"].command, RIC)

    def test_bad_value_is_one_line_system_exit(self) -> None:
        """A bad setting is a SystemExit with one line starting 'lambda-rapid:' that names the variable."""
        for name, value in [("PORT", "abc"), ("MAX_CONCURRENCY", "0"), ("LOG_LEVEL", "loud")]:
            options = rapid_tap.Options(environ={**BASE, name: value})
            error = self.assertRaises(SystemExit, options.parseOptions, list(RIC))
            message = str(error.code)
            self.assertTrue(message.startswith("lambda-rapid: "), message)
            self.assertIn(name, message)
            self.assertNotIn("\n", message)

    def test_missing_command_is_system_exit(self) -> None:
        """A runtime command that does not exist stops the program with a one-line message."""
        options = rapid_tap.Options(environ=BASE)
        error = self.assertRaises(SystemExit, options.parseOptions, ["/nonexistent/runtime"])
        self.assertTrue(str(error.code).startswith("lambda-rapid: "))
