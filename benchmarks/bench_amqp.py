#!/usr/bin/env python3
"""
Benchmark the AMQP-RPC path: lambda-server -> RabbitMQ -> lambda-rapid, and a
direct pika RPC client against the daemon, against the same bare twisted.web
echo baseline as bench_daemon.py, measured in the same run.

One run starts, each in its own process and on free loopback ports (the
broker is the one already running, AMQP_URI):

  * the baseline: bench_daemon.py's bare twisted.web echo Resource;
  * for each MAX_CONCURRENCY (1 and 4): a daemon (lambda-rapid + the
    awslambdaric echo function) connected to the broker under a unique
    function name, and a Lambda Server (lambda-server) in front of it;

and measures:

  server      HTTP through the Lambda Server, 1/8/32 keep-alive connections
              (wrk, as bench_daemon.py), small payload, plus one 1 MiB point;
              CPU per invocation of the server, the daemon, its runtimes and
              the broker from /proc/<pid>/stat
  direct      the same daemon's own HTTP Invoke API (1 and 8 connections), for
              comparison with the path through the broker
  rpc         a pika client publishing straight to the function's queue in
              upstream's format (exclusive reply queue, correlation_id,
              reply_to, timestamp), 1 and 32 requests in flight
  coldstart   daemon and server started together, 10 requests fired at once
              as soon as the server's port accepts: how many fail or are lost
  profile     the Lambda Server under load (MAX_CONCURRENCY=4, 8 connections):
              the in-process CPU sampler and py-spy, grouped
  check       what the daemon's per-delivery request check costs (size limit
              and one orjson parse, invocation.check_payload) on the 1 MiB
              payload, in this process

    python benchmarks/bench_amqp.py            # everything, ~4 min
    python benchmarks/bench_amqp.py --quick    # ~1.5 min smoke run
    python benchmarks/bench_amqp.py --sections coldstart --cold-runs 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_daemon as bd  # noqa: E402  (the shared load generator, baseline, /proc readings, profiles)
from bench_daemon import CLK_TCK, HOST, ECHO_DIR, HERE, RESULTS_DIR, LoadResult, Server, fmt, log, ratio  # noqa: E402

DEFAULT_URI = "amqp://guest:guest@127.0.0.1:5672/"
ALL_SECTIONS = ("server", "direct", "rpc", "coldstart", "profile", "check")
#: Upstream's Go server + daemon pair on this machine (MAX_CONCURRENCY=4), for reference only.
UPSTREAM_RPS = {1: 1500, 8: 3200}


# --------------------------------------------------------------------------
# Processes under test
# --------------------------------------------------------------------------


def function_name() -> str:
    return f"bench-echo-{os.getpid()}-{secrets.token_hex(3)}"


def server_command() -> list[str]:
    script = Path(sys.executable).parent / "lambda-server"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from lambdarapid.scripts import server; server(sys.argv[1:])"]


def make_amqp_daemon(max_concurrency: int, logdir: Path, uri: str, function: str) -> Server:
    """bench_daemon's daemon, also consuming the queue C{function} on the broker."""
    daemon = bd.make_daemon(max_concurrency, logdir)
    daemon.env.update(AMQP_URI=uri, AWS_LAMBDA_FUNCTION_NAME=function, LAMBDA_TASK_ROOT=str(ECHO_DIR))
    daemon.path = f"/2015-03-31/functions/{function}/invocations"
    return daemon


def make_lambda_server(logdir: Path, uri: str, function: str, argv: list[str] | None = None) -> Server:
    port = bd.free_port_block(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMQP_")}
    env.update(PORT=str(port), INVOKE_API_HOST=HOST, AMQP_URI=uri, AWS_LAMBDA_FUNCTION_TIMEOUT="60")
    return Server("server", argv or server_command(), f"/2015-03-31/functions/{function}/invocations",
                  env, HERE, logdir, port)


def spawn(server: Server) -> None:
    """Start C{server}'s process without waiting for anything (cold start)."""
    server.log_path = server.logdir / f"{server.name}-{server.port}.log"
    with open(server.log_path, "ab") as out:
        server.proc = subprocess.Popen(server.argv, cwd=server.cwd, env=server.env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_log(server: Server, needle: bytes, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert server.proc is not None and server.log_path is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        if needle in server.log_path.read_bytes():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{server.name}: no {needle!r} in {server.log_path} within {timeout}s")


def broker_pids() -> list[int]:
    """The RabbitMQ node's VM (beam.smp) processes, read-only: its CPU is part of every AMQP figure."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if comm.startswith("beam"):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"rabbit" in f.read():
                        pids.append(int(entry))
        except OSError:
            continue
    return pids


def ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        stat = bd.proc_stat(pid)
        if stat is not None:
            total += stat[0] + stat[1]
    return total


class Queues:
    """Checks, with pika, that the function queues the run used are gone; deletes leftovers."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.names: dict[str, str] = {}

    def new(self, purpose: str) -> str:
        name = function_name()
        self.names[name] = purpose
        return name

    def cleanup(self) -> list[str]:
        """The queues still there (as 'name (what used it)'), now deleted."""
        import pika
        from pika.exceptions import ChannelClosedByBroker

        left = []
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.uri))
        except Exception as error:
            log(f"queue check: cannot connect to the broker ({error})")
            return ["?"]
        try:
            for name in self.names:
                channel = connection.channel()
                try:
                    channel.queue_declare(queue=name, passive=True)
                except ChannelClosedByBroker:
                    continue  # 404: gone, as it should be (auto-delete)
                left.append(f"{name} ({self.names[name]})")
                channel.queue_delete(queue=name)
                channel.close()
        finally:
            connection.close()
        return left


# --------------------------------------------------------------------------
# The direct pika RPC client (upstream's request format), in its own process
# --------------------------------------------------------------------------


class RPCClient:
    """Runs C{bench_amqp.py _rpc <config>}: a pika client keeping N requests in flight."""

    name = "pika"

    def __init__(self, uri: str, reply: str) -> None:
        self.uri = uri
        self.reply = reply

    def describe(self) -> str:
        import pika

        kind = "exclusive reply queue" if self.reply == "private" else "direct reply-to"
        return f"pika {pika.__version__} SelectConnection, {kind}, one process"

    def run(self, queue: str, body_file: Path, in_flight: int, duration: float, max_requests: int = 0,
            timeout: float = 30.0) -> tuple[LoadResult, dict[str, Any]]:
        config = dict(uri=self.uri, queue=queue, body=str(body_file), in_flight=in_flight, duration=duration,
                      max_requests=max_requests, timeout=timeout, reply=self.reply)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_rpc", json.dumps(config)]
        lines, cpu = bd._run_capturing(cmd, duration + 2 * timeout + 30, lambda line, proc: None)
        found = [line for line in lines if line.startswith("BENCH_JSON ")]
        if not found:
            raise RuntimeError("the RPC client printed no result:\n" + "".join(lines)[-2000:])
        d = json.loads(found[-1][len("BENCH_JSON "):])
        # All its CPU (for oth%); d["window_cpu_s"] is the measured window's alone.
        result = LoadResult(d["requests"], d["duration_s"], d["p50_ms"], d["p90_ms"], d["p99_ms"], d["max_ms"],
                            d["errors"], cpu)
        return result, d


def rpc_client_main(config: dict[str, Any]) -> dict[str, Any]:
    """
    Publish to the function's queue as upstream's clients do (default exchange,
    routing key = function, correlation_id, reply_to, timestamp, content_type;
    no mandatory), keep C{in_flight} requests outstanding for C{duration} s
    (or C{max_requests} replies), then wait for the stragglers.

    pika's SelectConnection (callbacks on its own ioloop, TCP_NODELAY): about
    a third less CPU per request than its BlockingConnection, which matters
    with the daemon, its runtimes and the broker on the same two cores. The
    CPU reported is this process's over the measured window only.
    """
    import resource

    import pika

    body = Path(config["body"]).read_bytes()
    queue, in_flight, timeout = config["queue"], config["in_flight"], config["timeout"]
    cap = config["max_requests"]
    pending: dict[str, int] = {}
    latencies: list[int] = []
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    state: dict[str, Any] = dict(publishing=False, start=None, window_end=None, cpu=None)

    def cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:
        if config["reply"] == "direct":
            consume(channel, "amq.rabbitmq.reply-to")
        else:  # upstream: a private, broker-named, exclusive reply queue
            channel.queue_declare("", exclusive=True, callback=lambda frame: consume(channel, frame.method.queue))

    def consume(channel: Any, reply_to: str) -> None:
        def publish() -> None:
            correlation_id = str(uuid.uuid4())
            pending[correlation_id] = time.perf_counter_ns()
            channel.basic_publish(
                exchange="", routing_key=queue, body=body,
                properties=pika.BasicProperties(content_type="application/json", correlation_id=correlation_id,
                                                reply_to=reply_to, timestamp=int(time.time())),
            )

        def stop_publishing() -> None:
            if state["publishing"]:
                state["publishing"] = False
                state["window_end"] = time.perf_counter()
                state["cpu"] = cpu_now() - state["cpu"]
                state["ioloop"].call_later(timeout, finish)
            if not pending:
                finish()

        def finish() -> None:
            if pending:
                errors["timeout"] += len(pending)
                pending.clear()
            if not state.get("closing"):
                state["closing"] = True
                state["ioloop"].call_later(0.1, connection.close)  # duplicates arriving just after

        def on_reply(ch: Any, method: Any, properties: Any, reply: bytes) -> None:
            sent = pending.pop(properties.correlation_id or "", None)
            now = time.perf_counter_ns()
            if sent is None:
                counts["late_or_duplicate"] += 1
                return
            if (properties.headers or {}).get("X-Amz-Function-Error"):
                errors["function_error"] += 1
            if not state["publishing"]:
                counts["drained"] += 1
                if not pending:
                    finish()
                return
            latencies.append(now - sent)
            if (cap and len(latencies) >= cap) or time.perf_counter() >= state["deadline"]:
                stop_publishing()
            else:
                publish()

        def check() -> None:
            if not state["publishing"]:
                return
            now = time.perf_counter()
            if now >= state["deadline"]:
                stop_publishing()
                return
            for cid in [c for c, sent in pending.items() if now - sent / 1e9 > timeout]:
                del pending[cid]
                errors["timeout"] += 1
                publish()
            state["ioloop"].call_later(0.25, check)

        def begin(frame: Any) -> None:
            state.update(publishing=True, start=time.perf_counter(), cpu=cpu_now())
            state["deadline"] = state["start"] + config["duration"]
            for _ in range(in_flight):
                publish()
            state["ioloop"].call_later(0.25, check)

        channel.basic_consume(reply_to, on_reply, auto_ack=True, callback=begin)

    connection = pika.SelectConnection(
        pika.URLParameters(config["uri"]), on_open_callback=on_open,
        on_open_error_callback=lambda c, error: (errors.update(connect=1), c.ioloop.stop()),
        on_close_callback=lambda c, reason: c.ioloop.stop())
    state["ioloop"] = connection.ioloop
    connection.ioloop.start()
    if state["start"] is None:
        raise SystemExit(f"the RPC client could not start: {dict(errors)}")
    values = sorted(v / 1e6 for v in latencies)
    return dict(requests=len(values), duration_s=state["window_end"] - state["start"],
                p50_ms=bd.percentile(values, 50), p90_ms=bd.percentile(values, 90),
                p99_ms=bd.percentile(values, 99), max_ms=values[-1] if values else float("nan"),
                errors={k: v for k, v in errors.items() if v}, drained=counts["drained"], late_or_duplicate=counts["late_or_duplicate"],
                window_cpu_s=state["cpu"])


# --------------------------------------------------------------------------
# One measured point: every process involved, read around the load
# --------------------------------------------------------------------------


def measure_point(parts: dict[str, Server], broker: list[int], load: Callable[[], tuple[LoadResult, int, dict]],
                  warmup: Callable[[], Any], row: dict[str, Any]) -> dict[str, Any]:
    """
    Warm up, settle, then C{load()} -> (result, requests finished after the
    window, extra fields). CPU per invocation for each of C{parts} (own
    process; their descendants as C{rt}) and the broker; C{oth%} as in
    bench_daemon: the machine share that none of them, the load generator or
    this script took.
    """
    warmup()
    for server in parts.values():
        server.settle()
    before = {k: s.snapshot() for k, s in parts.items()}
    brk0, sys0, me0 = ticks(broker), bd.system_cpu(), os.times()
    result, after_window, extra = load()
    # The load generator's CPU per request: over the window if it says (the
    # pika client: its start-up and connection set-up left out), else all of it.
    loadgen_cpu = extra.pop("loadgen_window_cpu_s", result.loadgen_cpu_s)
    sys1, me1 = bd.system_cpu(), os.times()
    at_end = {k: s.snapshot() for k, s in parts.items()}
    brk1 = ticks(broker)
    ours = sum(sum(bd.cpu_delta(before[k], at_end[k])[::2]) for k in parts)
    ours += (brk1 - brk0) / CLK_TCK + result.loadgen_cpu_s + (me1.user - me0.user) + (me1.system - me0.system)
    machine_s = (sys1[1] - sys0[1]) / CLK_TCK
    busy_s = (sys1[0] - sys0[0]) / CLK_TCK
    for server in parts.values():
        server.settle()
    after = {k: s.snapshot() for k, s in parts.items()}
    brk2 = ticks(broker)
    done = result.requests + after_window
    per = (lambda seconds: seconds / done * 1e6 if result.requests else None)
    row = dict(row, requests=result.requests, duration_s=result.duration_s, rps=result.rps,
               p50_ms=result.p50_ms, p90_ms=result.p90_ms, p99_ms=result.p99_ms, max_ms=result.max_ms,
               errors=result.errors, loadgen_cpu_us_per_req=(loadgen_cpu / result.requests * 1e6 if result.requests else None),
               broker_cpu_us_per_req=per((brk2 - brk0) / CLK_TCK) if broker else None,
               system_busy_pct=100 * busy_s / max(machine_s, 1e-9),
               foreign_busy_pct=100 * max(0.0, busy_s - ours) / max(machine_s, 1e-9), **extra)
    for key in ("daemon", "server", "baseline"):
        if key in parts:
            own, own_sys, kids = bd.cpu_delta(before[key], after[key])
            row[f"{key}_cpu_us_per_req"] = per(own)
            row[f"{key}_sys_pct"] = 100 * own_sys / own if own else None
            if key == "daemon":
                row["runtimes_cpu_us_per_req"] = per(kids)
                row["runtimes"] = len(after[key].children)
    return row


def wrk_point(loadgen: Any, parts: dict[str, Server], target: Server, broker: list[int], body_file: Path,
              connections: int, duration: int, max_requests: int, warmup: int, row: dict[str, Any]) -> dict[str, Any]:
    def load() -> tuple[LoadResult, int, dict]:
        result = loadgen.run(target.port, target.path, body_file, connections, duration, max_requests)
        return result, connections, {}

    return measure_point(
        parts, broker, load,
        lambda: loadgen.run(target.port, target.path, body_file, connections, duration=10, max_requests=warmup),
        dict(row, connections=connections))


def rpc_point(client: RPCClient, parts: dict[str, Server], broker: list[int], queue: str, body_file: Path,
              in_flight: int, duration: int, row: dict[str, Any]) -> dict[str, Any]:
    def load() -> tuple[LoadResult, int, dict]:
        result, raw = client.run(queue, body_file, in_flight, duration)
        return result, raw["drained"], dict(late_or_duplicate=raw["late_or_duplicate"],
                                            loadgen_window_cpu_s=raw["window_cpu_s"])

    return measure_point(parts, broker, load,
                         lambda: client.run(queue, body_file, in_flight, 10, max_requests=max(300, 20 * in_flight)),
                         dict(row, connections=in_flight))


# --------------------------------------------------------------------------
# Cold start: daemon and server fresh, 10 requests as soon as the port accepts
# --------------------------------------------------------------------------


def cold_start_run(logdir: Path, uri: str, queues: Queues, max_concurrency: int, requests: int,
                   timeout: float, fire: str = "accept") -> dict[str, Any]:
    """
    Start a daemon and a server together (fresh function queue), fire
    C{requests} concurrent requests as soon as the server's port accepts
    (C{fire="accept"}), or as soon as the server has logged its broker
    connection (C{"connected"}: isolates the daemon's queue declaration
    race), and count those not answered 200.
    """
    function = queues.new(f"cold start, fired on {fire}, MAX_CONCURRENCY={max_concurrency}")
    daemon = make_amqp_daemon(max_concurrency, logdir, uri, function)
    server = make_lambda_server(logdir, uri, function)
    request = bd.build_request(server.path, bd.make_payload("small"), server.port)
    outcomes: list[dict[str, Any]] = [{} for _ in range(requests)]
    try:
        t0 = time.perf_counter()
        spawn(daemon)
        spawn(server)
        while True:  # the first moment the server's port accepts
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(f"lambda-server never listened; see {server.log_path}")
            try:
                socket.create_connection((HOST, server.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.001)
        accepting = time.perf_counter()
        if fire == "connected":
            assert server.log_path is not None
            while b"connected to the AMQP broker" not in server.log_path.read_bytes():
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"lambda-server never connected; see {server.log_path}")
                time.sleep(0.001)
        fired = time.perf_counter()
        gate = threading.Barrier(requests)

        def call(i: int) -> None:
            client = bd.BlockingClient(server.port, timeout=timeout)
            gate.wait()
            start = time.perf_counter()
            try:
                status, body = client.call(request)
                outcomes[i] = dict(status=status, body=body[:160].decode("utf-8", "replace"))
            except socket.timeout:
                outcomes[i] = dict(status="timeout")
            except (OSError, bd.HTTPError) as error:
                outcomes[i] = dict(status=f"error: {type(error).__name__}: {error}"[:120])
            finally:
                client.close()
            outcomes[i]["ms_from_fire"] = (time.perf_counter() - start) * 1000

        threads = [threading.Thread(target=call, args=(i,)) for i in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # A process that died (a port taken meanwhile by someone else, say)
        # makes the run meaningless: it is reported apart, not as losses.
        invalid = [f"{s.name} exited with {s.proc.returncode}: "
                   + s.log_path.read_bytes()[-300:].decode("utf-8", "replace")
                   for s in (server, daemon) if s.proc is not None and s.log_path and s.proc.poll() is not None]
    finally:
        server.stop()
        daemon.stop()
    lost = [o for o in outcomes if o.get("status") != 200]
    return dict(max_concurrency=max_concurrency, fire=fire, function=function, requests=requests, lost=len(lost),
                accept_ms=(accepting - t0) * 1000, fired_ms=(fired - t0) * 1000,
                statuses=dict(Counter(str(o.get("status")) for o in outcomes)),
                lost_bodies=sorted({o.get("body", o.get("status")) for o in lost}),
                max_ms_from_fire=max(o.get("ms_from_fire", 0) for o in outcomes),
                invalid="; ".join(invalid) or None)


# --------------------------------------------------------------------------
# Profile of the Lambda Server
# --------------------------------------------------------------------------


def _pika(fn: str, f: str) -> bool:
    return f.startswith("pika/")


SERVER_SELF_GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    bd.SELF_GROUPS[0],  # syscalls
    ("pika frame/properties encode+decode (spec.py, frame.py, data.py)",
     lambda fn, f: bd._is(f, "pika/spec.py", "pika/frame.py", "pika/data.py", "pika/amqp_object.py")),
    ("pika Twisted adapter (adapters/twisted_connection.py)", lambda fn, f: bd._is(f, "pika/adapters/twisted_connection.py")),
    ("pika channel/connection/callbacks", lambda fn, f: _pika(fn, f)),
    ("lambdarapid/amqp/ (invoker, messages)", lambda fn, f: "lambdarapid/amqp/" in f),
    *bd.SELF_GROUPS[1:],
]

SERVER_INCLUSIVE_GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("Request.process (route + Invoke API handler + render)", lambda fn, f: fn == "Request.process"),
    ("Klein (routing, handler wrapping, error handling)", lambda fn, f: "klein/" in f or "werkzeug/" in f),
    ("Invoke API handler (lambdarapid/invoke_api.py)", lambda fn, f: "lambdarapid/invoke_api.py" in f),
    ("AMQPInvoker.invoke (register + publish)", lambda fn, f: fn == "AMQPInvoker.invoke"),
    ("pika basic_publish (properties + frames + write)", lambda fn, f: _pika(fn, f) and "basic_publish" in fn),
    ("request_properties (build BasicProperties)", lambda fn, f: fn == "request_properties"),
    ("reading from the broker (pika _on_data_available: frame decode + dispatch)",
     lambda fn, f: _pika(fn, f) and "_on_data_available" in fn),
    ("reply dispatch (AMQPInvoker._receive, its Deferred queue)", lambda fn, f: fn == "AMQPInvoker._receive"),
    ("result_from_reply", lambda fn, f: fn == "result_from_reply"),
    ("pika (a frame anywhere)", _pika),
    ("request line + header parsing (lineReceived/headerReceived/allHeadersReceived)",
     lambda fn, f: bd._is(f, "twisted/web/http.py") and any(
         k in fn for k in ("lineReceived", "headerReceived", "allHeadersReceived"))),
    ("response headers + body out (Request.write/finish)",
     lambda fn, f: bd._is(f, "twisted/web/http.py") and fn in ("Request.write", "Request.finish")),
    ("socket writes (FileDescriptor.doWrite / writeSomeData)",
     lambda fn, f: fn in ("FileDescriptor.doWrite", "Connection.writeSomeData")),
    ("Deferred machinery", lambda fn, f: bd._is(f, "twisted/internet/defer.py")),
    ("Failure objects", lambda fn, f: bd._is(f, "twisted/python/failure.py")),
    ("logging (twisted.logger, log.msg)", lambda fn, f: "twisted/logger/" in f or (
        bd._is(f, "twisted/python/log.py") and fn not in ("callWithLogger", "callWithContext"))),
    ("uuid", lambda fn, f: bd._is(f, "uuid.py")),
    ("json", lambda fn, f: "json/" in f),
    ("Date header (datetimeToString)", lambda fn, f: "datetimeToString" in fn),
    ("callLater / DelayedCall (fail-safe timers)", lambda fn, f: "callLater" in fn or "DelayedCall" in fn),
]


def run_sampled_server(out_path: str, interval_us: int) -> None:
    """The Lambda Server under bench_daemon's CPU-time sampler (SIGUSR1 / SIGUSR2)."""
    bd.install_cpu_sampler(out_path, interval_us)
    from lambdarapid.scripts import server

    server([])


def run_profile(args: argparse.Namespace, loadgen: Any, body_files: dict[str, Path], logdir: Path,
                queues: Queues, broker: list[int], out_base: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds, conns = args.profile_seconds, 8
    for kind in args.profilers:
        if kind == "py-spy" and not Path(pyspy).exists():
            log("profile: py-spy not found (pip install py-spy); skipped")
            report[kind] = dict(skipped="py-spy not installed")
            continue
        raw = out_base.with_name(f"{out_base.stem}-server-profile-{kind}.txt")
        raw.unlink(missing_ok=True)
        function = queues.new(f"profile {kind}")
        daemon = make_amqp_daemon(4, logdir, args.amqp_uri, function)
        argv = None
        if kind == "cpu-sampler":
            argv = [sys.executable, str(Path(__file__).resolve()), "_sampled_server", str(raw),
                    str(args.sampler_interval_us)]
        server = make_lambda_server(logdir, args.amqp_uri, function, argv)
        try:
            daemon.start()
            wait_for_log(daemon, b"consuming AMQP queue")
            server.start()
            body = body_files["small"]
            holder: dict[str, Any] = {}

            def load() -> tuple[LoadResult, int, dict]:
                thread = threading.Thread(target=lambda: holder.update(r=loadgen.run(
                    server.port, server.path, body, conns, seconds + 2)))
                thread.start()
                time.sleep(1)
                log(f"profile: {kind} for {seconds} s on lambda-server pid {server.pid}")
                if kind == "py-spy":
                    subprocess.run([pyspy, "record", "-p", str(server.pid), "-d", str(seconds), "-r",
                                    str(args.profile_rate), "--nonblocking", "-f", "raw", "-o", str(raw)],
                                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                else:
                    os.kill(server.pid, signal.SIGUSR1)
                    time.sleep(seconds)
                    os.kill(server.pid, signal.SIGUSR2)
                    for _ in range(100):
                        if raw.exists():
                            break
                        time.sleep(0.05)
                thread.join()
                return holder["r"], conns, {}

            row = measure_point(
                dict(daemon=daemon, server=server), broker, load,
                lambda: loadgen.run(server.port, server.path, body, conns, duration=10, max_requests=3000),
                dict(path="profile", max_concurrency=4, payload="small", connections=conns))
            if not raw.exists():
                report[kind] = dict(skipped=f"no stacks written; see {server.log_path}")
                continue
            us = row["server_cpu_us_per_req"]
            summary = bd.summarize_profile(raw, us, bd.STACK_GROUPS, SERVER_SELF_GROUPS, SERVER_INCLUSIVE_GROUPS)
            summary.update(raw_file=str(raw), point=row)
            report[kind] = summary
        finally:
            server.stop()
            daemon.stop()
    report["note"] = ("lambda-server process only; us_per_inv = share of samples x the server's CPU per "
                      "invocation measured from /proc over the same window. py-spy: --nonblocking, wall-clock "
                      "samples of a runnable thread; cpu-sampler: setitimer(ITIMER_PROF) every "
                      f"{args.sampler_interval_us} µs of server CPU.")
    return report


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


PATH_LABELS = {
    "baseline": "baseline",
    "server": "via server",
    "direct": "daemon HTTP",
    "rpc": "pika RPC",
}


def print_report(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print()
    print(f"AMQP-RPC benchmark  {meta['timestamp']}  {meta['cpus']} CPUs  Python {meta['python']}  "
          f"Twisted {meta['versions'].get('twisted')}  pika {meta['pika']}  commit {meta['git_commit']}")
    print(f"broker: {meta['broker']}; load generator: {meta['loadgen']}; RPC client: {meta['rpc_client']}")
    print(f"machine busy before the run: {meta['machine_busy_pct_before']:.0f}% "
          f"(loadavg {' '.join(f'{x:.2f}' for x in meta['loadavg_before'])})")
    print("baseline: bare twisted.web echo Resource (bench_daemon.py's), one HTTP exchange per request, same wrk")

    rows = results.get("points") or []
    if rows:
        base = {(r["payload"], r["connections"]): r for r in rows if r["path"] == "baseline"}
        print(f"\nThroughput and latency ({meta['duration_s']} s per point; keep-alive HTTP via wrk, or in-flight "
              "requests of the pika client); CPU per invocation from /proc/<pid>/stat")
        head = (f"{'path':<12}{'mc':>3}{'payload':>8}{'conc':>5}{'req/s':>8}{'×base':>7}{'p50 ms':>8}{'p99 ms':>8}"
                f"{'p50×b':>7}{'srv µs':>8}{'dmn µs':>8}{'rt µs':>7}{'brk µs':>8}{'sum µs':>8}{'×base':>7}"
                f"{'lg µs':>7}{'cpu%':>6}{'oth%':>6}  errors")
        print(head)
        for r in rows:
            b = base.get((r["payload"], r["connections"])) or base.get((r["payload"], 1 if r["connections"] == 1 else 32))
            srv = r.get("server_cpu_us_per_req") if r["path"] != "baseline" else r.get("baseline_cpu_us_per_req")
            parts = [srv, r.get("daemon_cpu_us_per_req"), r.get("runtimes_cpu_us_per_req"), r.get("broker_cpu_us_per_req")]
            total = sum(x for x in parts if x) if r["path"] != "baseline" else srv
            errs = ",".join(f"{k}={v}" for k, v in r["errors"].items()) or "0"
            print(f"{PATH_LABELS[r['path']]:<12}{r.get('max_concurrency', '-'):>3}{r['payload']:>8}{r['connections']:>5}"
                  f"{fmt(r['rps'], '.0f'):>8}{fmt(ratio(r['rps'], b and b['rps'])):>7}{fmt(r['p50_ms']):>8}"
                  f"{fmt(r['p99_ms']):>8}{fmt(ratio(r['p50_ms'], b and b['p50_ms']), '.1f'):>7}"
                  f"{fmt(srv, '.0f'):>8}{fmt(r.get('daemon_cpu_us_per_req'), '.0f'):>8}"
                  f"{fmt(r.get('runtimes_cpu_us_per_req'), '.0f'):>7}{fmt(r.get('broker_cpu_us_per_req'), '.0f'):>8}"
                  f"{fmt(total, '.0f'):>8}{fmt(ratio(total, b and b.get('baseline_cpu_us_per_req')), '.1f'):>7}"
                  f"{fmt(r['loadgen_cpu_us_per_req'], '.0f'):>7}{fmt(r['system_busy_pct'], '.0f'):>6}"
                  f"{fmt(r['foreign_busy_pct'], '.0f'):>6}  {errs}")
        print("  mc = daemon MAX_CONCURRENCY; conc = HTTP connections (pika RPC: requests in flight); ×base = over the\n"
              "  baseline at the same payload and concurrency (pika RPC: baseline through wrk, so only indicative);\n"
              "  srv = lambda-server process (baseline: the baseline server), dmn = lambda-rapid process, rt = its\n"
              "  runtimes, brk = RabbitMQ's beam.smp, sum = all four; lg = load generator (wrk or the pika client);\n"
              "  cpu% = whole machine busy (100 = both cores), oth% = taken by other processes (disturbed if high)")
        for conns, upstream in UPSTREAM_RPS.items():
            ours = next((r for r in rows if r["path"] == "server" and r.get("max_concurrency") == 4
                         and r["payload"] == "small" and r["connections"] == conns), None)
            if ours:
                print(f"  upstream Go server+daemon (reference, not measured here), MC=4, {conns} conn: ~{upstream} req/s;"
                      f" ours {ours['rps']:.0f} ({ours['rps'] / upstream:.2f}×)")

    cold = results.get("coldstart")
    for r in cold or []:
        if r.get("invalid"):
            print(f"\n  cold start ({r['fire']}, mc {r['max_concurrency']}) not counted: {r['invalid']}")
    if cold:
        print(f"\nCold start: daemon + server spawned together (fresh queue), {cold[0]['requests']} concurrent requests "
              "fired at once; lost = not 200 (or no answer)")
        for fire, title in (("accept", "as soon as the server's port accepts (the target: 0 lost)"),
                            ("connected", "once the server has logged its broker connection")):
            runs = [r for r in cold if r.get("fire", "accept") == fire and not r.get("invalid")]
            if not runs:
                continue
            print(f"  fired {title}: lost {sum(r['lost'] for r in runs)}/{sum(r['requests'] for r in runs)}")
            print(f"  {'mc':>3}{'fired ms':>10}{'lost':>6}{'last answer ms':>16}  statuses  (lost: bodies)")
            for r in runs:
                print(f"  {r['max_concurrency']:>3}{r['fired_ms']:>10.0f}{r['lost']:>6}{r['max_ms_from_fire']:>16.0f}  "
                      f"{r['statuses']}" + (f"  {r['lost_bodies']}" if r["lost"] else ""))

    for kind, prof in (results.get("profile") or {}).items():
        if not isinstance(prof, dict) or "samples" not in prof:
            continue
        p = prof["point"]
        print(f"\nProfile ({kind}) of lambda-server: daemon MAX_CONCURRENCY=4, 8 connections, small payload: "
              f"{p['rps']:.0f} req/s, server {fmt(p['server_cpu_us_per_req'], '.0f')} µs/inv "
              f"({fmt(p['server_sys_pct'], '.0f')}% in kernel), daemon {fmt(p['daemon_cpu_us_per_req'], '.0f')} µs/inv, "
              f"{prof['samples']} samples, oth% {p['foreign_busy_pct']:.0f}")
        bd.print_profile_groups(prof)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s points, 1 cold run per MC, 4 s profiles")
    p.add_argument("--sections", default=",".join(ALL_SECTIONS),
                   help=f"comma list of {','.join(ALL_SECTIONS)} (default: all)")
    p.add_argument("--amqp-uri", default=os.environ.get("BENCH_AMQP_URI", DEFAULT_URI),
                   help="the broker (%(default)s; BENCH_AMQP_URI)")
    p.add_argument("--duration", type=int, default=None, help="seconds per point (5; quick 2)")
    p.add_argument("--max-concurrency", default="1,4", help="daemon MAX_CONCURRENCY values (%(default)s)")
    p.add_argument("--connections", default="1,8,32", help="HTTP connections through the server (%(default)s)")
    p.add_argument("--direct-connections", default="1,8", help="connections to the daemon's own HTTP (%(default)s)")
    p.add_argument("--in-flight", default="1,32", help="pika RPC requests in flight (%(default)s)")
    p.add_argument("--rpc-reply", default="private", choices=("private", "direct"),
                   help="pika client replies: private exclusive queue (upstream) or direct reply-to")
    p.add_argument("--mb-point", default="4:1",
                   help="1 MiB point through the server as MC:CONNECTIONS, or 'none' (%(default)s)")
    p.add_argument("--max-requests-1mb", type=int, default=300, help="cap of the 1 MiB points (%(default)s)")
    p.add_argument("--cold-runs", type=int, default=None, help="cold starts per MC value (3; quick 1)")
    p.add_argument("--cold-requests", type=int, default=10, help="concurrent first requests (%(default)s)")
    p.add_argument("--cold-timeout", type=float, default=20.0, help="per cold request, seconds (%(default)s)")
    p.add_argument("--cold-fire", default="accept,connected",
                   help="when to fire: as the server's port accepts (accept), and/or once the server has logged "
                        "its broker connection (connected) (%(default)s)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--baseline-site", choices=("tuned", "default"), default="tuned")
    p.add_argument("--profile-seconds", type=int, default=None, help="per profiler (10; quick 4)")
    p.add_argument("--profilers", default="cpu-sampler,py-spy", help="cpu-sampler and/or py-spy (%(default)s)")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (%(default)s)")
    p.add_argument("--sampler-interval-us", type=int, default=500, help="cpu-sampler period of CPU time (%(default)s)")
    p.add_argument("--retries", type=int, default=2, help="measure a disturbed point again, up to this many times")
    p.add_argument("--disturbed-pct", type=float, default=10,
                   help="a point is disturbed when other processes took more than this %% of the machine")
    p.add_argument("--wait-idle", type=float, default=0, help="wait up to this many seconds for a calm machine")
    p.add_argument("--output", type=Path, default=None, help="JSON (default benchmarks/results/amqp-<timestamp>.json)")
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (2 if q else 5)
    args.cold_runs = args.cold_runs or (1 if q else 3)
    args.profile_seconds = args.profile_seconds or (4 if q else 10)
    args.sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if set(args.sections) - set(ALL_SECTIONS):
        p.error(f"unknown sections: {', '.join(sorted(set(args.sections) - set(ALL_SECTIONS)))}")
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    args.max_concurrency = ints(args.max_concurrency)
    args.connections = ints(args.connections)
    args.direct_connections = ints(args.direct_connections)
    args.in_flight = ints(args.in_flight)
    args.mb_point = None if args.mb_point == "none" else tuple(ints(args.mb_point.replace(":", ",")))
    args.profilers = [x.strip() for x in args.profilers.split(",") if x.strip()]
    args.cold_fire = [x.strip() for x in args.cold_fire.split(",") if x.strip()]
    if set(args.cold_fire) - {"accept", "connected"}:
        p.error("--cold-fire: accept and/or connected")
    return args


def payload_check_cost(body: bytes, repeats: int = 200) -> dict[str, Any]:
    """
    The daemon's check of every AMQP delivery (limit + one JSON parse), timed
    on C{body}: the median of C{repeats} runs, in µs, and the rate it allows.
    """
    from lambdarapid.invocation import InvocationType, check_payload

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check_payload(body, InvocationType.REQUEST_RESPONSE)
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return dict(bytes=len(body), median_us=median * 1e6, p99_us=times[int(len(times) * 0.99)] * 1e6,
                mb_per_s=len(body) / median / 1e6)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import pika

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output: Path = (args.output or RESULTS_DIR / f"amqp-{stamp}.json").resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-amqp-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    body_files = {}
    for name in ("small", "1mb"):
        body_files[name] = tmp / f"{name}.json"
        body_files[name].write_bytes(bd.make_payload(name))
    loadgen = bd.pick_loadgen(args.loadgen, tmp)
    client = RPCClient(args.amqp_uri, args.rpc_reply)
    broker = broker_pids()
    queues = Queues(args.amqp_uri)
    started = time.monotonic()
    results: dict[str, Any] = dict(meta=dict(
        timestamp=stamp, cpus=os.cpu_count(), python=platform.python_version(), versions=bd.versions(),
        pika=pika.__version__, git_commit=bd.git_commit(), loadgen=loadgen.describe(), rpc_client=client.describe(),
        broker=f"RabbitMQ beam.smp pid(s) {broker or 'not found (no brk µs)'}", baseline_site=args.baseline_site,
        duration_s=args.duration, sections=list(args.sections), max_concurrency=args.max_concurrency,
        connections=args.connections, in_flight=args.in_flight, clk_tck=CLK_TCK,
        daemon_command=" ".join(bd.daemon_command()), server_command=" ".join(server_command()),
    ))
    busy = bd.machine_busy()
    calm_by = time.monotonic() + args.wait_idle
    while busy > 15 and time.monotonic() < calm_by:
        log(f"machine {busy:.0f}% busy; waiting for it to calm down (--wait-idle)")
        time.sleep(4)
        busy = bd.machine_busy()
    results["meta"]["machine_busy_pct_before"] = busy
    results["meta"]["loadavg_before"] = os.getloadavg()
    log(f"load generator: {loadgen.describe()}; RPC client: {client.describe()}; logs in {logdir}")
    if busy > 15:
        log(f"warning: the machine is already {busy:.0f}% busy; figures will be disturbed")

    def keep(row: dict[str, Any], what: str) -> None:
        errs = row["errors"] or 0
        log(f"{what}: {row['rps']:.0f} req/s, p50 {fmt(row['p50_ms'])} ms, p99 {fmt(row['p99_ms'])} ms, errors {errs}")
        results["points"].append(row)

    measured = {"server", "direct", "rpc"} & set(args.sections)
    try:
        results["points"], results["rss_mb"] = [], {}
        if measured:
            baseline = bd.make_baseline(args.baseline_site, logdir)
            log(f"baseline: starting on port {baseline.port}")
            try:
                baseline.start()
                concurrencies = sorted(set(args.connections) | set(args.in_flight) | set(args.direct_connections))
                points = [("small", c) for c in concurrencies]
                if args.mb_point and "server" in args.sections:
                    points.append(("1mb", args.mb_point[1]))
                for payload, conns in points:
                    big = payload == "1mb"
                    keep(bd.least_disturbed(lambda: wrk_point(
                        loadgen, dict(baseline=baseline), baseline, [], body_files[payload], conns, args.duration,
                        args.max_requests_1mb if big else 0, max(20, 2 * conns) if big else max(300, 20 * conns),
                        dict(path="baseline", payload=payload)), args, f"baseline {payload} x{conns}"),
                        f"baseline {payload} x{conns}")
                results["rss_mb"]["baseline"] = bd.rss_mb(baseline.pid)
            finally:
                baseline.stop()

            for mc in args.max_concurrency:
                function = queues.new(f"throughput, MAX_CONCURRENCY={mc}")
                daemon = make_amqp_daemon(mc, logdir, args.amqp_uri, function)
                server = make_lambda_server(logdir, args.amqp_uri, function)
                log(f"daemon-mc{mc}: function {function}, HTTP port {daemon.port}; lambda-server port {server.port}")
                try:
                    daemon.start()
                    wait_for_log(daemon, b"consuming AMQP queue")
                    server.start()
                    bd.check_echo(server, bd.make_payload("small"))
                    parts = dict(daemon=daemon, server=server)
                    if "server" in args.sections:
                        points = [("small", c) for c in args.connections]
                        if args.mb_point and args.mb_point[0] == mc:
                            bd.check_echo(server, bd.make_payload("1mb"))
                            points.append(("1mb", args.mb_point[1]))
                        for payload, conns in points:
                            big = payload == "1mb"
                            what = f"via server mc{mc} {payload} x{conns}"
                            keep(bd.least_disturbed(lambda: wrk_point(
                                loadgen, parts, server, broker, body_files[payload], conns, args.duration,
                                args.max_requests_1mb if big else 0,
                                max(20, 2 * conns) if big else max(300, 20 * conns),
                                dict(path="server", max_concurrency=mc, payload=payload)), args, what), what)
                    if "direct" in args.sections:
                        for conns in args.direct_connections:
                            what = f"daemon HTTP mc{mc} small x{conns}"
                            keep(bd.least_disturbed(lambda: wrk_point(
                                loadgen, dict(daemon=daemon), daemon, [], body_files["small"], conns,
                                args.duration, 0, max(300, 20 * conns),
                                dict(path="direct", max_concurrency=mc, payload="small")), args, what), what)
                    if "rpc" in args.sections:
                        for n in args.in_flight:
                            what = f"pika RPC mc{mc} small x{n} in flight"
                            keep(bd.least_disturbed(lambda: rpc_point(
                                client, dict(daemon=daemon), broker, function, body_files["small"], n,
                                args.duration, dict(path="rpc", max_concurrency=mc, payload="small")),
                                args, what), what)
                    results["rss_mb"][f"daemon-mc{mc}"] = bd.rss_mb(daemon.pid)
                    results["rss_mb"][f"server-mc{mc}"] = bd.rss_mb(server.pid)
                finally:
                    server.stop()
                    daemon.stop()

        if "coldstart" in args.sections:
            results["coldstart"] = []
            for run in range(args.cold_runs):
                for fire in args.cold_fire:
                    for mc in args.max_concurrency:
                        try:
                            row = cold_start_run(logdir, args.amqp_uri, queues, mc, args.cold_requests,
                                                 args.cold_timeout, fire)
                        except Exception as error:  # one failed start must not end the run
                            row = dict(max_concurrency=mc, fire=fire, requests=args.cold_requests, lost=0,
                                       fired_ms=float("nan"), max_ms_from_fire=float("nan"), statuses={},
                                       invalid=f"{type(error).__name__}: {error}")
                        if row.get("invalid"):
                            log(f"cold start ({fire}) mc{mc} #{run + 1}: not counted: {row['invalid']}")
                            results["coldstart"].append(row)
                            continue
                        log(f"cold start ({fire}) mc{mc} #{run + 1}: lost {row['lost']}/{row['requests']} "
                            f"{row['statuses']}, fired {row['fired_ms']:.0f} ms after spawn, "
                            f"last answer {row['max_ms_from_fire']:.0f} ms later")
                        results["coldstart"].append(row)

        if "profile" in args.sections:
            results["profile"] = run_profile(args, loadgen, body_files, logdir, queues, broker, output)

        if "check" in args.sections:
            cost = payload_check_cost(body_files["1mb"].read_bytes())
            results["payload_check"] = cost
            log(f"request check on {cost['bytes']} bytes: median {cost['median_us']:.0f} µs, "
                f"p99 {cost['p99_us']:.0f} µs ({cost['mb_per_s']:.0f} MB/s), once per delivery")
    finally:
        left = queues.cleanup()
        results["meta"]["queues_left_behind"] = left
        if left:
            log(f"queues still there after the run (deleted now): {left}")
        results["meta"]["elapsed_s"] = time.monotonic() - started
        output.write_text(json.dumps(results, indent=2, default=str))
    print_report(results)
    print(f"\nfunction queues left behind: {len(left)}   JSON: {output}   ({results['meta']['elapsed_s']:.0f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_rpc":
        print("BENCH_JSON " + json.dumps(rpc_client_main(json.loads(sys.argv[2]))), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "_sampled_server":
        run_sampled_server(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main(sys.argv[1:]))
