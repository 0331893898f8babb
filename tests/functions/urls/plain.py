"""
Handlers behind a Function URL that use no web framework: what Lambda makes
of each kind of result, and the event itself, echoed.

Each is a handler on its own (C{plain.string}...); C{plain.handler} picks one
by the request's path (C{/string}, C{/echo}...), so that one daemon serves
them all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any, Callable


def string(event: dict[str, Any], context: Any) -> Any:
    """A plain string: the client gets its content, without JSON quotes."""
    return "hello"


def mapping(event: dict[str, Any], context: Any) -> Any:
    """An object without statusCode: the body, as compact JSON."""
    return {"hello": "world"}


def listing(event: dict[str, Any], context: Any) -> Any:
    return ["hello", 3, True]


def number(event: dict[str, Any], context: Any) -> Any:
    return 3.1


def fails(event: dict[str, Any], context: Any) -> Any:
    raise ValueError("the function failed")


def exits(event: dict[str, Any], context: Any) -> Any:
    """The runtime process dies mid-invocation."""
    os._exit(3)


def too_big(event: dict[str, Any], context: Any) -> Any:
    """A result over the 6 MB response limit."""
    return "x" * (7 * 1024 * 1024)


def sleeps(event: dict[str, Any], context: Any) -> Any:
    """Sleeps ?seconds=N (default 5), then answers how long it slept."""
    seconds = float((event.get("queryStringParameters") or {}).get("seconds", "5"))
    time.sleep(seconds)
    return {"slept": seconds}


def teapot(event: dict[str, Any], context: Any) -> Any:
    """statusCode as a numeric string, as AWS accepts it."""
    return {
        "statusCode": "418",
        "headers": {"content-type": "text/plain", "x-teapot": "short, stout"},
        "body": "I'm a teapot",
    }


def status(event: dict[str, Any], context: Any) -> Any:
    """statusCode from ?code=: a number if it is all digits, else the string as sent."""
    code: Any = (event.get("queryStringParameters") or {}).get("code", "")
    return {"statusCode": int(code) if code.isdigit() else code, "body": "status " + code}


def response(event: dict[str, Any], context: Any) -> Any:
    """A full response description: headers, cookies, a non-string body, no content type."""
    return {
        "statusCode": 202,
        "headers": {"x-custom": "one,two"},
        "cookies": ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"],
        "body": {"accepted": True},
    }


def bad_base64(event: dict[str, Any], context: Any) -> Any:
    """isBase64Encoded with a body that is not base64."""
    return {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True}


def empty(event: dict[str, Any], context: Any) -> Any:
    """statusCode alone: no body."""
    return {"statusCode": 204}


def binary(event: dict[str, Any], context: Any) -> Any:
    """A base64 body: the client gets the decoded bytes."""
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/octet-stream"},
        "body": "AAH/gA==",  # 00 01 ff 80
        "isBase64Encoded": True,
    }


def digest(event: dict[str, Any], context: Any) -> Any:
    """The body's length and SHA-256, as decoded: for bodies too big to echo."""
    body = event.get("body", "")
    data = base64.b64decode(body) if event["isBase64Encoded"] else body.encode("utf-8")
    return {
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "isBase64Encoded": event["isBase64Encoded"],
    }


def echo(event: dict[str, Any], context: Any) -> Any:
    """The event as received, and the request id the function was given."""
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"event": event, "aws_request_id": context.aws_request_id}),
    }


HANDLERS: dict[str, Callable[[dict[str, Any], Any], Any]] = {
    "/string": string,
    "/dict": mapping,
    "/list": listing,
    "/number": number,
    "/error": fails,
    "/exit": exits,
    "/too-big": too_big,
    "/sleep": sleeps,
    "/teapot": teapot,
    "/status": status,
    "/response": response,
    "/empty": empty,
    "/binary": binary,
    "/bad-base64": bad_base64,
    "/digest": digest,
}


def handler(event: dict[str, Any], context: Any) -> Any:
    """The handler named by the path; anything else is echoed."""
    return HANDLERS.get(event["rawPath"], echo)(event, context)
