"""Start-up time and idle memory of `engine serve` on the examples.

    .venv/bin/python benchmarks/startup.py [examples/greeter ...] [--starts 3]

Time is from launching the process to the first 200 from /readyz; memory is the resident set of the server's
processes after a second of idling.
"""
from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXAMPLES = ["examples/greeter", "examples/payloads", "examples/mpg-estimator", "examples/onnx-iris",
                    "examples/tensorflow-iris"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resident_mb(pid: int) -> float:
    """Resident memory of a process and its children."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                   text=True).stdout.split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start_once(example: Path) -> tuple[float, float]:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engine", "--log-level", "warning", "serve", str(example),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"{example} did not start (exit code {process.returncode})")
            time.sleep(0.01)
        ready = time.perf_counter() - started
        time.sleep(1.0)
        return ready, resident_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("examples", nargs="*", default=DEFAULT_EXAMPLES)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    print(f"{'example':<28} {'ready after (median)':>22} {'idle memory':>12}")
    for name in args.examples:
        example = REPO / name
        runs = [start_once(example) for _ in range(args.starts)]
        seconds, megabytes = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<28} {seconds:>20.2f} s {megabytes:>9.0f} MB")


if __name__ == "__main__":
    main()
