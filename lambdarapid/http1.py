"""
The minimal HTTP/1.1 request-head parser both fast protocols share.

Nearly every request either API gets is one of a few shapes: an invoke
C{POST}, the runtime's C{GET next} and C{POST response}, well formed and
framed by C{Content-Length}. L{parse_head} takes exactly those, with a few
C-level scans and no call per header. Whatever else comes (another method
or version, chunked or C{Expect}, a repeated or malformed header, a control
character, a body over the limit) it declines with None, and the protocol
hands the request, unread, to its full parser (twisted.web's channel for the
Invoke API, llhttp for the Runtime API), which serves or refuses it as ever.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Dict, Tuple

HEAD_END = b"\r\n\r\n"
#: Each status line's reason phrase, as both fast protocols write it.
REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
#: The longest head taken here: half the limit (L{errors.MAX_REQUEST_HEAD}),
#: so that a head near it always goes to the full parser, which counts it as
#: it refuses it (414 or 431), however its bytes arrived.
MAX_HEAD_TAKEN = 8192

#: A header name (a token).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Every byte a head taken here may hold: tab, printable ASCII, obs-text, and
#: CR and LF (which must come as CRLF pairs).
_ALLOWED = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])
#: Header names already checked, and their lower-case forms: a client sends
#: the same few on every request. Bounded, so that no client can grow it.
_NAMES: dict[bytes, bytes] = {}
_MAX_NAMES = 512
#: Headers that frame or switch the connection in ways this parser does not, or
#: that llhttp reads as closing it (C{Proxy-Connection}).
_DECLINED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection"})


#: What L{parse_head} took: the request line's match of the caller's pattern
#: (its groups: method, target...), the headers (names lower-cased, values
#: stripped), the body's length (C{Content-Length}, else 0), and False when
#: the client asked to close the connection after this request. A plain
#: tuple: it is made for every request.
Head = Tuple["re.Match[bytes]", Dict[bytes, bytes], int, bool]


def parse_head(head: bytes, request_line: re.Pattern[bytes], max_body: int) -> Head | None:
    """
    C{head} (the bytes before L{HEAD_END}) parsed, if its request line matches
    C{request_line}, it is at most L{MAX_HEAD_TAKEN} bytes and its body at
    most C{max_body}; None for anything to leave to a full parser. Keep-alive
    is off when C{Connection} lists C{close} among its tokens.
    """
    if len(head) > MAX_HEAD_TAKEN:
        return None
    crlf = head.count(b"\r\n")
    if head.translate(None, _ALLOWED) or head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None  # a control character, a bare CR or LF: the full parser's to answer
    lines = head.split(b"\r\n")
    line = request_line.fullmatch(lines[0])
    if line is None:
        return None
    headers: dict[bytes, bytes] = {}
    names = _NAMES
    for raw in lines[1:]:
        raw_name, colon, value = raw.partition(b":")
        name = names.get(raw_name)
        if name is None:
            if not colon or _TOKEN.fullmatch(raw_name) is None:
                return None  # no colon, obs-fold, a bad name
            name = raw_name.lower()
            if len(names) < _MAX_NAMES:
                names[raw_name] = name
        elif not colon:
            return None
        if name in headers or name in _DECLINED:
            return None  # a repeated header (two lengths, say), or framing not done here
        headers[name] = value.strip(b" \t")
    raw_length = headers.get(b"content-length", b"0")
    if not raw_length.isdigit() or len(raw_length) > 9:
        return None
    length = int(raw_length)
    if length > max_body:
        return None  # the full parser's limit answer
    connection = headers.get(b"connection")
    keep_alive = connection is None or b"close" not in [
        token.strip(b" \t") for token in connection.lower().split(b",")
    ]
    return line, headers, length, keep_alive
