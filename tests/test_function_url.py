"""
Function URLs without runtimes: the event and answer rules of
L{lambdarapid.function_url}, and L{FunctionURLResource} over a fake invoker
through the same QuietSite the daemon serves it with.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from lambdarapid import errors
from lambdarapid.config import ConfigError, Function, rapid_config
from lambdarapid.function_url import (
    HTTP_INTEGRATION,
    MAX_PRELUDE,
    PRELUDE_END,
    PreludeReader,
    UnmappableResult,
    URLRequest,
    buffered_answer,
    query_parameters,
    request_event,
    request_time,
)
from lambdarapid.function_url_api import FunctionURLResource, too_large
from lambdarapid.invocation import (
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
)
from lambdarapid.streams import ResponseStream
from lambdarapid.web import QuietSite, bounded_request

from .fakes import InMemoryHTTP
from .test_invoke_api import FakeInvoker

#: 2022-08-05T08:14:39.885Z, the fact sheet's sample time.
ARRIVED = 1659687279.885


def url_request(**overrides: Any) -> URLRequest:
    fields: dict[str, Any] = dict(
        method="GET",
        target=b"/my/path?a=1&a=2&b=%2F",
        headers=[
            (b"Host", b"abc123.lambda-url.us-east-1.on.aws:8081"),
            (b"User-Agent", b"agent/1.0"),
            (b"ExTrA-HeadErs", b"With WeiRd CapS"),
            (b"X-Multi", b"one"),
            (b"X-Multi", b"two"),
            (b"Connection", b"keep-alive"),
            (b"Cookie", b"c1=v1; c2=v2"),
        ],
        body=b"",
        source_ip="203.0.113.7",
        port=8081,
        local_host="127.0.0.1",
        request_id="req-1",
        trace_header="Root=1-62ecd0cf-0123456789abcdef01234567",
        arrived=ARRIVED,
    )
    fields.update(overrides)
    return URLRequest(**fields)


def event_of(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(request_event(url_request(**overrides)))
    return document


class EventTests(SynchronousTestCase):
    """The payload format 2.0 event a request becomes."""

    def test_fixed_fields(self) -> None:
        """version 2.0, and $default as routeKey, requestContext.routeKey and stage (Powertools strips any other stage)."""
        event = event_of()
        self.assertEqual((event["version"], event["routeKey"]), ("2.0", "$default"))
        context = event["requestContext"]
        self.assertEqual((context["routeKey"], context["stage"]), ("$default", "$default"))
        self.assertNotIn("pathParameters", event)
        self.assertNotIn("stageVariables", event)

    def test_path_and_query_as_received(self) -> None:
        """rawPath and http.path keep escapes; rawQueryString has no ?; parameters are decoded and repeats comma-joined."""
        event = event_of(target=b"/pa2%Fth/1?multiQuery=foo&multiQuery=%2Fbar&blank=")
        self.assertEqual(event["rawPath"], "/pa2%Fth/1")
        self.assertEqual(event["requestContext"]["http"]["path"], "/pa2%Fth/1")
        self.assertEqual(event["rawQueryString"], "multiQuery=foo&multiQuery=%2Fbar&blank=")
        self.assertEqual(event["queryStringParameters"], {"multiQuery": "foo,/bar", "blank": ""})

    def test_no_query(self) -> None:
        """Without a query: rawQueryString is empty and queryStringParameters absent."""
        event = event_of(target=b"/")
        self.assertEqual(event["rawQueryString"], "")
        self.assertNotIn("queryStringParameters", event)

    def test_absolute_form_target(self) -> None:
        """A proxy-style absolute target is reduced to its path and query."""
        event = event_of(target=b"http://example.com/x/y?z=1")
        self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/x/y", "z=1"))

    def test_headers(self) -> None:
        """Names lower-cased, values verbatim, repeats joined with a bare comma, hop-by-hop and cookie dropped."""
        headers = event_of()["headers"]
        self.assertEqual(headers["extra-headers"], "With WeiRd CapS")
        self.assertEqual(headers["x-multi"], "one,two")
        self.assertNotIn("connection", headers)
        self.assertNotIn("cookie", headers)
        self.assertEqual(headers["host"], "abc123.lambda-url.us-east-1.on.aws:8081")

    def test_forwarding_headers(self) -> None:
        """x-forwarded-* say plain HTTP on our port from the peer; the trace header is the one given."""
        headers = event_of()["headers"]
        self.assertEqual(headers["x-forwarded-proto"], "http")
        self.assertEqual(headers["x-forwarded-port"], "8081")
        self.assertEqual(headers["x-forwarded-for"], "203.0.113.7")
        self.assertEqual(headers["x-amzn-trace-id"], "Root=1-62ecd0cf-0123456789abcdef01234567")

    def test_forwarded_for_is_appended(self) -> None:
        """A client's own x-forwarded-for is kept, with the peer appended, as proxies do."""
        event = event_of(headers=[(b"X-Forwarded-For", b"198.51.100.1")])
        self.assertEqual(event["headers"]["x-forwarded-for"], "198.51.100.1, 203.0.113.7")
        self.assertEqual(event["requestContext"]["http"]["sourceIp"], "203.0.113.7")

    def test_cookies(self) -> None:
        """The Cookie header becomes one string per cookie; no cookies, no key."""
        self.assertEqual(event_of()["cookies"], ["c1=v1", "c2=v2"])
        self.assertNotIn("cookies", event_of(headers=[]))

    def test_request_context(self) -> None:
        """accountId anonymous, the URL id from the Host, the peer, the user agent, the id, the time."""
        context = event_of()["requestContext"]
        self.assertEqual(context["accountId"], "anonymous")
        self.assertEqual(context["domainName"], "abc123.lambda-url.us-east-1.on.aws")
        self.assertEqual((context["apiId"], context["domainPrefix"]), ("abc123", "abc123"))
        self.assertEqual(
            context["http"],
            {
                "method": "GET",
                "path": "/my/path",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "agent/1.0",
            },
        )
        self.assertEqual(context["requestId"], "req-1")
        self.assertEqual(context["time"], "05/Aug/2022:08:14:39 +0000")
        self.assertEqual(context["timeEpoch"], 1659687279885)

    def test_no_host(self) -> None:
        """Without a Host header the domain is the address the request came to."""
        context = event_of(headers=[])["requestContext"]
        self.assertEqual(context["domainName"], "127.0.0.1")

    def test_time_is_english_utc(self) -> None:
        """requestContext.time: day/Mon/year:hh:mm:ss +0000."""
        self.assertEqual(request_time(0), "01/Jan/1970:00:00:00 +0000")

    def test_no_body(self) -> None:
        """No body: no body key, isBase64Encoded false."""
        event = event_of()
        self.assertNotIn("body", event)
        self.assertIs(event["isBase64Encoded"], False)

    def test_text_body(self) -> None:
        """A JSON or text body that is UTF-8 travels as text."""
        for content_type in (b"application/json", b"text/plain; charset=utf-8", b"application/ld+json"):
            event = event_of(
                method="POST", body="{\"é\": 1}".encode(), headers=[(b"Content-Type", content_type)]
            )
            self.assertEqual((event["body"], event["isBase64Encoded"]), ("{\"é\": 1}", False))

    def test_binary_body(self) -> None:
        """Anything else (no type, form data, images, non-UTF-8 text) is base64."""
        cases = [
            (b"image/png", b"\x89PNG\x00\xff"),
            (b"multipart/form-data; boundary=x", b"--x--"),
            (b"application/x-www-form-urlencoded", b"a=1"),
            (b"text/plain", b"\xff\xfe"),
        ]
        for content_type, body in cases:
            event = event_of(method="POST", body=body, headers=[(b"Content-Type", content_type)])
            self.assertEqual(base64.b64decode(event["body"]), body)
            self.assertIs(event["isBase64Encoded"], True)
        event = event_of(method="POST", body=b"abc", headers=[])
        self.assertIs(event["isBase64Encoded"], True)

    def test_query_plus_is_space(self) -> None:
        """Query values are form-decoded: + is a space, escapes decoded."""
        self.assertEqual(query_parameters("q=a+b%2Bc"), {"q": "a b+c"})


class BufferedAnswerTests(SynchronousTestCase):
    """A buffered result mapped to the HTTP answer, as Lambda maps it."""

    def test_values_without_status_code(self) -> None:
        """Anything but an object with statusCode is the body: 200, application/json, compact JSON, strings unquoted."""
        cases = [
            (b'{"hello": "world"}', b'{"hello":"world"}'),
            (b'["hello", 3, true]', b'["hello",3,true]'),
            (b'"hello"', b"hello"),
            (b"3", b"3"),
            (b"3.1", b"3.1"),
            (b"true", b"true"),
        ]
        for payload, body in cases:
            answer = buffered_answer(payload)
            self.assertEqual((answer.status, answer.body), (200, body))
            self.assertEqual(answer.headers, [(b"content-type", b"application/json")])

    def test_described_response(self) -> None:
        """statusCode (a numeric string too), headers, one Set-Cookie per cookie, the body."""
        answer = buffered_answer(
            json.dumps(
                {
                    "statusCode": "418",
                    "headers": {"Content-Type": "text/plain", "X-Count": 3},
                    "cookies": ["a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "b=2"],
                    "body": "teapot",
                }
            ).encode()
        )
        self.assertEqual(answer.status, 418)
        self.assertEqual(answer.body, b"teapot")
        self.assertEqual(
            answer.headers,
            [
                (b"content-type", b"text/plain"),
                (b"x-count", b"3"),
                (b"set-cookie", b"a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT"),
                (b"set-cookie", b"b=2"),
            ],
        )

    def test_defaults(self) -> None:
        """No content type: application/json; no body: empty."""
        answer = buffered_answer(b'{"statusCode": 204}')
        self.assertEqual((answer.status, answer.body), (204, b""))
        self.assertEqual(answer.header(b"content-type"), b"application/json")

    def test_base64_body(self) -> None:
        """isBase64Encoded: the body's bytes, decoded."""
        payload = {"statusCode": 200, "body": base64.b64encode(b"\x89PNG\x00").decode(), "isBase64Encoded": True}
        self.assertEqual(buffered_answer(json.dumps(payload).encode()).body, b"\x89PNG\x00")

    def test_object_body_is_json(self) -> None:
        """A body that is not a string is sent as JSON text."""
        answer = buffered_answer(b'{"statusCode": 200, "body": {"a": [1]}}')
        self.assertEqual(answer.body, b'{"a":[1]}')

    def test_daemon_sets_framing(self) -> None:
        """The function's content-length, connection and transfer-encoding are not passed on."""
        answer = buffered_answer(
            b'{"statusCode": 200, "headers": {"Content-Length": "99", "Connection": "close"}, "body": "x"}'
        )
        self.assertEqual(answer.headers, [(b"content-type", b"application/json")])

    def test_unmappable(self) -> None:
        """A bad statusCode, bad base64, a bad header: UnmappableResult (a 502)."""
        for payload in (
            {"statusCode": "abc"},
            {"statusCode": 99},
            {"statusCode": 600},
            {"statusCode": True},
            {"statusCode": 200.5},
            {"statusCode": 200, "body": "***", "isBase64Encoded": True},
            {"statusCode": 200, "headers": {"bad name": "x"}},
            {"statusCode": 200, "headers": {"x-a": "1\r\nx-b: 2"}},
            {"statusCode": 200, "headers": {"x-a": {"no": 1}}},
            {"statusCode": 200, "cookies": "a=1"},
        ):
            self.assertRaises(UnmappableResult, buffered_answer, json.dumps(payload).encode())

    def test_not_json(self) -> None:
        """A result that is not JSON (a custom runtime's) is sent as it came."""
        answer = buffered_answer(b"plain bytes \xff")
        self.assertEqual((answer.status, answer.body), (200, b"plain bytes \xff"))

    def test_big_integers(self) -> None:
        """Integers past 64 bits (which orjson refuses) still map."""
        self.assertEqual(buffered_answer(b"123456789012345678901234567890").body, b"123456789012345678901234567890")


class PreludeTests(SynchronousTestCase):
    """The HTTP prelude of a streamed answer."""

    def test_whole(self) -> None:
        """The JSON before eight NULs is the status, headers and cookies; what follows is body."""
        reader = PreludeReader()
        prelude = b'{"statusCode":201,"headers":{"x-a":"1"},"cookies":["c=1"]}'
        read = reader.feed(prelude + PRELUDE_END + b"body")
        assert read is not None
        answer, rest = read
        self.assertEqual(answer.status, 201)
        self.assertEqual(
            answer.headers,
            [(b"x-a", b"1"), (b"set-cookie", b"c=1"), (b"content-type", b"application/json")],
        )
        self.assertEqual(rest, b"body")

    def test_split_across_chunks(self) -> None:
        """The prelude and its delimiter may come in any pieces."""
        reader = PreludeReader()
        data = b'{"statusCode":202}' + PRELUDE_END + b"x"
        reads = [reader.feed(data[i : i + 3]) for i in range(0, len(data), 3)]
        self.assertTrue(all(read is None for read in reads[:-1]))
        final = reads[-1]
        assert final is not None
        self.assertEqual((final[0].status, final[1]), (202, b"x"))

    def test_empty_prelude(self) -> None:
        """An empty prelude ({} or nothing) is 200."""
        for prelude in (b"{}", b""):
            read = PreludeReader().feed(prelude + PRELUDE_END)
            assert read is not None
            self.assertEqual((read[0].status, read[1]), (200, b""))

    def test_status_key_is_ignored(self) -> None:
        """Only statusCode counts: a prelude with status instead is 200 (as AWS answered)."""
        read = PreludeReader().feed(b'{"status":404}' + PRELUDE_END)
        assert read is not None
        self.assertEqual(read[0].status, 200)

    def test_too_long_or_bad(self) -> None:
        """No delimiter within 16 KB, or a prelude that is not a JSON object: unmappable."""
        self.assertRaises(UnmappableResult, PreludeReader().feed, b" " * (MAX_PRELUDE + 1))
        self.assertRaises(UnmappableResult, PreludeReader().feed, b"[1]" + PRELUDE_END)
        self.assertRaises(UnmappableResult, PreludeReader().feed, b"{" + PRELUDE_END)


def result(body: bytes = b'{"ok":1}', outcome: Outcome = Outcome.SUCCESS, **extra: Any) -> Result:
    return Result(outcome, body, "id", **extra)


class ResourceTestCase(SynchronousTestCase):
    """A Function URL for a function called web, over a fake invoker."""

    function: Function | None = Function(name="web")
    streaming = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(ARRIVED)
        self.invoker = FakeInvoker()
        resource = FunctionURLResource(
            self.invoker, self.clock, 8081, self.function, streaming=self.streaming
        )
        site = QuietSite(resource, bounded_request(errors.MAX_SYNC_PAYLOAD), too_large=too_large)
        self.http = InMemoryHTTP(site)

    def answer_with(self, answer: Deferred[Any] | Result) -> None:
        self.invoker.answer = succeed(answer) if isinstance(answer, Result) else answer

    def event(self) -> dict[str, Any]:
        kind, invocation = self.invoker.calls[-1]
        self.assertEqual(kind, "invoke")
        document: dict[str, Any] = json.loads(invocation.payload)
        return document


class BufferedResourceTests(ResourceTestCase):
    """FUNCTION_URL_INVOKE_MODE=BUFFERED."""

    def test_any_method_and_path_is_an_event(self) -> None:
        """Every method on every path invokes the function once with its event; the answer is its result."""
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            self.answer_with(result(b'{"statusCode": 201, "body": "made"}'))
            reply = self.successResultOf(self.http.request(method, "/a/b?c=d"))
            self.assertEqual((reply.code, reply.body), (201, b"made"))
            event = self.event()
            self.assertEqual(event["requestContext"]["http"]["method"], method)
            self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/a/b", "c=d"))

    def test_request_id_is_the_invocation_id(self) -> None:
        """x-amzn-RequestId, the event's requestId and the invocation's id are one id."""
        reply = self.successResultOf(self.http.request("GET", "/"))
        _, invocation = self.invoker.only
        self.assertEqual(reply.header("x-amzn-requestid"), invocation.request_id)
        self.assertEqual(self.event()["requestContext"]["requestId"], invocation.request_id)
        self.assertEqual(invocation.function_arn, "arn:aws:lambda:us-east-1:012345678912:function:web")

    def test_trace_id(self) -> None:
        """A client's X-Amzn-Trace-Id reaches event and runtime; else a new root, the same in both."""
        self.successResultOf(self.http.request("GET", "/", headers={"X-Amzn-Trace-Id": "Root=1-1-2"}))
        _, invocation = self.invoker.only
        self.assertEqual(invocation.trace_id, "Root=1-1-2")
        self.assertEqual(self.event()["headers"]["x-amzn-trace-id"], "Root=1-1-2")
        self.successResultOf(self.http.request("GET", "/"))
        _, invocation = self.invoker.calls[-1]
        assert invocation.trace_id is not None
        root = self.event()["headers"]["x-amzn-trace-id"]
        self.assertRegex(root, r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$")
        self.assertTrue(invocation.trace_id.startswith(root + ";"))

    def test_function_error_is_502(self) -> None:
        """A function error, a timeout, an exit: 502 Internal Server Error in plain text."""
        for outcome in (Outcome.FUNCTION_ERROR, Outcome.TIMEOUT, Outcome.RUNTIME_EXIT, Outcome.INIT_ERROR):
            self.answer_with(result(b'{"errorType":"X"}', outcome))
            reply = self.successResultOf(self.http.request("GET", "/"))
            self.assertEqual((reply.code, reply.body), (502, b"Internal Server Error"))

    def test_unmappable_is_502(self) -> None:
        """A result with an invalid statusCode: 502, and said in the log."""
        self.answer_with(result(b'{"statusCode": "nope"}'))
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual((reply.code, reply.body), (502, b"Internal Server Error"))

    def test_throttled_is_429(self) -> None:
        """A full pool: 429 with the Function URL's error shape."""
        self.invoker.answer = fail(TooManyRequests("full"))
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual(reply.code, 429)
        self.assertEqual(reply.json(), {"Message": "Rate Exceeded."})
        self.assertEqual(reply.header("x-amzn-errortype"), "TooManyRequestsException")

    def test_draining_is_503_and_closes(self) -> None:
        """A draining daemon: 503 and the connection closed."""
        self.invoker.answer = fail(ServiceUnavailable("the daemon is shutting down"))
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual(reply.code, 503)
        self.http.flush()
        self.assertEqual(self.http.agent._pumps, set())  # the server closed the connection

    def test_event_over_limit_is_413(self) -> None:
        """A binary body whose base64 event is over 6 MB: 413, nothing invoked."""
        body = b"\xff" * 4_800_000  # 6.4 MB in base64
        reply = self.successResultOf(
            self.http.request("POST", "/", body, headers={"Content-Type": "image/png"})
        )
        self.assertEqual(reply.code, 413)
        self.assertEqual(
            reply.json(),
            {"Message": "Request must be smaller than 6291456 bytes for the InvokeFunction operation"},
        )
        self.assertEqual(self.invoker.calls, [])
        self.assertRegex(reply.header("x-amzn-requestid") or "", r"^[0-9a-f-]{36}$")

    def test_streamed_response_behind_buffered_url(self) -> None:
        """A streaming handler behind a BUFFERED URL: 200 and no body, as on Lambda."""
        self.answer_with(result(b"data", content_type=HTTP_INTEGRATION))
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual((reply.code, reply.body), (200, b""))

    def test_caller_hanging_up_cancels_the_wait(self) -> None:
        """A client that goes away cancels its wait, not the invocation (the invoker ignores the cancel)."""
        cancelled: list[bool] = []
        waiting: Deferred[Result] = Deferred(lambda _: cancelled.append(True))
        self.answer_with(waiting)
        requested = self.http.request("GET", "/")
        self.http.flush()
        [pump] = self.http.agent._pumps
        pump.clientIO.loseConnection()
        self.http.flush()
        self.assertEqual(cancelled, [True])
        self.failureResultOf(requested)


class StreamedResourceTests(ResourceTestCase):
    """FUNCTION_URL_INVOKE_MODE=RESPONSE_STREAM."""

    streaming = True

    def stream(self, content_type: str = HTTP_INTEGRATION) -> ResponseStream:
        stream = ResponseStream(content_type)
        self.answer_with(result(b"", stream=stream))
        return stream

    def test_prelude_then_body(self) -> None:
        """Status, headers and cookies from the prelude; the body as written, chunk by chunk."""
        stream = self.stream()
        replied = self.http.request("GET", "/")
        self.assertTrue(self.invoker.only[1].accept_stream)
        stream.write(b'{"statusCode":201,"headers":{"content-type":"text/html"},')
        stream.write(b'"cookies":["a=1","b=2"]}' + PRELUDE_END + b"<p>first")
        self.http.flush()
        self.assertNoResult(replied)
        stream.write(b" second</p>")
        stream.close(result(b""))
        self.http.flush()
        reply = self.successResultOf(replied)
        self.assertEqual((reply.code, reply.body), (201, b"<p>first second</p>"))
        self.assertEqual(reply.headers.getRawHeaders("set-cookie"), ["a=1", "b=2"])
        self.assertEqual(reply.header("content-type"), "text/html")
        self.assertEqual(reply.header("transfer-encoding"), None)  # decoded by the client
        self.assertIsNone(reply.header("content-length"))

    def test_plain_stream(self) -> None:
        """Another content type: 200 with it, the bytes verbatim."""
        stream = self.stream("text/plain")
        replied = self.http.request("GET", "/")
        stream.write(b"hello ")
        stream.write(b"world")
        stream.close(result(b""))
        self.http.flush()
        reply = self.successResultOf(replied)
        self.assertEqual((reply.code, reply.body, reply.header("content-type")), (200, b"hello world", "text/plain"))

    def test_error_before_the_first_byte(self) -> None:
        """A failure before the prelude is whole: 502 as buffered."""
        stream = self.stream()
        replied = self.http.request("GET", "/")
        stream.write(b'{"statusCode":')
        stream.close(result(b'{"errorType":"X"}', Outcome.FUNCTION_ERROR))
        self.http.flush()
        reply = self.successResultOf(replied)
        self.assertEqual((reply.code, reply.body), (502, b"Internal Server Error"))

    def test_error_after_the_first_byte_truncates(self) -> None:
        """A failure mid-body: the connection is cut before the final chunk; the client sees an incomplete answer."""
        stream = self.stream()
        replied = self.http.request("GET", "/")
        stream.write(b"{}" + PRELUDE_END + b"partial")
        stream.close(result(b'{"errorType":"X"}', Outcome.TIMEOUT))
        self.http.flush()
        self.failureResultOf(replied, ResponseFailed)

    def test_ended_without_writing(self) -> None:
        """A handler that ends without a write never sends a prelude: 200, empty."""
        stream = self.stream()
        replied = self.http.request("GET", "/")
        stream.close(result(b""))
        self.http.flush()
        reply = self.successResultOf(replied)
        self.assertEqual((reply.code, reply.body), (200, b""))

    def test_bad_prelude(self) -> None:
        """A prelude that is no JSON object: 502, and the rest dropped."""
        stream = self.stream()
        replied = self.http.request("GET", "/")
        stream.write(b"not json" + PRELUDE_END + b"body")
        self.http.flush()
        reply = self.successResultOf(replied)
        self.assertEqual(reply.code, 502)
        stream.write(b"more")  # read and dropped
        stream.close(result(b""))

    def test_buffered_handler_behind_streaming_url(self) -> None:
        """A buffered handler behind a RESPONSE_STREAM URL: its result is the body, untranslated."""
        self.answer_with(result(b'{"statusCode":200,"body":"x"}'))
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual((reply.code, reply.body), (200, b'{"statusCode":200,"body":"x"}'))


class ServerRoutingTests(ResourceTestCase):
    """Through the Lambda Server: the first path segment names the function."""

    function = None

    def test_function_from_the_first_segment(self) -> None:
        """/<function>/rest?query: invokes <function> with /rest?query as its path."""
        self.successResultOf(self.http.request("GET", "/orders/list/all?page=2"))
        _, invocation = self.invoker.only
        self.assertEqual(invocation.function_name, "orders")
        self.assertEqual(invocation.function_arn, "arn:aws:lambda:us-east-1:012345678912:function:orders")
        event = self.event()
        self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/list/all", "page=2"))

    def test_function_root(self) -> None:
        """/<function> and /<function>?q are the function's root path."""
        self.successResultOf(self.http.request("GET", "/orders?q=1"))
        event = self.event()
        self.assertEqual((event["rawPath"], event["rawQueryString"]), ("/", "q=1"))

    def test_no_function(self) -> None:
        """/ names no function: 403, as AWS answers a URL with nothing behind it."""
        reply = self.successResultOf(self.http.request("GET", "/"))
        self.assertEqual(reply.code, 403)
        self.assertEqual(reply.header("x-amzn-errortype"), "AccessDeniedException")


class ConfigTests(SynchronousTestCase):
    """FUNCTION_URL_PORT and FUNCTION_URL_INVOKE_MODE."""

    def config(self, **environ: str) -> Any:
        return rapid_config(["true"], {"PATH": "/usr/bin:/bin", **environ})

    def test_defaults(self) -> None:
        """Off by default; BUFFERED when on."""
        config = self.config()
        self.assertEqual((config.function_url_port, config.function_url_invoke_mode), (None, "BUFFERED"))
        config = self.config(FUNCTION_URL_PORT="8081", FUNCTION_URL_INVOKE_MODE="response_stream")
        self.assertEqual((config.function_url_port, config.function_url_invoke_mode), (8081, "RESPONSE_STREAM"))

    def test_bad_values(self) -> None:
        """A bad port or mode, or a port another listener has: one line naming the variable."""
        cases = [
            ({"FUNCTION_URL_PORT": "http"}, "FUNCTION_URL_PORT='http' is not valid"),
            ({"FUNCTION_URL_INVOKE_MODE": "STREAM"}, "expected BUFFERED or RESPONSE_STREAM"),
            ({"FUNCTION_URL_PORT": "8080"}, "FUNCTION_URL_PORT=8080 is also PORT"),
            ({"FUNCTION_URL_PORT": "9100", "METRICS_PORT": "9100"}, "is also METRICS_PORT"),
            (
                {"FUNCTION_URL_PORT": "9003", "MAX_CONCURRENCY": "4"},
                "one of the Runtime API ports (9001-9004)",
            ),
        ]
        for environ, message in cases:
            with self.assertRaises(ConfigError) as raised:
                self.config(**environ)
            self.assertIn(message, str(raised.exception))

    def test_settings_kept_from_the_function(self) -> None:
        """The daemon's own settings are not passed to the runtime."""
        config = self.config(FUNCTION_URL_PORT="8081", FUNCTION_URL_INVOKE_MODE="BUFFERED")
        self.assertNotIn("FUNCTION_URL_PORT", config.runtime_environ)
        self.assertNotIn("FUNCTION_URL_INVOKE_MODE", config.runtime_environ)
