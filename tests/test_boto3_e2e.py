"""
The daemon as our users call it: boto3's Lambda client (in a thread), against
a real daemon with real runtimes. botocore reads the answer from the status
code and headers, so these pin down the wire shape, not just our own reading.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.trial.unittest import TestCase

from lambdarapid.testing import RunningDaemon

from .runtimes import in_thread, lambda_client, start_python


async def boto3_invoke(daemon: RunningDaemon, **parameters: Any) -> dict[str, Any]:
    """C{client.invoke(...)}, with the streaming Payload read into C{bytes}."""

    def call() -> dict[str, Any]:
        response: dict[str, Any] = lambda_client(daemon.url).invoke(**parameters)
        response["Payload"] = response["Payload"].read()
        return response

    return await in_thread(call)


class Boto3Tests(TestCase):
    """What boto3 makes of each answer."""

    timeout = 30

    async def test_request_response(self) -> None:
        """A RequestResponse call returns StatusCode 200, the payload, $LATEST and no FunctionError."""
        daemon = await start_python(self, "handlers.echo")
        response = await boto3_invoke(daemon, FunctionName="function", Payload=b'{"a": 1}')
        self.assertEqual(response["StatusCode"], 200)
        self.assertEqual(json.loads(response["Payload"]), {"a": 1})
        self.assertEqual(response["ExecutedVersion"], "$LATEST")
        self.assertNotIn("FunctionError", response)
        self.assertNotIn("LogResult", response)

    async def test_function_names(self) -> None:
        """The function answers to its name, name:$LATEST, its ARN and a partial ARN."""
        daemon = await start_python(self, "handlers.echo")
        for name in (
            "handlers",
            "handlers:$LATEST",
            "arn:aws:lambda:us-east-1:012345678912:function:handlers",
            "012345678912:function:handlers",
        ):
            response = await boto3_invoke(daemon, FunctionName=name, Payload=b'"hi"')
            self.assertEqual((name, response["StatusCode"]), (name, 200))
            self.assertEqual(json.loads(response["Payload"]), "hi")

    async def test_function_error(self) -> None:
        """A raising handler is FunctionError Unhandled with its error JSON as Payload."""
        daemon = await start_python(self, "handlers.fail")
        response = await boto3_invoke(daemon, FunctionName="function", Payload=b"{}")
        self.assertEqual(response["StatusCode"], 200)
        self.assertEqual(response["FunctionError"], "Unhandled")
        error = json.loads(response["Payload"])
        self.assertEqual(error["errorType"], "ValueError")
        self.assertIn("the function failed on purpose", error["errorMessage"])

    async def test_log_tail(self) -> None:
        """LogType Tail returns the invocation's printed lines, base64, in LogResult."""
        daemon = await start_python(self, "handlers.log")
        response = await boto3_invoke(
            daemon,
            FunctionName="function",
            Payload=json.dumps({"lines": ["boto3 line 1", "boto3 line 2"]}).encode(),
            LogType="Tail",
        )
        self.assertEqual(response["StatusCode"], 200)
        log = base64.b64decode(response["LogResult"]).decode()
        self.assertIn("boto3 line 1\nboto3 line 2\n", log)
        self.assertIn("REPORT RequestId: ", log)

    async def test_event(self) -> None:
        """An Event call is StatusCode 202 with an empty payload, and the function then runs."""
        daemon = await start_python(self, "handlers.log")
        response = await boto3_invoke(
            daemon,
            FunctionName="function",
            InvocationType="Event",
            Payload=json.dumps({"lines": ["ran as an event"]}).encode(),
        )
        self.assertEqual(response["StatusCode"], 202)
        self.assertEqual(response["Payload"], b"")
        await daemon.wait_for_output(b"ran as an event\n")

    async def test_dry_run(self) -> None:
        """A DryRun call is StatusCode 204 and runs nothing."""
        daemon = await start_python(self, "handlers.log")
        response = await boto3_invoke(
            daemon,
            FunctionName="function",
            InvocationType="DryRun",
            Payload=json.dumps({"lines": ["must not run"]}).encode(),
        )
        self.assertEqual(response["StatusCode"], 204)
        self.assertEqual(response["Payload"], b"")
        self.assertEqual(daemon.service.pool.environments, [])
        self.assertNotIn(b"must not run", daemon.output)

    async def test_unknown_function(self) -> None:
        """Another function's name raises boto3's ResourceNotFoundException naming its ARN."""
        daemon = await start_python(self, "handlers.echo")
        client = await in_thread(lambda_client, daemon.url)
        with self.assertRaises(client.exceptions.ResourceNotFoundException) as caught:
            await in_thread(client.invoke, FunctionName="someone-else", Payload=b"{}")
        error = caught.exception.response
        self.assertEqual(error["ResponseMetadata"]["HTTPStatusCode"], 404)
        self.assertIn(
            "arn:aws:lambda:us-east-1:012345678912:function:someone-else",
            error["Error"]["Message"],
        )

    async def test_request_too_large(self) -> None:
        """A 7 MB payload raises boto3's RequestTooLargeException, and the daemon serves on."""
        daemon = await start_python(self, "handlers.echo")
        client = await in_thread(lambda_client, daemon.url)
        payload = json.dumps({"blob": "x" * (7 * 1024 * 1024)}).encode()
        with self.assertRaises(client.exceptions.RequestTooLargeException) as caught:
            await in_thread(client.invoke, FunctionName="function", Payload=payload)
        self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 413)
        response = await boto3_invoke(daemon, FunctionName="function", Payload=b'{"after": 1}')
        self.assertEqual(json.loads(response["Payload"]), {"after": 1})

    async def test_invalid_json(self) -> None:
        """A payload that is not JSON raises boto3's InvalidRequestContentException, and nothing runs."""
        daemon = await start_python(self, "handlers.echo")
        client = await in_thread(lambda_client, daemon.url)
        with self.assertRaises(client.exceptions.InvalidRequestContentException) as caught:
            await in_thread(client.invoke, FunctionName="function", Payload=b"{not json")
        error = caught.exception.response
        self.assertEqual(error["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertTrue(
            error["Error"]["Message"].startswith("Could not parse request body into json: ")
        )
        self.assertEqual(daemon.service.pool.environments, [])

    async def test_client_context(self) -> None:
        """boto3's base64 ClientContext reaches the handler's context.client_context."""
        daemon = await start_python(self, "handlers.context")
        context = {"custom": {"user": "alice"}, "env": {"locale": "en"}}
        response = await boto3_invoke(
            daemon,
            FunctionName="function",
            Payload=b"{}",
            ClientContext=base64.b64encode(json.dumps(context).encode()).decode(),
        )
        self.assertEqual(json.loads(response["Payload"])["client_context"], context)
