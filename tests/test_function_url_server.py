"""
Function URLs through the Lambda Server: C{FUNCTION_URL_PORT} on
C{lambda-server} serves C{/<function>/<path>} from that function's queue,
over real RabbitMQ, to a daemon running the awslambdaric RIC (and, streamed,
the Node RIC's C{HttpResponseStream}).
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from lambdarapid.amqp.invoker import STARTUP_REROUTE

from .amqp_support import free_port, function_name, lambda_server
from .runtimes import NODE_TEST_TIMEOUT, in_thread, node_example, python_runtime
from .test_amqp_streaming import amqp_daemon


def fetch(port: int, path: str, method: str = "GET", body: bytes | None = None) -> dict[str, Any]:
    """One request to 127.0.0.1:C{port} (blocking): status, headers, body, and when its first and last bytes came."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.monotonic()
        connection.request(method, path, body=body)
        response = connection.getresponse()
        first = response.read1(65536)
        first_at = time.monotonic() - started
        rest = response.read()
        return {
            "status": response.status,
            "headers": response.headers,
            "first": first,
            "body": first + rest,
            "first_at": first_at,
            "total": time.monotonic() - started,
        }
    finally:
        connection.close()


class ServerFunctionURLTests(TestCase):
    """lambda-server with FUNCTION_URL_PORT."""

    async def server_port(self, **settings: str) -> int:
        port = free_port()
        server = lambda_server(self, reactor, FUNCTION_URL_PORT=port, **settings)
        await server.wait_connected()
        return port

    async def test_path_routes_to_the_function(self) -> None:
        """/<function>/rest?q: that function's queue, invoked with /rest and q; the answer carries the invocation's id."""
        name = function_name("url")
        await amqp_daemon(self, name, python_runtime("amqp_handlers.handler"))
        port = await self.server_port()
        answer = await in_thread(fetch, port, f"/{name}/orders/7?page=2&page=3", "POST", b"{}")
        self.assertEqual(answer["status"], 200, answer)
        self.assertEqual(answer["headers"]["content-type"], "application/json")
        event = json.loads(answer["body"])  # the echo handler returns its event: no statusCode
        self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/orders/7", "page=2&page=3"))
        self.assertEqual(event["queryStringParameters"], {"page": "2,3"})
        self.assertEqual(event["requestContext"]["requestId"], answer["headers"]["x-amzn-requestid"])
        self.assertEqual(event["headers"]["x-forwarded-port"], str(port))

    async def test_function_error_is_502(self) -> None:
        """A function error through the server is the URL's 502 Internal Server Error."""
        name = function_name("url")
        await amqp_daemon(self, name, python_runtime("handlers.fail"))
        port = await self.server_port()
        answer = await in_thread(fetch, port, f"/{name}/")
        self.assertEqual((answer["status"], answer["body"]), (502, b"Internal Server Error"))

    async def test_unknown_function_is_403(self) -> None:
        """A path naming a function nobody serves: 403 AccessDeniedException, at once."""
        port = await self.server_port()
        await deferLater(reactor, STARTUP_REROUTE, lambda: None)  # past the server's startup hold
        answer = await in_thread(fetch, port, f"/{function_name('nobody')}/x")
        self.assertEqual(answer["status"], 403)
        self.assertEqual(answer["headers"]["x-amzn-errortype"], "AccessDeniedException")

    async def test_streamed_through_the_server(self) -> None:
        """RESPONSE_STREAM through the server: the prelude's status and cookies, the first bytes before the end."""
        directory = await node_example()
        if not os.path.exists(os.path.join(directory, "url_stream.mjs")):
            self.skipTest("examples/echo/node/url_stream.mjs is not there")
        name = function_name("urlstream")
        command = ["node", os.path.join(directory, "node_modules", ".bin", "aws-lambda-ric"), "url_stream.handler"]
        await amqp_daemon(self, name, command, directory)
        port = await self.server_port(FUNCTION_URL_INVOKE_MODE="RESPONSE_STREAM")
        answer = await in_thread(fetch, port, f"/{name}/slow")
        self.assertEqual(answer["status"], 201, answer)
        self.assertTrue(answer["headers"].get_all("set-cookie"))
        self.assertLess(answer["first_at"], answer["total"] - 1.0)

    test_streamed_through_the_server.timeout = NODE_TEST_TIMEOUT  # type: ignore[attr-defined]
