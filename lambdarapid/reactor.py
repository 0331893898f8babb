"""
The console scripts' reactor: Twisted's epoll reactor without a log context
around every event.

Twisted's reactors dispatch each read and write inside C{callWithLogger}:
the selectable's C{logPrefix()}, a copy of the legacy log context and three
calls of context bookkeeping, so that a legacy C{log.msg} made while handling
the event is tagged with its connection. An invocation is three read events
here, and that bookkeeping measured ~12 us of its ~180 us of daemon CPU.
Nothing in lambdarapid logs through the legacy API (a L{twisted.logger}
event names its own namespace), so only Twisted's own last-resort error lines
lose their connection's prefix. Twisted means to drop the same wrapper
(twisted/twisted#6789). twistd runs whichever reactor it is told to.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

from .logs import observer


class DirectEPollReactor(EPollReactor):
    """An L{EPollReactor} that hands each event straight to its selectable."""

    _log = Logger(observer=observer)

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # removed by an earlier event of this batch
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # _doReadOrWrite logs and disconnects what its selectable
                # raises; this is only its own failure (a broken connectionLost).
                self._log.failure("reactor: error handling an event of {selectable!r}", selectable=selectable)

    doIteration = doPoll


def install() -> Any:
    """Install a L{DirectEPollReactor} as the global reactor and return it."""
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor
