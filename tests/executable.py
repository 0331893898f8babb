"""
The self-contained executable (packaging/build-executable), built once for the
tests that run it and reused until the sources change (under build/, git-ignored).
"""

from __future__ import annotations

import os
import sys

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
#: Another executable to test instead of building one.
EXECUTABLE = os.environ.get(
    "LAMBDARAPID_TEST_EXECUTABLE",
    os.path.join(ROOT, "build", "test-artifacts", "exe", "lambda-rapid"),
)

_building: Deferred[tuple[bytes, bytes, int]] | None = None


def older_than_sources(path: str) -> bool:
    """Whether C{path} is missing or older than any lambdarapid source file."""
    if not os.path.exists(path):
        return True
    built = os.path.getmtime(path)
    for directory, _, files in os.walk(os.path.join(ROOT, "lambdarapid")):
        for name in files:
            if name.endswith(".py") and os.path.getmtime(os.path.join(directory, name)) > built:
                return True
    return False


async def built_executable() -> str:
    """The executable's path, built first if it is missing or stale; SkipTest without PyInstaller."""
    global _building
    if "LAMBDARAPID_TEST_EXECUTABLE" in os.environ or not older_than_sources(EXECUTABLE):
        return EXECUTABLE
    if not os.path.exists(os.path.join(BIN, "pyinstaller")):
        raise SkipTest("PyInstaller is not installed next to this Python")
    if _building is None:
        environ = dict(os.environ)
        environ["PATH"] = BIN + os.pathsep + environ.get("PATH", os.defpath)
        _building = getProcessOutputAndValue(
            os.path.join(ROOT, "packaging", "build-executable"),
            [os.path.dirname(EXECUTABLE)],
            env=environ,
        )
    out, err, code = await _building
    _building = None
    if code != 0 or not os.path.exists(EXECUTABLE):
        raise AssertionError(f"building the executable failed: {out[-2000:]!r} {err[-2000:]!r}")
    return EXECUTABLE
