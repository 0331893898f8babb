"""
L{lambdarapid.http1.parse_head}: it takes well-formed heads and declines
(None) every head a full parser must see, since what it takes is served
without one.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import http1
from lambdarapid.http1 import parse_head

LINE = re.compile(rb"(GET|POST) (/[!-~]*) HTTP/1\.1")


class ParseHeadTests(SynchronousTestCase):
    def test_takes_a_plain_head(self) -> None:
        """Names lower-cased, values stripped, the length, keep-alive; the request line's groups."""
        parsed = parse_head(
            b"POST /r?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length:  12 \r\nX-Obs: caf\xc3\xa9\t", LINE, 100
        )
        assert parsed is not None
        line, headers, length, keep_alive = parsed
        self.assertEqual(line.groups(), (b"POST", b"/r?q=1"))
        self.assertEqual(headers, {b"host": b"x", b"content-length": b"12", b"x-obs": b"caf\xc3\xa9"})
        self.assertEqual((length, keep_alive), (12, True))

    def test_connection_close(self) -> None:
        """Keep-alive is off when Connection lists close among its tokens, as llhttp and twisted.web read it."""
        for value in (b"Close", b"keep-alive, close", b"close , TE"):
            parsed = parse_head(b"GET / HTTP/1.1\r\nConnection: " + value, LINE, 0)
            assert parsed is not None
            self.assertFalse(parsed[3], value)
        parsed = parse_head(b"GET / HTTP/1.1\r\nConnection: keep-alive, closed", LINE, 0)
        assert parsed is not None
        self.assertTrue(parsed[3])

    def test_declines(self) -> None:
        """Everything a full parser must judge or frame is declined."""
        declined = {
            "another method": b"PUT / HTTP/1.1\r\nHost: x",
            "HTTP/1.0": b"GET / HTTP/1.0\r\nHost: x",
            "bare LF": b"GET / HTTP/1.1\r\nA: b\nC: d",
            "bare CR": b"GET / HTTP/1.1\r\nA: b\rC: d",
            "LF CR": b"GET / HTTP/1.1\r\nA: b\n\rC: d",
            "NUL": b"GET / HTTP/1.1\r\nA: b\x00",
            "DEL": b"GET / HTTP/1.1\r\nA: b\x7f",
            "obs-fold": b"GET / HTTP/1.1\r\nA: b\r\n c",
            "no colon": b"GET / HTTP/1.1\r\nA b",
            "bad name": b"GET / HTTP/1.1\r\nA(b): c",
            "space before colon": b"GET / HTTP/1.1\r\nA : c",
            "repeated, any case": b"GET / HTTP/1.1\r\nA: b\r\na: c",
            "chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
            "expect": b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5",
            "upgrade": b"GET / HTTP/1.1\r\nUpgrade: h2c",
            "signed length": b"POST / HTTP/1.1\r\nContent-Length: +5",
            "huge length": b"POST / HTTP/1.1\r\nContent-Length: 9999999999",
            "over the limit": b"POST / HTTP/1.1\r\nContent-Length: 101",
            "empty line inside": b"GET / HTTP/1.1\r\nA: b\r\n\r\nC: d",
            "proxy-connection": b"GET / HTTP/1.1\r\nProxy-Connection: close",
            "over half the head limit": b"GET / HTTP/1.1\r\nA: " + b"b" * http1.MAX_HEAD_TAKEN,
            "a tab in the target": b"GET /a\tb HTTP/1.1\r\nHost: x",
        }
        for why, head in declined.items():
            self.assertIsNone(parse_head(head, LINE, 100), why)

    def test_checked_names_are_bounded(self) -> None:
        """Names are remembered once checked, but never more than a bound of them."""
        self.patch(http1, "_NAMES", {})
        for n in range(http1._MAX_NAMES + 100):
            self.assertIsNotNone(parse_head(b"GET / HTTP/1.1\r\nX-%d: v" % n, LINE, 0))
        self.assertEqual(len(http1._NAMES), http1._MAX_NAMES)
        # A remembered name is still refused without its colon.
        self.assertIsNone(parse_head(b"GET / HTTP/1.1\r\nX-1", LINE, 0))
