"""
Response streaming end to end: real runtimes streaming (the Node RIC's
C{awslambda.streamifyResponse}, a bash custom runtime writing chunks and
trailers), read by boto3's C{invoke_with_response_stream} and the AWS CLI.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from lambdarapid.testing import RunningDaemon, start_daemon

from .runtimes import (
    FUNCTIONS,
    NODE_TEST_TIMEOUT,
    function_environ,
    in_thread,
    lambda_client,
    node_example,
    start_python,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAM_BASH = os.path.join(FUNCTIONS, "stream-bash")
STREAM_PATH = "/2021-11-15/functions/function/response-streaming-invocations"


async def start_node(test: TestCase, **settings: object) -> RunningDaemon:
    """A daemon running the Node example's streaming handler."""
    # Room for a Node cold start on a loaded machine; the timeout test sets its own.
    settings.setdefault("AWS_LAMBDA_FUNCTION_TIMEOUT", 30)
    directory = await node_example()
    daemon = await start_daemon(
        ["node", os.path.join(directory, "node_modules", ".bin", "aws-lambda-ric"), "stream.handler"],
        function_environ(LAMBDA_TASK_ROOT=directory),
        **settings,
    )
    test.addCleanup(daemon.stop)
    return daemon


async def start_bash(test: TestCase, **settings: object) -> RunningDaemon:
    settings.setdefault("AWS_LAMBDA_FUNCTION_TIMEOUT", 30)
    daemon = await start_daemon(
        [os.path.join(STREAM_BASH, "bootstrap")],
        function_environ(LAMBDA_TASK_ROOT=STREAM_BASH, _HANDLER="stream.handler"),
        **settings,
    )
    test.addCleanup(daemon.stop)
    return daemon


def stream(daemon: RunningDaemon, event: Any, **parameters: Any) -> dict[str, Any]:
    """
    boto3's C{invoke_with_response_stream}, read to its end (blocking: run it
    in a thread): the answer, its events, and when each event arrived.
    """
    response: dict[str, Any] = lambda_client(daemon.url).invoke_with_response_stream(
        FunctionName="function", Payload=json.dumps(event).encode(), **parameters
    )
    events, arrived = [], []
    for event_ in response["EventStream"]:
        events.append(event_)
        arrived.append(time.monotonic())
    response["events"], response["arrived"] = events, arrived
    response["chunks"] = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    complete = [e["InvokeComplete"] for e in events if "InvokeComplete" in e]
    response["complete"] = complete
    return response


class NodeStreamingTests(TestCase):
    """The Node RIC's streamifyResponse, as boto3 reads it."""

    timeout = NODE_TEST_TIMEOUT

    async def test_chunks_arrive_as_written(self) -> None:
        """Two writes 1 s apart: the first reaches the caller well before the function ends."""
        daemon = await start_node(self)
        started = time.monotonic()
        answer = await in_thread(stream, daemon, {"parts": ["first ", "second"], "pause_ms": 1000})
        self.assertEqual(answer["StatusCode"], 200)
        self.assertEqual(answer["ResponseStreamContentType"], "text/plain")
        self.assertEqual(answer["ExecutedVersion"], "$LATEST")
        self.assertEqual(b"".join(answer["chunks"]), b"first second")
        self.assertEqual(answer["complete"], [{}])
        self.assertIn("InvokeComplete", answer["events"][-1])
        first = answer["arrived"][0]
        self.assertGreater(answer["arrived"][-1] - first, 0.8)  # the second came a second later
        self.assertLess(first - started, answer["arrived"][-1] - started - 0.8)

    async def test_example_client(self) -> None:
        """The example's boto3 streaming client prints each part, half a second apart, then InvokeComplete."""
        daemon = await start_node(self)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [os.path.join(ROOT, "examples", "echo", "clients", "invoke_stream_boto3.py"), daemon.url],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "200 text/plain")
        self.assertIn("b'streamed '", lines[1])
        self.assertIn("InvokeComplete", lines[-1])
        first, last = (float(line.split()[0]) for line in (lines[1], lines[3]))
        self.assertGreater(last - first, 0.8)

    async def test_throw_mid_stream(self) -> None:
        """A throw after one write: that write is delivered, InvokeComplete says Error; the next invoke works."""
        daemon = await start_node(self)
        answer = await in_thread(stream, daemon, {"parts": ["kept", "lost"], "fail_after": 1})
        self.assertEqual(answer["chunks"], [b"kept"])
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], "Error")
        self.assertEqual(json.loads(complete["ErrorDetails"])["errorMessage"], "failed mid-stream")
        again = await in_thread(stream, daemon, {"parts": ["again"]})
        self.assertEqual((answer["StatusCode"], again["chunks"], again["complete"]), (200, [b"again"], [{}]))

    async def test_ten_megabytes_whole(self) -> None:
        """A 10 MiB stream arrives whole, in order, in several chunks."""
        daemon = await start_node(self)
        size = 10 * 1024 * 1024
        answer = await in_thread(stream, daemon, {"size": size})
        body = b"".join(answer["chunks"])
        self.assertEqual((len(body), body.count(b"x")), (size, size))
        self.assertGreater(len(answer["chunks"]), 1)
        self.assertEqual(answer["complete"], [{}])

    async def test_plain_invoke_collects_the_stream(self) -> None:
        """Invoke (not the stream route) of a streaming function answers its whole body, with its content type."""
        daemon = await start_node(self)

        def invoke() -> dict[str, Any]:
            response: dict[str, Any] = lambda_client(daemon.url).invoke(
                FunctionName="function", Payload=b'{"parts": ["all ", "at ", "once"]}'
            )
            response["Payload"] = response["Payload"].read()
            return response

        response = await in_thread(invoke)
        self.assertEqual(response["Payload"], b"all at once")
        self.assertNotIn("FunctionError", response)
        self.assertEqual(response["ResponseMetadata"]["HTTPHeaders"]["content-type"], "text/plain")

    async def test_tail_log(self) -> None:
        """LogType Tail: InvokeComplete carries the invocation's log, START to REPORT."""
        daemon = await start_node(self)
        answer = await in_thread(stream, daemon, {"parts": ["x"]}, LogType="Tail")
        [complete] = answer["complete"]
        log = base64.b64decode(complete["LogResult"]).decode()
        self.assertIn("START RequestId:", log)
        self.assertIn("REPORT RequestId:", log)

    async def test_caller_hangs_up_mid_stream(self) -> None:
        """A caller hanging up mid-stream leaves the daemon serving: the next stream is whole."""
        daemon = await start_node(self)
        port = int(daemon.url.rsplit(":", 1)[1])
        body = json.dumps({"parts": ["a", "b", "c", "d"], "pause_ms": 300}).encode()

        def hang_up() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(
                    b"POST " + STREAM_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                return connection.recv(4096)  # the head and the first chunk, then gone

        head = await in_thread(hang_up)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        await deferLater(reactor, 1.5, lambda: None)  # the function runs on to its end
        again = await in_thread(stream, daemon, {"parts": ["whole"]})
        self.assertEqual((again["chunks"], again["complete"]), ([b"whole"], [{}]))

    async def test_timeout_mid_stream(self) -> None:
        """A stream cut by the function timeout: its chunks, then Sandbox.Timedout; the next one works."""
        daemon = await start_node(self, AWS_LAMBDA_FUNCTION_TIMEOUT=1)
        answer = await in_thread(stream, daemon, {"parts": ["early", "late"], "pause_ms": 3000})
        self.assertEqual(answer["chunks"], [b"early"])
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], "Sandbox.Timedout")
        again = await in_thread(stream, daemon, {"parts": ["next"]})
        self.assertEqual((again["chunks"], again["complete"]), ([b"next"], [{}]))


class BashStreamingTests(TestCase):
    """A bash custom runtime writing chunked responses and error trailers."""

    timeout = 60

    async def test_chunks_and_error_trailer(self) -> None:
        """Each chunk arrives; the Error-Type trailer becomes ErrorCode, the decoded body ErrorDetails."""
        daemon = await start_bash(self)
        answer = await in_thread(
            stream, daemon, {"parts": ["one", "two"], "pause": 0.5, "error": "Function.StreamBroken"}
        )
        self.assertEqual(answer["chunks"], [b"one", b"two"])
        self.assertGreater(answer["arrived"][1] - answer["arrived"][0], 0.3)
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], "Function.StreamBroken")
        self.assertEqual(
            json.loads(complete["ErrorDetails"]),
            {"errorType": "Function.StreamBroken", "errorMessage": "the stream broke"},
        )
        ok = await in_thread(stream, daemon, {"parts": ["fine"]})
        self.assertEqual((ok["chunks"], ok["complete"]), ([b"fine"], [{}]))


    async def test_exit_mid_stream(self) -> None:
        """A runtime exiting mid-stream: what it sent, then its exit as the error; the next invocation works."""
        daemon = await start_bash(self)
        answer = await in_thread(stream, daemon, {"parts": ["before"], "exit": True})
        self.assertEqual(answer["chunks"], [b"before"])
        [complete] = answer["complete"]
        # Its exit, or its connection's end if that is read first: either way the stream is cut.
        self.assertIn(complete["ErrorCode"], ("Runtime.ExitError", "Runtime.TruncatedResponse"))
        ok = await in_thread(stream, daemon, {"parts": ["after"]})
        self.assertEqual((ok["chunks"], ok["complete"]), ([b"after"], [{}]))

    async def test_dry_run(self) -> None:
        """DryRun on the stream route is 204, as for Invoke, and runs nothing."""
        daemon = await start_bash(self)

        def call() -> int:
            response = lambda_client(daemon.url).invoke_with_response_stream(
                FunctionName="function", Payload=b"{}", InvocationType="DryRun"
            )
            return int(response["StatusCode"])

        self.assertEqual(await in_thread(call), 204)
        self.assertNotIn(b"streaming response for", daemon.output)


class BufferedFunctionTests(TestCase):
    """A function that does not stream, invoked on the stream route."""

    timeout = 30

    async def test_one_payload_streamed(self) -> None:
        """awslambdaric's buffered answer comes as one PayloadChunk and InvokeComplete, as application/json."""
        daemon = await start_python(self, "handlers.echo")
        answer = await in_thread(stream, daemon, {"a": 1})
        self.assertEqual(json.loads(b"".join(answer["chunks"])), {"a": 1})
        self.assertEqual(answer["complete"], [{}])
        self.assertEqual(answer["ResponseStreamContentType"], "application/json")

    async def test_function_error_is_the_completion(self) -> None:
        """A raising buffered function: no PayloadChunk, InvokeComplete with its errorType and document."""
        daemon = await start_python(self, "handlers.fail")
        answer = await in_thread(stream, daemon, {})
        self.assertEqual(answer["chunks"], [])
        [complete] = answer["complete"]
        self.assertEqual(complete["ErrorCode"], json.loads(complete["ErrorDetails"])["errorType"])

    async def test_unknown_function_is_404(self) -> None:
        """Another function's name is 404 ResourceNotFoundException, before any stream."""
        daemon = await start_python(self, "handlers.echo")

        def call() -> str:
            try:
                lambda_client(daemon.url).invoke_with_response_stream(FunctionName="other", Payload=b"{}")
            except Exception as error:
                return type(error).__name__
            return "no error"

        self.assertEqual(await in_thread(call), "ResourceNotFoundException")

