"""
What the pool and the transports report about invocations, and to whom.

The observers here count nothing: they are the default, so a daemon without
C{METRICS_PORT} pays one empty method call per invocation and never imports
prometheus_client (L{lambdarapid.metrics} holds the counting ones). The
outcome labels are fixed by docs/OBSERVABILITY.md.
"""

from __future__ import annotations

from .invocation import Invocation, InvocationType, Outcome, Result

#: Both daemon histograms' buckets, and the server's: up to Lambda's 900 s cap.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

SUCCESS = "success"
FUNCTION_ERROR = "function_error"
TIMEOUT = "timeout"
RUNTIME_EXIT = "runtime_exit"
INIT_ERROR = "init_error"
THROTTLED = "throttled"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"
NOT_FOUND = "not_found"

#: The daemon's outcomes, every one exported from the start (0 included).
OUTCOMES = (
    SUCCESS,
    FUNCTION_ERROR,
    TIMEOUT,
    RUNTIME_EXIT,
    INIT_ERROR,
    THROTTLED,
    TOO_LARGE,
    UNAVAILABLE,
)
#: How a run ended, as an outcome label.
RUN_OUTCOMES = {
    Outcome.SUCCESS: SUCCESS,
    Outcome.FUNCTION_ERROR: FUNCTION_ERROR,
    Outcome.TIMEOUT: TIMEOUT,
    Outcome.RUNTIME_EXIT: RUNTIME_EXIT,
    Outcome.INIT_ERROR: INIT_ERROR,
}
#: Environment states exported by lambdarapid_environments (a dead one is gone).
STATES = ("starting", "idle", "busy", "stopping")
#: The server's answer for an Invoke API error status, as an outcome label.
STATUS_OUTCOMES = {404: NOT_FOUND, 413: TOO_LARGE, 429: THROTTLED, 503: UNAVAILABLE}


class InvocationObserver:
    """
    What the daemon reports about invocations: the pool each run's end, the
    transports what they refuse (they answer it). This base counts nothing:
    it is the default.
    """

    def ran(self, invocation: Invocation, result: Result, delivered: bool) -> None:
        """An invocation got its L{Result}; C{delivered} if a runtime took it (it has a Duration)."""

    def refused(self, invocation_type: InvocationType, outcome: str) -> None:
        """An invocation was refused before it could run (C{throttled}, C{too_large}, C{unavailable})."""

    def dry_run(self) -> None:
        """A DryRun was answered 204."""

    def initialised(self, seconds: float) -> None:
        """An environment's runtime finished its init (its first C{GET next}) in C{seconds}."""


class RequestObserver:
    """What the Lambda Server's Invoke API reports; this base counts nothing."""

    def answered(self, function: str, outcome: str | None, seconds: float) -> None:
        """
        An Invoke API request was answered after C{seconds}: C{outcome} is its
        label (None for answers no outcome names, such as a 400), C{function}
        the routed name (C{""} when it was not found).
        """


NO_INVOCATIONS = InvocationObserver()


def result_outcome(result: Result) -> str:
    """The server's outcome label for a result: a fail-safe timeout, or success / function error."""
    if result.outcome is Outcome.TIMEOUT:
        return TIMEOUT
    return FUNCTION_ERROR if result.outcome.is_error else SUCCESS
