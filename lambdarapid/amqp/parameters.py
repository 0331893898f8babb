"""
Where the broker is, for logs: never the credentials.

C{AMQP_URI} itself is read and checked with the rest of the configuration
(L{lambdarapid.config.parse_amqp_uri}).
"""

from __future__ import annotations

from urllib.parse import quote

import pika

from ..config import parse_amqp_uri

__all__ = ["parse_amqp_uri", "redacted"]


def redacted(parameters: pika.ConnectionParameters) -> str:
    """
    Where we connect, for logs, as C{AMQP_URI} without its credentials and
    query: scheme, host, port and the vhost percent-encoded (the default vhost
    is C{%2F}), so that it can be pasted back.
    """
    scheme = "amqps" if parameters.ssl_options is not None else "amqp"
    host = f"[{parameters.host}]" if ":" in parameters.host else parameters.host
    vhost = quote(parameters.virtual_host, safe="")
    return f"{scheme}://{host}:{parameters.port}/{vhost}"
