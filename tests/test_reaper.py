"""Reaping orphans, as the daemon does when it runs as a container's PID 1."""

from __future__ import annotations

import os
import time

from twisted.internet import process
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid.reaper import reap_orphans


def exited_child() -> int:
    """A child process that has exited and is waiting to be reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    for _ in range(500):
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if status is not None and status.si_pid == pid:
            return pid
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


class ReapOrphansTests(SynchronousTestCase):
    """reap_orphans() collects zombies Twisted does not know, and leaves its own alone."""

    def test_unknown_zombie_is_reaped(self) -> None:
        """An exited child that Twisted did not spawn is reaped."""
        pid = exited_child()
        self.assertEqual(reap_orphans(), 1)
        self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)

    def test_twisted_process_is_left_to_twisted(self) -> None:
        """An exited child Twisted spawned is left for Twisted's own reaping."""
        pid = exited_child()
        process.reapProcessHandlers[pid] = object()  # type: ignore[assignment]  # as spawnProcess registers
        self.addCleanup(process.reapProcessHandlers.pop, pid)
        self.addCleanup(os.waitpid, pid, 0)
        self.assertEqual(reap_orphans(), 0)
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        self.assertEqual(status.si_pid if status else None, pid)

    def test_zombies_behind_a_twisted_one_are_reaped(self) -> None:
        """A zombie Twisted owns does not stop the others from being reaped."""
        ours = exited_child()
        process.reapProcessHandlers[ours] = object()  # type: ignore[assignment]
        self.addCleanup(process.reapProcessHandlers.pop, ours)
        self.addCleanup(os.waitpid, ours, 0)
        orphans = [exited_child(), exited_child()]
        self.assertEqual(reap_orphans(), 2)
        for pid in orphans:
            self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)
