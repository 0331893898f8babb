"""
What an execution environment is and says: its states, why it failed, and
what it tells its owner (the pool). The environment's life is its own; this
is the vocabulary the two share.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import errors
from .invocation import Outcome

if TYPE_CHECKING:
    from .environment import ExecutionEnvironment
    from .streams import ResponseStream


class State(enum.Enum):
    """Where the environment is in its life: one name per state."""

    STARTING = "starting"  # Init: extensions registering, the runtime initialising
    IDLE = "idle"  # the runtime and every extension wait for an event: one can be delivered
    BUSY = "busy"  # an invocation's phase is under way (runtime or extensions at work)
    AWAY = "away"  # the runtime hung up its GET /next while idle: it asks again, or exits
    STOPPING = "stopping"  # Shutdown: takes no more events
    DEAD = "dead"  # its runtime has exited: takes nothing more


@dataclass(frozen=True)
class EnvironmentFailure:
    """
    Why an environment cannot go on: what the invocation it was running (or
    initialising for) is answered with.
    """

    outcome: Outcome
    error_type: str | None
    #: How the process ended or what went wrong, in Lambda's words ("exit status 1").
    cause: str
    #: The error document itself, when the runtime posted one (init/error).
    document: bytes | None = None
    #: Whether the environment's Init failed (else: during or after an invocation).
    during_init: bool = False

    def body(self, request_id: str) -> bytes:
        """The answer's body for invocation C{request_id}."""
        if self.document is not None:
            return self.document
        if self.error_type == "Runtime.ExitError":
            message = f"RequestId: {request_id} Error: Runtime exited with error: {self.cause}"
        else:
            message = f"RequestId: {request_id} Error: {self.cause}"
        return errors.function_error_body(self.error_type or "Unknown", message)


class EnvironmentOwner(Protocol):
    """What an environment tells its pool."""

    def environment_ready(self, environment: ExecutionEnvironment) -> None:
        """Init or the last invocation is over: an invocation may be delivered."""

    def environment_answered(
        self,
        environment: ExecutionEnvironment,
        outcome: Outcome,
        body: bytes,
        error_type: str | None,
        content_type: str | None = None,
    ) -> None:
        """The runtime answered its current invocation (with its Content-Type, if it said one)."""

    def environment_streaming(
        self, environment: ExecutionEnvironment, stream: ResponseStream
    ) -> None:
        """The runtime began streaming its answer to a caller that takes a stream."""

    def environment_failed(
        self, environment: ExecutionEnvironment, failure: EnvironmentFailure
    ) -> None:
        """The environment cannot go on (it is shutting itself down)."""

    def environment_ended(self, environment: ExecutionEnvironment) -> None:
        """The environment takes nothing more: its runtime is gone (its slot is released later)."""
