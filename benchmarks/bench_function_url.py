#!/usr/bin/env python3
"""
Benchmark Function URLs: a small GET through FUNCTION_URL_PORT against the
same function invoked through the Invoke API, one daemon, the same run.

The function (written to a temporary directory, run by awslambdaric) answers
{"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "hello"}.
Through the URL that is a 5-byte text/plain answer; through the Invoke API
(a POST of {}) the same document as JSON. For each point (MAX_CONCURRENCY=1
with 1 connection, MAX_CONCURRENCY=4 with 8), wrk runs each path in turn,
alternating, --rounds times; the figures are the medians:

  rps         requests per second
  p50, p99    latency (ms), from wrk's own histogram
  daemon_us   the daemon process's CPU per request (from /proc), runtimes apart
  ratio       Function URL / Invoke API, for each

With --fastapi the examples/fastapi app is measured on its URL too (GET /items),
as a real web app's figure (its CPU is the runtime's, reported apart).

    python benchmarks/bench_function_url.py               # ~1 min
    python benchmarks/bench_function_url.py --rounds 5 --duration 5 --fastapi

It needs wrk (Debian's package: apt-get install wrk); it installs it if absent and run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_daemon as bd  # noqa: E402
from bench_daemon import HOST, ROOT, Server, log  # noqa: E402

HANDLER = '''\
ANSWER = {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "hello"}


def handler(event, context):
    return ANSWER
'''

WRK_SCRIPT = r"""
local method = os.getenv("BENCH_METHOD") or "GET"
wrk.method = method
if method == "POST" then
  wrk.body = "{}"
  wrk.headers["Content-Type"] = "application/json"
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%.1f,"p99_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench_function_url: wrk is needed (apt-get install wrk)")
    return found


def run_wrk(wrk: str, script: Path, url: str, method: str, connections: int, duration: int) -> dict[str, Any]:
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout=30s", "-s", str(script), url],
        capture_output=True, text=True, env={**os.environ, "BENCH_METHOD": method}, check=True,
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))
    data = json.loads(line[len("BENCH_JSON "):])
    return {"requests": data["requests"], "seconds": data["duration_us"] / 1e6, "errors": data["errors"],
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000}


def measure_path(wrk: str, script: Path, daemon: Server, port: int, path: str, method: str,
                 connections: int, duration: int) -> dict[str, Any]:
    daemon.settle()
    before = daemon.snapshot()
    result = run_wrk(wrk, script, f"http://{HOST}:{port}{path}", method, connections, duration)
    own, _, runtimes = bd.cpu_delta(before, daemon.snapshot())
    requests = max(result["requests"], 1)
    result.update(rps=result["requests"] / result["seconds"], daemon_us=own / requests * 1e6,
                  runtime_us=runtimes / requests * 1e6)
    return result


def check(port: int, path: str, method: str, body: bytes, expected: bytes) -> None:
    """One request, asserting the answer, so the figures are of working calls."""
    client = bd.BlockingClient(port)
    client.connect()
    try:
        if method == "GET":
            request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        else:
            request = bd.build_request(path, body, port)
        status, answer = client.call(request)
    finally:
        client.close()
    if status != 200 or expected not in answer:
        raise RuntimeError(f"{method} {path} on {port}: {status} {answer[:200]!r}")


def make_url_daemon(max_concurrency: int, logdir: Path, task: Path, handler: str) -> tuple[Server, int]:
    url_port = bd.free_port_block(1)
    daemon = bd.make_daemon(max_concurrency, logdir, label=f"-url-{task.name}",
                            extra_env={"FUNCTION_URL_PORT": str(url_port), "LAMBDA_TASK_ROOT": str(task)})
    daemon.argv = bd.daemon_command() + [sys.executable, "-m", "awslambdaric", handler]
    daemon.cwd = task
    return daemon, url_port


def median_row(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs)
            for key in ("rps", "p50_ms", "p99_ms", "daemon_us", "runtime_us", "errors")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per path and point (%(default)s)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run (%(default)s)")
    parser.add_argument("--fastapi", action="store_true", help="also the examples/fastapi app's GET /items")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="bench-url-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    task = tmp / "task"
    task.mkdir()
    (task / "hello.py").write_text(HANDLER)
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    results: dict[str, Any] = {"wrk": subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split("\n")[0],
                               "cpus": os.cpu_count(), "points": {}}
    try:
        for max_concurrency, connections in ((1, 1), (4, 8)):
            daemon, url_port = make_url_daemon(max_concurrency, logdir, task, "hello.handler")
            try:
                daemon.start()
                check(url_port, "/hello", "GET", b"", b"hello")
                check(daemon.port, bd.INVOKE_PATH, "POST", b"{}", b'"statusCode"')
                # Warm every runtime on both paths before measuring.
                run_wrk(wrk, script, f"http://{HOST}:{url_port}/hello", "GET", connections, 1)
                runs: dict[str, list[dict[str, Any]]] = {"function_url": [], "invoke_api": []}
                for _ in range(args.rounds):
                    runs["function_url"].append(measure_path(
                        wrk, script, daemon, url_port, "/hello", "GET", connections, args.duration))
                    runs["invoke_api"].append(measure_path(
                        wrk, script, daemon, daemon.port, bd.INVOKE_PATH, "POST", connections, args.duration))
            finally:
                daemon.stop()
            url, invoke = median_row(runs["function_url"]), median_row(runs["invoke_api"])
            point = f"mc{max_concurrency}-c{connections}"
            results["points"][point] = {
                "function_url": url, "invoke_api": invoke,
                "ratio": {key: url[key] / invoke[key] for key in ("rps", "p50_ms", "p99_ms", "daemon_us")
                          if invoke[key]},
                "runs": runs,
            }
            log(f"{point}: Function URL {url['rps']:.0f} req/s, p50 {url['p50_ms']:.2f} ms, p99 {url['p99_ms']:.2f} ms, "
                f"daemon {url['daemon_us']:.0f} us/req | Invoke API {invoke['rps']:.0f} req/s, "
                f"p50 {invoke['p50_ms']:.2f} ms, p99 {invoke['p99_ms']:.2f} ms, daemon {invoke['daemon_us']:.0f} us/req "
                f"| URL/Invoke rps {url['rps'] / invoke['rps']:.2f}x")
        if args.fastapi:
            example = ROOT / "examples" / "fastapi"
            daemon, url_port = make_url_daemon(4, logdir, example, "app.handler")
            try:
                daemon.start(ready_payload=json.dumps({
                    "version": "2.0", "rawPath": "/items", "rawQueryString": "", "headers": {},
                    "requestContext": {"http": {"method": "GET", "path": "/items", "sourceIp": "127.0.0.1"},
                                       "stage": "$default"}, "isBase64Encoded": False}).encode())
                check(url_port, "/items?tag=fruit", "GET", b"", b"banana")
                run_wrk(wrk, script, f"http://{HOST}:{url_port}/items?tag=fruit", "GET", 8, 1)
                runs_fastapi = [measure_path(wrk, script, daemon, url_port, "/items?tag=fruit", "GET", 8, args.duration)
                                for _ in range(args.rounds)]
            finally:
                daemon.stop()
            row = median_row(runs_fastapi)
            results["fastapi_mc4_c8"] = row
            log(f"FastAPI example, MC=4, 8 connections: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, daemon {row['daemon_us']:.0f} us/req, runtimes {row['runtime_us']:.0f} us/req")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out_dir = bd.RESULTS_DIR
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"function-url-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({point: {k: v for k, v in row.items() if k != "runs"}
                      for point, row in results["points"].items()}, indent=2))
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
