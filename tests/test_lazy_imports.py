"""
What a daemon that only serves invocations leaves unimported: twisted.web,
Klein, pika, prometheus_client. Each costs cold start and resident memory
(twisted.web alone ~25 ms and ~4 MB), so each is imported where it is used.
Checked in a fresh interpreter, since this one has them all.
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

_SCRIPT = """
import json, sys
from twisted.internet import reactor
from lambdarapid.config import rapid_config
from lambdarapid.invoke_api import InvokeAPI
from lambdarapid.invoke_protocol import InvokeAPIFactory
from lambdarapid.rapid_tap import make_rapid_service

WATCHED = ("twisted.web.server", "twisted.web.client", "klein", "werkzeug", "pika", "prometheus_client")

def loaded():
    return sorted(name for name in WATCHED if name in sys.modules)

config = rapid_config([sys.executable, "-m", "awslambdaric", "echo.handler"], {})
service = make_rapid_service(config, reactor, lambda data: None)
after_service = loaded()
InvokeAPIFactory(InvokeAPI(service.pool, reactor), reactor).site
print(json.dumps({"service": after_service, "handed_over": loaded()}))
"""


class LazyImportTests(SynchronousTestCase):
    def loaded(self) -> dict[str, list[str]]:
        run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr.decode())
        result: dict[str, list[str]] = json.loads(run.stdout)
        return result

    def test_invoke_only_daemon(self) -> None:
        """The daemon's services, built without optional settings, import none of them; a handed-over connection's site imports twisted.web."""
        loaded = self.loaded()
        self.assertEqual(loaded["service"], [])
        self.assertEqual(loaded["handed_over"], ["twisted.web.server"])
