"""
The C{lambda-rapid} and C{lambda-server} console scripts.

A container's ENTRYPOINT starts one per cold start, so they start lean. Twisted's
reactor imports pyOpenSSL (and with it cryptography and service_identity)
whenever it is installed, which here cost ~50-80 ms of start and ~13 MB of
memory; the only TLS these programs ever speak is an C{amqps://} broker. So,
unless C{AMQP_URI} asks for one, they tell Python there is no pyOpenSSL before
Twisted is imported, and Twisted runs without TLS (docs/architecture.md,
"Cold start and memory"). The twistd plugins, whose reactor twistd imports
first, keep TLS either way. The scripts also install their own reactor
(L{lambdarapid.reactor}) before anything else can install Twisted's default.
The programs themselves are L{lambdarapid.console}'s.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, MutableMapping, Sequence


def leave_out_tls(environ: Mapping[str, str], modules: MutableMapping[str, Any]) -> bool:
    """
    Make pyOpenSSL unimportable in this process unless C{environ} names an
    C{amqps://} broker or it is imported already; whether it was left out.
    """
    if environ.get("AMQP_URI", "").strip().lower().startswith("amqps:"):
        return False
    if "OpenSSL" in modules:
        return False
    modules["OpenSSL"] = None  # "import OpenSSL" now raises ImportError: Twisted goes without TLS
    return True


def install_reactor() -> None:
    """
    The reactor the scripts run on (L{lambdarapid.reactor}), installed before
    anything imports the global reactor (pika's Twisted adapter does, at import).
    Without epoll (macOS, say) Twisted's default reactor is left to install itself.
    """
    try:
        from .reactor import install
    except ImportError:
        return
    install()


def rapid(argv: Sequence[str] | None = None) -> None:
    """C{lambda-rapid [RUNTIME_COMMAND ...]}: a drop-in for C{aws-lambda-rie}."""
    leave_out_tls(os.environ, sys.modules)
    install_reactor()
    from . import rapid_tap
    from .console import run

    run("lambda-rapid", rapid_tap.Options(), rapid_tap.makeService, sys.argv[1:] if argv is None else argv)


def server(argv: Sequence[str] | None = None) -> None:
    """C{lambda-server}: the Invoke API for every function, over AMQP-RPC."""
    leave_out_tls(os.environ, sys.modules)
    install_reactor()
    from . import server_tap
    from .console import run

    run("lambda-server", server_tap.Options(), server_tap.makeService, sys.argv[1:] if argv is None else argv)
