"""
The commands the Kubernetes and OpenFaaS examples' containers run, run here.

No container engine runs these tests, so each container's command runs
directly, as a process, with the environment its manifest gives it: free
loopback ports instead of 8080 and 9001, the local RabbitMQ (127.0.0.1:5672,
guest/guest) instead of the cluster's, and a function (and queue) name no
other test uses. The Lambda base image's own entrypoint is reproduced by a
stand-in with the same shape (C{/lambda-entrypoint.sh HANDLER} exporting
C{_HANDLER} and running C{aws-lambda-rie /var/runtime/bootstrap}), so what
lambdarapid is given there is what it is given here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import time
import uuid
from io import BytesIO
from typing import Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from lambdarapid.config import DAEMON_VARIABLES
from lambdarapid.testing import InvokeClient, InvokeResult, free_port, free_port_block

from .executable import built_executable
from .test_manifests import (
    KIND_LAMBDA,
    KIND_OPENFAAS,
    container_environ,
    daemon_config,
    dockerfile_handler,
    function_container,
    kind_lambda_objects,
    lambdarapid_containers,
    pod_spec,
    stack,
)

BIN = os.path.dirname(sys.executable)
LAMBDA_RAPID = os.path.join(BIN, "lambda-rapid")
LAMBDA_SERVER = os.path.join(BIN, "lambda-server")
LOCAL_BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: What a Python Lambda base image sets, which its runtime must get unchanged.
IMAGE_LIBRARY_PATH = (
    "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
)

#: The Lambda base image's /lambda-entrypoint.sh, with its two paths made ours.
ENTRYPOINT = """#!/bin/sh
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi
export _HANDLER="$1"

RUNTIME_ENTRYPOINT={bootstrap}
if [ -z "${{AWS_LAMBDA_RUNTIME_API}}" ]; then
  exec {rie} $RUNTIME_ENTRYPOINT
else
  exec $RUNTIME_ENTRYPOINT
fi
"""

#: Stands in for the image's /var/runtime/bootstrap: notes what it was given,
#: then runs the Python RIC on the handler (the image's bootstrap reads _HANDLER).
BOOTSTRAP = """#!/bin/sh
{{
  echo "argc=$#"
  echo "args=$*"
  echo "_HANDLER=$_HANDLER"
  echo "AWS_LAMBDA_RUNTIME_API=$AWS_LAMBDA_RUNTIME_API"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "cwd=$(pwd)"
}} > "$BOOTSTRAP_RECORD"
if [ $# -eq 0 ]; then
  set -- "$_HANDLER"
fi
exec {python} -m awslambdaric "$@"
"""


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Child(ProcessProtocol):
    """A command run by a test: its output and how it ended."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exit: int | str | None = None
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        error = reason.value
        if isinstance(error, ProcessTerminated) and error.signal is not None:
            self.exit = f"signal {error.signal}"
        elif isinstance(error, (ProcessDone, ProcessTerminated)):
            self.exit = error.exitCode or 0
        else:
            self.exit = str(error)
        self.ended.callback(None)

    def signal(self, signum: int) -> None:
        if self.exit is None:
            self.transport.signalProcess(signum)  # type: ignore[union-attr]

    def describe(self) -> str:
        return f"exit {self.exit}; output {bytes(self.output[-3000:])!r}"

    async def finished(self, timeout: float) -> int | str:
        """The exit status within C{timeout} seconds (else SIGKILL, and fail)."""
        deadline = time.monotonic() + timeout
        while self.exit is None and time.monotonic() < deadline:
            await sleep(0.05)
        if self.exit is None:
            self.signal(signal.SIGKILL)
            await self.ended
            raise AssertionError(f"still running after {timeout} s; {self.describe()}")
        return self.exit


def spawn(test: TestCase, argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> Child:
    """Run C{argv}; at the end of the test, SIGTERM it (SIGKILL after 10 s)."""
    child = Child()
    reactor.spawnProcess(child, argv[0], list(argv), env=dict(environ), path=cwd)  # type: ignore[attr-defined]

    async def stop() -> None:
        if child.exit is None:
            child.signal(signal.SIGTERM)
            await child.finished(10)

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return child


def base_environ(**settings: str) -> dict[str, str]:
    """This process's environment minus anything lambdarapid reads, our interpreter first on PATH."""
    skipped = set(DAEMON_VARIABLES) | {
        "AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT",
        "LD_LIBRARY_PATH", "PYTHONPATH",
    }  # fmt: skip
    environ = {key: value for key, value in os.environ.items() if key not in skipped}
    environ["PATH"] = BIN + os.pathsep + environ.get("PATH", os.defpath)
    environ.update(settings)
    return environ


def loopback(environ: Mapping[str, str], max_concurrency: int) -> dict[str, str]:
    """A manifest's environment with free loopback ports and the local broker substituted."""
    local = dict(environ)
    local.update(
        PORT=str(free_port()),
        RUNTIME_API_PORT=str(free_port_block(max_concurrency)),
        INVOKE_API_HOST="127.0.0.1",
    )
    if "METRICS_PORT" in local:
        local["METRICS_PORT"] = str(free_port())
    if "AMQP_URI" in local:
        local["AMQP_URI"] = LOCAL_BROKER
    return local


async def http(method: bytes, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection, within 10 s."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    headers = Headers({b"content-type": [b"application/json"]})
    request = agent.request(method, url.encode("ascii"), headers, producer)
    response = await request.addTimeout(10, reactor)
    content: bytes = await readBody(response)
    return response.code, content


async def until_ready(
    child: Child, port: int, path: str = "/_/ready", timeout: float = 20.0
) -> None:
    """Poll GET C{path} (the readinessProbe) on C{port} until it answers 200."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline and child.exit is None:
        try:
            status, _ = await http(b"GET", f"http://127.0.0.1:{port}{path}")
            if status == 200:
                return
            last = status
        except ConnectError as error:
            last = error
        await sleep(0.1)
    raise AssertionError(f"{path} never answered 200 (last: {last!r}); {child.describe()}")


def task_root(test: TestCase, folder: str) -> str:
    """A copy of an example's task root: the image's /var/task."""
    root = os.path.abspath(test.mktemp())
    os.makedirs(root)
    shutil.copy(os.path.join(folder, "echo.py"), root)
    return root


def executable_file(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_record(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as stream:
        return dict(line.rstrip("\n").split("=", 1) for line in stream if "=" in line)


class KindLambdaCommandTests(TestCase):
    """The kind-lambda function and Lambda Server containers' commands, with their manifests' environment."""

    timeout = 60

    def function_environ(self) -> tuple[dict[str, str], str, int]:
        """The echo Deployment's environment made local; its unique function name; the grace period."""
        objects = kind_lambda_objects()
        deployment, container = function_container(objects)
        manifest = container_environ(container, objects)
        settings = daemon_config(manifest, dockerfile_handler(KIND_LAMBDA))
        name = f"echo-{uuid.uuid4().hex[:8]}"
        environ = loopback(manifest, settings.max_concurrency)
        environ["AWS_LAMBDA_FUNCTION_NAME"] = name
        grace = int(pod_spec(deployment).get("terminationGracePeriodSeconds", 30))
        return environ, name, grace

    def start_function(self) -> tuple[Child, int, str, int, int]:
        """`lambda-rapid python3 -m awslambdaric echo.handler` in a copy of the task root."""
        environ, name, grace = self.function_environ()
        root = task_root(self, KIND_LAMBDA)
        child = spawn(
            self,
            [LAMBDA_RAPID, "python3", "-m", "awslambdaric", "echo.handler"],
            base_environ(LAMBDA_TASK_ROOT=root, **environ),
            cwd=root,
        )
        return child, int(environ["PORT"]), name, grace, int(environ["METRICS_PORT"])

    async def test_function_command_is_ready_and_serves_invocations(self) -> None:
        """With echo.yaml's environment the daemon answers its probes (/readyz once on the broker, /healthz), invokes, and exits 0 on SIGTERM within the grace period."""
        child, port, name, grace, metrics_port = self.start_function()
        await until_ready(child, metrics_port, "/readyz")
        status, _ = await http(b"GET", f"http://127.0.0.1:{metrics_port}/healthz")
        self.assertEqual(status, 200)
        status, text = await http(b"GET", f"http://127.0.0.1:{metrics_port}/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"lambdarapid_amqp_connected 1.0", text)
        client = InvokeClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)
        result = await client.invoke({"via": "invoke api"}, function_name=name)
        self.assertEqual((result.status, result.json()), (200, {"via": "invoke api"}))
        await client.close()
        child.signal(signal.SIGTERM)
        self.assertEqual(await child.finished(grace), 0, child.describe())

    async def test_lambda_server_command_invokes_the_function_over_amqp(self) -> None:
        """With lambda-server.yaml's environment `lambda-server` invokes the function by name over RabbitMQ (200, Event 202, unknown 404)."""
        function, _, name, _, metrics_port = self.start_function()
        objects = kind_lambda_objects()
        ((_, container),) = lambdarapid_containers(objects, "server")
        environ = loopback(container_environ(container, objects), 1)
        environ.pop("RUNTIME_API_PORT")
        server = spawn(self, [LAMBDA_SERVER], base_environ(**environ), cwd=self.mktemp_dir())
        await until_ready(function, metrics_port, "/readyz")
        client = InvokeClient(f"http://127.0.0.1:{environ['PORT']}")
        self.addCleanup(client.close)
        result = await self.first_answer(server, client, {"via": "lambda-server"}, name)
        self.assertEqual((result.status, result.json()), (200, {"via": "lambda-server"}))
        self.assertIsNone(result.function_error)
        event = await client.invoke({"via": "event"}, function_name=name, invocation_type="Event")
        self.assertEqual(event.status, 202)
        missing = await client.invoke({}, function_name=f"nobody-{uuid.uuid4().hex[:8]}")
        self.assertEqual((missing.status, missing.error_type), (404, "ResourceNotFoundException"))

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    async def first_answer(
        self, server: Child, client: InvokeClient, payload: object, name: str
    ) -> InvokeResult:
        """Invoke through the server once it listens and is on the broker (within 20 s)."""
        deadline = time.monotonic() + 20
        while True:
            try:
                result = await client.invoke(payload, function_name=name)
                if result.status != 503:
                    return result
            except ConnectError:
                pass
            if server.exit is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server never answered; {server.describe()}")
            await sleep(0.1)


class ImageShapeTestCase(TestCase):
    """Runs a Lambda base image's commands: its entrypoint, bootstrap and task root, stand-ins here."""

    timeout = 60

    def layout(self, rie: str) -> tuple[str, str, str, str]:
        """A task root, a stand-in bootstrap and entrypoint, and the bootstrap's record file."""
        root = task_root(self, KIND_OPENFAAS)
        runtime = os.path.abspath(self.mktemp())
        os.makedirs(runtime)
        bootstrap = executable_file(
            os.path.join(runtime, "bootstrap"), BOOTSTRAP.format(python=sys.executable)
        )
        entrypoint = executable_file(
            os.path.join(runtime, "lambda-entrypoint.sh"),
            ENTRYPOINT.format(bootstrap=bootstrap, rie=rie),
        )
        return root, bootstrap, entrypoint, os.path.join(runtime, "record")

    def environ(self, root: str, record: str) -> dict[str, str]:
        """The echo function's stack.yml environment, made local, in an image-like environment."""
        (function,) = stack()["functions"].values()
        settings = daemon_config(function["environment"], dockerfile_handler(KIND_OPENFAAS))
        return base_environ(
            LAMBDA_TASK_ROOT=root,
            LD_LIBRARY_PATH=IMAGE_LIBRARY_PATH,
            BOOTSTRAP_RECORD=record,
            **loopback(function["environment"], settings.max_concurrency),
        )

    async def serve(self, argv: Sequence[str], environ: Mapping[str, str], root: str) -> Child:
        """Run the container's command; check it is ready and answers the gateway's request on `/`."""
        child = spawn(self, argv, environ, cwd=root)
        port = int(environ["PORT"])
        await until_ready(child, port)
        status, body = await http(b"POST", f"http://127.0.0.1:{port}/", b'{"via": "gateway"}')
        self.assertEqual((status, json.loads(body)), (200, {"via": "gateway"}), child.describe())
        client = InvokeClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)
        result = await client.invoke({"by": "name"}, function_name="echo")
        self.assertEqual((result.status, result.json()), (200, {"by": "name"}))
        return child


class LambdaImageEntrypointTests(ImageShapeTestCase):
    """The Lambda base image's entrypoint running lambdarapid as aws-lambda-rie, with stack.yml's environment."""

    async def test_entrypoint_runs_lambda_rapid_with_the_handler_in_the_environment(self) -> None:
        """`/lambda-entrypoint.sh echo.handler` runs `lambda-rapid /var/runtime/bootstrap`; the bootstrap gets no argument and _HANDLER=echo.handler."""
        root, _, entrypoint, record = self.layout(LAMBDA_RAPID)
        environ = self.environ(root, record)
        await self.serve([entrypoint, dockerfile_handler(KIND_OPENFAAS)], environ, root)
        given = read_record(record)
        self.assertEqual((given["argc"], given["_HANDLER"]), ("0", "echo.handler"))
        runtime_api = f"127.0.0.1:{environ['RUNTIME_API_PORT']}"
        self.assertEqual(given["AWS_LAMBDA_RUNTIME_API"], runtime_api)
        self.assertEqual(os.path.realpath(given["cwd"]), os.path.realpath(root))

    async def test_handler_as_last_argument_reaches_the_bootstrap(self) -> None:
        """`lambda-rapid <bootstrap> echo.handler` passes the handler to the bootstrap as $1 and as _HANDLER."""
        root, bootstrap, _, record = self.layout(LAMBDA_RAPID)
        environ = self.environ(root, record)
        await self.serve([LAMBDA_RAPID, bootstrap, "echo.handler"], environ, root)
        given = read_record(record)
        self.assertEqual(
            (given["argc"], given["args"], given["_HANDLER"]), ("1", "echo.handler", "echo.handler")
        )
        self.assertEqual(given["LD_LIBRARY_PATH"], IMAGE_LIBRARY_PATH)


class ExecutableEntrypointTests(ImageShapeTestCase):
    """The image's real shape: the entrypoint runs the self-contained executable as aws-lambda-rie."""

    timeout = 300

    async def test_entrypoint_runs_the_executable(self) -> None:
        """`/lambda-entrypoint.sh echo.handler` with the executable as aws-lambda-rie serves the function."""
        root, _, entrypoint, record = self.layout(await built_executable())
        environ = self.environ(root, record)
        await self.serve([entrypoint, "echo.handler"], environ, root)
        given = read_record(record)
        self.assertEqual((given["argc"], given["_HANDLER"]), ("0", "echo.handler"))

    async def test_executable_leaves_the_library_path_alone(self) -> None:
        """The runtime started by the self-contained executable gets the image's LD_LIBRARY_PATH, not PyInstaller's."""
        root, _, entrypoint, record = self.layout(await built_executable())
        environ = self.environ(root, record)
        await self.serve([entrypoint, "echo.handler"], environ, root)
        self.assertEqual(read_record(record)["LD_LIBRARY_PATH"], IMAGE_LIBRARY_PATH)

