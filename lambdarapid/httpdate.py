"""The Date header's value, as both fast HTTP protocols write it: formatted once a second."""

from __future__ import annotations

from email.utils import formatdate

_cache: tuple[int, bytes] = (0, b"")


def http_date(now: float) -> bytes:
    """C{now} (epoch seconds) as an HTTP date, e.g. C{Tue, 01 Dec 2026 14:48:43 GMT}."""
    global _cache
    second = int(now)
    if _cache[0] != second:
        _cache = (second, formatdate(second, usegmt=True).encode())
    return _cache[1]
