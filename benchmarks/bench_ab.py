#!/usr/bin/env python3
"""
A against B: two lambda-rapid builds (say, main and a change), the same echo
function, measured in one run, in turns, so that the machine's noise falls
on both alike.

Each point (MAX_CONCURRENCY:connections) starts one daemon of each build,
warms both, then runs wrk on A, B, A, B ... --rounds times each; the figures
are the medians of req/s and of the daemon process's CPU per invocation
(/proc, the runtimes apart), and B/A ratios. Cold start (process start ->
first 200) and RSS after --rss-invocations are measured the same way, in turns.

    python benchmarks/bench_ab.py --a /tmp/main/.venv/bin/lambda-rapid \\
        --b .venv/bin/lambda-rapid --points 1:1,4:8 --rounds 5

Both builds run the runtime with this interpreter's awslambdaric.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_daemon as bd  # noqa: E402
from bench_daemon import Server, log  # noqa: E402


def make(build: str, label: str, max_concurrency: int, logdir: Path) -> Server:
    daemon = bd.make_daemon(max_concurrency, logdir, label=f"-{label}")
    daemon.argv = [build] + daemon.argv[len(bd.daemon_command()):]
    return daemon


def make_pair(build: str, label: str, max_concurrency: int, logdir: Path, uri: str) -> tuple[Server, Server]:
    """A daemon consuming a queue of its own and the Lambda Server in front of it, both of C{build}."""
    import bench_amqp

    function = bench_amqp.function_name()
    daemon = make(build, label, max_concurrency, logdir)
    daemon.env.update(AMQP_URI=uri, AWS_LAMBDA_FUNCTION_NAME=function)
    daemon.path = f"/2015-03-31/functions/{function}/invocations"
    server = bench_amqp.make_lambda_server(logdir, uri, function, [str(Path(build).parent / "lambda-server")])
    server.name = f"server-{label}"
    return daemon, server


def through_server(pair: tuple[Server, Server], loadgen: Any, body: Path, connections: int,
                   duration: int) -> dict[str, float]:
    daemon, server = pair
    server.settle()
    before, daemon_before = server.snapshot(), daemon.snapshot()
    result = loadgen.run(server.port, server.path, body, connections, duration)
    own, _, _ = bd.cpu_delta(before, server.snapshot())
    daemon_own, _, _ = bd.cpu_delta(daemon_before, daemon.snapshot())
    if result.error_count:
        raise RuntimeError(f"{server.name}: {result.errors}")
    return {"rps": result.rps, "server_us": own / result.requests * 1e6,
            "daemon_us": daemon_own / result.requests * 1e6, "p50_ms": result.p50_ms}


def throughput(server: Server, loadgen: Any, body: Path, connections: int, duration: int) -> dict[str, float]:
    server.settle()
    before = server.snapshot()
    result = loadgen.run(server.port, server.path, body, connections, duration)
    own, _, runtimes = bd.cpu_delta(before, server.snapshot())
    if result.error_count:
        raise RuntimeError(f"{server.name}: {result.errors}")
    return {"rps": result.rps, "daemon_us": own / result.requests * 1e6,
            "runtime_us": runtimes / result.requests * 1e6, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="build A's lambda-rapid executable (the baseline)")
    parser.add_argument("--b", required=True, help="build B's lambda-rapid executable")
    parser.add_argument("--points", default="1:1,4:8", help="MAX_CONCURRENCY:connections,... (%(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="turns per build and point (%(default)s)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (%(default)s)")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold starts per build (%(default)s; 0: none)")
    parser.add_argument("--rss-after", default="2000",
                        help="RSS read after these many invocations in all, e.g. 2000,100000 (%(default)s; empty: none)")
    parser.add_argument("--payload", choices=("small", "1mb"), default="small", help="request payload (%(default)s)")
    parser.add_argument("--server-points", default="",
                        help="MAX_CONCURRENCY:connections,... through each build's lambda-server and RabbitMQ")
    parser.add_argument("--amqp-uri", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    body = tmp / f"{args.payload}.json"
    body.write_bytes(bd.make_payload(args.payload))
    loadgen = bd.pick_loadgen("auto", tmp)
    builds = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    results: dict[str, Any] = {"builds": builds, "points": {}}
    for point in filter(None, args.points.split(",")):
        max_concurrency, connections = (int(part) for part in point.split(":"))
        servers = {label: make(build, label, max_concurrency, logdir) for label, build in builds.items()}
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        try:
            for server in servers.values():
                server.start()
                loadgen.run(server.port, server.path, body, connections, 1)  # warm every runtime
            for _ in range(args.rounds):
                for label, server in servers.items():
                    runs[label].append(throughput(server, loadgen, body, connections, args.duration))
            rss: dict[str, float | None] = {}
            curves: dict[str, dict[int, float | None]] = {}
            counts = [int(count) for count in filter(None, args.rss_after.split(","))]
            for label, server in servers.items():
                done = 0
                curves[label] = {}
                for count in counts:
                    loadgen.run(server.port, server.path, body, connections, 600, max_requests=count - done)
                    done = count
                    curves[label][count] = rss[label] = bd.rss_mb(server.pid)
        finally:
            for server in servers.values():
                server.stop()
        row: dict[str, Any] = {}
        for label in builds:
            row[label] = {key: statistics.median(run[key] for run in runs[label]) for key in runs[label][0]}
            if rss:
                row[label]["rss_mb"] = rss[label]
                row[label]["rss_curve_mb"] = curves[label]
        row["B/A"] = {key: row["B"][key] / row["A"][key] for key in row["A"]
                      if key != "rss_curve_mb" and row["A"][key]}
        results["points"][point] = row
        log(f"MC={max_concurrency} x{connections}: A {row['A']['rps']:.0f} req/s {row['A']['daemon_us']:.0f} us/inv | "
            f"B {row['B']['rps']:.0f} req/s {row['B']['daemon_us']:.0f} us/inv | "
            f"B/A req/s {row['B/A']['rps']:.2f}x, daemon CPU {row['B/A']['daemon_us']:.2f}x"
            + (f", RSS (MB) after {counts}: A {list(curves['A'].values())} B {list(curves['B'].values())}"
               if rss else ""))
    for point in filter(None, args.server_points.split(",")):
        max_concurrency, connections = (int(part) for part in point.split(":"))
        pairs = {label: make_pair(build, label, max_concurrency, logdir, args.amqp_uri)
                 for label, build in builds.items()}
        server_runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        try:
            for daemon, server in pairs.values():
                daemon.start()
                server.start()
                loadgen.run(server.port, server.path, body, connections, 1)
            for _ in range(args.rounds):
                for label, pair in pairs.items():
                    server_runs[label].append(through_server(pair, loadgen, body, connections, args.duration))
        finally:
            for daemon, server in pairs.values():
                server.stop()
                daemon.stop()
        row = {label: {key: statistics.median(run[key] for run in server_runs[label]) for key in server_runs[label][0]}
               for label in builds}
        row["B/A"] = {key: row["B"][key] / row["A"][key] for key in row["A"] if row["A"][key]}
        results.setdefault("server_points", {})[point] = row
        log(f"through lambda-server, MC={max_concurrency} x{connections}: A {row['A']['rps']:.0f} req/s, server "
            f"{row['A']['server_us']:.0f} us/inv | B {row['B']['rps']:.0f} req/s, server {row['B']['server_us']:.0f} us/inv"
            f" | B/A req/s {row['B/A']['rps']:.2f}x, server CPU {row['B/A']['server_us']:.2f}x")
    if args.cold_runs:
        cold: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(args.cold_runs):
            for label, build in builds.items():
                for attempt in range(3):  # a port picked free may be taken before the daemon binds it
                    server = make(build, label, 1, logdir)
                    try:
                        cold[label].append(server.start()["first_answer_ms"])
                        break
                    except RuntimeError:
                        if attempt == 2:
                            raise
                    finally:
                        server.stop()
        results["cold_start_ms"] = {label: statistics.median(values) for label, values in cold.items()}
        results["cold_start_runs"] = cold
        a, b = results["cold_start_ms"]["A"], results["cold_start_ms"]["B"]
        log(f"cold start (process start -> first answer, median of {args.cold_runs}): A {a:.0f} ms, B {b:.0f} ms, B/A {b / a:.2f}x")
    out = bd.RESULTS_DIR / f"ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    bd.RESULTS_DIR.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
