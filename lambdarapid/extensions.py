"""
The extensions of one execution environment: who registered, for what, and
where each one is in its life.

This is the Extensions API's bookkeeping, without HTTP or processes: the
routes call it, the environment reads it to know when a phase is over.
External extensions are the executable files of C{EXTENSIONS_DIR}; an
extension registering under any other name is internal (it runs inside the
runtime's process).
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred

from . import errors

#: Lambda's limit: internal and external extensions together.
MAX_EXTENSIONS = 10
INVOKE = "INVOKE"
SHUTDOWN = "SHUTDOWN"
EVENT_TYPES = (INVOKE, SHUTDOWN)

#: The function's variables an extension does not get (runtime-only ones).
RUNTIME_ONLY_VARIABLES = frozenset(
    {
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_XRAY_CONTEXT_MISSING",
        "AWS_XRAY_DAEMON_ADDRESS",
    }
)


class ExtensionState(enum.Enum):
    """Where an extension is; the values are what Lambda's EXTENSION line prints."""

    REGISTERED = "Registered"  # registered, has not asked for an event yet
    READY = "Ready"  # waiting in next
    BUSY = "Busy"  # working on the event it was given
    INIT_ERROR = "InitError"  # reported init/error: it is expected to exit
    EXIT_ERROR = "ExitError"  # reported exit/error: it is expected to exit


@dataclass(eq=False)
class Extension:
    """One registered extension."""

    name: str
    events: tuple[str, ...]
    internal: bool
    identifier: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: ExtensionState = ExtensionState.REGISTERED
    #: The error type it reported with init/error or exit/error.
    error_type: str | None = None
    waiting: Deferred[tuple[str, bytes]] | None = None
    pending: deque[bytes] = field(default_factory=deque)

    def subscribed(self, event_type: str) -> bool:
        return event_type in self.events

    @property
    def failed(self) -> bool:
        return self.state in (ExtensionState.INIT_ERROR, ExtensionState.EXIT_ERROR)


def discover(directory: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """
    The external extensions in C{directory}, in lexical order: the paths to
    launch, and the files that cannot be (name, why). A missing directory has
    none.
    """
    if not directory or not os.path.isdir(directory):
        return [], []
    launchable: list[str] = []
    refused: list[tuple[str, str]] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not os.access(path, os.X_OK):
            refused.append((name, f"fork/exec {path}: permission denied"))
        else:
            launchable.append(path)
    return launchable, refused


def extension_environ(runtime_environ: Mapping[str, str]) -> dict[str, str]:
    """What an external extension is started with: the runtime's, minus runtime-only variables."""
    return {
        key: value
        for key, value in runtime_environ.items()
        if not key.startswith("_") and key not in RUNTIME_ONLY_VARIABLES
    }


def _event_document(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class Extensions:
    """
    The registrations of one environment, with the events owed to each.

    C{changed} is called whenever an extension asks for an event or fails,
    so the environment can tell whether a phase is over.
    """

    def __init__(
        self, external_names: list[str], changed: Callable[[], None] = lambda: None
    ) -> None:
        self.external_names = external_names
        self._changed = changed
        self.by_id: dict[str, Extension] = {}
        self.by_name: dict[str, Extension] = {}
        #: Closed by the runtime's first next: later registrations are refused.
        self.registration_open = True

    def __iter__(self) -> Any:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def any_internal(self) -> bool:
        return any(each.internal for each in self.by_id.values())

    @property
    def externals_registered(self) -> bool:
        """Whether every launched external extension has registered: the runtime may start."""
        return all(name in self.by_name for name in self.external_names)

    def register(self, name: str | None, body: bytes) -> Extension:
        """POST /extension/register, checked as Lambda checks it."""
        if not name:
            raise errors.invalid_extension_name()
        try:
            document = json.loads(body) if body.strip() else {}
        except ValueError as error:
            raise errors.invalid_request_format(f"cannot parse the register body: {error}")
        if not isinstance(document, dict):
            raise errors.invalid_request_format("the register body must be a JSON object")
        if "configurationKeys" in document:
            raise errors.invalid_request_format("configurationKeys are not supported")
        events = document.get("events", [])
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise errors.invalid_request_format("events must be a list of event types")
        internal = name not in self.external_names
        for event in events:
            if event not in EVENT_TYPES or (internal and event == SHUTDOWN):
                raise errors.invalid_event_type(event)
        if name in self.by_name:
            raise errors.invalid_extension_state(f"extension {name!r} is already registered")
        if not self.registration_open:
            raise errors.registration_closed()
        if len(self.by_id) >= MAX_EXTENSIONS:
            raise errors.too_many_extensions(MAX_EXTENSIONS)
        extension = Extension(name=name, events=tuple(dict.fromkeys(events)), internal=internal)
        self.by_id[extension.identifier] = extension
        self.by_name[name] = extension
        return extension

    def find(self, identifier: bytes | None) -> Extension:
        """The extension a C{Lambda-Extension-Identifier} header names."""
        if not identifier:
            raise errors.missing_extension_identifier()
        text = identifier.decode("utf-8", "replace")
        try:
            uuid.UUID(text)
        except ValueError:
            raise errors.invalid_extension_identifier(text) from None
        extension = self.by_id.get(text)
        if extension is None:
            raise errors.unknown_extension_identifier(text)
        return extension

    def next_event(self, extension: Extension) -> Deferred[tuple[str, bytes]]:
        """GET /extension/event/next: the next event owed to C{extension}, now or later."""
        if extension.failed:
            raise errors.invalid_extension_state(
                f"extension {extension.name!r} reported an error and must exit"
            )
        if extension.waiting is not None:
            raise errors.invalid_extension_state(
                f"extension {extension.name!r} is already waiting for an event"
            )
        waiting: Deferred[tuple[str, bytes]] = Deferred(
            lambda d: self._hung_up(extension, d)
        )
        if extension.pending:
            extension.state = ExtensionState.BUSY
            waiting.callback((str(uuid.uuid4()), extension.pending.popleft()))
            return waiting
        extension.state = ExtensionState.READY
        extension.waiting = waiting
        self._changed()
        return waiting

    def _hung_up(self, extension: Extension, waiting: Deferred[tuple[str, bytes]]) -> None:
        if extension.waiting is waiting:
            extension.waiting = None

    def report_error(self, extension: Extension, error_type: str | None, exiting: bool) -> None:
        """POST /extension/init/error (C{exiting} False) or /exit/error (True)."""
        if not error_type:
            raise errors.missing_error_type_header()
        if extension.failed:
            raise errors.invalid_extension_state(
                f"extension {extension.name!r} has already reported an error"
            )
        if not exiting and extension.state is not ExtensionState.REGISTERED:
            raise errors.invalid_extension_state(
                "init/error is only allowed after register and before the first next"
            )
        extension.state = ExtensionState.EXIT_ERROR if exiting else ExtensionState.INIT_ERROR
        extension.error_type = error_type
        self._changed()

    def send(self, event_type: str, document: Mapping[str, Any]) -> None:
        """Give the event to every extension subscribed to C{event_type}, now or at its next."""
        body = _event_document(document)
        for extension in self.by_id.values():
            if not extension.subscribed(event_type) or extension.failed:
                continue
            waiting, extension.waiting = extension.waiting, None
            if waiting is not None:
                extension.state = ExtensionState.BUSY
                waiting.callback((str(uuid.uuid4()), body))
            else:
                extension.pending.append(body)

    def all_waiting(self, event_type: str | None = None) -> bool:
        """
        Whether every extension (subscribed to C{event_type}, if given) waits
        in next: Init (every one) or an invocation (INVOKE ones) is over for them.
        """
        return all(
            each.waiting is not None
            for each in self.by_id.values()
            if event_type is None or each.subscribed(event_type)
        )

    def first_failure(self) -> Extension | None:
        """The first extension that reported an error, if any."""
        for each in self.by_id.values():
            if each.failed:
                return each
        return None

    def cancel_waits(self) -> None:
        """Nothing more is owed: answer no pending next (the environment is going away)."""
        for each in self.by_id.values():
            waiting, each.waiting = each.waiting, None
            if waiting is not None:
                waiting.errback(
                    errors.container_error("the execution environment is shutting down")
                )
