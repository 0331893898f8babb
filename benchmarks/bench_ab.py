#!/usr/bin/env python3
"""
A against B: two lambda-rapid builds (say, main and a change), the same echo
function, measured in one run, in turns, so that the machine's noise falls
on both alike. An optional third build C (--c) is measured in the same turns:
typically a reference implementation, e.g. the upstream Go daemon built beside
the project (never committed), whose daemon takes the same environment and
runtime argv and whose lambda-server sits in the same directory.

Each point (MAX_CONCURRENCY:connections) starts one daemon of each build,
warms them, then runs wrk on A, B[, C], A, B[, C] ... --rounds times each; the
figures are the medians of req/s and of the daemon process's CPU per
invocation (/proc, the runtimes apart), and B/A (and B/C) ratios. Cold start
(process start -> first 200) and RSS after --rss-after invocations are
measured the same way, in turns; so are the --server-points, through each
build's lambda-server and RabbitMQ.

    python benchmarks/bench_ab.py --a /tmp/main/.venv/bin/lambda-rapid \\
        --b .venv/bin/lambda-rapid --points 1:1,4:8 --rounds 5 \\
        [--c /tmp/go-upstream/bin/lambda-runtime-api-daemon]

All builds run the runtime with this interpreter's awslambdaric.
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


def add_ratios(row: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Add to C{row} B's figures over A's ("B/A") and, when C was measured, over C's ("B/C")."""
    for ref in ("A", "C"):
        if ref in row:
            row[f"B/{ref}"] = {key: row["B"][key] / row[ref][key] for key in row[ref]
                               if key not in skip and row[ref][key] and row["B"].get(key) is not None}


def fmt_ratio(ratios: dict[str, float], key: str) -> str:
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def fmt_mb(values: Any) -> str:
    return "[" + ", ".join("-" if value is None else f"{value:.1f}" for value in values) + "]"


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
    parser.add_argument("--a", required=True, metavar="PATH", help="build A's lambda-rapid executable (the baseline)")
    parser.add_argument("--b", required=True, metavar="PATH", help="build B's lambda-rapid executable")
    parser.add_argument("--c", metavar="PATH",
                        help="optional build C, measured in the same turns (B/C ratios): typically a reference "
                             "daemon, e.g. upstream's Go lambda-runtime-api-daemon built beside the project, "
                             "with its lambda-server in the same directory")
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
    if args.c:
        builds["C"] = os.path.abspath(args.c)
    refs = [ref for ref in ("A", "C") if ref in builds]
    results: dict[str, Any] = {"builds": builds, "points": {}}
    for point in filter(None, args.points.split(",")):
        max_concurrency, connections = (int(part) for part in point.split(":"))
        servers = {label: make(build, label, max_concurrency, logdir) for label, build in builds.items()}
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in builds}
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
        add_ratios(row, skip=("rss_curve_mb",))
        results["points"][point] = row
        log(f"MC={max_concurrency} x{connections}: " + " | ".join(
            f"{label} {row[label]['rps']:.0f} req/s {row[label]['daemon_us']:.0f} us/inv" for label in builds))
        log(f"MC={max_concurrency} x{connections}:   " + " | ".join(
            f"B/{ref} req/s {fmt_ratio(row[f'B/{ref}'], 'rps')}, daemon CPU {fmt_ratio(row[f'B/{ref}'], 'daemon_us')}"
            + (f", RSS {fmt_ratio(row[f'B/{ref}'], 'rss_mb')}" if rss else "") for ref in refs))
        if rss:
            log(f"MC={max_concurrency} x{connections}:   RSS (MB) after {counts}: "
                + " ".join(f"{label} {fmt_mb(curves[label].values())}" for label in builds))
    for point in filter(None, args.server_points.split(",")):
        max_concurrency, connections = (int(part) for part in point.split(":"))
        pairs = {label: make_pair(build, label, max_concurrency, logdir, args.amqp_uri)
                 for label, build in builds.items()}
        server_runs: dict[str, list[dict[str, float]]] = {label: [] for label in builds}
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
        add_ratios(row)
        results.setdefault("server_points", {})[point] = row
        log(f"through lambda-server, MC={max_concurrency} x{connections}: " + " | ".join(
            f"{label} {row[label]['rps']:.0f} req/s, server {row[label]['server_us']:.0f} us/inv, "
            f"daemon {row[label]['daemon_us']:.0f} us/inv" for label in builds))
        log(f"through lambda-server, MC={max_concurrency} x{connections}:   " + " | ".join(
            f"B/{ref} req/s {fmt_ratio(row[f'B/{ref}'], 'rps')}, server CPU {fmt_ratio(row[f'B/{ref}'], 'server_us')}, "
            f"daemon CPU {fmt_ratio(row[f'B/{ref}'], 'daemon_us')}" for ref in refs))
    if args.cold_runs:
        cold: dict[str, list[float]] = {label: [] for label in builds}
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
        medians = results["cold_start_ms"]
        log(f"cold start (process start -> first answer, median of {args.cold_runs}): "
            + ", ".join(f"{label} {medians[label]:.0f} ms" for label in builds) + ", "
            + ", ".join(f"B/{ref} {medians['B'] / medians[ref]:.2f}x" for ref in refs if medians[ref]))
    out = bd.RESULTS_DIR / f"ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    bd.RESULTS_DIR.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
