"""
What a process running lambdarapid does once, at its edge.

The service factories (C{make_rapid_service}, C{make_server_service}) build
services that change nothing process-wide, so that C{lambdarapid.testing}
can run a daemon inside a user's trial process. Everything that belongs to
the process as a whole (the log level, stdout, signal handlers, prctl, the
one-line exit on a taken port) happens here, for both the console scripts
and twistd.
"""

from __future__ import annotations

import ctypes
import re
import signal
from typing import Any, Callable, ClassVar

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogFilterPredicate, LogEvent, Logger, PredicateResult
from twisted.python import usage
from zope.interface import provider

from . import __version__, logs
from .output import OutputWriter
from .listener import listen_error_line

#: prctl(2)'s option controlling core dumps and ownership of /proc/<pid> files.
PR_SET_DUMPABLE = 4

#: What twisted.internet.tcp says about every port it opens and closes.
_PORT_CHATTER = re.compile(r"^(.+ starting on \d+|\(\w+ Port \d+ Closed\))$")


class ProgramOptions(usage.Options):
    """
    A program's options, whose C{--help} prints C{help_text} as written
    (usage.Options would reflow it into one paragraph) under a usage line with
    the program's name, and whose C{--version} is lambdarapid's.
    """

    program: ClassVar[str]
    synopsis: ClassVar[str]
    help_text: ClassVar[str]

    def getSynopsis(self) -> str:
        program = self.program
        if self.parent is not None:
            program = f"twistd [twistd options] {program}"
        return f"Usage: {program} {self.synopsis}"

    def getUsage(self, width: int | None = None) -> str:
        return "\n" + self.help_text.rstrip("\n")

    opt_h = usage.Options.opt_help

    def opt_version(self) -> None:
        """Print lambdarapid's version and exit."""
        print(f"{self.program} (lambdarapid) {__version__}")
        raise SystemExit(0)


def hide_environment() -> None:
    """
    Keep the function from reading the broker's credentials in our
    /proc/<pid>/environ: a process that is not "dumpable" has its /proc files
    owned by root. A function running as root can still read them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


@provider(ILogFilterPredicate)
def without_port_chatter(event: LogEvent) -> PredicateResult:
    """
    A log predicate dropping Twisted's "X starting on 8080" and "(TCP Port
    8080 Closed)": the listeners say where they listen in the product's words.
    """
    message = event.get("message")
    if isinstance(message, tuple) and len(message) == 1 and isinstance(message[0], str):
        if _PORT_CHATTER.match(message[0]):
            return PredicateResult.no
    return PredicateResult.maybe


class ProgramService(MultiService):
    """
    The service a program runs: its one child, plus what the process owns.

    A taken port stops the program with one line; on stop, a second SIGTERM or
    SIGINT calls C{hurry} (the daemon then stops its runtimes at once), and
    stdout is flushed last.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        program: str,
        child: IService,
        output: OutputWriter | None = None,
        hurry: Callable[[], None] | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self.program = program
        self.child = child
        self.output = output
        self._hurry = hurry
        self._reactor = reactor
        self._saved_handlers: dict[int, Any] = {}
        child.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            raise SystemExit(listen_error_line(self.program, error)) from None

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as error:
            raise SystemExit(listen_error_line(self.program, error)) from None

    def stopService(self) -> Deferred[None]:
        self._hurry_on_second_signal()
        stopped: Deferred[None] = Deferred.fromCoroutine(self._stop())
        return stopped

    async def _stop(self) -> None:
        try:
            await super().stopService()
        finally:
            self._restore_signals()
            if self.output is not None:
                self.output.close()

    def _hurry_on_second_signal(self) -> None:
        hurry, reactor = self._hurry, self._reactor
        if hurry is None or reactor is None:
            return

        def second(signum: int, frame: object) -> None:
            reactor.callFromThread(self._second_signal)

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._saved_handlers[signum] = signal.signal(signum, second)

    def _second_signal(self) -> None:
        self.log.warn("asked again to stop: stopping the runtimes now")
        assert self._hurry is not None
        self._hurry()

    def _restore_signals(self) -> None:
        handlers, self._saved_handlers = self._saved_handlers, {}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
