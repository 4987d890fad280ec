"""Added latency of an HTTP request to `engine serve` over a direct session.run, for the onnx-iris example.

    python plugins/onnx_predictor/benchmarks/latency.py [--requests 2000] [--warmup 200] [--json]

One run measures, interleaved request by request so that both see the same machine state:
  direct    onnxruntime session.run on a [1, 4] float32 array (same model file, same intra-op threads as engine)
  client    onnx_client.predict(list of 4 floats) in process: Cortex's input conversion + session.run
  http      POST /iris-classifier with the JSON payload to a real `engine serve` on loopback (keep-alive), which
            parses JSON, runs the seed's predictor (conversion + session.run + label lookup) and encodes the answer
and prints the median, p90 and p99 of each and the added latency (median http - median direct).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from engine_onnx_predictor.client import ONNXClient
from engine_onnx_predictor.model_format import OnnxModelFormat

from engine import ModelRepository, Models, usable_cores

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "onnx-iris"
PAYLOAD = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(example: Path, port: int, log: Path) -> subprocess.Popen:
    """`engine serve` on the example; returns once /readyz answers 200."""
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(example), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"engine serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"engine serve did not become ready:\n{log.read_text()}")


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p90 and p99 in microseconds."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6  # noqa: E731
    return {"median_us": statistics.median(ordered) * 1e6, "p90_us": pick(0.90), "p99_us": pick(0.99)}


def measure(example: Path, requests: int, warmup: int) -> dict:
    """Run the three measurements interleaved and return their summaries."""
    model_file = example / "model" / "model.onnx"
    threads = int(os.environ.get("ENGINE_ONNX_INTRA_OP_THREADS") or usable_cores())  # what engine's cpu device gives
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    array = np.array([list(PAYLOAD.values())], dtype=np.float32)
    repository = ModelRepository(Models(path=str(model_file.parent)), example, OnnxModelFormat(
        ["CPUExecutionProvider"], threads), "onnx")
    repository.scan()
    repository.preload()
    client = ONNXClient(repository)
    model_input = list(PAYLOAD.values())

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="onnx-latency-")) / "server.log"
    server = start_server(example, port, log)
    timings: dict[str, list[float]] = {"direct": [], "client": [], "http": []}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for index in range(warmup + requests):
                started = time.perf_counter()
                session.run(None, {"input": array})
                direct = time.perf_counter() - started

                started = time.perf_counter()
                client.predict(model_input)
                in_process = time.perf_counter() - started

                started = time.perf_counter()
                response = http.post("/iris-classifier", json=PAYLOAD)
                over_http = time.perf_counter() - started
                if response.text != "setosa":
                    raise SystemExit(f"unexpected answer {response.status_code}: {response.text}")
                if index >= warmup:
                    timings["direct"].append(direct)
                    timings["client"].append(in_process)
                    timings["http"].append(over_http)
    finally:
        server.terminate()
        server.wait(30)
        repository.stop()
    result = {name: summary(samples) for name, samples in timings.items()}
    result["added_median_us"] = result["http"]["median_us"] - result["direct"]["median_us"]
    result["setup"] = {"requests": requests, "warmup": warmup, "intra_op_threads": threads,
                       "onnxruntime": ort.__version__, "python": platform.python_version(),
                       "cores": usable_cores(), "machine": platform.machine()}
    return result


def main() -> None:
    """Parse arguments, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first (default 200)")
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="the onnx-iris project directory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = measure(args.example.resolve(), args.requests, args.warmup)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.requests} requests after {args.warmup} warm-up, {result['setup']}")
    for name in ("direct", "client", "http"):
        stats = result[name]
        print(f"  {name:<7} median {stats['median_us']:8.1f} us   p90 {stats['p90_us']:8.1f} us   "
              f"p99 {stats['p99_us']:8.1f} us")
    print(f"added latency of an HTTP request over session.run (median): {result['added_median_us']:.1f} us")


if __name__ == "__main__":
    main()
