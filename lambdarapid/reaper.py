"""
Zombie reaping for a daemon that runs as PID 1 (a container's ENTRYPOINT).

Runtimes may start helpers that outlive them; in a container those orphans
are re-parented to us. Twisted reaps only the processes it spawned, so this
service reaps every exited child of ours that Twisted does not know.
"""

from __future__ import annotations

import os

from twisted.application.internet import TimerService
from twisted.internet import process

from . import proctree


def _twisted_reaps(pid: int) -> bool:
    """
    Whether Twisted spawned C{pid} and will reap it itself. The one place that
    reads Twisted's table of the processes it waits for (no public API tells).
    """
    return pid in process.reapProcessHandlers


def _exited(pid: int) -> bool:
    """Whether child C{pid} has exited, leaving it unreaped."""
    try:
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return status is not None and status.si_pid == pid


def reap_orphans() -> int:
    """Reap every exited child Twisted is not waiting for; return how many."""
    reaped = 0
    # Each child is asked on its own: one of Twisted's zombies must not hide the others.
    for pid in proctree.children(os.getpid()):
        if _twisted_reaps(pid) or not _exited(pid):
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        reaped += 1
    return reaped


def orphan_reaper(interval: float = 1.0) -> TimerService:
    """A service reaping orphans every C{interval} seconds."""
    return TimerService(interval, reap_orphans)
