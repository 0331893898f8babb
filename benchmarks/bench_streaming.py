#!/usr/bin/env python3
"""
Benchmark response streaming: the examples' Node streaming function
(examples/echo/node/stream.mjs, npm aws-lambda-ric) under lambda-rapid, called
on InvokeWithResponseStream directly and (with --server) through lambda-server
and RabbitMQ.

  ttfb        a function writing "first", pausing 500 ms, writing "second":
              time to the first PayloadChunk and to the end, streamed, against
              the same function invoked with plain Invoke (buffered) in the
              same run
  throughput  1, 10 and 50 MiB streams: MB/s, and the daemon's peak RSS during
              each (sampled every 5 ms from /proc), the 50 MiB one's as a ratio
              against the 1 MiB one's: flat (1.0) means no stream is held whole

    python benchmarks/bench_streaming.py            # daemon only, ~1 min
    python benchmarks/bench_streaming.py --server   # also through lambda-server (RabbitMQ at AMQP_URI)

It needs Node and npm: the example's node_modules are installed into a temporary copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_daemon as bd  # noqa: E402
from bench_daemon import HOST, ROOT, Server, log  # noqa: E402

NODE_EXAMPLE = ROOT / "examples" / "echo" / "node"
MIB = 1024 * 1024


def node_dir(tmp: Path) -> Path:
    """A copy of the Node example with its node_modules."""
    built = ROOT / "build" / "test-artifacts" / "node-echo"
    target = tmp / "node"
    if (built / "node_modules" / "aws-lambda-ric").is_dir():
        shutil.copytree(built, target, symlinks=True)
    else:
        shutil.copytree(NODE_EXAMPLE, target)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=target, check=True,
                       stdout=subprocess.DEVNULL)
    for name in os.listdir(NODE_EXAMPLE):
        if name.endswith(".mjs"):
            shutil.copy(NODE_EXAMPLE / name, target)
    return target


def make_stream_daemon(logdir: Path, directory: Path, function: str = "", uri: str = "") -> Server:
    daemon = bd.make_daemon(1, logdir, label="-node-stream")
    daemon.argv = bd.daemon_command() + [
        "node", str(directory / "node_modules" / ".bin" / "aws-lambda-ric"), "stream.handler"]
    daemon.env.update(LAMBDA_TASK_ROOT=str(directory), AWS_LAMBDA_FUNCTION_TIMEOUT="120")
    if function:
        daemon.env.update(AMQP_URI=uri, AWS_LAMBDA_FUNCTION_NAME=function)
    daemon.cwd = directory
    daemon.path = f"/2015-03-31/functions/{function or 'function'}/invocations"
    return daemon


def call(port: int, path: str, event: dict[str, Any]) -> dict[str, float]:
    """One POST, the answer read to its end: seconds to its head, its first body byte, its end; body size."""
    body = json.dumps(event).encode()
    started = time.perf_counter()
    with socket.create_connection((HOST, port)) as connection:
        connection.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                           % (path.encode(), len(body)) + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head_at = time.perf_counter()
        _, _, rest = data.partition(b"\r\n\r\n")
        first_at = head_at if rest else None
        size = len(rest)
        while True:
            chunk = connection.recv(1 << 20)
            if not chunk:
                break
            if first_at is None:
                first_at = time.perf_counter()
            size += len(chunk)
        ended = time.perf_counter()
    return {"head_s": head_at - started, "first_byte_s": (first_at or ended) - started,
            "end_s": ended - started, "bytes": size}


def stream_path(target: str) -> str:
    return f"/2021-11-15/functions/{target}/response-streaming-invocations"


class RSSSampler:
    """The peak RSS of a process while a call runs, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self) -> RSSSampler:
        self.before = bd.rss_mb(self.pid) or 0.0
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, bd.rss_mb(self.pid) or 0.0)

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def measure(target: Server, daemon: Server, function: str, rounds: int) -> dict[str, Any]:
    port = target.port
    slow = {"parts": ["first", "second"], "pause_ms": 500}
    streamed = [call(port, stream_path(function), slow) for _ in range(rounds)]
    buffered = [call(port, f"/2015-03-31/functions/{function}/invocations", slow) for _ in range(rounds)]
    ttfb = statistics.median(r["first_byte_s"] for r in streamed) * 1000
    buffered_ttfb = statistics.median(r["first_byte_s"] for r in buffered) * 1000
    result: dict[str, Any] = {
        "ttfb_ms": ttfb, "end_ms": statistics.median(r["end_s"] for r in streamed) * 1000,
        "buffered_ttfb_ms": buffered_ttfb, "ttfb_ratio": ttfb / buffered_ttfb, "sizes": {},
    }
    log(f"{target.name}: first chunk {ttfb:.1f} ms (buffered first byte {buffered_ttfb:.1f} ms)")
    for mib in (1, 10, 50):
        runs = []
        for _ in range(rounds):
            with RSSSampler(daemon.pid) as rss:
                answer = call(port, stream_path(function), {"size": mib * MIB})
            assert answer["bytes"] > mib * MIB, answer
            runs.append({"mb_per_s": mib / answer["end_s"], "rss_growth_mb": rss.peak - rss.before,
                         "peak_rss_mb": rss.peak, "ttfb_ms": answer["first_byte_s"] * 1000})
        row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        result["sizes"][f"{mib}MiB"] = row
        log(f"{target.name}: {mib} MiB: {row['mb_per_s']:.1f} MB/s, daemon peak RSS {row['peak_rss_mb']:.1f} MB "
            f"(+{row['rss_growth_mb']:.1f} MB during it), first chunk {row['ttfb_ms']:.1f} ms")
    sizes = result["sizes"]
    result["peak_rss_50_vs_1"] = sizes["50MiB"]["peak_rss_mb"] / sizes["1MiB"]["peak_rss_mb"]
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="store_true", help="also measure through lambda-server")
    parser.add_argument("--rounds", type=int, default=3, help="calls per point (%(default)s)")
    parser.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    results: dict[str, Any] = {}
    servers: list[Server] = []
    try:
        directory = node_dir(tmp)
        daemon = make_stream_daemon(logdir, directory)
        servers.append(daemon)
        daemon.start(ready_payload=b'{"parts": ["ready"]}')
        results["daemon"] = measure(daemon, daemon, "function", args.rounds)
        if args.server:
            import bench_amqp

            function = bench_amqp.function_name()
            amqp_daemon = make_stream_daemon(logdir, directory, function, args.amqp_uri)
            server = bench_amqp.make_lambda_server(logdir, args.amqp_uri, function)
            servers += [amqp_daemon, server]
            amqp_daemon.start(ready_payload=b'{"parts": ["ready"]}')
            server.start(ready_payload=b'{"parts": ["ready"]}')
            results["server"] = measure(server, amqp_daemon, function, args.rounds)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
