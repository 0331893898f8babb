"""
What the C{lambda-rapid} and C{lambda-server} console scripts run, once
L{lambdarapid.scripts} has decided what the process may leave out.

They run the same services as the twistd plugins, in the foreground, without
twistd's plugin discovery or pid file: what a container ENTRYPOINT (and a
frozen executable) needs. Log lines go through the same non-blocking writer
as the runtimes' output, so a stalled stdout stalls neither; with
C{AWS_LAMBDA_LOG_FORMAT=JSON} they are one JSON object a line, as Lambda's.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Callable, Sequence, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from .logs import JSONLineObserver
from .output import OutputWriter, TextOutput, stdout_writer
from .program import ProgramService, without_port_chatter


def run(
    name: str,
    options: usage.Options,
    make_service: Callable[[Any, Any], ProgramService],
    argv: Sequence[str],
) -> None:
    """Parse C{argv}, start the service on the global reactor, run until stopped."""
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as error:
        print(f"{name}: {error}\n{name} --help lists the options.", file=sys.stderr)
        raise SystemExit(2) from None

    from twisted.internet import reactor

    service = make_service(options, reactor)
    output: OutputWriter = service.output or stdout_writer()
    lines: ILogObserver
    if options["config"].log_format == "JSON":
        lines = JSONLineObserver(output.write)
    else:
        lines = textFileLogObserver(cast(IO[str], TextOutput(output)))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(lines, [without_port_chatter])], redirectStandardIO=False
    )
    service.privilegedStartService()  # a taken port: SystemExit with one line
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]
    output.close()
