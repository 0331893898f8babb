"""
Zombie reaping for a daemon that runs as PID 1 (a container's ENTRYPOINT).

Runtimes may start helpers that outlive them; in a container those orphans
are re-parented to us. Twisted reaps only the processes it spawned, so this
service peeks at exited children and reaps those Twisted does not know.
"""

from __future__ import annotations

import os

from twisted.application.internet import TimerService
from twisted.internet import process


def reap_orphans() -> int:
    """Reap every exited child Twisted is not waiting for; return how many."""
    reaped = 0
    while True:
        try:
            status = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if status is None or status.si_pid == 0:
            return reaped
        if status.si_pid in process.reapProcessHandlers:
            # One of ours: Twisted's own SIGCHLD handling will collect it.
            return reaped
        try:
            os.waitpid(status.si_pid, os.WNOHANG)
        except ChildProcessError:
            return reaped
        reaped += 1


def orphan_reaper(interval: float = 1.0) -> TimerService:
    """A service reaping orphans every C{interval} seconds."""
    return TimerService(interval, reap_orphans)
