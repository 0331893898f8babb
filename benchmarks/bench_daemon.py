#!/usr/bin/env python3
"""
Benchmark the lambda-rapid daemon against a bare twisted.web echo server.

One run starts, each in its own process and on free loopback ports:

  * the baseline: a bare twisted.web echo Resource (POST -> the same bytes);
  * the daemon (lambda-rapid + awslambdaric echo function) for each
    MAX_CONCURRENCY asked for (1 and 4 by default);

and measures each with the same client, so that every daemon figure can be
given as a ratio against the baseline:

  latency     sequential calls over one keep-alive connection (p50/p99)
  throughput  1, 8, 32 keep-alive connections, small and 1 MB payloads, with
              the server's own CPU per request read from /proc/<pid>/stat
              (the runtime processes' CPU reported apart)
  coldstart   process start -> first successful answer (median of N runs)
  validation  the Invoke API's JSON check of a 1 MB payload, timed in this
              process, as a share of the daemon's CPU per 1 MB invocation
  profile     (opt-in) py-spy on the daemon under load, grouped by module
  metrics     (opt-in) the daemon's CPU per invocation with METRICS_PORT set
              against unset, two daemons in the same run, measured in turn
  extensions  (opt-in) the daemon's CPU per invocation with one INVOKE-subscribed
              extension, and with one Telemetry subscriber, against none: three
              daemons in the same run, measured in turn

Throughput uses wrk (one thread) when it is installed, else a Python asyncio
load generator in its own process; the output says which. Results are printed
as tables and written as JSON (benchmarks/results/daemon-<timestamp>.json).

    python benchmarks/bench_daemon.py              # everything but profile, ~3 min
    python benchmarks/bench_daemon.py --quick      # ~1 min smoke run
    python benchmarks/bench_daemon.py --sections profile --profile-seconds 10
    python benchmarks/bench_daemon.py --sections metrics --metrics-rounds 5
    python benchmarks/bench_daemon.py --sections extensions
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO_DIR = ROOT / "examples" / "echo" / "python"
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
BASELINE_PATH = "/echo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SECTIONS = (
    "latency", "throughput", "coldstart", "validation", "profile", "metrics", "extensions",
)
#: The extension the extensions section runs: the tests' sample, in the AWS samples' shape.
SAMPLE_EXTENSION = ROOT / "tests" / "functions" / "extensions" / "sample.py"
DEFAULT_SECTIONS = ("latency", "throughput", "coldstart", "validation")


# --------------------------------------------------------------------------
# Payloads and a tiny blocking HTTP/1.1 client (probes, cold start, latency)
# --------------------------------------------------------------------------


def make_payload(name: str) -> bytes:
    """C{small}: the README's event; C{1mb}: a 1 MiB JSON object."""
    if name == "small":
        return b'{"hello":"world"}'
    if name == "1mb":
        size = 1 << 20
        prefix, suffix = b'{"data":"', b'"}'
        filler = (b"0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[
            : size - len(prefix) - len(suffix)
        ]
        return prefix + filler + suffix
    raise ValueError(f"unknown payload {name!r} (small, 1mb)")


def build_request(path: str, body: bytes, port: int) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HTTPError(Exception):
    pass


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HTTPError(f"bad status line {lines[0]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class BlockingClient:
    """One keep-alive connection; C{call()} sends a request and reads the answer."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(262144)
        if not chunk:
            raise HTTPError("connection closed by server")
        self.buf += chunk

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    def call(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(request)
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        status, headers = _parse_head(bytes(self.buf[:i]))
        del self.buf[: i + 4]
        if b"content-length" in headers:
            body = self._read_exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                parts.append(self._read_exactly(size))
                self._read_exactly(2)
            body = b"".join(parts)
        else:
            try:
                while True:
                    self._fill()
            except HTTPError:
                pass
            body, self.buf = bytes(self.buf), bytearray()
            self.close()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = max(0, min(len(sorted_values) - 1, int(round(pct / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


# --------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int, int, int, int] | None:
    """(utime, stime, cutime, cstime, starttime) in clock ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state): utime is field 14, starttime field 22.
    return int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14]), int(rest[19])


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        return found
    except OSError:
        pass
    for entry in os.listdir("/proc"):  # no CONFIG_PROC_CHILDREN: scan ppids
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
                if int(data[data.rindex(b")") + 2 :].split()[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class CPUSnapshot:
    own: int  # utime+stime of the server process only, ticks
    own_sys: int  # stime alone
    cutime: int  # cutime+cstime: children already waited for
    children: dict[tuple[int, int], int]  # (pid, starttime) -> utime+stime
    wall: float


def snapshot(pid: int) -> CPUSnapshot:
    stat = proc_stat(pid)
    if stat is None:
        raise RuntimeError(f"server process {pid} is gone")
    kids: dict[tuple[int, int], int] = {}
    for child in descendants(pid):
        cstat = proc_stat(child)
        if cstat is not None:
            kids[(child, cstat[4])] = cstat[0] + cstat[1]
    return CPUSnapshot(stat[0] + stat[1], stat[1], stat[2] + stat[3], kids, time.monotonic())


def cpu_delta(a: CPUSnapshot, b: CPUSnapshot) -> tuple[float, float, float]:
    """
    Seconds of CPU between two snapshots: (server process, of which in the
    kernel, its descendants).
    """
    own = (b.own - a.own) / CLK_TCK
    own_sys = (b.own_sys - a.own_sys) / CLK_TCK
    kids = sum(ticks - a.children.get(key, 0) for key, ticks in b.children.items())
    kids += b.cutime - a.cutime  # children that exited and were reaped meanwhile
    return own, own_sys, kids / CLK_TCK


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# Servers under test
# --------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are all free on 127.0.0.1."""
    for _ in range(500):
        base = random.randint(20000, 60000 - n)
        if all(port_is_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port block found")


@dataclass
class Server:
    name: str
    argv: list[str]
    path: str
    env: dict[str, str]
    cwd: Path
    logdir: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    known_children: set[int] = field(default_factory=set)

    def start(self, ready_payload: bytes = b'{"hello":"world"}', timeout: float = 60.0) -> dict[str, float]:
        """Spawn; return ms from spawn to listening and to the first 200 answer."""
        self.log_path = self.logdir / f"{self.name}-{self.port}.log"
        log = open(self.log_path, "ab")
        request = build_request(self.path, ready_payload, self.port)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        listening = None
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout}s; see {self.log_path}")
            client = BlockingClient(self.port, timeout=max(1.0, deadline - time.perf_counter()))
            try:
                client.connect()
            except OSError:
                time.sleep(0.002)
                continue
            if listening is None:
                listening = time.perf_counter()
            try:
                status, _ = client.call(request)
            except (OSError, HTTPError):
                time.sleep(0.002)
                continue
            finally:
                client.close()
            if status == 200:
                answered = time.perf_counter()
                break
            time.sleep(0.01)
        return {"listening_ms": (listening - t0) * 1000, "first_answer_ms": (answered - t0) * 1000}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def snapshot(self) -> CPUSnapshot:
        snap = snapshot(self.pid)
        self.known_children.update(pid for pid, _ in snap.children)
        return snap

    def settle(self, quiet: float = 0.15, limit: float = 15.0) -> None:
        """Wait until the server and its children have used no CPU for C{quiet} s."""
        end = time.monotonic() + limit
        last = self.snapshot()
        still_since = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.05)
            now = self.snapshot()
            if now.own != last.own or now.children != last.children:
                still_since = time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                return
            last = now

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.known_children.update(descendants(self.proc.pid))
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for child in self.known_children:  # only pids this server spawned
            stat = proc_stat(child)
            if stat is not None:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
        self.proc = None
        self.known_children = set()


def daemon_command() -> list[str]:
    script = Path(sys.executable).parent / "lambda-rapid"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from lambdarapid.scripts import rapid; rapid(sys.argv[1:])"]


def make_daemon(max_concurrency: int, logdir: Path, metrics: bool = False,
                label: str = "", extra_env: dict[str, str] | None = None) -> Server:
    port = free_port_block(1)
    runtime_port = free_port_block(max_concurrency)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "ENABLE_OPENFAAS"))}
    env.update(
        PORT=str(port),
        INVOKE_API_HOST=HOST,
        RUNTIME_API_HOST=HOST,
        RUNTIME_API_PORT=str(runtime_port),
        MAX_CONCURRENCY=str(max_concurrency),
        AWS_LAMBDA_FUNCTION_TIMEOUT="30",
        PRINT_REPORTS="false",
    )
    env.pop("METRICS_PORT", None)
    name = f"daemon-mc{max_concurrency}"
    if metrics:
        env["METRICS_PORT"] = str(free_port_block(1))
        name += "+metrics"
    env.setdefault("EXTENSIONS_DIR", "")
    env.update(extra_env or {})
    name += label
    argv = daemon_command() + [sys.executable, "-m", "awslambdaric", "echo.handler"]
    return Server(name, argv, INVOKE_PATH, env, ECHO_DIR, logdir, port)


def scrape_invocations(server: Server) -> float:
    """The daemon's lambdarapid_invocations_total over every label, from its /metrics."""
    port = int(server.env["METRICS_PORT"])
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    total = 0.0
    for line in data.split(b"\r\n\r\n", 1)[1].decode().splitlines():
        if line.startswith("lambdarapid_invocations_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def measure_metrics_overhead(args: argparse.Namespace, loadgen: Wrk | PyLoad, body_file: Path,
                             logdir: Path) -> dict[str, Any]:
    """
    The daemon's CPU per small invocation with METRICS_PORT unset and set:
    two daemons (MAX_CONCURRENCY as the first --max-concurrency) running at
    once, measured in turn (order swapped every round) at
    --metrics-connections, so that drifts of the machine fall on both. The
    figure is the ratio of the medians; a scrape after each round checks the
    metered daemon counted every invocation.
    """
    mc = args.max_concurrency[0]
    plain, metered = make_daemon(mc, logdir), make_daemon(mc, logdir, metrics=True)
    rows: dict[str, list[dict[str, Any]]] = {plain.name: [], metered.name: []}
    counted = []
    try:
        for server in (plain, metered):
            server.start()
        conns = args.metrics_connections
        for round_ in range(args.metrics_rounds):
            order = (plain, metered) if round_ % 2 == 0 else (metered, plain)
            for server in order:
                row = least_disturbed(lambda: measure_throughput(
                    server, loadgen, "small", body_file, conns, args.duration, max_requests=0,
                    warmup=max(300, 20 * conns)), args, f"{server.name}: small x{conns}")
                log(f"{server.name}: round {round_ + 1}: {fmt(row['server_cpu_us_per_req'], '.0f')} µs/req")
                rows[server.name].append(row)
            counted.append(scrape_invocations(metered))
    finally:
        plain.stop()
        metered.stop()

    def median_us(name: str) -> float | None:
        values = [r["server_cpu_us_per_req"] for r in rows[name] if r["server_cpu_us_per_req"]]
        return statistics.median(values) if values else None

    off, on = median_us(plain.name), median_us(metered.name)
    return dict(
        max_concurrency=mc, connections=args.metrics_connections, rounds=args.metrics_rounds,
        off_us_per_req=off, on_us_per_req=on,
        ratio=on / off if on and off else None,
        off_runs=[r["server_cpu_us_per_req"] for r in rows[plain.name]],
        on_runs=[r["server_cpu_us_per_req"] for r in rows[metered.name]],
        invocations_counted=counted,
        rows=rows,
    )


def extensions_dir(tmpdir: Path, name: str) -> Path:
    """A directory holding the sample extension under C{name}."""
    directory = tmpdir / f"extensions-{name}"
    directory.mkdir(exist_ok=True)
    shutil.copy(SAMPLE_EXTENSION, directory / name)
    (directory / name).chmod(0o755)
    return directory


def measure_extensions_overhead(args: argparse.Namespace, loadgen: Wrk | PyLoad, body_file: Path,
                                logdir: Path, tmpdir: Path) -> dict[str, Any]:
    """
    The daemon's CPU per small invocation with no extension, with one
    extension subscribed to INVOKE (it loops on next, printing nothing), and
    with one Telemetry subscriber (the same extension, subscribed to platform
    and function events, batches every 25 ms): three daemons (MAX_CONCURRENCY
    as the first --max-concurrency) running at once, measured in turn (the
    order rotated every round) at --metrics-connections, for
    --metrics-rounds rounds; each figure is a ratio of medians against none.
    The extensions' own CPU is the extension's, not the daemon's: it is not counted.
    """
    mc = args.max_concurrency[0]
    quiet = {"EXT_QUIET": "1"}
    daemons = [
        make_daemon(mc, logdir, label="-no-extension"),
        make_daemon(mc, logdir, label="-invoke-extension", extra_env={
            **quiet, "EXTENSIONS_DIR": str(extensions_dir(tmpdir, "invoke-extension")),
        }),
        make_daemon(mc, logdir, label="-telemetry-subscriber", extra_env={
            **quiet, "EXT_BEHAVIOUR": "telemetry", "EXT_TYPES": "platform,function",
            "EXTENSIONS_DIR": str(extensions_dir(tmpdir, "telemetry-extension")),
        }),
    ]
    rows: dict[str, list[dict[str, Any]]] = {d.name: [] for d in daemons}
    try:
        for server in daemons:
            server.start()
        conns = args.metrics_connections
        for round_ in range(args.metrics_rounds):
            shift = round_ % len(daemons)
            for server in daemons[shift:] + daemons[:shift]:
                row = least_disturbed(lambda: measure_throughput(
                    server, loadgen, "small", body_file, conns, args.duration, max_requests=0,
                    warmup=max(300, 20 * conns)), args, f"{server.name}: small x{conns}")
                log(f"{server.name}: round {round_ + 1}: {fmt(row['server_cpu_us_per_req'], '.0f')} µs/req, "
                    f"{fmt(row.get('rps'), '.0f')} req/s")
                rows[server.name].append(row)
    finally:
        for server in daemons:
            server.stop()

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in rows[name] if r.get(key)]
        return statistics.median(values) if values else None

    none = median(daemons[0].name, "server_cpu_us_per_req")
    figures = {}
    for server in daemons:
        us = median(server.name, "server_cpu_us_per_req")
        figures[server.name] = dict(
            us_per_req=us, ratio=us / none if us and none else None,
            rps=median(server.name, "rps"),
            runs=[r["server_cpu_us_per_req"] for r in rows[server.name]],
        )
    return dict(max_concurrency=mc, connections=args.metrics_connections,
                rounds=args.metrics_rounds, figures=figures, rows=rows)


def make_baseline(site: str, logdir: Path) -> Server:
    port = free_port_block(1)
    argv = [sys.executable, str(Path(__file__).resolve()), "_baseline", str(port), site]
    return Server("baseline", argv, BASELINE_PATH, dict(os.environ), HERE, logdir, port)


def serve_baseline(port: int, site_kind: str) -> None:
    """The baseline process: a bare twisted.web echo Resource."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    class Echo(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return request.content.read()

    if site_kind == "tuned":
        # As the daemon's QuietSite: no form parsing, no access log, no timeout.
        class TunedSite(server.Site):
            noisy = False

            def log(self, request: Any) -> None:
                pass

        site: server.Site = TunedSite(Echo(), parsePOSTFormSubmission=False)
        site.timeOut = None
    else:
        site = server.Site(Echo())
    reactor.listenTCP(port, site, interface=HOST)  # type: ignore[attr-defined,arg-type]
    reactor.run()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------

WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(%(body)q, "rb"))
wrk.body = f:read("*a")
f:close()
local cap = %(cap)d
if cap > 0 then
  local count = 0
  function response(status, headers, body)
    count = count + 1
    if count == cap then
      io.write("BENCH_CAP\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,' ..
    '"max_us":%%.1f,"mean_us":%%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    loadgen_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _run_capturing(cmd: list[str], hard_timeout: float, on_line: Callable[[str, subprocess.Popen], None]) -> tuple[list[str], float]:
    """Run C{cmd}, feed its output lines to C{on_line}; return (lines, CPU seconds it used)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    killer = threading.Timer(hard_timeout, proc.kill)
    killer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            on_line(line, proc)
    finally:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        killer.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{''.join(lines)[-2000:]}")
    return lines, usage.ru_utime + usage.ru_stime


class Wrk:
    name = "wrk"

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self.binary = shutil.which("wrk") or "wrk"
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        self.version = (out.stdout or out.stderr).splitlines()[0].strip()
        self._scripts: dict[tuple[Path, int], Path] = {}

    def describe(self) -> str:
        return f"{self.version} (1 thread, Lua POST body)"

    def _script(self, body_file: Path, cap: int) -> Path:
        key = (body_file, cap)
        if key not in self._scripts:
            path = self.tmpdir / f"wrk-{body_file.stem}-{cap}.lua"
            # %q of Lua is not Python's; quote the path ourselves.
            lua = WRK_LUA.replace("%(body)q", json.dumps(str(body_file))) % {"cap": cap}
            path.write_text(lua)
            self._scripts[key] = path
        return self._scripts[key]

    def run(self, port: int, path: str, body_file: Path, connections: int, duration: int,
            max_requests: int = 0, timeout: int = 30) -> LoadResult:
        url = f"http://{HOST}:{port}{path}"
        cmd = [self.binary, "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s",
               f"--timeout={timeout}s", "-s", str(self._script(body_file, max_requests)), url]
        stopper: list[threading.Thread] = []

        def on_line(line: str, proc: subprocess.Popen) -> None:
            if line.startswith("BENCH_CAP") and not stopper:
                # wrk sleeps for its whole duration; SIGINT ends the sleep.
                # Repeat it: a SIGINT before wrk installs its handler is ignored.
                def nudge() -> None:
                    while proc.poll() is None:
                        try:
                            proc.send_signal(signal.SIGINT)
                        except OSError:
                            return
                        time.sleep(0.1)
                stopper.append(threading.Thread(target=nudge, daemon=True))
                stopper[0].start()

        lines, cpu = _run_capturing(cmd, duration + 60, on_line)
        found = [line for line in lines if line.startswith("BENCH_JSON ")]
        if not found:
            raise RuntimeError("wrk printed no result:\n" + "".join(lines)[-2000:])
        d = json.loads(found[-1][len("BENCH_JSON "):])
        return LoadResult(
            requests=d["requests"], duration_s=d["duration_us"] / 1e6,
            p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000, p99_ms=d["p99_us"] / 1000,
            max_ms=d["max_us"] / 1000,
            errors={k: d[k] for k in ("connect", "read", "write", "status", "timeout") if d[k]},
            loadgen_cpu_s=cpu,
        )


class PyLoad:
    """Fallback: asyncio, raw HTTP/1.1 keep-alive, in its own process."""

    name = "python"
    version = f"asyncio load generator, Python {platform.python_version()}"

    def describe(self) -> str:
        return self.version + " (one process, raw HTTP/1.1 keep-alive)"

    def run(self, port: int, path: str, body_file: Path, connections: int, duration: int,
            max_requests: int = 0, timeout: int = 30) -> LoadResult:
        config = dict(port=port, path=path, body=str(body_file), connections=connections,
                      duration=duration, max_requests=max_requests, timeout=timeout)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_loadgen", json.dumps(config)]
        lines, cpu = _run_capturing(cmd, duration + 60, lambda line, proc: None)
        found = [line for line in lines if line.startswith("BENCH_JSON ")]
        if not found:
            raise RuntimeError("load generator printed no result:\n" + "".join(lines)[-2000:])
        d = json.loads(found[-1][len("BENCH_JSON "):])
        return LoadResult(d["requests"], d["duration_s"], d["p50_ms"], d["p90_ms"], d["p99_ms"],
                          d["max_ms"], d["errors"], cpu)


async def _loadgen_main(config: dict[str, Any]) -> dict[str, Any]:
    body = Path(config["body"]).read_bytes()
    request = build_request(config["path"], body, config["port"])
    duration, cap, timeout = config["duration"], config["max_requests"], config["timeout"]
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    done = asyncio.Event()
    start = time.perf_counter()
    deadline = start + duration

    async def read_answer(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = _parse_head(head[:-4])
        if b"content-length" in headers:
            await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            raise HTTPError("no content-length")
        return status

    async def worker() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not done.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, config["port"], limit=1 << 22)
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assert reader is not None
                t0 = time.perf_counter_ns()
                writer.write(request)
                status = await asyncio.wait_for(read_answer(reader), timeout)
                latencies.append(time.perf_counter_ns() - t0)
                if status >= 400:
                    errors["status"] += 1
            except asyncio.TimeoutError:
                errors["timeout"] += 1
                writer = None
            except (OSError, HTTPError, asyncio.IncompleteReadError, ValueError):
                errors["read"] += 1
                writer = None
            if (cap and len(latencies) >= cap) or time.perf_counter() >= deadline:
                done.set()
        if writer is not None:
            writer.close()

    tasks = [asyncio.ensure_future(worker()) for _ in range(config["connections"])]
    try:
        await asyncio.wait_for(done.wait(), duration + 1)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    values = sorted(v / 1e6 for v in latencies)
    return dict(requests=len(values), duration_s=elapsed, p50_ms=percentile(values, 50),
                p90_ms=percentile(values, 90), p99_ms=percentile(values, 99),
                max_ms=values[-1] if values else float("nan"), errors=dict(errors))


def pick_loadgen(kind: str, tmpdir: Path) -> Wrk | PyLoad:
    if kind in ("auto", "wrk") and shutil.which("wrk"):
        return Wrk(tmpdir)
    if kind == "wrk":
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --loadgen python")
    return PyLoad()


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def check_echo(server: Server, payload: bytes) -> None:
    client = BlockingClient(server.port)
    try:
        status, body = client.call(build_request(server.path, payload, server.port))
    finally:
        client.close()
    if status != 200 or json.loads(body) != json.loads(payload):
        raise RuntimeError(f"{server.name}: bad echo ({status}): {body[:200]!r}")


def measure_latency(server: Server, calls: int, warmup: int) -> dict[str, Any]:
    request = build_request(server.path, make_payload("small"), server.port)
    client = BlockingClient(server.port)
    samples: list[float] = []
    errors = 0
    try:
        for _ in range(warmup):
            client.call(request)
        before, sys_before, me_before = server.snapshot(), system_cpu(), os.times()
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            status, _ = client.call(request)
            elapsed = time.perf_counter_ns() - t0
            if status != 200:
                errors += 1
            samples.append(elapsed / 1e6)
        sys_after, after, me_after = system_cpu(), server.snapshot(), os.times()
    finally:
        client.close()
    own, _, kids = cpu_delta(before, after)
    me = (me_after.user - me_before.user) + (me_after.system - me_before.system)
    machine_s = (sys_after[1] - sys_before[1]) / CLK_TCK
    busy_s = (sys_after[0] - sys_before[0]) / CLK_TCK
    values = sorted(samples)
    return dict(server=server.name, calls=calls, p50_ms=percentile(values, 50),
                p90_ms=percentile(values, 90), p99_ms=percentile(values, 99),
                max_ms=values[-1], mean_ms=statistics.fmean(values), errors=errors,
                server_cpu_us_per_req=own / calls * 1e6, children_cpu_us_per_req=kids / calls * 1e6,
                foreign_busy_pct=100 * max(0.0, busy_s - own - kids - me) / max(machine_s, 1e-9))


def least_disturbed(measure: Callable[[], dict[str, Any]], args: argparse.Namespace, what: str) -> dict[str, Any]:
    """
    C{measure()}, again (up to --retries times) while other processes took more
    than --disturbed-pct of the machine meanwhile; the least disturbed attempt.
    """
    attempts = [measure()]
    while attempts[-1]["foreign_busy_pct"] > args.disturbed_pct and len(attempts) <= args.retries:
        log(f"{what}: other processes took {attempts[-1]['foreign_busy_pct']:.0f}% of the machine; again")
        time.sleep(1)
        attempts.append(measure())
    best = min(attempts, key=lambda row: row["foreign_busy_pct"])
    best["attempts"] = len(attempts)
    return best


def measure_throughput(server: Server, loadgen: Wrk | PyLoad, payload: str, body_file: Path,
                       connections: int, duration: int, max_requests: int, warmup: int) -> dict[str, Any]:
    # Warm up at this concurrency (spawns every runtime it needs), then wait
    # for the server to go quiet so nothing from the warm-up is counted.
    loadgen.run(server.port, server.path, body_file, connections, duration=10, max_requests=warmup)
    server.settle()
    before, sys_before = server.snapshot(), system_cpu()
    result = loadgen.run(server.port, server.path, body_file, connections, duration, max_requests)
    sys_after, at_end = system_cpu(), server.snapshot()
    # CPU used meanwhile by anything but the server, its runtimes and the load
    # generator (other users of the machine), as a percent of the machine.
    window_own, _, window_kids = cpu_delta(before, at_end)
    machine_s = (sys_after[1] - sys_before[1]) / CLK_TCK
    busy_s = (sys_after[0] - sys_before[0]) / CLK_TCK
    foreign_pct = 100 * max(0.0, busy_s - window_own - window_kids - result.loadgen_cpu_s) / max(machine_s, 1e-9)
    # Requests still in flight when the load generator stopped are finished by
    # the server after it: count their CPU and them (one per connection).
    server.settle()
    after = server.snapshot()
    own, own_sys, kids = cpu_delta(before, after)
    started = result.requests + connections
    return dict(
        server=server.name, payload=payload, connections=connections,
        requests=result.requests, duration_s=result.duration_s, rps=result.rps,
        p50_ms=result.p50_ms, p90_ms=result.p90_ms, p99_ms=result.p99_ms, max_ms=result.max_ms,
        errors=result.errors,
        server_cpu_s=own, server_sys_pct=100 * own_sys / own if own else None, children_cpu_s=kids,
        server_cpu_us_per_req=own / started * 1e6 if result.requests else None,
        children_cpu_us_per_req=kids / started * 1e6 if result.requests else None,
        loadgen_cpu_us_per_req=result.loadgen_cpu_s / result.requests * 1e6 if result.requests else None,
        system_busy_pct=100 * busy_s / max(machine_s, 1e-9),
        foreign_busy_pct=foreign_pct,
        runtimes=len(after.children),
    )


def measure_validation(repeats: int) -> dict[str, Any]:
    """
    What the Invoke API's payload check (C{invocation.check_payload}: orjson,
    once per invocation) costs on the 1 MiB payload, timed in this process,
    next to the stdlib's json.loads and one copy of the same bytes (the least
    any handling of a body costs). Its share of the daemon's CPU per 1 MiB
    invocation is computed from the throughput section of the same run.
    """
    sys.path.insert(0, str(ROOT))
    from lambdarapid.invocation import InvocationType, check_payload

    payload = make_payload("1mb")

    def median_us(call: Callable[[], object]) -> float:
        for _ in range(max(3, repeats // 10)):
            call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    return dict(
        payload_bytes=len(payload), repeats=repeats,
        check_payload_us=median_us(lambda: check_payload(payload, InvocationType.REQUEST_RESPONSE)),
        json_loads_us=median_us(lambda: json.loads(payload)),
        copy_us=median_us(lambda: bytearray(payload)),
    )


def measure_coldstart(factory: Callable[[], Server], runs: int) -> dict[str, Any]:
    results = []
    name = None
    for _ in range(runs):
        server = factory()
        name = server.name
        try:
            results.append(server.start())
        finally:
            server.stop()
    return dict(
        server=name, runs=results,
        median_listening_ms=statistics.median(r["listening_ms"] for r in results),
        median_first_answer_ms=statistics.median(r["first_answer_ms"] for r in results),
    )


# --------------------------------------------------------------------------
# Profiles and their grouping
# --------------------------------------------------------------------------
#
# Two profilers, because they answer different questions:
#
#  * py-spy (outside the process, wall clock): a sample is kept when the
#    daemon's thread is runnable. On 2 busy cores a runnable thread is often
#    waiting for a CPU, typically right after a send() that woke the reader,
#    so py-spy over-weights socket writes.
#  * an in-process CPU-time sampler (setitimer(ITIMER_PROF)): a sample every
#    N µs of the daemon's own CPU time (user + kernel), so the shares are
#    shares of the µs per invocation that /proc reports.


def _is(f: str, *suffixes: str) -> bool:
    return f.endswith(suffixes)


SYSCALL_LEAVES = ("untilConcludes", "Connection.writeSomeData", "Connection.doRead", "EPollReactor.doPoll",
                  "ProcessReader.doRead", "readFromFD", "writeToFD", "ProcessWriter.writeSomeData")

# (group, test on the whole stack), tried first: costs that belong to one
# step whatever the leaf (a getsockname() inside Request.__init__ is the cost
# of creating a Request).
STACK_GROUPS: list[tuple[str, Callable[[list[tuple[str, str]]], bool]]] = [
    ("twisted.web Request creation (Request.__init__: Headers, getHost/getPeer)",
     lambda frames: any(fn == "Request.__init__" and "twisted/web/" in f for fn, f in frames)),
    ("twisted.web Date header (datetimeToString)", lambda frames: any("datetimeToString" in fn for fn, _ in frames)),
]

# (group, test(function, file)), first match wins; applied to the leaf frame
# of each sample: where the time itself was spent.
SELF_GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("syscalls: socket send/recv, pipes, epoll", lambda fn, f: fn in SYSCALL_LEAVES),
    ("Klein routing/wrapping (klein, werkzeug)", lambda fn, f: "klein/" in f or "werkzeug/" in f),
    ("twisted.web headers (http_headers.py)", lambda fn, f: _is(f, "twisted/web/http_headers.py")),
    ("twisted.web response writing (Request/HTTPChannel write, finish)",
     lambda fn, f: _is(f, "twisted/web/http.py") and any(
         k in fn for k in ("write", "Write", "finish", "requestDone", "_cleanup", "setResponseCode", "setHeader"))),
    ("twisted.web request parsing (HTTPChannel, LineReceiver, URI)",
     lambda fn, f: _is(f, "twisted/protocols/basic.py", "urllib/parse.py") or (_is(f, "twisted/web/http.py") and (
         "Channel" in fn or "Decoder" in fn or fn.startswith(("_parse", "parse"))
         or fn.startswith("Request.")))),
    ("twisted.web Site/Resource (server.py, resource.py)",
     lambda fn, f: _is(f, "twisted/web/server.py", "twisted/web/resource.py")),
    ("twisted.web other", lambda fn, f: "twisted/web/" in f),
    ("Deferreds", lambda fn, f: _is(f, "twisted/internet/defer.py")),
    ("reactor: epoll register/unregister per write (start/stopWriting)",
     lambda fn, f: fn in ("EPollReactor._add", "EPollReactor._remove", "EPollReactor.addWriter",
                          "EPollReactor.removeWriter", "FileDescriptor.startWriting", "FileDescriptor.stopWriting")),
    ("reactor: log context per event (callWithLogger, callWithContext)",
     lambda fn, f: fn in ("callWithLogger", "callWithContext") or _is(f, "twisted/python/context.py")),
    ("reactor + transports other (twisted.internet)", lambda fn, f: "twisted/internet/" in f),
    ("logging (twisted.logger, log.msg)", lambda fn, f: "twisted/logger/" in f or _is(f, "twisted/python/log.py")),
    ("Failure objects", lambda fn, f: _is(f, "twisted/python/failure.py")),
    ("twisted.python other", lambda fn, f: "twisted/python/" in f),
    ("lambdarapid/ (our code)", lambda fn, f: "lambdarapid/" in f),
    ("zope.interface", lambda fn, f: "zope/interface" in f),
    ("uuid", lambda fn, f: _is(f, "uuid.py")),
    ("json", lambda fn, f: "json/" in f),
    ("email/cgi (form parsing)", lambda fn, f: "email/" in f or _is(f, "cgi.py")),
    ("enum/dataclasses/typing/attrs", lambda fn, f: _is(f, "enum.py", "dataclasses.py", "typing.py")
     or "attr" in f or fn.startswith("__create_fn__")),
    ("other", lambda fn, f: True),
]


# Inclusive: share of samples with a matching frame anywhere in the stack.
INCLUSIVE_GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("Request.process (route + handler + render), all three exchanges", lambda fn, f: fn == "Request.process"),
    ("Klein (routing, handler wrapping, error handling)", lambda fn, f: "klein/" in f or "werkzeug/" in f),
    ("Invoke API handler (lambdarapid/invoke_api.py)", lambda fn, f: "lambdarapid/invoke_api.py" in f),
    ("Runtime API handlers (lambdarapid/runtime_api.py)", lambda fn, f: "lambdarapid/runtime_api.py" in f),
    ("lambdarapid/pool.py", lambda fn, f: "lambdarapid/pool.py" in f),
    ("lambdarapid/environment.py", lambda fn, f: "lambdarapid/environment.py" in f),
    ("lambdarapid/invocation.py", lambda fn, f: "lambdarapid/invocation.py" in f),
    ("request line + header parsing (lineReceived/headerReceived/allHeadersReceived)",
     lambda fn, f: _is(f, "twisted/web/http.py") and any(
         k in fn for k in ("lineReceived", "headerReceived", "allHeadersReceived"))),
    ("response headers + body out (Request.write/finish)",
     lambda fn, f: _is(f, "twisted/web/http.py") and fn in ("Request.write", "Request.finish")),
    ("socket writes (FileDescriptor.doWrite / writeSomeData)",
     lambda fn, f: fn in ("FileDescriptor.doWrite", "Connection.writeSomeData")),
    ("runtime stdout/stderr pipes (ProcessReader)", lambda fn, f: fn.startswith("ProcessReader")),
    ("Deferred machinery", lambda fn, f: _is(f, "twisted/internet/defer.py")),
    ("Failure objects", lambda fn, f: _is(f, "twisted/python/failure.py")),
    ("logging (twisted.logger, log.msg)", lambda fn, f: "twisted/logger/" in f or (
        _is(f, "twisted/python/log.py") and fn not in ("callWithLogger", "callWithContext"))),
    ("uuid", lambda fn, f: _is(f, "uuid.py")),
    ("json", lambda fn, f: "json/" in f),
    ("Date header (datetimeToString)", lambda fn, f: "datetimeToString" in fn),
    ("callLater / DelayedCall (timeouts)", lambda fn, f: "callLater" in fn or "DelayedCall" in fn),
]


def parse_frame(frame: str) -> tuple[str, str]:
    """'func (path/file.py:12)' -> ('func', 'path/file.py')."""
    if frame.endswith(")") and " (" in frame:
        name, _, where = frame[:-1].rpartition(" (")
        return name, short_path(where.rsplit(":", 1)[0])
    return frame, ""


def short_path(path: str) -> str:
    """Paths as py-spy prints them: relative to site-packages or the stdlib."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/lib/python3." in path:
        tail = path.split("/lib/python3.", 1)[1]
        return tail.split("/", 1)[1] if "/" in tail else tail
    if "/lambdarapid/" in path:
        return "lambdarapid/" + path.split("/lambdarapid/", 1)[1]
    return path


def summarize_profile(
    raw_path: Path,
    us_per_inv: float | None,
    stack_groups: list[tuple[str, Callable[[list[tuple[str, str]]], bool]]] | None = None,
    self_groups: list[tuple[str, Callable[[str, str], bool]]] | None = None,
    inclusive_groups: list[tuple[str, Callable[[str, str], bool]]] | None = None,
) -> dict[str, Any]:
    """Folded stacks grouped (by default with the daemon's groups above)."""
    stack_groups = STACK_GROUPS if stack_groups is None else stack_groups
    self_groups = SELF_GROUPS if self_groups is None else self_groups
    inclusive_groups = INCLUSIVE_GROUPS if inclusive_groups is None else inclusive_groups
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in raw_path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            stacks.append(([parse_frame(fr) for fr in stack.split(";")], int(number)))
    total = sum(c for _, c in stacks) or 1
    by_group: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        fn, f = frames[-1]
        group = next((g for g, stack_test in stack_groups if stack_test(frames)), None)
        if group is None:
            group = next(g for g, test in self_groups if test(fn, f))
        by_group[group] += count
        by_func[f"{fn} ({f})"] += count
        for fn2, f2 in reversed(frames):  # innermost frame of ours: who asked for the time
            if f2.startswith("lambdarapid/") and fn2 not in ("run", "rapid", "server"):
                by_ours[f"{fn2} ({f2})"] += count
                break
        for group, test in inclusive_groups:
            if any(test(a, b) for a, b in frames):
                inclusive[group] += count

    def rows(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [dict(name=k, samples=v, pct=100 * v / total,
                     us_per_inv=(us_per_inv * v / total if us_per_inv else None))
                for k, v in counter.most_common(n)]

    return dict(samples=total, self_by_group=rows(by_group, 40), self_by_function=rows(by_func, 40),
                inclusive=rows(inclusive, 40), innermost_lambdarapid_frame=rows(by_ours, 25))


def run_sampled_daemon(out_path: str, interval_us: int, argv: list[str]) -> None:
    """
    The daemon, with a CPU-time stack sampler: SIGUSR1 starts sampling (every
    C{interval_us} of process CPU time), SIGUSR2 stops and writes folded stacks.
    """
    install_cpu_sampler(out_path, interval_us)
    from lambdarapid.scripts import rapid

    rapid(argv)


def install_cpu_sampler(out_path: str, interval_us: int) -> None:
    """
    In this process: SIGUSR1 starts sampling the stack every C{interval_us} of
    process CPU time (ITIMER_PROF), SIGUSR2 stops and writes folded stacks.
    """
    counts: Counter[tuple[tuple[Any, int], ...]] = Counter()

    def sample(signum: int, frame: Any) -> None:
        stack = []
        while frame is not None:
            stack.append((frame.f_code, frame.f_lineno))
            frame = frame.f_back
        counts[tuple(stack)] += 1

    def start(signum: int, frame: Any) -> None:
        counts.clear()
        signal.setitimer(signal.ITIMER_PROF, interval_us / 1e6, interval_us / 1e6)

    def stop(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        lines = []
        for stack, n in counts.items():
            names = [f"{getattr(c, 'co_qualname', c.co_name)} ({c.co_filename}:{line})" for c, line in reversed(stack)]
            lines.append(";".join(names) + f" {n}\n")
        Path(out_path + ".tmp").write_text("".join(lines))
        os.replace(out_path + ".tmp", out_path)

    signal.signal(signal.SIGPROF, sample)
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def run_profile(args: argparse.Namespace, loadgen: Wrk | PyLoad, body_files: dict[str, Path],
                logdir: Path, out_base: Path) -> dict[str, Any]:
    """Both profilers on MAX_CONCURRENCY=4, 8 connections, small payload."""
    report: dict[str, Any] = {}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds = args.profile_seconds
    for kind in args.profilers:
        if kind == "py-spy" and not Path(pyspy).exists():
            log("profile: py-spy not found (pip install py-spy); skipped")
            report[kind] = dict(skipped="py-spy not installed")
            continue
        raw = out_base.with_name(f"{out_base.stem}-profile-{kind}.txt")
        raw.unlink(missing_ok=True)
        daemon = make_daemon(4, logdir)
        if kind == "cpu-sampler":
            cmd = daemon.argv[len(daemon_command()):]
            daemon.argv = [sys.executable, str(Path(__file__).resolve()), "_sampled_daemon", str(raw),
                           str(args.sampler_interval_us), *cmd]
        try:
            daemon.start()
            body = body_files[args.profile_payload]
            loadgen.run(daemon.port, daemon.path, body, 8, duration=10,
                        max_requests=3000 if args.profile_payload == "small" else 50)
            daemon.settle()
            before, sys_before = daemon.snapshot(), system_cpu()
            holder: dict[str, LoadResult] = {}
            load = threading.Thread(target=lambda: holder.update(r=loadgen.run(
                daemon.port, daemon.path, body, 8, seconds + 2)))
            load.start()
            time.sleep(1)
            log(f"profile: {kind} for {seconds} s on pid {daemon.pid}")
            if kind == "py-spy":
                subprocess.run([pyspy, "record", "-p", str(daemon.pid), "-d", str(seconds), "-r",
                                str(args.profile_rate), "--nonblocking", "-f", "raw", "-o", str(raw)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            else:
                os.kill(daemon.pid, signal.SIGUSR1)
                time.sleep(seconds)
                os.kill(daemon.pid, signal.SIGUSR2)
                for _ in range(100):
                    if raw.exists():
                        break
                    time.sleep(0.05)
            load.join()
            sys_after, at_end = system_cpu(), daemon.snapshot()
            daemon.settle()
            own, own_sys, kids = cpu_delta(before, daemon.snapshot())
            result = holder["r"]
            w_own, _, w_kids = cpu_delta(before, at_end)
            machine_s = (sys_after[1] - sys_before[1]) / CLK_TCK
            busy_s = (sys_after[0] - sys_before[0]) / CLK_TCK
            foreign = 100 * max(0.0, busy_s - w_own - w_kids - result.loadgen_cpu_s) / max(machine_s, 1e-9)
            started = result.requests + 8
            us = own / started * 1e6
            if not raw.exists():
                log(f"profile: {kind} wrote no stacks; see {daemon.log_path}")
                report[kind] = dict(skipped=f"no stacks written; see {daemon.log_path}")
                continue
            summary = summarize_profile(raw, us)
            summary.update(raw_file=str(raw), rps=result.rps, daemon_cpu_us_per_inv=us,
                           daemon_sys_pct=100 * own_sys / own if own else None,
                           runtimes_cpu_us_per_inv=kids / started * 1e6, foreign_busy_pct=foreign)
            summary["payload"] = args.profile_payload
            report[kind] = summary
        finally:
            daemon.stop()
    report["note"] = ("py-spy: --nonblocking, wall-clock samples of a runnable thread (idle epoll waits "
                      "excluded); cpu-sampler: setitimer(ITIMER_PROF) every "
                      f"{args.sampler_interval_us} µs of daemon CPU. us_per_inv = share of samples x the daemon "
                      "CPU per invocation measured from /proc during the same run.")
    return report


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def print_report(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print()
    print(f"lambda-rapid benchmark  {meta['timestamp']}  {meta['cpus']} CPUs  Python {meta['python']}  "
          f"Twisted {meta['versions'].get('twisted')}  commit {meta['git_commit']}")
    print(f"load generator: {meta['loadgen']}")
    print(f"machine busy before the run: {meta['machine_busy_pct_before']:.0f}% "
          f"(loadavg {' '.join(f'{x:.2f}' for x in meta['loadavg_before'])})")
    print(f"baseline: bare twisted.web echo Resource, {meta['baseline_site']} Site, one HTTP exchange per request;")
    print("daemon: lambda-rapid + awslambdaric echo.handler, three HTTP exchanges per invocation")

    if results.get("latency"):
        base = next((r for r in results["latency"] if r["server"] == "baseline"), None)
        print(f"\nSequential latency, small payload, one keep-alive connection, blocking client "
              f"({results['latency'][0]['calls']} calls)")
        print(f"{'server':<13}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p50 ×base':>11}{'p99 ×base':>11}"
              f"{'srv µs':>8}{'rt µs':>7}{'oth%':>6}{'errors':>8}")
        for r in results["latency"]:
            print(f"{r['server']:<13}{fmt(r['p50_ms'], '.3f'):>9}{fmt(r['p90_ms'], '.3f'):>9}{fmt(r['p99_ms'], '.3f'):>9}"
                  f"{fmt(r['max_ms'], '.2f'):>9}{fmt(ratio(r['p50_ms'], base and base['p50_ms'])):>11}"
                  f"{fmt(ratio(r['p99_ms'], base and base['p99_ms'])):>11}{fmt(r['server_cpu_us_per_req'], '.0f'):>8}"
                  f"{fmt(r['children_cpu_us_per_req'], '.0f') if r['server'] != 'baseline' else '-':>7}"
                  f"{fmt(r['foreign_busy_pct'], '.0f'):>6}{r['errors']:>8}")

    if results.get("throughput"):
        rows = results["throughput"]
        base = {(r["payload"], r["connections"]): r for r in rows if r["server"] == "baseline"}
        print(f"\nThroughput (keep-alive; {meta['duration_s']} s per point, 1 MB points capped at "
              f"{meta['max_requests_1mb']} requests); CPU from /proc/<pid>/stat per request")
        print("  srv µs = server process only (daemon, or the baseline server); rt µs = runtime children (daemon)")
        head = (f"{'server':<13}{'payload':>8}{'conns':>6}{'req/s':>9}{'×base':>7}{'p50 ms':>9}{'p99 ms':>9}"
                f"{'srv µs':>8}{'×base':>7}{'sys%':>5}{'rt µs':>8}{'rt':>3}{'lg µs':>7}{'cpu%':>6}  errors")
        print(head)
        for r in rows:
            b = base.get((r["payload"], r["connections"]))
            errs = ",".join(f"{k}={v}" for k, v in r["errors"].items()) or "0"
            print(f"{r['server']:<13}{r['payload']:>8}{r['connections']:>6}{fmt(r['rps'], '.0f'):>9}"
                  f"{fmt(ratio(r['rps'], b and b['rps'])):>7}{fmt(r['p50_ms']):>9}{fmt(r['p99_ms']):>9}"
                  f"{fmt(r['server_cpu_us_per_req'], '.0f'):>8}"
                  f"{fmt(ratio(r['server_cpu_us_per_req'], b and b['server_cpu_us_per_req'])):>7}"
                  f"{fmt(r['server_sys_pct'], '.0f'):>5}"
                  f"{fmt(r['children_cpu_us_per_req'], '.0f') if r['server'] != 'baseline' else '-':>8}"
                  f"{r['runtimes'] if r['server'] != 'baseline' else '-':>3}"
                  f"{fmt(r['loadgen_cpu_us_per_req'], '.0f'):>7}{fmt(r['system_busy_pct'], '.0f'):>6}"
                  f"{fmt(r['foreign_busy_pct'], '.0f'):>6}  {errs}")
        print("  ×base: req/s and srv µs over the baseline's at the same payload and connections;"
              " sys% = share of srv µs spent in the kernel;\n"
              "  rt = runtime processes; lg µs = load generator CPU per request; cpu% = whole machine busy (100 = all cores);\n"
              "  oth% = machine share used by other processes meanwhile (high = disturbed point)")

    if results.get("coldstart"):
        base = next((r for r in results["coldstart"] if r["server"] == "baseline"), None)
        print(f"\nCold start: process start -> listening / first 200 answer (median of {len(results['coldstart'][0]['runs'])})")
        print(f"{'server':<13}{'listen ms':>11}{'answer ms':>11}{'×base':>7}   runs (answer ms)")
        for r in results["coldstart"]:
            runs = " ".join(f"{x['first_answer_ms']:.0f}" for x in r["runs"])
            print(f"{r['server']:<13}{fmt(r['median_listening_ms'], '.0f'):>11}{fmt(r['median_first_answer_ms'], '.0f'):>11}"
                  f"{fmt(ratio(r['median_first_answer_ms'], base and base['median_first_answer_ms'])):>7}   {runs}")

    if results.get("metrics"):
        m = results["metrics"]
        print(f"\nMetrics overhead: daemon CPU per small invocation, MAX_CONCURRENCY={m['max_concurrency']},"
              f" {m['connections']} connections, median of {m['rounds']} rounds")
        print(f"  METRICS_PORT unset {fmt(m['off_us_per_req'], '.0f')} µs, set {fmt(m['on_us_per_req'], '.0f')} µs:"
              f" ratio {fmt(m['ratio'], '.3f')} (target < 1.05)")
        print(f"  runs unset {' '.join(fmt(x, '.0f') for x in m['off_runs'])};"
              f" set {' '.join(fmt(x, '.0f') for x in m['on_runs'])}")

    if results.get("validation"):
        v = results["validation"]
        print(f"\nPayload validation, {v['payload_bytes']} byte JSON payload, median of {v['repeats']} calls in this process")
        print(f"  check_payload (orjson) {v['check_payload_us']:.0f} µs = {fmt(ratio(v['check_payload_us'], v['copy_us']), '.1f')}"
              f" × one copy of the bytes ({v['copy_us']:.0f} µs), {fmt(ratio(v['check_payload_us'], v['json_loads_us']), '.2f')}"
              f" × json.loads ({v['json_loads_us']:.0f} µs)")
        for row in v.get("share_of_daemon_cpu", []):
            print(f"  {row['server']}, 1mb x{row['connections']}: {fmt(row['daemon_cpu_us_per_req'], '.0f')} µs daemon CPU"
                  f" per invocation, of which validation {fmt(row['share_pct'], '.1f')}%")

    for kind, prof in (results.get("profile") or {}).items():
        if not isinstance(prof, dict) or "samples" not in prof:
            continue
        print(f"\nProfile ({kind}): daemon MAX_CONCURRENCY=4, 8 connections, {prof.get('payload', 'small')} payload: "
              f"{prof['rps']:.0f} req/s, "
              f"{prof['daemon_cpu_us_per_inv']:.0f} µs daemon CPU/inv ({fmt(prof['daemon_sys_pct'], '.0f')}% in kernel), "
              f"{prof['samples']} samples, oth% {prof['foreign_busy_pct']:.0f}")
        print_profile_groups(prof)


def print_profile_groups(prof: dict[str, Any]) -> None:
    """The grouped tables of one L{summarize_profile} result."""
    for title, key, n in (("self time by group", "self_by_group", 20),
                          ("inclusive (a frame in the stack)", "inclusive", 20),
                          ("innermost lambdarapid frame (who asked)", "innermost_lambdarapid_frame", 10),
                          ("top functions (self)", "self_by_function", 20)):
        print(f"  {title}:")
        for row in prof[key][:n]:
            print(f"    {row['pct']:5.1f}%  {fmt(row['us_per_inv'], '5.0f')} µs  {row['name']}")
    print(f"  raw stacks: {prof['raw_file']}")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("twisted", "klein", "awslambdaric", "lambdarapid"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def git_commit() -> str:
    """HEAD, with '+dirty' when the daemon's own sources differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "lambdarapid"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "-"


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over C{seconds}: others' load disturbs every figure."""
    a = system_cpu()
    time.sleep(seconds)
    b = system_cpu()
    return 100 * (b[0] - a[0]) / max(1, b[1] - a[1])


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="~1 minute smoke run: 2 s points, 500 latency calls, 2 cold starts")
    p.add_argument("--duration", type=int, default=None, help="seconds per throughput point (5; quick 2)")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma list of {','.join(ALL_SECTIONS)} or 'all' (default: %(default)s)")
    p.add_argument("--max-concurrency", default="1,4", help="daemon MAX_CONCURRENCY values (%(default)s)")
    p.add_argument("--connections", default="1,8,32", help="throughput connection counts (%(default)s)")
    p.add_argument("--payloads", default="small,1mb", help="small and/or 1mb (%(default)s)")
    p.add_argument("--latency-calls", type=int, default=None, help="sequential calls (2000; quick 500)")
    p.add_argument("--max-requests-1mb", type=int, default=None, help="cap per 1 MB point (1000; quick 300)")
    p.add_argument("--cold-runs", type=int, default=None, help="cold starts per server (5; quick 2)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--baseline-site", choices=("tuned", "default"), default="tuned",
                   help="tuned: Site as the daemon's QuietSite (no form parsing/access log); default: Site()")
    p.add_argument("--profile-seconds", type=int, default=10, help="per profiler (%(default)s)")
    p.add_argument("--profilers", default="cpu-sampler,py-spy",
                   help="profile section: cpu-sampler (in-process ITIMER_PROF) and/or py-spy (%(default)s)")
    p.add_argument("--profile-payload", choices=("small", "1mb"), default="small",
                   help="payload for the profile section (%(default)s)")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (%(default)s)")
    p.add_argument("--sampler-interval-us", type=int, default=500,
                   help="cpu-sampler: one sample per this much daemon CPU time (%(default)s)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a latency/throughput point again (up to this many times) when disturbed")
    p.add_argument("--disturbed-pct", type=float, default=10,
                   help="a point is disturbed when other processes took more than this %% of the machine")
    p.add_argument("--wait-idle", type=float, default=0,
                   help="wait up to this many seconds for the machine to be <15%% busy before starting")
    p.add_argument("--metrics-rounds", type=int, default=3,
                   help="metrics section: rounds, each measuring both daemons (%(default)s)")
    p.add_argument("--metrics-connections", type=int, default=8,
                   help="metrics section: keep-alive connections (%(default)s)")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON file (default benchmarks/results/daemon-<timestamp>.json)")
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (2 if q else 5)
    args.latency_calls = args.latency_calls or (500 if q else 2000)
    args.max_requests_1mb = args.max_requests_1mb or (300 if q else 1000)
    args.cold_runs = args.cold_runs or (2 if q else 5)
    args.sections = ALL_SECTIONS if args.sections == "all" else tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(args.sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.max_concurrency = [int(x) for x in args.max_concurrency.split(",")]
    args.connections = [int(x) for x in args.connections.split(",")]
    args.payloads = [x.strip() for x in args.payloads.split(",")]
    args.profilers = [x.strip() for x in args.profilers.split(",") if x.strip()]
    if set(args.profilers) - {"cpu-sampler", "py-spy"}:
        p.error("--profilers: cpu-sampler and/or py-spy")
    for name in args.payloads:
        make_payload(name)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output: Path = (args.output or RESULTS_DIR / f"daemon-{stamp}.json").resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    body_files = {}
    for name in ("small", "1mb"):
        body_files[name] = tmp / f"{name}.json"
        body_files[name].write_bytes(make_payload(name))
    loadgen = pick_loadgen(args.loadgen, tmp)
    started = time.monotonic()
    results: dict[str, Any] = dict(meta=dict(
        timestamp=stamp, cpus=os.cpu_count(), python=platform.python_version(), versions=versions(),
        git_commit=git_commit(), loadgen=loadgen.describe(), loadgen_kind=loadgen.name,
        baseline_site=args.baseline_site, duration_s=args.duration, max_requests_1mb=args.max_requests_1mb,
        latency_calls=args.latency_calls, sections=list(args.sections), max_concurrency=args.max_concurrency,
        connections=args.connections, payloads=args.payloads, clk_tck=CLK_TCK,
        daemon_command=" ".join(daemon_command()),
    ))
    busy = machine_busy()
    waited_until = time.monotonic() + args.wait_idle
    while busy > 15 and time.monotonic() < waited_until:
        log(f"machine {busy:.0f}% busy; waiting for it to calm down (--wait-idle)")
        time.sleep(4)
        busy = machine_busy()
    results["meta"]["machine_busy_pct_before"] = busy
    results["meta"]["loadavg_before"] = os.getloadavg()
    log(f"load generator: {loadgen.describe()}; logs in {logdir}")
    if busy > 15:
        log(f"warning: the machine is already {busy:.0f}% busy; figures will be disturbed")

    targets: list[Callable[[], Server]] = [lambda: make_baseline(args.baseline_site, logdir)]
    targets += [functools.partial(make_daemon, mc, logdir) for mc in args.max_concurrency]

    try:
        if "latency" in args.sections or "throughput" in args.sections:
            results["latency"], results["throughput"], results["rss_mb"] = [], [], {}
            for factory in targets:
                server = factory()
                log(f"{server.name}: starting on port {server.port}")
                try:
                    server.start()
                    for name in args.payloads:
                        check_echo(server, make_payload(name))
                    if "latency" in args.sections:
                        log(f"{server.name}: {args.latency_calls} sequential calls")
                        results["latency"].append(least_disturbed(
                            lambda: measure_latency(server, args.latency_calls, warmup=200),
                            args, f"{server.name}: latency"))
                    if "throughput" in args.sections:
                        for payload in args.payloads:
                            for conns in args.connections:
                                big = payload == "1mb"
                                row = least_disturbed(lambda: measure_throughput(
                                    server, loadgen, payload, body_files[payload], conns, args.duration,
                                    max_requests=args.max_requests_1mb if big else 0,
                                    warmup=max(20, 2 * conns) if big else max(300, 20 * conns)),
                                    args, f"{server.name}: {payload} x{conns}")
                                log(f"{server.name}: {payload} x{conns}: {row['rps']:.0f} req/s, "
                                    f"{fmt(row['server_cpu_us_per_req'], '.0f')} µs/req server CPU, errors {row['errors'] or 0}")
                                results["throughput"].append(row)
                    results["rss_mb"][server.name] = rss_mb(server.pid)
                finally:
                    server.stop()
        if "coldstart" in args.sections:
            results["coldstart"] = []
            for factory in targets[:2]:  # the baseline and the first MAX_CONCURRENCY
                row = measure_coldstart(factory, args.cold_runs)
                log(f"{row['server']}: cold start median {row['median_first_answer_ms']:.0f} ms")
                results["coldstart"].append(row)
        if "validation" in args.sections:
            validation = measure_validation(repeats=50 if args.quick else 200)
            validation["share_of_daemon_cpu"] = [
                dict(server=r["server"], connections=r["connections"],
                     daemon_cpu_us_per_req=r["server_cpu_us_per_req"],
                     share_pct=100 * validation["check_payload_us"] / r["server_cpu_us_per_req"])
                for r in results.get("throughput") or []
                if r["server"] != "baseline" and r["payload"] == "1mb" and r["server_cpu_us_per_req"]
            ]
            log(f"validation: check_payload {validation['check_payload_us']:.0f} µs on 1 MiB")
            results["validation"] = validation
        if "metrics" in args.sections:
            results["metrics"] = measure_metrics_overhead(args, loadgen, body_files["small"], logdir)
            log(f"metrics: ratio {fmt(results['metrics']['ratio'], '.3f')}")
        if "extensions" in args.sections:
            results["extensions"] = measure_extensions_overhead(
                args, loadgen, body_files["small"], logdir, tmp)
            for name, figure in results["extensions"]["figures"].items():
                log(f"extensions: {name}: {fmt(figure['us_per_req'], '.0f')} µs/req, "
                    f"ratio {fmt(figure['ratio'], '.3f')}")
        if "profile" in args.sections:
            results["profile"] = run_profile(args, loadgen, body_files, logdir, output)
    finally:
        results["meta"]["elapsed_s"] = time.monotonic() - started
        output.write_text(json.dumps(results, indent=2, default=str))
    print_report(results)
    print(f"\nJSON: {output}   ({results['meta']['elapsed_s']:.0f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_sampled_daemon":
        run_sampled_daemon(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        print("BENCH_JSON " + json.dumps(asyncio.run(_loadgen_main(json.loads(sys.argv[2])))), flush=True)
    else:
        sys.exit(main(sys.argv[1:]))
