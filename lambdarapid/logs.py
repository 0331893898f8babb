"""
LOG_LEVEL for lambdarapid's own log events.

twistd sets up the global log observers after C{makeService}, so instead of
wrapping those, every lambdarapid L{Logger} publishes through L{observer},
which drops events below the configured level before they reach them.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: The observer lambdarapid's loggers publish to.
observer = FilteringLogObserver(globalLogPublisher, [_levels])


def set_level(level: LogLevel) -> None:
    """Emit lambdarapid's events at C{level} and above from now on."""
    _levels.setLogLevelForNamespace("", level)
