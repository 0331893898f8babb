"""
A request's body within a limit, whoever read the request.

The Invoke API's own connections read a request whole below twisted.web
(C{whole_body}); twisted.web's L{web.BoundedRequest} has counted, and not
kept, a body over its limit; any other twisted.web request (Klein under
treq's StubTreq) holds its body in C{content}. Looked up by attribute, so the
invoke path needs no twisted.web import.
"""

from __future__ import annotations

from typing import Any


def read_body(request: Any, limit: int) -> bytes | None:
    """The request's body, or None if it is longer than C{limit} bytes."""
    whole: bytes | None = getattr(request, "whole_body", None)
    if whole is not None:
        return None if len(whole) > limit else whole
    too_large: bool | None = getattr(request, "too_large", None)
    if too_large is not None:  # a BoundedRequest
        if too_large or request.body_length > limit:
            return None
        body: bytes = request.body()
        return body
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    return None if len(data) > limit else data
