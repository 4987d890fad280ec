"""processes_per_replica: CPU-bound throughput at P=1 vs P=2, dispatch overhead, and a fast request beside a slow one.

    .venv/bin/python benchmarks/workers.py [--seconds 10] [--rounds 2]

Each configuration is served by a real `engine serve`; P=1 and P=2 alternate in one run and the ratios are printed.
Throughput is measured with wrk (apt-get install wrk), which shares the two cores with the server.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

PREDICTOR = """
import time


class PythonPredictor:
    def __init__(self, config):
        self.work = config["work"]

    def predict(self, payload):
        if payload.get("sleep"):
            time.sleep(payload["sleep"])
            return {"slept": payload["sleep"]}
        total = 0
        for i in range(self.work if payload.get("burn") else 0):  # pure-Python CPU work, holds the GIL
            total += i * i
        return {"total": total}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EngineServer:
    """`engine serve` for one processes_per_replica setting."""

    def __init__(self, root: Path, processes: int, threads: int, work: int) -> None:
        project = Path(tempfile.mkdtemp(prefix=f"p{processes}-t{threads}-", dir=root))
        (project / "predictor.py").write_text(textwrap.dedent(PREDICTOR))
        (project / "cortex.yaml").write_text(
            f"- name: bench\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
            f"    processes_per_replica: {processes}\n    threads_per_process: {threads}\n"
            f"    config:\n      work: {work}\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/bench"
        self.process = subprocess.Popen([sys.executable, "-m", "engine", "--log-level", "warning", "serve",
                                         str(project), "--port", str(self.port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def wrk_load(url: str, payload: dict, connections: int, seconds: float) -> tuple[float, float]:
    """Requests per second and median latency from wrk (in C, so that it takes little of the two cores)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{json.dumps(payload)}]]\n")
    try:
        output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
                                 url], capture_output=True, text=True, check=True).stdout
    finally:
        script.unlink()
    value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", output).groups()
    median = float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), median


def fast_beside_slow(url: str) -> tuple[float, float]:
    """Latency of a fast request alone, and while a 2 s request occupies one worker thread."""
    with httpx.Client(timeout=60) as http:
        alone = statistics.median(_timed(http, url) for _ in range(20))
        slow = subprocess.Popen([sys.executable, "-c", f"import httpx; httpx.post('{url}', json={{'sleep': 2}}, "
                                                       "timeout=60)"])
        time.sleep(0.5)  # the slow request is now running
        beside = _timed(http, url)
        slow.wait()
    return alone, beside


def _timed(http: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    http.post(url, json={}).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=int, default=1_000_000, help="loop iterations per CPU-bound request")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; CPU-bound requests of {args.work} loop iterations; {args.connections} "
          f"connections, {args.seconds:g} s per measurement, {args.rounds} rounds alternating P=1 and P=2")
    throughput: dict[int, list[float]] = {1: [], 2: []}
    trivial: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as root:
        for round_number in range(args.rounds):
            for processes in (1, 2):
                server = EngineServer(Path(root), processes, 1, args.work)
                try:
                    wrk_load(server.url, {"burn": True}, args.connections, 2.0)  # warm-up
                    rps, _ = wrk_load(server.url, {"burn": True}, args.connections, args.seconds)
                    _, median = wrk_load(server.url, {}, 1, min(args.seconds, 5.0))
                    throughput[processes].append(rps)
                    trivial[processes].append(median)
                    print(f"round {round_number + 1}: P={processes}: {rps:7.1f} CPU-bound req/s; trivial request "
                          f"median {median * 1e3:.3f} ms")
                finally:
                    server.stop()
        server = EngineServer(Path(root), 2, 1, args.work)
        try:
            alone, beside = fast_beside_slow(server.url)
        finally:
            server.stop()
    p1, p2 = statistics.median(throughput[1]), statistics.median(throughput[2])
    overhead = statistics.median(trivial[2]) - statistics.median(trivial[1])
    print()
    print(f"throughput P=2 / P=1: {p2:.1f} / {p1:.1f} req/s = {p2 / p1:.2f}x (goal >= 1.8x on 2 cores)")
    print(f"dispatch overhead of a worker process: {overhead * 1e3:+.3f} ms per request (median trivial request "
          f"{statistics.median(trivial[2]) * 1e3:.2f} ms at P=2 vs "
          f"{statistics.median(trivial[1]) * 1e3:.2f} ms at P=1)")
    print(f"fast request alone {alone * 1e3:.2f} ms; beside a 2 s request on the other worker {beside * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
