"""
One invocation of the function, independent of how it arrived.

Every transport (the HTTP Invoke API, OpenFaaS routes, an AMQP delivery) turns
its request into an L{Invocation} and asks an L{IInvoker} for its L{Result}.
Nothing here knows HTTP or AMQP.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import random
import time
from dataclasses import dataclass, field

import orjson
from twisted.internet.defer import Deferred
from zope.interface import Interface

from . import errors
from .streams import ResponseStream

#: Where request and trace ids come from. Every invocation needs two or three
#: random numbers, and os.urandom is a system call (uuid.uuid4 is one and an
#: object, ~12 us here): a generator seeded from it once, and again in every
#: forked child, draws them in userspace. Ids must be unique, not secret.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))

#: Version 4 and RFC 4122 variant bits of a UUID, as a 128-bit integer.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random (version 4) UUID, as text: an invocation's request id."""
    text = "%032x" % ((_ids.getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class InvocationType(enum.Enum):
    """How the caller wants the invocation run (X-Amz-Invocation-Type)."""

    REQUEST_RESPONSE = "RequestResponse"
    EVENT = "Event"
    DRY_RUN = "DryRun"


class Outcome(enum.Enum):
    """How an invocation ended, as far as the caller is concerned."""

    SUCCESS = "success"
    FUNCTION_ERROR = "function error"
    INIT_ERROR = "init error"
    TIMEOUT = "timeout"
    RUNTIME_EXIT = "runtime exit"

    @property
    def is_error(self) -> bool:
        return self is not Outcome.SUCCESS


@dataclass
class Invocation:
    """
    What to run and for whom: the event, its ids and its caller's context.

    C{arrived} and C{deadline} are reactor seconds (epoch time on a real
    reactor). C{deadline} is set when the caller's own clock counts (AMQP
    messages carry the time they were sent); otherwise the invoker sets it
    when the runtime takes the event.
    """

    payload: bytes
    request_id: str = field(default_factory=new_request_id)
    function_arn: str = ""
    invocation_type: InvocationType = InvocationType.REQUEST_RESPONSE
    tail_log: bool = False
    client_context: str | None = None
    cognito_identity: str | None = None
    trace_id: str | None = None
    tenant_id: str | None = None
    function_name: str = ""
    qualifier: str | None = None
    arrived: float = 0.0
    deadline: float | None = None
    #: Whether the caller takes a streamed response (InvokeWithResponseStream);
    #: otherwise a streaming function's response is collected, as Lambda does.
    accept_stream: bool = False


@dataclass
class Result:
    """
    What the caller gets back: the body bytes, exactly as the runtime sent them,
    and enough about the run to build any transport's answer and a REPORT.
    """

    outcome: Outcome
    body: bytes
    request_id: str
    executed_version: str = "$LATEST"
    log_tail: bytes = b""
    error_type: str | None = None
    duration: float = 0.0
    init_duration: float | None = None
    max_memory_mb: int | None = None
    #: A streamed response, for an invocation that accepts one: its bytes come
    #: through it, and it closes with the final Result.
    stream: ResponseStream | None = None
    #: The runtime's own Content-Type, when it said one (a streaming function's).
    content_type: str | None = None

    @property
    def function_error(self) -> str | None:
        """The X-Amz-Function-Error value: Unhandled for every failed run."""
        return "Unhandled" if self.outcome.is_error else None


class IInvoker(Interface):
    """
    Something that runs invocations: the daemon's pool of execution
    environments, or the Lambda Server's AMQP RPC client.
    """

    def invoke(invocation: Invocation) -> Deferred[Result]:
        """
        Run C{invocation}. The Deferred fires with its L{Result} or fails with
        an L{InvokeError}. Cancelling the Deferred does not stop the run.
        """

    def dry_run(invocation: Invocation) -> Deferred[None]:
        """Check C{invocation} could run (function exists, room for it), without running it."""

    def accept_event(invocation: Invocation) -> Deferred[None]:
        """
        Take an C{Event} invocation to run later: fires once it is safely
        queued, or fails with an L{InvokeError}.
        """

    def withdraw(invocation: Invocation) -> bool:
        """
        Drop C{invocation} if it has not started yet (its Deferred then fails
        with L{Withdrawn}); return whether it was dropped.
        """


class InvokeError(Exception):
    """The invocation could not be run at all; the transport maps it to an error response."""


class FunctionNotFound(InvokeError):
    """No such function (or qualifier) here."""


class TooManyRequests(InvokeError):
    """Every environment is busy and the queue is full."""


class Withdrawn(InvokeError):
    """Its transport took the invocation back before it started."""


class ServiceUnavailable(InvokeError):
    """Shutting down, or (for the server) the broker cannot be reached."""


def new_trace_id(now: float | None = None) -> str:
    """An X-Ray trace header, for callers that did not send one."""
    epoch = int(now if now is not None else time.time())
    root = f"Root=1-{epoch:08x}-{_ids.getrandbits(96):024x}"
    return f"{root};Parent={_ids.getrandbits(64):016x};Sampled=0"


def payload_limit(invocation_type: InvocationType) -> int:
    """The largest payload an invocation of this type may carry."""
    if invocation_type is InvocationType.EVENT:
        return errors.MAX_ASYNC_PAYLOAD
    return errors.MAX_SYNC_PAYLOAD


def check_payload(payload: bytes, invocation_type: InvocationType) -> bytes:
    """
    The payload to run, as every transport must check it: within its type's
    limit (else 413) and JSON (else 400, as AWS answers). An empty payload is
    C{{}}. orjson parses about four times faster than the json module, which
    matters on the hot path for a megabyte payload.
    """
    limit = payload_limit(invocation_type)
    if len(payload) > limit:
        raise errors.request_too_large(limit)
    if not payload:
        return b"{}"
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise errors.invalid_json(str(error)) from None
    return payload


def decode_client_context(raw: bytes) -> str:
    """The decoded JSON of a base64 X-Amz-Client-Context header, compact, for one header line."""
    if len(raw) > errors.MAX_CLIENT_CONTEXT:
        raise errors.invalid_request_content(
            f"Client context must be at most {errors.MAX_CLIENT_CONTEXT} bytes."
        )
    try:
        document = json.loads(base64.b64decode(raw, validate=True).decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError(document)
        # Compact and ASCII-only: it travels as one header line to the runtime.
        return json.dumps(document, separators=(",", ":"))
    except (binascii.Error, ValueError, RecursionError):
        raise errors.invalid_request_content(
            "Client context must be a valid Base64-encoded JSON object."
        ) from None
