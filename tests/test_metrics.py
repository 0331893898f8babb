"""
Prometheus metrics and the health endpoints.

The recording itself on a Clock (the pool with fake processes, the families
read back through prometheus_client's own exposition and parser); then real
daemons with real awslambdaric runtimes and a real Lambda Server over the
local RabbitMQ, scraped over real HTTP.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any, Mapping

import pika
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from lambdarapid import metrics
from lambdarapid.invocation import (
    Invocation,
    InvocationType,
    Outcome,
    Result,
    ServiceUnavailable,
    TooManyRequests,
)
from lambdarapid import errors
from lambdarapid.amqp.consumer import RPCConsumer
from lambdarapid.config import Function
from lambdarapid.invoke_api import InvokeAPI
from lambdarapid.invoke_protocol import InvokeAPIFactory
from lambdarapid.metrics import DaemonMetrics, ServerMetrics
from lambdarapid.pool import Pool
from lambdarapid.testing import RunningDaemon, free_port

from .amqp_support import (
    Caller,
    Daemon,
    Server,
    amqp_uri,
    eventually,
    function_name,
    runtime_environ,
    within,
)
from .fakes import InMemoryHTTP, fake_process_reactor, make_config
from .runtimes import start_python
from .test_amqp_units import FUNCTION, FakeConnection
from .test_amqp_units import FakeInvoker as ConsumerInvoker
from .test_invoke_api import FakeInvoker

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def registry_samples(registry: Any) -> Samples:
    return samples(generate_latest(registry).decode())


async def get(url: str) -> tuple[int, bytes, Mapping[str, str]]:
    """GET C{url} on a connection of its own."""
    agent = Agent(global_reactor, pool=HTTPConnectionPool(global_reactor, persistent=False))
    response = await within(agent.request(b"GET", url.encode()), 10, global_reactor)
    body: bytes = await readBody(response)
    headers = {
        name.decode().lower(): b", ".join(values).decode()
        for name, values in response.headers.getAllRawHeaders()
    }
    return response.code, body, headers


async def scrape(url: str) -> Samples:
    code, body, _ = await get(url + "/metrics")
    assert code == 200, (code, body)
    return samples(body.decode())



def invocations_counted(recorder: Any, kind: str, outcome: str) -> float | None:
    """The echo function's lambdarapid_invocations_total for C{kind} and C{outcome}."""
    return value(
        registry_samples(recorder.registry),
        "lambdarapid_invocations_total",
        function="echo",
        type=kind,
        outcome=outcome,
    )

class DaemonMetricsTests(SynchronousTestCase):
    """DaemonMetrics and ServerMetrics on their own."""

    def test_every_series_starts_at_zero(self) -> None:
        """Every type and outcome, and all four environment states, are exported from the start."""
        recorder = DaemonMetrics("echo")
        recorder.watch(lambda: 0, lambda: {})
        found = registry_samples(recorder.registry)
        for kind in ("RequestResponse", "Event", "DryRun"):
            for outcome in metrics.OUTCOMES:
                self.assertEqual(
                    value(
                        found,
                        "lambdarapid_invocations_total",
                        function="echo",
                        type=kind,
                        outcome=outcome,
                    ),
                    0.0,
                )
        for state in ("starting", "idle", "busy", "stopping"):
            self.assertEqual(value(found, "lambdarapid_environments", state=state), 0.0)
        self.assertEqual(value(found, "lambdarapid_queued_invocations"), 0.0)
        self.assertEqual(value(found, "lambdarapid_cold_starts_total"), 0.0)
        self.assertIsNone(value(found, "lambdarapid_amqp_connected"), "no AMQP_URI")
        self.assertTrue(any(name.startswith("process_") for name, _ in found))

    def test_gauges_are_read_at_scrape_time(self) -> None:
        """The queue, states and connection gauges show what the callables say when scraped."""
        recorder = DaemonMetrics("echo")
        queued, up = [0], [False]
        recorder.watch(lambda: queued[0], lambda: {"busy": 2, "dead": 1}, lambda: up[0])
        queued[0], up[0] = 3, True
        found = registry_samples(recorder.registry)
        self.assertEqual(value(found, "lambdarapid_queued_invocations"), 3.0)
        self.assertEqual(value(found, "lambdarapid_environments", state="busy"), 2.0)
        self.assertEqual(value(found, "lambdarapid_environments", state="idle"), 0.0)
        self.assertEqual(value(found, "lambdarapid_amqp_connected"), 1.0)
        self.assertNotIn("dead", {dict(labels).get("state") for _, labels in found})

    def test_buckets(self) -> None:
        """Both daemon histograms have OBSERVABILITY.md's buckets, up to 900 s and +Inf."""
        recorder = DaemonMetrics("echo")
        found = registry_samples(recorder.registry)
        for name in (
            "lambdarapid_invocation_duration_seconds",
            "lambdarapid_init_duration_seconds",
        ):
            bounds = sorted(
                float(dict(labels)["le"]) for sample, labels in found if sample == name + "_bucket"
            )
            self.assertEqual(bounds, [float(b) for b in metrics.BUCKETS] + [float("inf")])

    def test_registries_are_separate(self) -> None:
        """Two recorders in one process count apart (no global registry)."""
        first, second = DaemonMetrics("a"), DaemonMetrics("a")
        first.dry_run()
        found = registry_samples(second.registry)
        self.assertEqual(
            value(
                found,
                "lambdarapid_invocations_total",
                function="a",
                type="DryRun",
                outcome="success",
            ),
            0.0,
        )

    def test_server_not_found_has_no_function(self) -> None:
        """The server counts a not_found answer under function="", others under the routed name."""
        recorder = ServerMetrics()
        recorder.watch(lambda: 2, lambda: True)  # pending, connected
        recorder.answered("typed-by-a-caller", metrics.NOT_FOUND, 0.01)
        recorder.answered("echo", metrics.SUCCESS, 0.02)
        recorder.answered("echo", None, 0.03)
        found = registry_samples(recorder.registry)
        name = "lambdarapid_server_invocations_total"
        self.assertEqual(value(found, name, function="", outcome="not_found"), 1.0)
        self.assertEqual(value(found, name, function="echo", outcome="success"), 1.0)
        self.assertIsNone(value(found, name, function="typed-by-a-caller", outcome="not_found"))
        self.assertEqual(value(found, "lambdarapid_server_request_duration_seconds_count"), 3.0)
        self.assertEqual(value(found, "lambdarapid_server_pending_requests"), 2.0)
        self.assertEqual(value(found, "lambdarapid_amqp_connected"), 1.0)


class PoolRecordingTests(SynchronousTestCase):
    """What the pool tells its metrics, on a Clock with fake runtime processes."""

    def setUp(self) -> None:
        self.reactor = fake_process_reactor(self)
        self.recorder = DaemonMetrics("echo")

    def make_pool(self, **settings: Any) -> Pool:
        self.pool = Pool(
            make_config(**settings), self.reactor, lambda data: None, metrics=self.recorder
        )
        self.recorder.watch(lambda: self.pool.queued, self.pool.environment_states)
        return self.pool

    def count(self, kind: str, outcome: str) -> float | None:
        return invocations_counted(self.recorder, kind, outcome)

    def found(self, name: str, **labels: str) -> float | None:
        return value(registry_samples(self.recorder.registry), name, **labels)

    def test_run_counted_when_the_caller_hung_up(self) -> None:
        """A run whose caller went away (its Deferred cancelled) still runs and is still counted, timeouts too."""
        pool = self.make_pool(timeout=1.0)
        self.reactor.advance(0)
        gone = pool.invoke(Invocation(payload=b"{}"))
        (environment,) = pool.environments
        event = self.successResultOf(environment.next_invocation())
        gone.cancel()
        self.failureResultOf(gone)
        environment.answer(event.request_id, Outcome.SUCCESS, b"1")
        self.assertEqual(self.count("RequestResponse", "success"), 1.0)
        environment.next_invocation()
        late = pool.invoke(Invocation(payload=b"{}"))
        late.cancel()
        self.failureResultOf(late)
        self.reactor.advance(1.0)
        self.assertEqual(self.count("RequestResponse", "timeout"), 1.0)

    def test_run_counted_with_duration_init_and_cold_start(self) -> None:
        """A run is counted at its end with its REPORT Duration; its fresh environment's init and cold start once."""
        pool = self.make_pool()
        self.reactor.advance(0)
        first = pool.invoke(Invocation(payload=b"{}"))
        (environment,) = pool.environments
        self.assertEqual(self.found("lambdarapid_environments", state="starting"), 1.0)
        self.assertEqual(self.found("lambdarapid_queued_invocations"), 1.0)
        self.reactor.advance(0.2)
        event = self.successResultOf(environment.next_invocation())
        self.assertEqual(self.found("lambdarapid_init_duration_seconds_count"), 1.0)
        self.assertAlmostEqual(self.found("lambdarapid_init_duration_seconds_sum") or 0, 0.2)
        self.assertEqual(self.found("lambdarapid_environments", state="busy"), 1.0)
        self.reactor.advance(0.05)
        self.assertEqual(self.count("RequestResponse", "success"), 0.0)
        environment.answer(event.request_id, Outcome.SUCCESS, b"1")
        self.successResultOf(first)
        self.assertEqual(self.count("RequestResponse", "success"), 1.0)
        self.assertAlmostEqual(
            self.found("lambdarapid_invocation_duration_seconds_sum", function="echo") or 0, 0.05
        )
        self.assertEqual(
            self.found(
                "lambdarapid_invocation_duration_seconds_bucket", function="echo", le="0.05"
            ),
            1.0,
        )
        self.assertEqual(self.found("lambdarapid_cold_starts_total"), 1.0)
        # A second run, warm: no init, no cold start.
        environment.next_invocation()
        second = pool.invoke(Invocation(payload=b"{}", invocation_type=InvocationType.EVENT))
        delivered = environment.current  # delivered to the waiting GET /next
        assert delivered is not None
        environment.answer(delivered.request_id, Outcome.FUNCTION_ERROR, b"{}", "E")
        self.successResultOf(second)
        self.assertEqual(self.count("Event", "function_error"), 1.0)
        self.assertEqual(self.found("lambdarapid_cold_starts_total"), 1.0)
        self.assertEqual(self.found("lambdarapid_init_duration_seconds_count"), 1.0)
        self.assertEqual(
            self.found("lambdarapid_invocation_duration_seconds_count", function="echo"), 2.0
        )

    def test_timeout_counted_when_the_timer_fires(self) -> None:
        """A timeout is counted at exactly the function timeout, not before."""
        pool = self.make_pool(timeout=3.0)
        result = pool.invoke(Invocation(payload=b"{}"))
        (environment,) = pool.environments
        self.successResultOf(environment.next_invocation())
        self.reactor.advance(2.9)
        self.assertEqual(self.count("RequestResponse", "timeout"), 0.0)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(result).outcome, Outcome.TIMEOUT)
        self.assertEqual(self.count("RequestResponse", "timeout"), 1.0)
        self.assertAlmostEqual(
            self.found("lambdarapid_invocation_duration_seconds_sum", function="echo") or 0, 3.0
        )

    def test_refusals_are_not_the_pools_to_count(self) -> None:
        """The pool counts no 429 or 503 (its transport answers those), only an accepted Event the shutdown dropped."""
        pool = self.make_pool(max_queued=2)
        queued = pool.invoke(Invocation(payload=b"{}"))
        accepted = pool.accept_event(
            Invocation(payload=b"{}", invocation_type=InvocationType.EVENT)
        )
        self.successResultOf(accepted)
        self.failureResultOf(pool.invoke(Invocation(payload=b"{}")), TooManyRequests)
        self.assertEqual(self.count("RequestResponse", "throttled"), 0.0)
        pool.stop()
        self.failureResultOf(pool.invoke(Invocation(payload=b"{}")), ServiceUnavailable)
        self.assertEqual(self.count("RequestResponse", "unavailable"), 0.0)
        pool.stop_now()
        self.failureResultOf(queued, ServiceUnavailable)
        self.assertEqual(self.count("Event", "unavailable"), 1.0)
        self.assertEqual(self.count("RequestResponse", "unavailable"), 0.0)

    def test_expired_deadline_is_a_timeout(self) -> None:
        """An invocation whose caller's deadline has passed is counted as a timeout, with no Duration."""
        pool = self.make_pool()
        self.reactor.advance(10)
        result = pool.invoke(Invocation(payload=b"{}", deadline=5.0))
        self.assertEqual(self.successResultOf(result).outcome, Outcome.TIMEOUT)
        self.assertEqual(self.count("RequestResponse", "timeout"), 1.0)
        self.assertEqual(
            self.found("lambdarapid_invocation_duration_seconds_count", function="echo"), 0.0
        )

    def test_init_error_counted(self) -> None:
        """A runtime that dies in init answers its invocation as init_error (or runtime_exit) and counts it."""
        pool = self.make_pool()
        result = pool.invoke(Invocation(payload=b"{}"))
        (environment,) = pool.environments
        self.reactor.process(environment.pid).exit(1)
        self.reactor.advance(2)
        outcome = self.successResultOf(result).outcome
        label = metrics.RUN_OUTCOMES[outcome]
        self.assertIn(label, ("init_error", "runtime_exit"))
        self.assertEqual(self.count("RequestResponse", label), 1.0)
        self.assertEqual(self.found("lambdarapid_cold_starts_total"), 0.0)


class InvokeAPIRecordingTests(SynchronousTestCase):
    """What the daemon's Invoke API counts: the refusals it answers, and DryRuns."""

    def setUp(self) -> None:
        self.invoker = FakeInvoker()
        self.recorder = DaemonMetrics("echo")
        clock = Clock()
        api = InvokeAPI(self.invoker, clock, Function(name="echo"), invocations=self.recorder)
        self.http = InMemoryHTTP(InvokeAPIFactory(api, clock))

    def post(self, kind: str = "RequestResponse", body: bytes = b"{}", name: str = "echo") -> int:
        reply = self.successResultOf(
            self.http.request(
                "POST",
                f"/2015-03-31/functions/{name}/invocations",
                body,
                {"X-Amz-Invocation-Type": kind},
            )
        )
        return reply.code

    def count(self, kind: str, outcome: str) -> float | None:
        return invocations_counted(self.recorder, kind, outcome)

    def test_refusals_by_type(self) -> None:
        """429 counts throttled, 503 unavailable, an oversized Event too_large, each under its type."""
        self.invoker.answer = fail(TooManyRequests("full"))
        self.assertEqual(self.post(), 429)
        self.invoker.answer = fail(ServiceUnavailable("draining"))
        self.assertEqual(self.post("Event"), 503)
        self.invoker.answer = fail(ServiceUnavailable("draining"))
        self.assertEqual(self.post("DryRun"), 503)
        self.assertEqual(self.post("Event", b'"' + b"x" * 1_100_000 + b'"'), 413)
        self.assertEqual(self.count("RequestResponse", "throttled"), 1.0)
        self.assertEqual(self.count("Event", "unavailable"), 1.0)
        self.assertEqual(self.count("DryRun", "unavailable"), 1.0)
        self.assertEqual(self.count("Event", "too_large"), 1.0)

    def test_dry_run_success_and_runs_not_counted_here(self) -> None:
        """A 204 DryRun counts success; a run is the pool's to count, a 404 nobody's."""
        self.assertEqual(self.post("DryRun"), 204)
        self.assertEqual(self.post(), 200)
        self.assertEqual(self.post(name="other"), 404)
        self.assertEqual(self.count("DryRun", "success"), 1.0)
        self.assertEqual(self.count("RequestResponse", "success"), 0.0)


class ConsumerRecordingTests(SynchronousTestCase):
    """What the daemon's AMQP consumer counts: the 413s it refuses, not the deliveries it requeues."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.invoker = ConsumerInvoker()
        self.recorder = DaemonMetrics(FUNCTION.name)
        self.consumer = RPCConsumer(
            self.invoker, FUNCTION, prefetch=5, reactor=self.clock, metrics=self.recorder  # type: ignore[arg-type]
        )
        connection = FakeConnection()
        self.successResultOf(Deferred.fromCoroutine(self.consumer.connected(connection)))
        self.channel = connection.channels[0]
        self.tags = 0

    def deliver(self, body: bytes, reply_to: str | None = "reply-q") -> int:
        """A delivery of C{body} on the consumed queue, as the broker makes it."""
        self.tags += 1
        self.channel.consumed[-1].put(
            SimpleNamespace(
                method=SimpleNamespace(delivery_tag=self.tags),
                properties=pika.BasicProperties(
                    correlation_id=f"id-{self.tags}", reply_to=reply_to
                ),
                body=body,
            )
        )
        return self.tags

    def count(self, kind: str, outcome: str) -> float | None:
        return value(
            registry_samples(self.recorder.registry),
            "lambdarapid_invocations_total",
            function=FUNCTION.name,
            type=kind,
            outcome=outcome,
        )

    def test_too_large_counted_by_type(self) -> None:
        """An oversized request (error reply) and an oversized Event (dropped) each count too_large."""
        self.deliver(b'"' + b"x" * errors.MAX_SYNC_PAYLOAD + b'"')
        self.deliver(b'"' + b"x" * errors.MAX_ASYNC_PAYLOAD + b'"', reply_to=None)
        self.assertEqual(self.count("RequestResponse", "too_large"), 1.0)
        self.assertEqual(self.count("Event", "too_large"), 1.0)

    def test_requeued_delivery_not_counted(self) -> None:
        """A delivery the pool has no room for goes back to the queue: no outcome yet, nothing counted."""
        self.invoker._answer = lambda invocation: fail(TooManyRequests("full"))
        self.deliver(b"{}")
        self.clock.advance(5)
        self.assertEqual(self.count("RequestResponse", "throttled"), 0.0)
        self.assertEqual(self.channel.nacks, [(1, True)])


def _result(outcome: Outcome) -> Result:
    return Result(outcome=outcome, body=b"", request_id="r")


class ServerOutcomeTests(SynchronousTestCase):
    """The server's outcome for a reply."""

    def test_result_outcome(self) -> None:
        """A fail-safe timeout is timeout, any other failed run function_error, else success."""
        self.assertEqual(metrics.result_outcome(_result(Outcome.TIMEOUT)), "timeout")
        self.assertEqual(metrics.result_outcome(_result(Outcome.FUNCTION_ERROR)), "function_error")
        self.assertEqual(metrics.result_outcome(_result(Outcome.SUCCESS)), "success")


def _declared_too_large(port: int, body_length: int) -> bytes:
    """Send only a head declaring C{body_length} bytes; return what the daemon answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /2015-03-31/functions/function/invocations HTTP/1.1\r\n"
            b"Host: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % body_length
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


class DaemonEndToEndTests(TestCase):
    """A real daemon with real awslambdaric runtimes, scraped over HTTP."""

    timeout = 90

    async def start(self, **settings: str | int | float) -> RunningDaemon:
        daemon = await start_python(self, "handlers.dispatch", None, METRICS_PORT=0, **settings)
        assert daemon.metrics_url is not None
        return daemon

    async def test_known_mix(self) -> None:
        """After successes, an error, a timeout, an Event, a DryRun, a 429 and 413s, every family says so."""
        daemon = await self.start(
            MAX_CONCURRENCY=1, MAX_QUEUED_INVOCATIONS=1, AWS_LAMBDA_FUNCTION_TIMEOUT=1.5
        )
        assert daemon.metrics_url is not None
        name = daemon.config.function.name
        echo = {"call": "echo"}
        self.assertEqual((await daemon.invoke(echo)).status, 200)  # cold
        self.assertEqual((await daemon.invoke(echo)).status, 200)
        self.assertEqual((await daemon.invoke({"call": "fail"})).function_error, "Unhandled")
        timed_out = await daemon.invoke({"call": "sleep", "seconds": 5})
        self.assertIn("Task timed out", timed_out.payload.decode())
        # A 429: one running, one queued, the third refused.
        running = daemon.invoke({"call": "sleep", "seconds": 0.6})  # cold again
        await daemon.wait_for_output(b"sleeping 0.6", timeout=15)
        queued = daemon.invoke(echo)
        pool = daemon.service.pool
        await eventually(global_reactor, lambda: pool.queued == 1, 10, "queued")
        self.assertEqual((await daemon.invoke(echo)).status, 429)
        self.assertEqual((await running).status, 200)
        self.assertEqual((await queued).status, 200)
        self.assertEqual((await daemon.invoke(echo, invocation_type="DryRun")).status, 204)
        self.assertEqual((await daemon.invoke(echo, invocation_type="Event")).status, 202)
        big = b'{"a":"' + b"x" * 1_100_000 + b'"}'
        self.assertEqual((await daemon.invoke(big, invocation_type="Event")).status, 413)
        answer = await deferToThread(_declared_too_large, daemon.port, 7_000_000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:100])

        def counted(found: Samples, kind: str, outcome: str) -> float | None:
            return value(
                found, "lambdarapid_invocations_total", function=name, type=kind, outcome=outcome
            )

        async def settled() -> Samples:
            """The metrics once the Event has run and the environments have settled."""
            found: Samples = {}
            for _ in range(100):
                found = await scrape(daemon.metrics_url or "")
                states = [value(found, "lambdarapid_environments", state=s) for s in metrics.STATES]
                if counted(found, "Event", "success") == 1 and states == [0, 1, 0, 0]:
                    break
                await _sleep(0.1)
            return found

        found = await settled()
        expected = {
            ("RequestResponse", "success"): 4,
            ("RequestResponse", "function_error"): 1,
            ("RequestResponse", "timeout"): 1,
            ("RequestResponse", "throttled"): 1,
            ("RequestResponse", "too_large"): 1,
            ("Event", "success"): 1,
            ("Event", "too_large"): 1,
            ("DryRun", "success"): 1,
        }
        for kind in ("RequestResponse", "Event", "DryRun"):
            for outcome in metrics.OUTCOMES:
                self.assertEqual(
                    counted(found, kind, outcome),
                    expected.get((kind, outcome), 0),
                    f"{kind} {outcome}",
                )
        self.assertEqual(
            value(found, "lambdarapid_invocation_duration_seconds_count", function=name), 7
        )
        total = value(found, "lambdarapid_invocation_duration_seconds_sum", function=name) or 0
        self.assertGreater(total, 1.5 + 0.6)
        self.assertEqual(value(found, "lambdarapid_cold_starts_total"), 2)
        self.assertEqual(value(found, "lambdarapid_init_duration_seconds_count"), 2)
        self.assertGreater(value(found, "lambdarapid_init_duration_seconds_sum") or 0, 0)
        self.assertEqual(value(found, "lambdarapid_queued_invocations"), 0)
        self.assertEqual(
            {
                state: value(found, "lambdarapid_environments", state=state)
                for state in metrics.STATES
            },
            {"starting": 0, "idle": 1, "busy": 0, "stopping": 0},
        )
        self.assertIsNone(value(found, "lambdarapid_amqp_connected"))
        self.assertGreater(value(found, "process_resident_memory_bytes") or 0, 0)
        self.assertIsNotNone(value(found, "process_cpu_seconds_total"))
        # No caller-typed name ever becomes a label value.
        self.assertEqual({dict(labels).get("function") for _, labels in found} - {None}, {name})

    async def test_health_and_404(self) -> None:
        """/healthz and /readyz answer 200 with text; any other path is 404; /metrics is the text format."""
        daemon = await self.start()
        url = daemon.metrics_url
        code, body, headers = await get(f"{url}/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        self.assertEqual((await get(f"{url}/readyz"))[:2], (200, b"ok\n"))
        for path in ("/", "/nope", "/healthz/x", "/2015-03-31/functions/function/invocations"):
            self.assertEqual((await get(f"{url}{path}"))[0], 404, path)
        code, _, headers = await get(f"{url}/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))

    async def test_readyz_503_while_draining(self) -> None:
        """During the SIGTERM drain /readyz is 503 saying so, while /healthz stays 200."""
        daemon = await self.start(SHUTDOWN_TIMEOUT=10)
        url = daemon.metrics_url
        running = daemon.invoke({"call": "sleep", "seconds": 1.5})
        await daemon.wait_for_output(b"sleeping 1.5", timeout=15)
        stopping = daemon.stop()
        code, body, _ = await get(f"{url}/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"draining", body)
        self.assertEqual(body.count(b"\n"), 1)
        self.assertEqual((await get(f"{url}/healthz"))[0], 200)
        refused = await daemon.invoke({"call": "echo"})
        self.assertEqual(refused.status, 503)
        found = await scrape(url or "")
        self.assertEqual(
            value(
                found,
                "lambdarapid_invocations_total",
                function=daemon.config.function.name,
                type="RequestResponse",
                outcome="unavailable",
            ),
            1,
        )
        self.assertEqual((await running).status, 200)
        await stopping

    async def test_readyz_503_without_the_broker(self) -> None:
        """With AMQP_URI at a closed port, /readyz is 503 naming the broker and amqp_connected is 0."""
        daemon = await self.start(AMQP_URI=amqp_uri(port=free_port(), retry_delay=0.2))
        url = daemon.metrics_url
        code, body, _ = await get(f"{url}/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"broker", body)
        self.assertEqual((await get(f"{url}/healthz"))[0], 200)
        found = await scrape(url or "")
        self.assertEqual(value(found, "lambdarapid_amqp_connected"), 0)

    async def test_off_by_default(self) -> None:
        """Without METRICS_PORT there is no metrics listener."""
        daemon = await start_python(self, "handlers.echo")
        self.assertIsNone(daemon.metrics_url)
        self.assertIsNone(daemon.service.metrics_listener)


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(global_reactor, seconds, lambda: None)


class ServerEndToEndTests(TestCase):
    """The Lambda Server and a daemon over the real RabbitMQ, both scraped."""

    timeout = 90

    async def test_server_and_daemon_families(self) -> None:
        """The server counts by routed name and outcome (not_found under ""), the daemon its AMQP invocations."""
        reactor: Any = global_reactor
        uri = amqp_uri()
        name = function_name()
        daemon = Daemon(reactor, runtime_environ(name, uri, METRICS_PORT=free_port()))
        server = Server(reactor, uri, METRICS_PORT=free_port())
        caller = Caller(reactor)
        self.addCleanup(caller.close)
        self.addCleanup(daemon.stop)
        self.addCleanup(server.stop)
        daemon.start()
        server.start()
        await daemon.wait_connected()
        await server.wait_connected()
        server_url = f"http://127.0.0.1:{server.config.metrics_port}"
        daemon_url = f"http://127.0.0.1:{daemon.config.metrics_port}"
        self.assertEqual((await get(f"{server_url}/readyz"))[0], 200)
        self.assertEqual((await caller.invoke(server.url, name, {"a": 1})).status, 200)
        failed = await caller.invoke(server.url, name, {"fail": "why"})
        self.assertEqual(failed.headers.get("x-amz-function-error"), "Unhandled")
        event = await caller.invoke(
            server.url, name, {"print": "event-ran"}, x_amz_invocation_type="Event"
        )
        self.assertEqual(event.status, 202)
        big = b'{"a":"' + b"x" * 1_100_000 + b'"}'
        too_large = await caller.invoke(server.url, name, big, x_amz_invocation_type="Event")
        self.assertEqual(too_large.status, 413)
        missing = await caller.invoke(server.url, function_name("nobody"), {})
        self.assertEqual(missing.status, 404)

        found = await scrape(server_url)
        counted = "lambdarapid_server_invocations_total"
        self.assertEqual(value(found, counted, function=name, outcome="success"), 2)
        self.assertEqual(value(found, counted, function=name, outcome="function_error"), 1)
        self.assertEqual(value(found, counted, function=name, outcome="too_large"), 1)
        self.assertEqual(value(found, counted, function="", outcome="not_found"), 1)
        self.assertEqual(
            {dict(labels).get("function") for sample, labels in found if sample == counted},
            {name, ""},
        )
        self.assertEqual(value(found, "lambdarapid_server_request_duration_seconds_count"), 5)
        self.assertEqual(value(found, "lambdarapid_server_pending_requests"), 0)
        self.assertEqual(value(found, "lambdarapid_amqp_connected"), 1)
        self.assertIsNotNone(value(found, "process_cpu_seconds_total"))

        def daemon_counted(found: Samples, kind: str, outcome: str) -> float | None:
            return value(
                found, "lambdarapid_invocations_total", function=name, type=kind, outcome=outcome
            )

        daemon_found: Samples = {}
        for _ in range(100):
            daemon_found = await scrape(daemon_url)
            if daemon_counted(daemon_found, "Event", "success") == 1:
                break
            await _sleep(0.1)
        self.assertEqual(daemon_counted(daemon_found, "RequestResponse", "success"), 1)
        self.assertEqual(daemon_counted(daemon_found, "RequestResponse", "function_error"), 1)
        self.assertEqual(daemon_counted(daemon_found, "Event", "success"), 1)
        self.assertEqual(value(daemon_found, "lambdarapid_amqp_connected"), 1)
        self.assertEqual(value(daemon_found, "lambdarapid_cold_starts_total"), 1)

    async def test_server_readyz_503_without_the_broker(self) -> None:
        """A server whose broker is unreachable is live (/healthz 200) but not ready (/readyz 503)."""
        server = Server(global_reactor, amqp_uri(port=free_port()), METRICS_PORT=free_port())
        self.addCleanup(server.stop)
        server.start()
        url = f"http://127.0.0.1:{server.config.metrics_port}"
        code, body, _ = await get(f"{url}/readyz")
        self.assertEqual(code, 503)
        self.assertEqual(body, b"the AMQP broker is not connected\n")
        self.assertEqual((await get(f"{url}/healthz"))[0], 200)
        found = await scrape(url)
        self.assertEqual(value(found, "lambdarapid_amqp_connected"), 0)
