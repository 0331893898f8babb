"""
The Lambda Server and the daemon end to end over a real RabbitMQ: every
Invoke API outcome a caller can see through the server, and boto3 against it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lambdarapid import errors
from lambdarapid.amqp.invoker import STARTUP_REROUTE
from lambdarapid.invocation import InvocationType, check_payload

from .amqp_support import (
    caller,
    count_starts,
    deploy,
    eventually,
    function_name,
    lambda_server,
    within,
)


class ThroughServerTests(TestCase):
    """Invocations through lambda-server to a daemon consuming the function's queue."""

    timeout = 30

    async def deployed(self, **settings: Any):
        """A daemon for a fresh function, a server, both connected; and a caller."""
        name = function_name()
        daemon = deploy(self, reactor, name, **settings)
        server = lambda_server(self, reactor)
        await daemon.wait_connected()
        await server.wait_connected()
        return name, daemon, server, caller(self, reactor)

    async def test_success(self) -> None:
        """The function's result comes back as a 200 with the event echoed and botocore's headers."""
        name, daemon, server, http = await self.deployed()
        payload = {"hello": "world", "n": 1}
        answer = await http.invoke(server.url, name, payload)
        self.assertEqual((answer.status, answer.json()), (200, payload))
        self.assertEqual(answer.headers.get("x-amz-executed-version"), "$LATEST")
        self.assertNotIn("x-amz-function-error", answer.headers)
        self.assertTrue(answer.headers.get("x-amzn-requestid"))

    async def test_function_error(self) -> None:
        """A handler that raises is a 200 with X-Amz-Function-Error: Unhandled and the runtime's error JSON."""
        name, daemon, server, http = await self.deployed()
        answer = await http.invoke(server.url, name, {"fail": "on purpose"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers.get("x-amz-function-error"), "Unhandled")
        error = answer.json()
        self.assertEqual((error["errorType"], error["errorMessage"]), ("ValueError", "on purpose"))

    async def test_timeout(self) -> None:
        """A run past the daemon's AWS_LAMBDA_FUNCTION_TIMEOUT answers Sandbox.Timedout when the timeout hits."""
        name, daemon, server, http = await self.deployed(AWS_LAMBDA_FUNCTION_TIMEOUT=1)
        answer = await http.invoke(server.url, name, {"sleep": 10})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers.get("x-amz-function-error"), "Unhandled")
        self.assertEqual(answer.json()["errorType"], "Sandbox.Timedout")
        self.assertIn("Task timed out after 1.00 seconds", answer.json()["errorMessage"])
        # At the timeout, well before the 10 s run would have ended.
        self.assertLess(answer.seconds, 8.0)

    async def test_event(self) -> None:
        """An Event invocation is a 202 with an empty body, and the function really runs afterwards."""
        name, daemon, server, http = await self.deployed()
        marker = f"event-ran-{uuid.uuid4().hex}"
        answer = await http.invoke(
            server.url, name, {"print": marker}, x_amz_invocation_type="Event"
        )
        self.assertEqual((answer.status, answer.body), (202, b""))
        await eventually(
            reactor, lambda: marker.encode() in daemon.output, 10, "the Event's output printed"
        )

    async def test_dry_run_deployed(self) -> None:
        """DryRun for a function with a daemon on its queue is a 204 with an empty body, and runs nothing."""
        name, daemon, server, http = await self.deployed(PRINT_REPORTS="true")
        answer = await http.invoke(server.url, name, {}, x_amz_invocation_type="DryRun")
        self.assertEqual((answer.status, answer.body), (204, b""))
        self.assertNotIn(b"START RequestId", bytes(daemon.output))

    async def test_dry_run_unknown(self) -> None:
        """DryRun for a function nobody serves is a 404 ResourceNotFoundException."""
        server = lambda_server(self, reactor)
        await server.wait_connected()
        answer = await caller(self, reactor).invoke(
            server.url, function_name("nobody"), {}, x_amz_invocation_type="DryRun"
        )
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.headers.get("x-amzn-errortype"), "ResourceNotFoundException")

    async def test_tail(self) -> None:
        """X-Amz-Log-Type: Tail answers X-Amz-Log-Result, the base64 log of this invocation."""
        name, daemon, server, http = await self.deployed()
        marker = f"tail-line-{uuid.uuid4().hex}"
        answer = await http.invoke(server.url, name, {"print": marker}, x_amz_log_type="Tail")
        self.assertEqual(answer.status, 200)
        self.assertIn(marker, answer.log_tail)

    async def test_unknown_function(self) -> None:
        """A function nobody serves is a 404 ResourceNotFoundException at once (the broker returns the message)."""
        server = lambda_server(self, reactor)
        await server.wait_connected()
        # Steady state: past the first seconds, when an unroutable request may
        # be a daemon that started with the server and has not declared its queue.
        await deferLater(reactor, STARTUP_REROUTE, lambda: None)
        name = function_name("nobody")
        answer = await caller(self, reactor).invoke(server.url, name, {"x": 1})
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.headers.get("x-amzn-errortype"), "ResourceNotFoundException")
        self.assertEqual(
            answer.json(),
            {
                "Type": "User",
                "Message": f"Function not found: arn:aws:lambda:us-east-1:012345678912:function:{name}",
            },
        )
        # From the broker's return, not after a reroute window or the fail-safe timeout.
        self.assertLess(answer.seconds, 5.0)

    async def test_fail_safe_timeout(self) -> None:
        """With no reply in the server's AWS_LAMBDA_FUNCTION_TIMEOUT, the server answers Sandbox.Timedout itself."""
        name = function_name()
        daemon = deploy(self, reactor, name, AWS_LAMBDA_FUNCTION_TIMEOUT=10, PRINT_REPORTS="true")
        server = lambda_server(self, reactor, AWS_LAMBDA_FUNCTION_TIMEOUT=1)
        await daemon.wait_connected()
        await server.wait_connected()
        http = caller(self, reactor)
        answer = await http.invoke(server.url, name, {"sleep": 6})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers.get("x-amz-function-error"), "Unhandled")
        self.assertEqual(answer.json()["errorType"], "Sandbox.Timedout")
        self.assertEqual(answer.body, errors.timed_out_body(answer.headers["x-amzn-requestid"], 1.0))
        # The server's 1 s, not the function's 6 s run.
        self.assertLess(answer.seconds, 5.0)
        # The late reply is dropped, and the next caller gets its own answer.
        await eventually(
            reactor, lambda: b"END RequestId" in daemon.output, 10, "the slow run finished"
        )
        later = await http.invoke(server.url, name, {"after": True})
        self.assertEqual((later.status, later.json()), (200, {"after": True}))

    async def test_unserved_qualifier_answers_as_the_daemon_does(self) -> None:
        """?Qualifier=v9 through the server gets exactly the daemon's own 404 (status, error type, body); $LATEST runs."""
        name, daemon, server, http = await self.deployed(PRINT_REPORTS="true")
        direct = await http.invoke(daemon.url, name, {"q": 1}, query="Qualifier=v9")
        routed = await http.invoke(server.url, name, {"q": 1}, query="Qualifier=v9")
        self.assertEqual(direct.status, 404)
        self.assertEqual(
            (routed.status, routed.headers.get("x-amzn-errortype"), routed.body),
            (direct.status, direct.headers.get("x-amzn-errortype"), direct.body),
        )
        self.assertIn(":function:" + name + ":v9", routed.json()["Message"])
        latest = await http.invoke(server.url, name, {"q": 2}, query="Qualifier=$LATEST")
        self.assertEqual((latest.status, latest.json()), (200, {"q": 2}))
        self.assertEqual(count_starts(daemon.output), 1)

    async def test_invalid_json_is_a_400(self) -> None:
        """A payload that is not JSON gets 400 InvalidRequestContentException through the server, as on the Invoke API."""
        name, daemon, server, http = await self.deployed(PRINT_REPORTS="true")
        try:
            check_payload(b"{nope", InvocationType.REQUEST_RESPONSE)
        except errors.APIError as error:
            expected = error
        answer = await http.invoke(server.url, name, b"{nope")
        self.assertEqual(
            (answer.status, answer.headers.get("x-amzn-errortype"), answer.body),
            (400, "InvalidRequestContentException", expected.body),
        )
        after = await http.invoke(server.url, name, {"after": True})
        self.assertEqual((after.status, after.json()), (200, {"after": True}))
        self.assertEqual(count_starts(daemon.output), 1)


def _lambda_client(endpoint_url: str):
    return boto3.client(
        "lambda",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=15,
        ),
    )


class Boto3Tests(TestCase):
    """boto3's Lambda client, pointed at the Lambda Server, as users run it."""

    timeout = 30

    async def test_boto3_invoke(self) -> None:
        """boto3 reads the payload, FunctionError, LogResult and the Event/DryRun status codes from the server."""
        name = function_name()
        daemon = deploy(self, reactor, name)
        server = lambda_server(self, reactor)
        await daemon.wait_connected()
        await server.wait_connected()
        marker = f"boto3-{uuid.uuid4().hex}"

        def calls():
            client = _lambda_client(server.url)
            ok = client.invoke(
                FunctionName=name, Payload=json.dumps({"print": marker}), LogType="Tail"
            )
            failed = client.invoke(FunctionName=name, Payload=json.dumps({"fail": "boto3"}))
            event = client.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
            dry = client.invoke(FunctionName=name, InvocationType="DryRun")
            return (
                (
                    ok["StatusCode"],
                    json.loads(ok["Payload"].read()),
                    ok.get("FunctionError"),
                    ok["LogResult"],
                ),
                (
                    failed["StatusCode"],
                    failed.get("FunctionError"),
                    json.loads(failed["Payload"].read()),
                ),
                event["StatusCode"],
                dry["StatusCode"],
            )

        ok, failed, event, dry = await within(deferToThread(calls), 25, reactor)
        self.assertEqual(ok[:3], (200, {"print": marker}, None))
        self.assertIn(marker, base64.b64decode(ok[3]).decode())
        self.assertEqual(failed[:2], (200, "Unhandled"))
        self.assertEqual(failed[2]["errorType"], "ValueError")
        self.assertEqual((event, dry), (202, 204))

    async def test_boto3_unknown_function(self) -> None:
        """boto3 raises ResourceNotFoundException, quickly, for a function nobody serves."""
        server = lambda_server(self, reactor)
        await server.wait_connected()
        name = function_name("nobody")

        def call():
            start = time.monotonic()
            try:
                _lambda_client(server.url).invoke(FunctionName=name, Payload=b"{}")
            except botocore.exceptions.ClientError as error:
                return error.response["Error"]["Code"], time.monotonic() - start
            return None, time.monotonic() - start

        code, seconds = await within(deferToThread(call), 25, reactor)
        self.assertEqual(code, "ResourceNotFoundException")
        self.assertLess(seconds, 5.0)
