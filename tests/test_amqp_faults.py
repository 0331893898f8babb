"""
AMQP-RPC scale-out and faults, with a real RabbitMQ and real runtimes:
competing daemons on one queue, the broker dropping every connection, a
daemon killed mid-invocation, and a broker that is not there yet. Each fault
test checks that no caller is left without an answer and that each gets its
own.
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lambdarapid.amqp.invoker import CONNECT_HOLD
from lambdarapid.amqp.parameters import parse_amqp_uri, redacted

from .amqp_support import (
    BROKER_HOST,
    BROKER_PORT,
    DaemonProcess,
    Forwarder,
    LogLines,
    amqp_uri,
    caller,
    count_starts,
    delete_queue,
    deploy,
    eventually,
    function_name,
    lambda_server,
    private_vhost,
    rabbitmqctl,
    runtime_environ,
    within,
)


class ScaleOutTests(TestCase):
    """Several daemons consuming one function's queue."""

    timeout = 40

    async def test_two_daemons_share_the_work(self) -> None:
        """Two daemons (MAX_CONCURRENCY=1 each) on one queue run eight 1 s invocations in about 4 s, both doing some."""
        name = function_name()
        # Queued requests count toward the timeout (it starts when the caller
        # asks), and the last run on each daemon starts about 3 s in.
        settings: dict[str, Any] = dict(
            MAX_CONCURRENCY=1, PRINT_REPORTS="true", AWS_LAMBDA_FUNCTION_TIMEOUT=10
        )
        first = deploy(self, reactor, name, **settings)
        second = deploy(self, reactor, name, **settings)
        server = lambda_server(self, reactor)
        for service in (first, second, server):
            await service.wait_connected()
        http = caller(self, reactor)
        events = [{"sleep": 1, "pid": True, "id": uuid.uuid4().hex} for _ in range(8)]
        start = time.monotonic()
        answers = await gatherResults(
            [http.invoke(server.url, name, event, seconds=20) for event in events]
        )
        elapsed = time.monotonic() - start
        for event, answer in zip(events, answers):
            self.assertEqual(
                (answer.status, answer.json().get("id")), (200, event["id"]), answer.body
            )
        # In parallel: less than the 8 s one daemon needs (about 4 s when idle).
        self.assertTrue(
            3.5 <= elapsed < 7.5, f"eight 1 s runs on two daemons took {elapsed:.2f} s"
        )
        starts = (count_starts(first.output), count_starts(second.output))
        self.assertEqual(sum(starts), 8, starts)
        self.assertTrue(all(starts), f"one daemon did nothing: {starts}")
        self.assertEqual(len({answer.json()["pid"] for answer in answers}), 2)


class ColdStartTests(TestCase):
    """Daemon and server started together, called at once (upstream lost 3 of 10 here)."""

    timeout = 60

    async def test_first_requests_after_a_cold_start_are_not_lost(self) -> None:
        """Ten requests fired the moment daemon and server start all get their own 200 answer."""
        name = function_name()
        deploy(self, reactor, name)
        server = lambda_server(self, reactor)
        http = caller(self, reactor)
        answers = await gatherResults(
            [http.invoke(server.url, name, {"n": n}, seconds=20) for n in range(10)]
        )
        self.assertEqual(
            [(answer.status, answer.json()) for answer in answers],
            [(200, {"n": n}) for n in range(10)],
        )


class ClosedChannelTests(TestCase):
    """The broker closing a channel (a consumer timeout, a refused publish) but not the connection."""

    timeout = 60

    async def test_daemon_and_server_recover_from_a_closed_channel(self) -> None:
        """Daemon and server whose channels the broker closes reconnect and serve again."""
        name = function_name()
        daemon = deploy(self, reactor, name)
        server = lambda_server(self, reactor)
        await daemon.wait_connected()
        await server.wait_connected()
        http = caller(self, reactor)
        first = await http.invoke(server.url, name, {"before": True})
        self.assertEqual(first.status, 200)
        # A publish to an exchange that does not exist: RabbitMQ closes that channel (404).
        consumer = daemon.service.consumer
        assert consumer is not None
        consumer_channel = consumer._channel
        server_channel = server.service_invoker()._rpc
        assert consumer_channel is not None and server_channel is not None
        for channel in (consumer_channel, server_channel):
            channel._channel.basic_publish(exchange="no-such-exchange", routing_key="x", body=b"")
        await eventually(
            reactor,
            lambda: daemon.connected
            and server.connected
            and consumer._channel is not consumer_channel
            and server.service_invoker()._rpc is not server_channel,
            10,
            "reconnected",
        )
        after = await http.invoke(server.url, name, {"after": True})
        self.assertEqual((after.status, after.json()), (200, {"after": True}))


class BrokerFaultTests(TestCase):
    """What callers see when connections to the broker drop or never come up."""

    timeout = 40

    async def test_broker_closes_all_connections_mid_flight(self) -> None:
        """When the broker closes every connection mid-flight, each of 20 callers still gets one 200 with its own payload, and both sides reconnect."""
        vhost = await private_vhost(self, reactor)
        uri = amqp_uri(vhost=vhost, retry_delay=0.2)
        name = function_name()
        # A long timeout: after the blip the daemon still runs the deliveries
        # it held (their answers may still be useful), so the copies the
        # server publishes again wait behind them, and a request's time
        # counts from when its caller asked.
        daemon = deploy(
            self,
            reactor,
            name,
            uri,
            MAX_CONCURRENCY=5,
            PRINT_REPORTS="true",
            AWS_LAMBDA_FUNCTION_TIMEOUT=10,
        )
        server = lambda_server(self, reactor, uri)
        await daemon.wait_connected()
        await server.wait_connected()
        http = caller(self, reactor)
        events = [{"sleep": 0.5, "id": uuid.uuid4().hex} for _ in range(20)]
        calls = [http.invoke(server.url, name, event, seconds=30) for event in events]
        await eventually(
            reactor, lambda: count_starts(daemon.output) >= 3, 10, "invocations in flight"
        )
        await rabbitmqctl(reactor, "close_all_connections", "-p", vhost, "test")
        answers = await gatherResults(calls)
        self.assertEqual(
            [(answer.status, answer.json()) for answer in answers],
            [(200, event) for event in events],
        )
        await daemon.wait_connected()
        await server.wait_connected()
        later = await http.invoke(server.url, name, {"later": True})
        self.assertEqual((later.status, later.json()), (200, {"later": True}))


    async def test_accepted_requests_survive_the_daemon_reconnecting_last(self) -> None:
        """Requests accepted before a broker blip are answered once the daemon is back, even if the server reconnects first: never 404."""
        vhost = await private_vhost(self, reactor)
        forwarder = Forwarder(reactor)
        self.addCleanup(forwarder.stop)
        forwarder.start()
        name = function_name()
        daemon = deploy(
            self,
            reactor,
            name,
            amqp_uri(port=forwarder.port, vhost=vhost),
            MAX_CONCURRENCY=2,
            PRINT_REPORTS="true",
            AWS_LAMBDA_FUNCTION_TIMEOUT=10,
        )
        server = lambda_server(self, reactor, amqp_uri(vhost=vhost))
        await daemon.wait_connected()
        await server.wait_connected()
        http = caller(self, reactor)
        events = [{"sleep": 0.5, "id": uuid.uuid4().hex} for _ in range(6)]
        calls = [http.invoke(server.url, name, event, seconds=30) for event in events]
        await eventually(
            reactor, lambda: count_starts(daemon.output) >= 1, 10, "invocations in flight"
        )
        # The daemon's way to the broker stays shut while the server reconnects.
        await forwarder.stop_listening()
        await rabbitmqctl(reactor, "close_all_connections", "-p", vhost, "test")
        await eventually(reactor, lambda: not server.connected, 5, "disconnected")
        await server.wait_connected()
        await deferLater(reactor, 0.5, lambda: None)
        forwarder.start()
        await daemon.wait_connected()
        answers = await gatherResults(calls)
        self.assertEqual(
            [(answer.status, answer.json()) for answer in answers],
            [(200, event) for event in events],
        )


    async def test_sigkilled_daemon_redelivered(self) -> None:
        """A daemon SIGKILLed mid-invocation leaves its request to another daemon on the queue, whose answer reaches the caller."""
        name = function_name()
        server = lambda_server(self, reactor)
        doomed = DaemonProcess(reactor, runtime_environ(name, amqp_uri(), PRINT_REPORTS="true"))
        self.addCleanup(doomed.stop)
        doomed.start()
        await doomed.wait_for(b"connected to the AMQP broker")
        await server.wait_connected()
        http = caller(self, reactor)
        event = {"sleep": 1.5, "id": uuid.uuid4().hex}
        call = http.invoke(server.url, name, event, seconds=25)
        await doomed.wait_for(b"START RequestId")
        survivor = deploy(self, reactor, name, PRINT_REPORTS="true")
        await survivor.wait_connected()
        doomed.kill_group(signal.SIGKILL)
        await within(doomed.ended, 5, reactor)
        answer = await call
        self.assertEqual((answer.status, answer.json()), (200, event))
        request_id = answer.headers["x-amzn-requestid"].encode()
        self.assertIn(b"START RequestId: " + request_id, bytes(survivor.output))
        self.assertIn(b"START RequestId: " + request_id, bytes(doomed.output))

    async def test_graceful_stop_answers_held_deliveries(self) -> None:
        """A daemon stopped (as on SIGTERM) mid-flight still answers every delivery it holds before it goes."""
        name = function_name()
        daemon = deploy(
            self,
            reactor,
            name,
            MAX_CONCURRENCY=1,
            PRINT_REPORTS="true",
            AWS_LAMBDA_FUNCTION_TIMEOUT=10,
        )
        server = lambda_server(self, reactor)
        await daemon.wait_connected()
        await server.wait_connected()
        http = caller(self, reactor)
        events = [{"sleep": 0.5, "id": uuid.uuid4().hex} for _ in range(3)]
        calls = [http.invoke(server.url, name, event, seconds=15) for event in events]
        await eventually(reactor, lambda: count_starts(daemon.output) >= 1, 10, "running")
        await daemon.stop()
        answers = await gatherResults(calls)
        self.assertEqual(
            [(answer.status, answer.json()) for answer in answers],
            [(200, event) for event in events],
        )

    async def test_lone_daemon_killed_fail_safe_timeout(self) -> None:
        """A lone daemon SIGKILLed mid-invocation loses the request with its auto-delete queue: the server's fail-safe timeout answers."""
        name = function_name()
        server = lambda_server(self, reactor, AWS_LAMBDA_FUNCTION_TIMEOUT=3)
        doomed = DaemonProcess(reactor, runtime_environ(name, amqp_uri(), PRINT_REPORTS="true"))
        self.addCleanup(doomed.stop)
        doomed.start()
        await doomed.wait_for(b"connected to the AMQP broker")
        await server.wait_connected()
        http = caller(self, reactor)
        call = http.invoke(server.url, name, {"sleep": 1}, seconds=10)
        await doomed.wait_for(b"START RequestId")
        doomed.kill_group(signal.SIGKILL)
        await within(doomed.ended, 5, reactor)
        answer = await call
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["errorType"], "Sandbox.Timedout")
        self.assertGreaterEqual(answer.seconds, 2.9)

    async def test_queue_deleted_under_the_daemon(self) -> None:
        """A daemon whose queue is deleted under it (operator, or the queue's cluster node lost) declares and consumes it again."""
        name = function_name()
        daemon = deploy(self, reactor, name)
        server = lambda_server(self, reactor)

        async def unstick() -> None:
            # Drop the connection before the daemon stops, so that the
            # shutdown hang test_sigterm_after_queue_deleted pins down does
            # not hold this test's cleanup too.
            connection = daemon.service.amqp.connection  # type: ignore[union-attr]
            if connection is not None and connection.is_open:
                connection.close()
                await eventually(reactor, lambda: not daemon.connected, 5, "disconnected")

        self.addCleanup(unstick)
        await daemon.wait_connected()
        await server.wait_connected()
        await within(deferToThread(delete_queue, amqp_uri(), name), 10, reactor)
        http = caller(self, reactor)
        deadline = time.monotonic() + 3
        while True:
            answer = await http.invoke(server.url, name, {"again": True})
            if answer.status == 200 or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((answer.status, answer.json()), (200, {"again": True}))


    async def test_sigterm_after_queue_deleted(self) -> None:
        """A daemon whose consumer the broker cancelled still exits promptly on SIGTERM."""
        name = function_name()
        daemon = DaemonProcess(reactor, runtime_environ(name, amqp_uri()))
        self.addCleanup(daemon.stop)
        daemon.start()
        await daemon.wait_for(b"connected to the AMQP broker")
        await within(deferToThread(delete_queue, amqp_uri(), name), 10, reactor)
        await daemon.wait_for(b"the broker cancelled our consumer")
        daemon.kill_group(signal.SIGTERM)
        try:
            # Well before DaemonProcess.stop's SIGKILL (10 s); the hang was forever.
            await eventually(reactor, lambda: not daemon.running, 6, "exited after SIGTERM")
        finally:
            daemon.kill_group(signal.SIGKILL)


    async def test_server_before_broker(self) -> None:
        """A server that cannot reach the broker answers 503 with Retry-After after a short hold (all invocation types), then 200 once it can."""
        logs = LogLines(self)
        forwarder = Forwarder(reactor)
        self.addCleanup(forwarder.stop)
        name = function_name()
        daemon = deploy(self, reactor, name)
        server = lambda_server(self, reactor, amqp_uri(port=forwarder.port, retry_delay=0.2))
        await daemon.wait_connected()
        await logs.wait_for(reactor, f"cannot reach the AMQP broker at amqp://127.0.0.1:{forwarder.port}/")
        self.assertFalse(server.connected)
        http = caller(self, reactor)
        refused = await http.invoke(server.url, name, {"early": True}, seconds=10)
        self.assertEqual(refused.status, 503, refused.body)
        self.assertTrue(refused.headers.get("retry-after"))
        # Held for CONNECT_HOLD, then answered: not hung until the caller gives up.
        self.assertLess(refused.seconds, CONNECT_HOLD + 4.0)
        for kind in ("Event", "DryRun"):
            refused = await http.invoke(server.url, name, {}, seconds=10, x_amz_invocation_type=kind)
            self.assertEqual((refused.status, refused.headers.get("retry-after")), (503, "1"), kind)
        forwarder.start()
        await server.wait_connected(10)
        answer = await http.invoke(server.url, name, {"late": True})
        self.assertEqual((answer.status, answer.json()), (200, {"late": True}))

    async def test_daemon_without_broker_serves_http(self) -> None:
        """A daemon whose broker is unreachable still serves HTTP invocations, and joins its queue once the broker is reachable."""
        logs = LogLines(self)
        forwarder = Forwarder(reactor)
        self.addCleanup(forwarder.stop)
        name = function_name()
        daemon = deploy(self, reactor, name, amqp_uri(port=forwarder.port, retry_delay=0.2))
        server = lambda_server(self, reactor)
        await server.wait_connected()
        await logs.wait_for(reactor, f"cannot reach the AMQP broker at amqp://127.0.0.1:{forwarder.port}/")
        self.assertFalse(daemon.connected)
        http = caller(self, reactor)
        direct = await http.invoke(daemon.url, name, {"direct": True})
        self.assertEqual((direct.status, direct.json()), (200, {"direct": True}))
        routed = await http.invoke(server.url, name, {"routed": True})
        self.assertEqual(routed.status, 404)
        forwarder.start()
        await daemon.wait_connected(10)
        routed = await http.invoke(server.url, name, {"routed": True})
        self.assertEqual((routed.status, routed.json()), (200, {"routed": True}))


class RefusedConnectionTests(TestCase):
    """A broker that is there but will not have us says why, once, and we keep trying."""

    timeout = 30

    async def test_refused_login_is_logged(self) -> None:
        """A wrong password is logged as a refused login of that user (not "cannot reach"), once, without the password."""
        logs = LogLines(self)
        uri = f"amqp://guest:wrong-secret@{BROKER_HOST}:{BROKER_PORT}/%2F?retry_delay=0.2"
        daemon = deploy(self, reactor, function_name(), uri)
        line = await logs.wait_for(reactor, "refused the login")
        self.assertIn("user 'guest'", line)
        self.assertIn("ACCESS_REFUSED", line)
        self.assertIn(f"amqp://{BROKER_HOST}:{BROKER_PORT}/%2F", line)
        self.assertIn("retrying within 0.2 s", line)
        # Retried (each attempt is refused again), and still said once.
        amqp = daemon.service.amqp
        assert amqp is not None
        await eventually(reactor, lambda: amqp._failures >= 3, 10, "three refused attempts")
        self.assertEqual(len(logs.matching("refused the login")), 1)
        self.assertEqual(logs.matching("cannot reach"), [])
        self.assertNotIn("wrong-secret", "\n".join(logs.lines))
        self.assertFalse(daemon.connected)

    async def test_missing_vhost_is_logged(self) -> None:
        """A vhost that does not exist is logged as a refused vhost, naming it."""
        logs = LogLines(self)
        vhost = f"lambdarapid-missing-{uuid.uuid4().hex[:8]}"
        daemon = deploy(self, reactor, function_name(), amqp_uri(vhost=vhost))
        line = await logs.wait_for(reactor, "refused access to vhost")
        self.assertIn(f"vhost {vhost!r}", line)
        self.assertIn(f"/{vhost}", line)
        self.assertIn("not found", line)
        self.assertEqual(logs.matching("cannot reach"), [])
        self.assertFalse(daemon.connected)

    async def test_connected_line_names_the_vhost(self) -> None:
        """The "connected" line names the vhost after a slash: amqp://host:port/vhost."""
        logs = LogLines(self)
        vhost = await private_vhost(self, reactor)
        daemon = deploy(self, reactor, function_name(), amqp_uri(vhost=vhost))
        await daemon.wait_connected()
        line = await logs.wait_for(reactor, "connected to the AMQP broker")
        self.assertIn(redacted(parse_amqp_uri(amqp_uri(vhost=vhost))), line)
        self.assertIn(f"{BROKER_PORT}/{vhost}", line)
