"""
AMQP_URI parsing, with AMQP_USERNAME/AMQP_PASSWORD filling in credentials.

Kept apart so the daemon's configuration can validate a URI without starting
anything, and so that no other module ever sees the password in clear.
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

import pika

from ..config import ConfigError


def _with_credentials(uri: str, environ: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    if parts.username or not (environ.get("AMQP_USERNAME") or environ.get("AMQP_PASSWORD")):
        return uri
    user = quote(environ.get("AMQP_USERNAME", "guest"), safe="")
    password = quote(environ.get("AMQP_PASSWORD", "guest"), safe="")
    netloc = f"{user}:{password}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def complete_amqp_uri(uri: str, environ: Mapping[str, str]) -> str:
    """C{uri} with AMQP_USERNAME/AMQP_PASSWORD filled in; L{ConfigError} if malformed."""
    complete = _with_credentials(uri, environ)
    parse_amqp_uri(complete)
    return complete


def parse_amqp_uri(uri: str) -> pika.URLParameters:
    """pika connection parameters for C{uri}; L{ConfigError} if it is malformed."""
    scheme = urlsplit(uri).scheme
    if scheme not in ("amqp", "amqps"):
        raise ConfigError("AMQP_URI is not valid: it must start with amqp:// or amqps://")
    try:
        return pika.URLParameters(uri)
    except Exception as error:  # pika raises a mix of ValueError and others
        # Never echo the URI: it may hold a password.
        raise ConfigError(f"AMQP_URI is not valid: {type(error).__name__}") from None


def redacted(parameters: pika.ConnectionParameters) -> str:
    """Where we connect, for logs: host, port and vhost, never credentials."""
    return f"{parameters.host}:{parameters.port}{parameters.virtual_host}"
