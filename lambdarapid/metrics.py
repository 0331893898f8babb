"""
Prometheus metrics: the families of the daemon and of the Lambda Server.

The pool, the Invoke API and the AMQP consumer report to an observer they
are given (L{lambdarapid.observers}, whose base classes count nothing).
L{DaemonMetrics} and L{ServerMetrics} count into a registry of
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

from .invocation import Invocation, InvocationType, Result
from .observers import (
    BUCKETS,
    FUNCTION_ERROR,
    INIT_ERROR,
    NO_INVOCATIONS,
    NOT_FOUND,
    OUTCOMES,
    RUN_OUTCOMES,
    RUNTIME_EXIT,
    STATES,
    STATUS_OUTCOMES,
    SUCCESS,
    THROTTLED,
    TIMEOUT,
    TOO_LARGE,
    UNAVAILABLE,
    InvocationObserver,
    RequestObserver,
    result_outcome,
)

__all__ = [
    "BUCKETS",
    "FUNCTION_ERROR",
    "INIT_ERROR",
    "NO_INVOCATIONS",
    "NOT_FOUND",
    "OUTCOMES",
    "RUN_OUTCOMES",
    "RUNTIME_EXIT",
    "STATES",
    "STATUS_OUTCOMES",
    "SUCCESS",
    "THROTTLED",
    "TIMEOUT",
    "TOO_LARGE",
    "UNAVAILABLE",
    "DaemonMetrics",
    "InvocationObserver",
    "RequestObserver",
    "ServerMetrics",
    "result_outcome",
]


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
