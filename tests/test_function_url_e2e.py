"""
Function URLs end to end (C{FUNCTION_URL_PORT}): real runtimes behind the
daemon's Function URL port, called by real HTTP clients (http.client,
urllib with a cookie jar, a raw socket, headless Chromium), checked against
what AWS does (docs/function-urls.md): the payload format 2.0 event the
function gets, and the HTTP answer made of its result.

The functions: the FastAPI example (examples/fastapi, through Mangum), an
aws-lambda-powertools resolver app and plain handlers (tests/functions/urls),
and the Node example's streaming handler (examples/echo/node/url_stream.mjs)
for C{FUNCTION_URL_INVOKE_MODE=RESPONSE_STREAM}.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from lambdarapid.config import ConfigError
from lambdarapid.testing import InvokeClient, RunningDaemon, free_port, start_daemon

from .amqp_support import amqp_uri, eventually, function_name, lambda_server
from .runtimes import (
    FUNCTIONS,
    NODE_TEST_TIMEOUT,
    function_environ,
    in_thread,
    node_example,
    python_runtime,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASTAPI = os.path.join(ROOT, "examples", "fastapi")
URLS = os.path.join(FUNCTIONS, "urls")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INTERNAL_ERROR = b"Internal Server Error"
SIX_MB = 6291456
TOO_LARGE = {"Message": f"Request must be smaller than {SIX_MB} bytes for the InvokeFunction operation"}
USER_AGENT = "lambdarapid-tests/1.0"


# HTTP clients


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the client read it: headers in order, repeats kept."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        """Every value of header C{name}, in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        """The value of header C{name}, which must not be repeated."""
        values = self.all(name)
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def request_id(self) -> str | None:
        return self.header("x-amzn-RequestId")

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")


def http_request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 60.0,
) -> Answer:
    """
    One request on a connection of its own (blocking): C{headers} are sent as
    given (repeats included), with C{Host} from C{base}; no redirect followed.
    """
    split = urlsplit(base)
    connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        if body is not None:
            try:
                connection.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered (413) before the whole body was read: read the answer
        response = connection.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def url_of(daemon: RunningDaemon) -> str:
    assert daemon.function_url is not None, "started without FUNCTION_URL_PORT"
    return daemon.function_url


def url_port(daemon: RunningDaemon) -> int:
    port = urlsplit(url_of(daemon)).port
    assert port is not None
    return port


async def call(
    daemon: RunningDaemon,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    """C{method path} on the daemon's Function URL, in a thread."""
    return await in_thread(http_request, url_of(daemon), method, path, body, list(headers))


@dataclass(frozen=True)
class Streamed:
    """A chunked answer read from a raw socket, with when its parts arrived."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Seconds from sending the request to the first C{marker} bytes read.
    first: float
    #: Seconds from sending the request to the answer's end.
    total: float
    #: Whether the answer ended properly (chunked: with its last chunk), not cut short.
    complete: bool

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body of a chunked transfer coding, and whether it was complete (its last chunk came)."""
    body = bytearray()
    while True:
        size_line, found, rest = data.partition(b"\r\n")
        if not found:
            return bytes(body), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body), True
        body += rest[:size]
        if rest[size : size + 2] != b"\r\n":
            return bytes(body), False
        data = rest[size + 2 :]


def stream_request(base: str, path: str, marker: bytes, timeout: float = 60.0) -> Streamed:
    """
    GET C{path} on a raw socket (blocking), noting when C{marker} is first
    read and when the chunked answer ends (its last chunk, or the close).
    """
    split = urlsplit(base)
    with socket.create_connection((split.hostname or "", split.port or 80), timeout=timeout) as s:
        started = time.monotonic()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {split.netloc}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = bytearray()
        first: float | None = None
        total: float | None = None
        while True:
            data = s.recv(65536)
            now = time.monotonic() - started
            received += data
            if first is None and marker in received:
                first = now
            head_end = received.find(b"\r\n\r\n")
            if not data or (head_end >= 0 and received.endswith(b"\r\n0\r\n\r\n")):
                total = now
                break
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    chunked = any(k.lower() == "transfer-encoding" and v.lower() == "chunked" for k, v in headers)
    assert first is not None and total is not None, f"{marker!r} never arrived: {bytes(received)!r}"
    body, complete = dechunk(rest) if chunked else (rest, True)
    return Streamed(
        status=int(status_line.split()[1]),
        headers=headers,
        body=body,
        first=first,
        total=total,
        complete=complete,
    )


def hang_up_after(base: str, path: str, marker: bytes, timeout: float = 60.0) -> bytes:
    """GET C{path} on a raw socket and close it once C{marker} is read (blocking); what was read."""
    split = urlsplit(base)
    with socket.create_connection((split.hostname or "", split.port or 80), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {split.netloc}\r\n\r\n".encode())
        received = bytearray()
        while marker not in received:
            data = s.recv(65536)
            if not data:
                break
            received += data
        return bytes(received)


def on_one_connection(base: str, paths: Sequence[str], timeout: float = 60.0) -> list[Answer]:
    """GET each of C{paths} in turn on one kept-alive connection (blocking), as browsers do."""
    split = urlsplit(base)
    connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=timeout)
    answers = []
    try:
        for path in paths:
            connection.request("GET", path)
            response = connection.getresponse()
            answers.append(Answer(response.status, response.getheaders(), response.read()))
            # http.client reconnects silently when the server closed: make that a failure.
            assert connection.sock is not None, f"the connection was closed after {path}"
    finally:
        connection.close()
    return answers


# Daemons


async def start_url(
    test: TestCase, command: list[str], task_root: str, **settings: object
) -> RunningDaemon:
    """A daemon running C{command} from C{task_root}, with a Function URL on a free port."""
    settings.setdefault("FUNCTION_URL_PORT", 0)
    # Room for a cold start on a loaded machine; the timeout test sets its own.
    settings.setdefault("AWS_LAMBDA_FUNCTION_TIMEOUT", 30)
    environ = function_environ(LAMBDA_TASK_ROOT=task_root, PYTHONPATH=task_root)
    daemon = await start_daemon(command, environ, **settings)
    test.addCleanup(daemon.stop)
    return daemon


async def start_fastapi(test: TestCase, **settings: object) -> RunningDaemon:
    return await start_url(test, python_runtime("app.handler"), FASTAPI, **settings)


async def start_plain(test: TestCase, **settings: object) -> RunningDaemon:
    return await start_url(test, python_runtime("plain.handler"), URLS, **settings)


async def start_powertools(test: TestCase, **settings: object) -> RunningDaemon:
    return await start_url(test, python_runtime("powertools_app.handler"), URLS, **settings)


async def start_node_stream(test: TestCase, **settings: object) -> RunningDaemon:
    """The Node example's url_stream.mjs, behind a RESPONSE_STREAM Function URL."""
    directory = await node_example()
    settings.setdefault("FUNCTION_URL_INVOKE_MODE", "RESPONSE_STREAM")
    command = ["node", os.path.join(directory, "node_modules", ".bin", "aws-lambda-ric"), "url_stream.handler"]
    return await start_url(test, command, directory, **settings)


async def wait_for_amqp(daemon: RunningDaemon) -> None:
    amqp = daemon.service.amqp
    assert amqp is not None, "AMQP_URI was not taken"
    await eventually(reactor, lambda: amqp.connected, 10, "consuming its queue")


def echoed(answer: Answer) -> dict[str, Any]:
    """The event plain.echo answered, checked to be the same invocation as the answer."""
    assert answer.status == 200, (answer.status, answer.body[:500])
    document = answer.json()
    assert document["aws_request_id"] == answer.request_id, (document["aws_request_id"], answer.request_id)
    event: dict[str, Any] = document["event"]
    return event


# The FastAPI example


class FastAPIExampleTests(TestCase):
    """examples/fastapi: FastAPI through Mangum, as the example's README runs it."""

    timeout = 120

    async def test_items(self) -> None:
        """GET with a query (a repeated parameter included), a path parameter, the 404s; POST JSON."""
        daemon = await start_fastapi(self)
        answer = await call(daemon, "GET", "/items?q=a&tag=fruit&tag=red")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.content_type, "application/json")
        self.assertEqual(
            answer.body,
            b'{"q":"a","tags":["fruit","red"],"items":[{"id":1,"name":"apple","tags":["fruit","red"]}]}',
        )
        self.assertEqual(answer.header("content-length"), str(len(answer.body)))
        self.assertRegex(answer.request_id or "", UUID)

        fruit = await call(daemon, "GET", "/items?tag=fruit")
        self.assertEqual([item["name"] for item in fruit.json()["items"]], ["apple", "banana"])
        self.assertNotEqual(fruit.request_id, answer.request_id)

        banana = await call(daemon, "GET", "/items/2")
        self.assertEqual(banana.json(), {"id": 2, "name": "banana", "tags": ["fruit", "yellow"]})

        created = await call(
            daemon,
            "POST",
            "/items",
            b'{"name": "pen", "price": 1.25, "quantity": 3}',
            [("Content-Type", "application/json")],
        )
        self.assertEqual(created.status, 201)
        self.assertEqual(created.body, b'{"name":"pen","price":1.25,"quantity":3,"total":3.75}')

        invalid = await call(daemon, "POST", "/items", b'{"name": "pen"}', [("Content-Type", "application/json")])
        self.assertEqual(invalid.status, 422)
        self.assertEqual(invalid.json()["detail"][0]["loc"], ["body", "price"])

        missing = await call(daemon, "GET", "/items/9")
        self.assertEqual((missing.status, missing.body), (404, b'{"detail":"no item 9"}'))
        unknown = await call(daemon, "GET", "/no/such/route")
        self.assertEqual((unknown.status, unknown.body), (404, b'{"detail":"Not Found"}'))
        self.assertEqual(unknown.content_type, "application/json")

    async def test_page_logo_and_whoami(self) -> None:
        """The HTML page; the PNG byte for byte; /whoami sees http://host:port and the answer's request id."""
        daemon = await start_fastapi(self)
        page = await call(daemon, "GET", "/")
        self.assertEqual(page.status, 200)
        self.assertEqual(page.content_type, "text/html; charset=utf-8")
        self.assertIn(b'<h1 id="title">Hello from a Function URL</h1>', page.body)

        logo = await call(daemon, "GET", "/logo.png")
        with open(os.path.join(FASTAPI, "logo.png"), "rb") as f:
            png = f.read()
        self.assertEqual(logo.status, 200)
        self.assertEqual(logo.content_type, "image/png")
        self.assertEqual(logo.body, png)
        self.assertEqual(logo.header("content-length"), str(len(png)))

        whoami = await call(daemon, "GET", "/whoami?x=1", headers=[("User-Agent", USER_AGENT)])
        self.assertEqual(whoami.status, 200)
        self.assertEqual(
            whoami.json(),
            {
                "request_id": whoami.request_id,
                "function_name": daemon.config.function.name,
                "url": f"{url_of(daemon)}/whoami?x=1",
                "client": "127.0.0.1",
                "user_agent": USER_AGENT,
            },
        )
        self.assertRegex(whoami.request_id or "", UUID)

        # Starlette's redirect is built from the scheme (x-forwarded-proto) and the host.
        redirect = await call(daemon, "GET", "/items/")
        self.assertEqual(redirect.status, 307)
        self.assertEqual(redirect.header("location"), f"{url_of(daemon)}/items")

    async def test_cookies(self) -> None:
        """Two cookies set are two Set-Cookie headers, the Expires date whole; a cookie jar sends them back."""
        daemon = await start_fastapi(self)
        answer = await call(daemon, "GET", "/cookies/set")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.all("set-cookie"),
            [
                "flavour=chocolate; Path=/; SameSite=lax",
                "session=abc123; expires=Tue, 01 Jan 2030 00:00:00 GMT; HttpOnly; Path=/; SameSite=lax",
            ],
        )

        def browse(base: str) -> tuple[list[str], Any]:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            with opener.open(base + "/cookies/set", timeout=60) as response:
                response.read()
            with opener.open(base + "/cookies", timeout=60) as response:
                return sorted(cookie.name for cookie in jar), json.load(response)

        names, received = await in_thread(browse, url_of(daemon))
        self.assertEqual(names, ["flavour", "session"])
        self.assertEqual(received, {"flavour": "chocolate", "session": "abc123"})

        sent = await call(daemon, "GET", "/cookies", headers=[("Cookie", "a=1; b=two; c=")])
        self.assertEqual(sent.json(), {"a": "1", "b": "two", "c": ""})


class ChromiumTests(TestCase):
    """A real browser on the FastAPI example: the page's script fetches through the same URL."""

    timeout = 180

    async def test_page_script_builds_the_list(self) -> None:
        """Headless Chromium's DOM: the title, and the list the inline script built from /items."""
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None and os.path.exists("/usr/bin/chromium"):
            chromium = "/usr/bin/chromium"
        if chromium is None:
            raise SkipTest("no chromium binary")
        daemon = await start_fastapi(self, PRINT_REPORTS=True)
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        timeout = shutil.which("timeout")
        arguments = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url_of(daemon) + "/",
        ]
        if timeout is not None:  # never hang the suite on a stuck browser
            executable, arguments = timeout, ["-k", "5", "120", chromium, *arguments]
        else:
            executable = chromium
        out, err, code = await getProcessOutputAndValue(
            executable, arguments, env={**os.environ, "HOME": profile}, path=profile
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        dom = out.decode()
        self.assertIn('<h1 id="title">Hello from a Function URL</h1>', dom)
        self.assertIn('<ul id="fruit"><li>apple</li><li>banana</li></ul>', dom)
        self.assertIn('<p id="status">2 fruit</p>', dom)
        # The page, the fetch of /items (and the logo): several invocations.
        self.assertGreaterEqual(daemon.output.count(b"START RequestId: "), 2)


# aws-lambda-powertools


class PowertoolsTests(TestCase):
    """A LambdaFunctionUrlResolver app: routing on rawPath, query, JSON body and cookies both ways."""

    timeout = 120

    async def test_resolver(self) -> None:
        """A path parameter with a query and cookies; POST JSON answered 201 with two cookies; its 404."""
        daemon = await start_powertools(self)
        hello = await call(
            daemon,
            "GET",
            "/hello/ada?greeting=Hi%20there&tag=a&tag=b%2Fc",
            headers=[("Cookie", "x=1; y=2")],
        )
        self.assertEqual(hello.status, 200)
        self.assertEqual(hello.content_type, "application/json")
        self.assertEqual(
            hello.json(),
            {
                "message": "Hi there, ada!",
                "tags": ["a", "b/c"],
                "path": "/hello/ada",
                "method": "GET",
                "cookies": ["x=1", "y=2"],
                "request_id": hello.request_id,
                "aws_request_id": hello.request_id,
            },
        )
        self.assertEqual(hello.all("set-cookie"), [])

        order = {"customer": "ada", "lines": [{"price": 1.5, "quantity": 2}, {"price": 0.25, "quantity": 4}]}
        created = await call(
            daemon, "POST", "/orders", json.dumps(order).encode(), [("Content-Type", "application/json")]
        )
        self.assertEqual(created.status, 201)
        self.assertEqual(created.body, b'{"customer":"ada","total":4.0}')
        self.assertEqual(created.content_type, "application/json")
        self.assertEqual(created.header("x-order-lines"), "2")
        self.assertEqual(
            created.all("set-cookie"),
            ["last_order=42; Path=/; Secure", "customer=ada; Expires=Tue, 01 Jan 2030 00:00:00 GMT; HttpOnly; Secure"],
        )

        unknown = await call(daemon, "GET", "/nope")
        self.assertEqual((unknown.status, unknown.json()), (404, {"statusCode": 404, "message": "Not found"}))
        wrong_method = await call(daemon, "DELETE", "/orders")
        self.assertEqual(wrong_method.status, 404)


# Plain handlers: the result mapping


class ResultMappingTests(TestCase):
    """What the client gets for each kind of result (fact sheet §3)."""

    timeout = 120

    async def test_results_without_status_code(self) -> None:
        """A string is its content without quotes; objects, lists and numbers compact JSON; all 200 application/json."""
        daemon = await start_plain(self)
        expected = {
            "/string": b"hello",
            "/dict": b'{"hello":"world"}',
            "/list": b'["hello",3,true]',
            "/number": b"3.1",
        }
        # One kept-alive connection for all four, as a browser or an SDK would use.
        answers = await in_thread(on_one_connection, url_of(daemon), list(expected))
        for (path, body), answer in zip(expected.items(), answers):
            self.assertEqual((path, answer.status, answer.body), (path, 200, body))
            self.assertEqual(answer.content_type, "application/json", path)
            self.assertEqual(answer.header("content-length"), str(len(body)), path)
            self.assertRegex(answer.request_id or "", UUID)
            self.assertIsNotNone(answer.header("date"))
        self.assertEqual(len({answer.request_id for answer in answers}), 4)

    async def test_response_descriptions(self) -> None:
        """statusCode, headers, cookies, base64 and object bodies; bad statusCodes are 502."""
        daemon = await start_plain(self)
        teapot = await call(daemon, "GET", "/teapot")
        self.assertEqual((teapot.status, teapot.body), (418, b"I'm a teapot"))
        self.assertEqual(teapot.content_type, "text/plain")
        self.assertEqual(teapot.header("x-teapot"), "short, stout")

        full = await call(daemon, "GET", "/response")
        self.assertEqual(full.status, 202)
        self.assertEqual(json.loads(full.body), {"accepted": True})
        self.assertEqual(full.content_type, "application/json")
        self.assertEqual(full.header("x-custom"), "one,two")
        self.assertEqual(
            full.all("set-cookie"), ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
        )

        binary = await call(daemon, "GET", "/binary")
        self.assertEqual((binary.status, binary.body), (200, b"\x00\x01\xff\x80"))
        self.assertEqual(binary.content_type, "application/octet-stream")

        empty = await call(daemon, "GET", "/empty")
        self.assertEqual((empty.status, empty.body), (204, b""))

        numeric = await call(daemon, "GET", "/status?code=201")
        self.assertEqual((numeric.status, numeric.body), (201, b"status 201"))
        for path in ("/status?code=1000", "/status?code=teapot", "/bad-base64"):
            bad = await call(daemon, "GET", path)
            self.assertEqual((path, bad.status, bad.body), (path, 502, INTERNAL_ERROR))
            self.assertRegex(bad.request_id or "", UUID)

    async def test_failures(self) -> None:
        """A handler that raises, a runtime that exits, a result over 6 MB: 502 Internal Server Error, and on."""
        daemon = await start_plain(self)
        for path in ("/error", "/exit", "/too-big"):
            failed = await call(daemon, "GET", path)
            self.assertEqual((path, failed.status, failed.body), (path, 502, INTERNAL_ERROR))
            self.assertRegex(failed.request_id or "", UUID)
            self.assertIsNone(failed.header("x-amz-function-error"))
            after = await call(daemon, "GET", "/string")
            self.assertEqual((path, after.status, after.body), (path, 200, b"hello"))

    async def test_timeout(self) -> None:
        """A function past its timeout: 502 within about the timeout; the daemon serves the next request."""
        daemon = await start_plain(self, AWS_LAMBDA_FUNCTION_TIMEOUT=1)
        await call(daemon, "GET", "/string")  # the cold start, outside the timing
        started = time.monotonic()
        late = await call(daemon, "GET", "/sleep?seconds=5")
        took = time.monotonic() - started
        self.assertEqual((late.status, late.body), (502, INTERNAL_ERROR))
        self.assertLess(took, 4.0)
        self.assertRegex(late.request_id or "", UUID)
        after = await call(daemon, "GET", "/string")
        self.assertEqual((after.status, after.body), (200, b"hello"))


# Plain handlers: the event


class EventTests(TestCase):
    """The payload format 2.0 event the function receives (fact sheet §2, §6)."""

    timeout = 120

    async def test_event_shape(self) -> None:
        """Path, query, cookies, headers, x-forwarded-*, requestContext: as the fact sheet describes."""
        daemon = await start_plain(self, PRINT_REPORTS=True)
        port = url_port(daemon)
        before = time.time()
        answer = await call(
            daemon,
            "GET",
            "/some/pa%2Fth?a=1&a=2&b=%2F&blank=",
            headers=[
                ("User-Agent", USER_AGENT),
                ("ExTrA-HeadErs", "With WeiRd CapS"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
                ("Cookie", "c1=v1; c2=v2"),
                ("Accept", "application/json"),
                ("Connection", "keep-alive"),
            ],
        )
        after = time.time()
        event = echoed(answer)
        self.assertEqual(
            set(event),
            {
                "version",
                "routeKey",
                "rawPath",
                "rawQueryString",
                "cookies",
                "headers",
                "queryStringParameters",
                "requestContext",
                "isBase64Encoded",
            },
        )
        self.assertEqual((event["version"], event["routeKey"]), ("2.0", "$default"))
        self.assertEqual(event["rawPath"], "/some/pa%2Fth")
        self.assertEqual(event["rawQueryString"], "a=1&a=2&b=%2F&blank=")
        self.assertEqual(event["queryStringParameters"], {"a": "1,2", "b": "/", "blank": ""})
        self.assertEqual(event["cookies"], ["c1=v1", "c2=v2"])
        self.assertIs(event["isBase64Encoded"], False)

        headers = event["headers"]
        self.assertEqual(headers["host"], f"127.0.0.1:{port}")
        self.assertEqual(headers["user-agent"], USER_AGENT)
        self.assertEqual(headers["extra-headers"], "With WeiRd CapS")
        self.assertEqual(headers["x-multi"], "one,two")
        self.assertEqual(headers["accept"], "application/json")
        self.assertEqual(headers["x-forwarded-proto"], "http")
        self.assertEqual(headers["x-forwarded-port"], str(port))
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertRegex(headers["x-amzn-trace-id"], r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}")
        for name in headers:
            self.assertEqual(name, name.lower())
        self.assertNotIn("connection", headers)
        self.assertNotIn("cookie", headers)

        context = event["requestContext"]
        self.assertEqual(context["accountId"], "anonymous")
        self.assertEqual(context["domainName"], "127.0.0.1")
        self.assertEqual((context["apiId"], context["domainPrefix"]), ("127", "127"))
        self.assertEqual(
            context["http"],
            {
                "method": "GET",
                "path": "/some/pa%2Fth",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": USER_AGENT,
            },
        )
        self.assertEqual(context["requestId"], answer.request_id)
        self.assertRegex(context["requestId"], UUID)
        self.assertEqual((context["routeKey"], context["stage"]), ("$default", "$default"))
        self.assertNotIn("authorizer", context)
        epoch = context["timeEpoch"]
        self.assertIsInstance(epoch, int)
        self.assertTrue(before * 1000 - 1000 <= epoch <= after * 1000 + 1000, (before, epoch, after))
        stamp = datetime.strptime(context["time"], "%d/%b/%Y:%H:%M:%S +0000").replace(tzinfo=timezone.utc)
        self.assertLessEqual(abs(stamp.timestamp() - epoch / 1000), 1.0)
        self.assertRegex(context["time"], r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000$")
        # The id Lambda's END and REPORT lines print is the same one.
        await daemon.wait_for_output(f"END RequestId: {answer.request_id}".encode())
        await daemon.wait_for_output(f"REPORT RequestId: {answer.request_id}".encode())

    async def test_bare_request_and_forwarding(self) -> None:
        """No query, no cookies: no such keys; a client's X-Forwarded-For is kept, the peer appended; its trace id kept."""
        daemon = await start_plain(self)
        trace = "Root=1-67891233-abcdef012345678912345678"
        answer = await call(
            daemon, "GET", "/", headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Amzn-Trace-Id", trace)]
        )
        event = echoed(answer)
        self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/", ""))
        self.assertNotIn("queryStringParameters", event)
        self.assertNotIn("cookies", event)
        self.assertNotIn("body", event)
        self.assertNotIn("pathParameters", event)
        self.assertNotIn("stageVariables", event)
        self.assertEqual(event["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1")
        self.assertEqual(event["requestContext"]["http"]["sourceIp"], "127.0.0.1")
        self.assertEqual(event["headers"]["x-amzn-trace-id"], trace)

        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            other = echoed(await call(daemon, method, "/echo"))
            self.assertEqual(other["requestContext"]["http"]["method"], method)
        head = await call(daemon, "HEAD", "/string")
        self.assertEqual((head.status, head.body), (200, b""))

    async def test_bodies(self) -> None:
        """Text bodies arrive as text; binary ones (and no content type, and bad UTF-8) base64, byte for byte."""
        daemon = await start_plain(self)
        text = '{"word": "café"}'.encode()
        for content_type in ("application/json", "text/plain; charset=utf-8"):
            event = echoed(await call(daemon, "POST", "/echo", text, [("Content-Type", content_type)]))
            self.assertEqual((event["body"], event["isBase64Encoded"]), (text.decode(), False))
            self.assertEqual(event["headers"]["content-type"], content_type)
            self.assertEqual(event["headers"]["content-length"], str(len(text)))

        def chunked_upload(base: str) -> Answer:
            split = urlsplit(base)
            connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=60)
            try:
                parts = iter([b"sent ", b"in ", b"chunks"])
                connection.request(
                    "POST", "/echo", parts, {"Content-Type": "text/plain"}, encode_chunked=True
                )
                response = connection.getresponse()
                return Answer(response.status, response.getheaders(), response.read())
            finally:
                connection.close()

        event = echoed(await in_thread(chunked_upload, url_of(daemon)))
        self.assertEqual((event["body"], event["isBase64Encoded"]), ("sent in chunks", False))
        self.assertNotIn("transfer-encoding", event["headers"])  # hop-by-hop

        data = bytes(range(256)) * 4
        for headers, body in (
            ([("Content-Type", "application/octet-stream")], data),
            ([("Content-Type", "image/png")], data),
            ([], b"no content type"),
            ([("Content-Type", "text/plain")], b"not \xff UTF-8"),
            ([("Content-Type", "multipart/form-data; boundary=x")], b"--x\r\n\r\nfield\r\n--x--\r\n"),
        ):
            event = echoed(await call(daemon, "POST", "/echo", body, headers))
            self.assertIs(event["isBase64Encoded"], True, headers)
            self.assertEqual(base64.b64decode(event["body"]), body, headers)

    async def test_size_limit(self) -> None:
        """An event over 6 MB (a big text body, or a binary one once base64) is 413; 4 MB of binary fits."""
        daemon = await start_plain(self)
        for content_type, size in (("text/plain", SIX_MB + 1), ("application/octet-stream", 5_000_000)):
            answer = await call(daemon, "POST", "/digest", b"x" * size, [("Content-Type", content_type)])
            self.assertEqual((content_type, answer.status), (content_type, 413))
            self.assertEqual(answer.json(), TOO_LARGE)
            self.assertEqual(answer.header("x-amzn-ErrorType"), "RequestTooLargeException")
        data = os.urandom(4_000_000)
        fits = await call(daemon, "POST", "/digest", data, [("Content-Type", "application/octet-stream")])
        self.assertEqual(fits.status, 200)
        self.assertEqual(
            fits.json(),
            {"length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "isBase64Encoded": True},
        )

    async def test_curl_upload(self) -> None:
        """curl's 2 MB upload (it sends Expect: 100-continue, then the body) arrives byte for byte."""
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        daemon = await start_plain(self)
        upload = os.path.abspath(self.mktemp())
        data = os.urandom(2_000_000)
        with open(upload, "wb") as f:
            f.write(data)
        out, err, code = await getProcessOutputAndValue(
            curl,
            ["-sS", "--max-time", "60", "-H", "Content-Type: application/octet-stream",
             "--data-binary", f"@{upload}", url_of(daemon) + "/digest"],
            env=dict(os.environ),
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual(
            json.loads(out),
            {"length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "isBase64Encoded": True},
        )

    async def test_too_large_answer_has_a_request_id(self) -> None:
        """The 413 carries x-amzn-RequestId too, as every Function URL answer does."""
        daemon = await start_plain(self)
        answer = await call(daemon, "POST", "/digest", b"x" * (SIX_MB + 1), [("Content-Type", "text/plain")])
        self.assertEqual(answer.status, 413)
        self.assertRegex(answer.request_id or "", UUID)


class ThrottleTests(TestCase):
    """The pool's bounds apply to the Function URL as to the Invoke API."""

    timeout = 60

    async def test_pool_full_is_429(self) -> None:
        """One runtime busy, one request queued: the next is 429 Rate Exceeded; the two others complete."""
        daemon = await start_plain(self, MAX_CONCURRENCY=1, MAX_QUEUED_INVOCATIONS=1, PRINT_REPORTS=True)
        warm = await call(daemon, "GET", "/string")
        self.assertEqual(warm.status, 200)
        base = url_of(daemon)
        running: Deferred[Answer] = deferToThread(http_request, base, "GET", "/sleep?seconds=2")
        await eventually(
            reactor, lambda: daemon.output.count(b"START RequestId: ") >= 2, 10, "running the slow one"
        )
        queued: Deferred[Answer] = deferToThread(http_request, base, "GET", "/sleep?seconds=0.5")
        await deferLater(reactor, 0.5, lambda: None)  # taken and queued
        refused = await call(daemon, "GET", "/string")
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.json(), {"Message": "Rate Exceeded."})
        self.assertRegex(refused.request_id or "", UUID)
        first, second = await running, await queued
        self.assertEqual((first.status, first.json()), (200, {"slept": 2.0}))
        self.assertEqual((second.status, second.json()), (200, {"slept": 0.5}))
        again = await call(daemon, "GET", "/string")
        self.assertEqual((again.status, again.body), (200, b"hello"))


# RESPONSE_STREAM


class StreamingTests(TestCase):
    """FUNCTION_URL_INVOKE_MODE=RESPONSE_STREAM with the Node RIC's HttpResponseStream."""

    timeout = NODE_TEST_TIMEOUT

    async def test_prelude_and_body(self) -> None:
        """Status, headers and cookies come from the prelude; the body is exact, chunked."""
        daemon = await start_node_stream(self)
        answer = await call(daemon, "GET", "/")
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.body, b"one\ntwo\nthree\n")
        self.assertEqual(answer.content_type, "text/plain; charset=utf-8")
        self.assertEqual(answer.header("x-streamed-by"), "url_stream.mjs")
        self.assertRegex(answer.request_id or "", UUID)
        self.assertEqual(answer.header("x-aws-request-id"), answer.request_id)  # the function's context
        self.assertEqual(
            answer.all("set-cookie"),
            ["streamed=yes; Path=/", "flavour=mint; Expires=Wed, 21 Oct 2037 07:28:00 GMT"],
        )
        self.assertEqual(answer.header("transfer-encoding"), "chunked")
        self.assertRegex(answer.request_id or "", UUID)

    async def test_first_bytes_before_the_end(self) -> None:
        """/slow: its first part reaches the client well before the function ends, 1.5 s later."""
        daemon = await start_node_stream(self)
        warm = await call(daemon, "GET", "/")  # the cold start, outside the timing
        self.assertEqual(warm.status, 201)
        answer = await in_thread(stream_request, url_of(daemon), "/slow", b"first part\n")
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.body, b"first part\nsecond part\nthe end\n")
        self.assertTrue(answer.complete)
        self.assertEqual(len(answer.all("set-cookie")), 2)
        self.assertLess(answer.first, 1.0, answer)
        self.assertGreaterEqual(answer.total, 1.4, answer)

    async def test_errors(self) -> None:
        """A throw before any write is 502; after one, the answer is cut short (no last chunk); no write at all is 200, empty."""
        daemon = await start_node_stream(self)
        early = await call(daemon, "GET", "/fail")
        self.assertEqual((early.status, early.body), (502, INTERNAL_ERROR))
        self.assertRegex(early.request_id or "", UUID)

        late = await in_thread(stream_request, url_of(daemon), "/fail-late", b"one\n")
        self.assertEqual((late.status, late.body), (201, b"one\n"))
        self.assertFalse(late.complete, "a stream that failed must not end as if complete")

        silent = await call(daemon, "GET", "/silent")
        self.assertEqual((silent.status, silent.body), (200, b""))

        after = await call(daemon, "GET", "/")
        self.assertEqual((after.status, after.body), (201, b"one\ntwo\nthree\n"))

    async def test_ten_megabytes(self) -> None:
        """10 MiB streamed: past the 6 MB buffered limit, whole and in order, and the next answer is fine."""
        daemon = await start_node_stream(self)
        size = 10 * 1024 * 1024
        answer = await call(daemon, "GET", f"/big?size={size}")
        self.assertEqual(answer.status, 201)
        self.assertEqual((len(answer.body), answer.body.count(b"x")), (size, size))
        after = await call(daemon, "GET", "/")
        self.assertEqual((after.status, after.body), (201, b"one\ntwo\nthree\n"))

    async def test_client_hangs_up(self) -> None:
        """A client gone mid-stream leaves the daemon serving: the function runs on, the next answer is whole."""
        daemon = await start_node_stream(self, PRINT_REPORTS=True)
        head = await in_thread(hang_up_after, url_of(daemon), "/slow", b"first part\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 201 "), head)
        await eventually(reactor, lambda: b"REPORT RequestId: " in daemon.output, 10, "reporting the first run")
        after = await call(daemon, "GET", "/")
        self.assertEqual((after.status, after.body), (201, b"one\ntwo\nthree\n"))

    async def test_buffered_handler_in_stream_mode(self) -> None:
        """A handler that does not stream, behind a RESPONSE_STREAM URL: 200 and its result verbatim, as AWS does."""
        daemon = await start_plain(self, FUNCTION_URL_INVOKE_MODE="RESPONSE_STREAM")
        answer = await call(daemon, "GET", "/teapot")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.json(),
            {
                "statusCode": "418",
                "headers": {"content-type": "text/plain", "x-teapot": "short, stout"},
                "body": "I'm a teapot",
            },
        )
        self.assertRegex(answer.request_id or "", UUID)


# With the other front doors


class WithOpenFaaSAndAMQPTests(TestCase):
    """FUNCTION_URL_PORT with ENABLE_OPENFAAS and AMQP_URI set too: every door works."""

    timeout = NODE_TEST_TIMEOUT

    async def test_buffered(self) -> None:
        """The URL answers Function URL events (/ too); the Invoke API, the watchdog routes and AMQP still work."""
        name = function_name("url")
        daemon = await start_plain(
            self, ENABLE_OPENFAAS=True, AMQP_URI=amqp_uri(), AWS_LAMBDA_FUNCTION_NAME=name
        )
        await wait_for_amqp(daemon)
        hello = await call(daemon, "GET", "/string")
        self.assertEqual((hello.status, hello.body), (200, b"hello"))
        root = echoed(await call(daemon, "GET", "/"))
        self.assertEqual((root["rawPath"], root["version"]), ("/", "2.0"))

        invoked = await daemon.invoke({"rawPath": "/dict"}, function_name=name)
        self.assertEqual((invoked.status, invoked.json()), (200, {"hello": "world"}))
        watchdog = await in_thread(http_request, daemon.url, "POST", "/", b'{"rawPath": "/list"}')
        self.assertEqual((watchdog.status, json.loads(watchdog.body)), (200, ["hello", 3, True]))
        health = await in_thread(http_request, daemon.url, "GET", "/_/health")
        self.assertEqual(health.status, 200)

        server = lambda_server(self, reactor)
        await server.wait_connected()
        client = InvokeClient(server.url)
        self.addCleanup(client.close)
        through = await client.invoke({"rawPath": "/string"}, function_name=name)
        self.assertEqual((through.status, through.json()), (200, "hello"))

    async def test_response_stream(self) -> None:
        """RESPONSE_STREAM with the watchdog and AMQP: the URL streams; the Invoke API gets the whole stream."""
        name = function_name("url-stream")
        daemon = await start_node_stream(
            self, ENABLE_OPENFAAS=True, AMQP_URI=amqp_uri(), AWS_LAMBDA_FUNCTION_NAME=name
        )
        await wait_for_amqp(daemon)
        answer = await call(daemon, "GET", "/")
        self.assertEqual((answer.status, answer.body), (201, b"one\ntwo\nthree\n"))
        self.assertEqual(len(answer.all("set-cookie")), 2)

        invoked = await daemon.invoke({"rawPath": "/"}, function_name=name)
        self.assertEqual(invoked.status, 200)
        self.assertTrue(invoked.payload.endswith(b"\x00" * 8 + b"one\ntwo\nthree\n"), invoked.payload)
        health = await in_thread(http_request, daemon.url, "GET", "/_/ready")
        self.assertEqual(health.status, 200)


class ConfigurationTests(TestCase):
    """Settings the daemon refuses, as it would refuse to start."""

    async def test_bad_settings(self) -> None:
        """An unknown invoke mode, or the Invoke API's own port: a ConfigError naming the setting."""
        port = free_port()
        for settings in (
            {"FUNCTION_URL_INVOKE_MODE": "STREAMING"},
            {"FUNCTION_URL_PORT": port, "PORT": port},
        ):
            with self.assertRaises(ConfigError) as raised:
                await start_daemon(python_runtime("plain.handler"), function_environ(), **settings)
            self.assertIn("FUNCTION_URL_", str(raised.exception))
