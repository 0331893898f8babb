"""
Function URL events and answers: HTTP in Lambda's payload format 2.0.

A Function URL turns each HTTP request into one event and the function's
result back into the HTTP response, with rules that web frameworks behind
Mangum, Powertools or lambda_http rely on (docs/function-urls.md has the
details and where each comes from). This module holds those rules and
nothing of a transport: L{request_event} builds the event, L{buffered_answer}
maps a result, L{PreludeReader} reads a streamed answer's status and headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import parse_qsl

import orjson

#: The content type of a streamed answer that starts with an HTTP prelude
#: (the Node RIC's C{awslambda.HttpResponseStream.from}).
HTTP_INTEGRATION = "application/vnd.awslambda.http-integration-response"
#: What ends the prelude: JSON text cannot hold a NUL.
PRELUDE_END = b"\0" * 8
#: The longest prelude read before the answer is given up (API Gateway's limit).
MAX_PRELUDE = 16 * 1024

#: What the client gets for a failed invocation (an error, a timeout, an exit,
#: a result that is no HTTP answer): Function URLs answer it in plain text.
INTERNAL_SERVER_ERROR = b"Internal Server Error"

#: Request headers a proxy does not pass on (RFC 9110 7.6.1), dropped from the event.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Headers of the function's answer that the daemon sets itself or that do not travel.
_ANSWER_DROPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

_TEXT_TYPES = frozenset(
    {"application/json", "application/javascript", "application/xml"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def is_text(content_type: str) -> bool:
    """Whether a body of this type travels as text (else base64, as AWS does for binary)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:
        return False
    return (
        media.startswith("text/")
        or media in _TEXT_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def request_time(epoch: float) -> str:
    """C{requestContext.time}: C{05/Aug/2022:08:14:39 +0000}, English months whatever the locale."""
    t = time.gmtime(epoch)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def query_parameters(raw_query: str) -> dict[str, str]:
    """Decoded query parameters, a repeated key's values joined with commas in order."""
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def split_cookies(values: Iterable[bytes]) -> list[str]:
    """The C{Cookie} header(s) as one string per cookie, as the event's C{cookies}."""
    cookies: list[str] = []
    for value in values:
        for cookie in value.decode("utf-8", "replace").split(";"):
            cookie = cookie.strip()
            if cookie:
                cookies.append(cookie)
    return cookies


def domain_of(host: str) -> str:
    """The Host header without its port (an IPv6 literal keeps its brackets)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


@dataclass
class URLRequest:
    """One HTTP request, as far as its event is concerned."""

    method: str
    #: The request target as received: path and query, escapes untouched.
    target: bytes
    #: Header name (any case) and value, in the order received.
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: The TCP peer's address.
    source_ip: str
    #: The port the request arrived on (x-forwarded-port).
    port: int
    #: The local address, naming the URL when the client sent no Host.
    local_host: str
    request_id: str
    #: The trace header the event carries (x-amzn-trace-id).
    trace_header: str
    #: When it arrived, epoch seconds.
    arrived: float
    protocol: str = "HTTP/1.1"


def request_event(request: URLRequest) -> bytes:
    """The payload format 2.0 event for C{request}, as JSON."""
    target = request.target
    if target.startswith((b"http://", b"https://")):  # an absolute-form target
        target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
    raw_path, _, raw_query = target.decode("utf-8", "replace").partition("?")
    headers: dict[str, str] = {}
    cookies: list[bytes] = []
    forwarded_for: str | None = None
    for raw_name, raw_value in request.headers:
        name = raw_name.lower()
        if name in HOP_BY_HOP:
            continue
        if name == b"cookie":
            cookies.append(raw_value)
            continue
        key = name.decode("latin-1")
        value = raw_value.decode("utf-8", "replace")
        if key == "x-forwarded-for":
            forwarded_for = value if forwarded_for is None else f"{forwarded_for},{value}"
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    headers["x-amzn-trace-id"] = request.trace_header
    headers["x-forwarded-for"] = (
        f"{forwarded_for}, {request.source_ip}" if forwarded_for else request.source_ip
    )
    headers["x-forwarded-proto"] = "http"
    headers["x-forwarded-port"] = str(request.port)
    domain = domain_of(headers.get("host") or request.local_host)
    url_id = domain.split(".", 1)[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path or "/",
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = split_cookies(cookies)
    event["headers"] = headers
    if raw_query:
        event["queryStringParameters"] = query_parameters(raw_query)
    event["requestContext"] = {
        "accountId": "anonymous",
        "apiId": url_id,
        "domainName": domain,
        "domainPrefix": url_id,
        "http": {
            "method": request.method,
            "path": raw_path or "/",
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request.request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": request_time(request.arrived),
        "timeEpoch": int(request.arrived * 1000),
    }
    body = request.body
    if body:
        text = None
        if is_text(headers.get("content-type", "")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if text is not None:
            event["body"], event["isBase64Encoded"] = text, False
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    else:
        event["isBase64Encoded"] = False
    return orjson.dumps(event)


class UnmappableResult(ValueError):
    """The function's result claims to be an HTTP answer but is not a valid one."""


@dataclass
class HTTPAnswer:
    """An HTTP response to send: status, headers (one pair per line), body."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header C{name} (lower-case), if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def failed_answer() -> HTTPAnswer:
    """What the client gets for a failed invocation."""
    return HTTPAnswer(502, [(b"content-type", b"text/plain")], INTERNAL_SERVER_ERROR)


def _status(raw: object) -> int:
    if isinstance(raw, bool):
        raise UnmappableResult(f"statusCode is not a number: {raw!r}")
    try:
        status = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UnmappableResult(f"statusCode is not a number: {raw!r}") from None
    if isinstance(raw, float) and status != raw:
        raise UnmappableResult(f"statusCode is not a whole number: {raw!r}")
    if not 100 <= status <= 599:
        raise UnmappableResult(f"statusCode is out of range: {status}")
    return status


def _header_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return ",".join(_header_text(item) for item in value)
    raise UnmappableResult(f"a header value is not a string: {value!r}")


def described_answer(document: dict[str, Any], default_status: int = 200) -> HTTPAnswer:
    """
    The HTTP answer a result (or a prelude) describes: C{statusCode},
    C{headers} (a comma-joined string per name), C{cookies} (a
    C{Set-Cookie} each) and, for a result, C{body} and C{isBase64Encoded}.
    """
    raw_status = document.get("statusCode")
    answer = HTTPAnswer(default_status if raw_status is None else _status(raw_status))
    raw_headers = document.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise UnmappableResult("headers is not an object")
    for name, value in raw_headers.items():
        if value is None:
            continue
        if not _TOKEN.fullmatch(name):
            raise UnmappableResult(f"invalid header name: {name!r}")
        if name.lower() in _ANSWER_DROPPED:
            continue
        text = _header_text(value)
        if "\r" in text or "\n" in text:
            raise UnmappableResult(f"header {name} holds a line break")
        answer.headers.append((name.lower().encode("latin-1"), text.encode("utf-8")))
    cookies = document.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise UnmappableResult("cookies is not a list of strings")
    for cookie in cookies:
        if "\r" in cookie or "\n" in cookie:
            raise UnmappableResult("a cookie holds a line break")
        answer.headers.append((b"set-cookie", cookie.encode("utf-8")))
    if answer.header(b"content-type") is None:
        answer.headers.append((b"content-type", b"application/json"))
    return answer


def _body_bytes(document: dict[str, Any]) -> bytes:
    body = document.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        return orjson.dumps(body)  # an object is sent as JSON text, as AWS does
    if document.get("isBase64Encoded") is True:
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise UnmappableResult("body is not valid base64") from None
    return body.encode("utf-8")


def _parse(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)  # what orjson refuses (integers past 64 bits)


def buffered_answer(payload: bytes) -> HTTPAnswer:
    """
    The HTTP answer for a successful result, as a Function URL gives it: an
    object with C{statusCode} describes the response; anything else is the
    body itself (a string without its JSON quotes, the rest as compact
    JSON), 200, C{application/json}. L{UnmappableResult} if it cannot be sent.
    """
    try:
        value = _parse(payload)
    except ValueError:
        value = None
        body = payload  # not JSON: sent as it came
    else:
        if isinstance(value, dict) and "statusCode" in value:
            answer = described_answer(value)
            answer.body = _body_bytes(value)
            return answer
        if isinstance(value, str):
            body = value.encode("utf-8")
        else:
            # Re-serialised compactly, as Lambda does; by the json module,
            # which keeps integers past 64 bits exact where orjson does not.
            body = json.dumps(
                json.loads(payload), separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
    return HTTPAnswer(200, [(b"content-type", b"application/json")], body)


class PreludeReader:
    """
    Reads the HTTP prelude a streamed answer starts with: its JSON, then
    eight NULs, then the body. C{feed} the stream's chunks until it returns
    the answer (status and headers, no body) and the body bytes that followed.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[HTTPAnswer, bytes] | None:
        """The answer and the first body bytes once the prelude is whole; None until then."""
        buffer = self._buffer + data
        end = buffer.find(PRELUDE_END)
        if end < 0:
            if len(buffer) > MAX_PRELUDE:
                raise UnmappableResult(f"no prelude end in the first {MAX_PRELUDE} bytes")
            self._buffer = buffer
            return None
        self._buffer = b""
        raw = buffer[:end]
        try:
            document = _parse(raw) if raw.strip() else {}
        except ValueError:
            raise UnmappableResult("the prelude is not JSON") from None
        if not isinstance(document, dict):
            raise UnmappableResult("the prelude is not a JSON object")
        return described_answer(document), buffer[end + len(PRELUDE_END) :]

    @property
    def started(self) -> bool:
        """Whether part of a prelude has been read."""
        return bool(self._buffer)
