"""Soak and overload: many requests over many keep-alive connections against an echo API, side by side in one run.

    .venv/bin/python benchmarks/soak.py [--requests 50000] [--connections 64]

For each server configuration — one process, one process with --isolate (the predictor in a supervised worker
process), and processes_per_replica: 2 — it reports throughput, p50/p99 latency, errors and the server's resident
memory at start and at end. Then an overload run: a concurrency limit of half the connections, where every response
must be a 200 or an immediate 503. The server is pinned to core 0 and this load generator (an asyncio HTTP/1.1
client, so that it can time each response by its status) to core 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = json.dumps({"x": [float(i) / 7 for i in range(64)]}).encode()


@dataclass
class Run:
    """What the load generator saw."""

    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status → seconds
    errors: int = 0  # connections that failed

    @property
    def total(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    def percentile(self, fraction: float, status: int | None = None) -> float:
        values = sorted(self.latencies.get(status, []) if status else
                        [value for values in self.latencies.values() for value in values])
        return values[min(len(values) - 1, int(fraction * len(values)))] * 1e3 if values else 0.0


async def load(port: int, path: str, requests: int, connections: int) -> Run:
    """`requests` POSTs over `connections` keep-alive connections, as fast as the server answers."""
    run = Run(0.0)
    left = [requests]
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY

    async def connection() -> None:
        reader = writer = None
        while left[0] > 0:
            left[0] -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                run.latencies.setdefault(status, []).append(time.perf_counter() - started)
                if re.search(rb"(?i)connection: *close", head):
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                run.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    run.seconds = time.perf_counter() - started
    return run


class Server:
    """`engine serve` on a project, pinned to core 0."""

    def __init__(self, project: Path, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "engine", "--log-level",
                                         "warning", "serve", str(project), "--port", str(self.port), *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run(["curl", "-sf", f"http://127.0.0.1:{self.port}/readyz"],
                             capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine serve {project} {args} did not start")
            time.sleep(0.1)

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes."""
        pids = subprocess.run(["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        total = 0
        for pid in pids:
            try:
                total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
            except (OSError, AttributeError):
                pass
        return total / 1024

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project(root: Path, processes: int, limit: int = 1024) -> Path:
    folder = root / f"echo-{processes}-{limit}"
    folder.mkdir(exist_ok=True)
    shutil.copy(HERE / "echo" / "predictor.py", folder)
    (folder / "cortex.yaml").write_text(f"- name: echo\n  kind: RealtimeAPI\n  predictor:\n    type: python\n"
                                        f"    path: predictor.py\n    processes_per_replica: {processes}\n"
                                        f"  autoscaling:\n    max_replica_concurrency: {limit}\n")
    return folder


def generate(port: int, requests: int, connections: int) -> Run:
    """Run the load generator in a child pinned to core 1."""
    code = (f"import asyncio, json, sys; sys.path.insert(0, {str(HERE)!r}); import soak; "
            f"run = asyncio.run(soak.load({port}, '/echo', {requests}, {connections})); "
            f"print(json.dumps({{'seconds': run.seconds, 'latencies': run.latencies, 'errors': run.errors}}))")
    output = subprocess.run(["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    data = json.loads(output)
    return Run(data["seconds"], {int(k): v for k, v in data["latencies"].items()}, data["errors"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="engine-soak-"))
    try:
        print(f"soak: {args.requests} requests over {args.connections} connections, echo API, server on core 0")
        print(f"{'server':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'non-200':>8} "
              f"{'RSS start':>10} {'RSS end':>8}")
        results = {}
        for name, processes, extra in (("1 process", 1, []), ("1 process, --isolate", 1, ["--isolate"]),
                                       ("2 processes", 2, [])):
            server = Server(project(root, processes), *extra)
            try:
                generate(server.port, 2000, args.connections)  # warm-up
                start = server.rss_mb()
                run = generate(server.port, args.requests, args.connections)
                end = server.rss_mb()
            finally:
                server.stop()
            results[name] = run
            non_200 = run.total - len(run.latencies.get(200, []))
            print(f"{name:<26} {run.total / run.seconds:>8.0f} {run.percentile(0.5):>8.2f} "
                  f"{run.percentile(0.99):>8.2f} {run.errors:>7} {non_200:>8} {start:>9.0f}M {end:>7.0f}M")
        plain, isolated = results["1 process"], results["1 process, --isolate"]
        print(f"--isolate / 1 process throughput = "
              f"{(isolated.total / isolated.seconds) / (plain.total / plain.seconds):.2f}x")

        limit = args.connections // 2
        print(f"\noverload: {args.connections} connections against max_replica_concurrency {limit}")
        for name, processes in (("1 process", 1), ("2 processes", 2)):
            server = Server(project(root, processes, limit))
            try:
                run = generate(server.port, args.requests // 2, args.connections)
            finally:
                server.stop()
            statuses = {status: len(values) for status, values in sorted(run.latencies.items())}
            print(f"{name:<14} statuses {statuses}, connection errors {run.errors}; 200 p99 "
                  f"{run.percentile(0.99, 200):.2f} ms; 503 p50 {run.percentile(0.5, 503):.2f} ms, p99 "
                  f"{run.percentile(0.99, 503):.2f} ms, max {max(run.latencies.get(503, [0])) * 1e3:.2f} ms")
            assert set(statuses) <= {200, 503}, statuses
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
