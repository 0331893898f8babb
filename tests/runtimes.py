"""
How the end-to-end tests run the fixture functions in C{tests/functions}.

awslambdaric imports the handler's module by name, from C{sys.path}: the
runtime is given the fixtures' directory on C{PYTHONPATH} (trial runs tests
from C{_trial_temp}, so the working directory would not do).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from typing import Any, Callable, TypeVar

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from lambdarapid.config import DAEMON_VARIABLES
from lambdarapid.testing import RunningDaemon, start_daemon

T = TypeVar("T")

FUNCTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "functions")
BASH_FUNCTION = os.path.join(FUNCTIONS, "bash")
#: A custom runtime that starts a background process and exits on its own.
LEFTOVER_FUNCTION = os.path.join(FUNCTIONS, "leftover")
BIN = os.path.dirname(sys.executable)


def python_runtime(handler: str) -> list[str]:
    """The awslambdaric RIC serving C{handler} (C{module.function}) from the fixtures."""
    return [sys.executable, "-m", "awslambdaric", handler]


def function_environ(**extra: str) -> dict[str, str]:
    """
    This process's environment without any daemon setting it may carry,
    with the fixtures importable, our interpreter first on PATH, and C{extra}.
    """
    environ = {key: value for key, value in os.environ.items() if key not in DAEMON_VARIABLES}
    environ.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    environ["PATH"] = BIN + os.pathsep + environ.get("PATH", os.defpath)
    environ["PYTHONPATH"] = FUNCTIONS
    environ["LAMBDA_TASK_ROOT"] = FUNCTIONS
    environ.update(extra)
    return environ


async def start_python(
    test: TestCase, handler: str, environ: dict[str, str] | None = None, **settings: object
) -> RunningDaemon:
    """A daemon running C{handler} in awslambdaric, stopped when C{test} ends."""
    daemon = await start_daemon(
        python_runtime(handler), function_environ() if environ is None else environ, **settings
    )
    test.addCleanup(daemon.stop)
    return daemon


def lambda_client(url: str) -> Any:
    """What our users run: boto3's Lambda client, without retries, aimed at C{url}."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


async def in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (boto3) in the reactor's thread pool."""
    result: T = await deferToThread(call, *args, **kwargs)
    return result


def running(pid: int) -> bool:
    """Whether process C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def kill_if_running(pid: int) -> None:
    """Cleanup: SIGKILL process C{pid}, which this test started, if it is still there."""
    if running(pid):
        os.kill(pid, signal.SIGKILL)


async def wait_until_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process C{pid} is gone within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        await deferLater(reactor, 0.02, lambda: None)
    return True


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_EXAMPLE = os.path.join(ROOT, "examples", "echo", "node")
#: The Node example with its node_modules, built once and reused between runs (git-ignored).
NODE_DIR = os.path.join(ROOT, "build", "test-artifacts", "node-echo")
#: How long a test that needs the Node example may take: the first one runs npm install,
#: and aws-lambda-ric compiles native code (a minute or two).
NODE_TEST_TIMEOUT = 600


async def node_example() -> str:
    """
    The Node example's directory with aws-lambda-ric installed. npm runs in a
    directory of its own that is renamed into place only once the install has
    succeeded, so a test timed out mid-install leaves nothing half-built for
    the next one. The example's handlers are copied in as they are now.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SkipTest("Node.js is not installed")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "aws-lambda-ric")):
        building = f"{NODE_DIR}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(NODE_EXAMPLE, building)
        environ = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", os.defpath))
        out, err, code = await getProcessOutputAndValue(
            "npm", ["install", "--no-audit", "--no-fund"], env=environ, path=building
        )
        if code != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise AssertionError(out.decode()[-2000:] + err.decode()[-2000:])
        shutil.rmtree(NODE_DIR, ignore_errors=True)
        os.rename(building, NODE_DIR)
    for name in os.listdir(NODE_EXAMPLE):
        if name.endswith(".mjs"):
            shutil.copy(os.path.join(NODE_EXAMPLE, name), NODE_DIR)
    return NODE_DIR
