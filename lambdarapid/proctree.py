"""
A runtime's process tree, read from /proc: for Max Memory Used and for killing
everything a runtime started (shell runtimes fork curl, Node forks workers).
Once a runtime has exited its children are re-parented (to init, or to us as
PID 1) and no tree leads to them: they are found by a marker in their
environment instead, which they inherit from the runtime.

Linux only; elsewhere the tree is just the runtime's own process.
"""

from __future__ import annotations

import os
import signal


def children(pid: int) -> list[int]:
    """The direct children of C{pid}."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """C{pid} and all its descendants, parents first."""
    pids = [pid]
    index = 0
    while index < len(pids):
        pids.extend(children(pids[index]))
        index += 1
    return pids


def _status_kb(pid: int, field: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_kb(pid: int) -> int:
    """
    The peak resident memory of C{pid}'s tree: the sum of each live process's
    high-water mark (VmHWM), in kB.
    """
    return sum(_status_kb(each, b"VmHWM:") for each in tree(pid))


def signal_tree(pid: int, signum: int = signal.SIGKILL) -> None:
    """Send C{signum} to C{pid} and every descendant, leaves last."""
    for each in tree(pid):
        try:
            os.kill(each, signum)
        except OSError:
            pass


def marked(marker: bytes) -> list[int]:
    """
    The processes of ours whose environment holds the C{NAME=value} entry
    C{marker}: whatever a runtime started, wherever it was re-parented.
    """
    if b"=" not in marker:
        return []  # no marker: nothing is marked (and an empty one would match everything)
    needle = b"\0" + marker + b"\0"
    uid = os.getuid()
    me = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid and uid != 0:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in b"\0" + environ:
            found.append(int(name))
    return found


def signal_marked(marker: bytes, signum: int = signal.SIGKILL) -> None:
    """Send C{signum} to every process of ours whose environment holds C{marker}."""
    for each in marked(marker):
        try:
            os.kill(each, signum)
        except OSError:
            pass


def signal_group(pgid: int, signum: int) -> None:
    """Signal process group C{pgid} (an extension and what it started), if it is still there."""
    try:
        os.killpg(pgid, signum)
    except OSError:
        pass
