"""
Where the broker is, for logs: never the credentials.

C{AMQP_URI} itself is read and checked with the rest of the configuration
(L{lambdarapid.config.parse_amqp_uri}).
"""

from __future__ import annotations

import pika

from ..config import parse_amqp_uri

__all__ = ["parse_amqp_uri", "redacted"]


def redacted(parameters: pika.ConnectionParameters) -> str:
    """Where we connect, for logs: host, port and vhost, never credentials."""
    return f"{parameters.host}:{parameters.port}{parameters.virtual_host}"
