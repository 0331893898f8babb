"""
Prometheus metrics: the families of the daemon and of the Lambda Server.

The pool, the Invoke API and the AMQP consumer report to an observer they
are given; the base classes here (L{InvocationObserver}, L{RequestObserver})
count nothing, so a daemon without C{METRICS_PORT} pays one empty method call
per invocation. L{DaemonMetrics} and L{ServerMetrics} count into a registry of
their own (never the global one: trial builds many services in one process),
with the process collector beside them. Gauges (the queue, environments by
state, the broker connection) are read at scrape time from callables, so the
hot path never updates them.

Names, labels and buckets are fixed by docs/OBSERVABILITY.md (sections 3, 4).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _Gauges(Collector):
    """Gauges read when Prometheus scrapes, from the callables given."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


def _connected_family(connected: Callable[[], bool]) -> Metric:
    return GaugeMetricFamily(
        "lambdarapid_amqp_connected",
        "1 while the connection to the AMQP broker is up, else 0.",
        value=1.0 if connected() else 0.0,
    )


class DaemonMetrics(InvocationObserver):
    """The daemon's families (OBSERVABILITY.md section 3), in a registry of their own."""

    def __init__(self, function: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._function = function
        invocations = Counter(
            "lambdarapid_invocations",
            "Invocations, once each when their outcome is known.",
            ["function", "type", "outcome"],
            registry=self.registry,
        )
        #: Each (type, outcome)'s counter, made once: no label lookup per invocation.
        self._counters = {
            (kind, outcome): invocations.labels(function, kind.value, outcome)
            for kind in InvocationType
            for outcome in OUTCOMES
        }
        self._durations = Histogram(
            "lambdarapid_invocation_duration_seconds",
            "How long each invocation a runtime took ran: the REPORT Duration.",
            ["function"],
            buckets=BUCKETS,
            registry=self.registry,
        ).labels(function)
        self._init_durations = Histogram(
            "lambdarapid_init_duration_seconds",
            "Each environment's init, until its runtime asked for its first event.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._cold_starts = Counter(
            "lambdarapid_cold_starts",
            "Invocations that ran on a fresh environment.",
            registry=self.registry,
        )

    def watch(
        self,
        queued: Callable[[], int],
        states: Callable[[], Mapping[str, int]],
        connected: Callable[[], bool] | None = None,
    ) -> None:
        """Export the gauges, read from these at each scrape (C{connected} only with AMQP)."""

        def read() -> Iterable[Metric]:
            yield GaugeMetricFamily(
                "lambdarapid_queued_invocations",
                "Invocations waiting in the daemon's queue for a runtime.",
                value=queued(),
            )
            counts = states()
            environments = GaugeMetricFamily(
                "lambdarapid_environments", "Execution environments by state.", labels=["state"]
            )
            for state in STATES:
                environments.add_metric([state], counts.get(state, 0))
            yield environments
            if connected is not None:
                yield _connected_family(connected)

        self.registry.register(_Gauges(read))

    def ran(self, invocation: Invocation, result: Result, delivered: bool) -> None:
        self._counters[invocation.invocation_type, RUN_OUTCOMES[result.outcome]].inc()
        if delivered:
            self._durations.observe(result.duration)
            if result.init_duration is not None:
                self._cold_starts.inc()

    def refused(self, invocation_type: InvocationType, outcome: str) -> None:
        self._counters[invocation_type, outcome].inc()

    def dry_run(self) -> None:
        self._counters[InvocationType.DRY_RUN, SUCCESS].inc()

    def initialised(self, seconds: float) -> None:
        self._init_durations.observe(seconds)


class ServerMetrics(RequestObserver):
    """The Lambda Server's families (OBSERVABILITY.md section 4), in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._invocations = Counter(
            "lambdarapid_server_invocations",
            "Invoke API requests answered, by routed function and outcome.",
            ["function", "outcome"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "lambdarapid_server_request_duration_seconds",
            "Every Invoke API request, from arrival to answer.",
            buckets=BUCKETS,
            registry=self.registry,
        )

    def watch(self, pending: Callable[[], int], connected: Callable[[], bool]) -> None:
        """Export the gauges, read from these at each scrape."""

        def read() -> Iterable[Metric]:
            yield GaugeMetricFamily(
                "lambdarapid_server_pending_requests",
                "Requests published and waiting for their reply.",
                value=pending(),
            )
            yield _connected_family(connected)

        self.registry.register(_Gauges(read))

    def answered(self, function: str, outcome: str | None, seconds: float) -> None:
        self._durations.observe(seconds)
        if outcome is not None:
            self._invocations.labels("" if outcome == NOT_FOUND else function, outcome).inc()


def result_outcome(result: Result) -> str:
    """The server's outcome label for a result: a fail-safe timeout, or success / function error."""
    if result.outcome is Outcome.TIMEOUT:
        return TIMEOUT
    return FUNCTION_ERROR if result.outcome.is_error else SUCCESS
