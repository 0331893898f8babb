"""
The HTTP client that telemetry and logs subscribers are delivered with.

Made at an environment's first HTTP subscription (most never have one), so
that twisted.web's client is imported only then.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without its "Starting factory" lines: a
    subscriber that closes its connections (Python's http.server does, as the
    AWS samples' listeners are) would get two log lines per batch. The pool
    takes its factory class from this private attribute; treq does the same.
    """

    noisy = False


def delivery_agent(reactor: Any) -> tuple[HTTPConnectionPool, IAgent]:
    """One persistent connection pool, and the agent that delivers through it."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    return pool, Agent(reactor, pool=pool)
