"""Start-up time of `engine serve` on the tensorflow-iris example, and what HTTP adds over calling the signature.

    python plugins/tensorflow_predictor/benchmarks/bench_iris.py [--requests 2000] [--starts 3]

Builds the example's model in a temporary copy of the example, then:
  1. start-up: `engine serve` launched until GET /readyz answers 200 (median of --starts launches; each launch
     imports TensorFlow, loads the SavedModel and runs the predictor's __init__);
  2. latency, in one run, interleaved so that both see the same machine load: the "predict" signature called
     directly in this process (tensors built beforehand), tensorflow_client.predict in this process (input
     conversion and Cortex-style outputs included), and POST /iris-classifier over HTTP/1.1 with keep-alive
     (the seed's predictor, JSON in, text out). The added latency is median(HTTP) - median(signature).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tensorflow-iris"
SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(root: Path) -> Path:
    """A copy of the example with its model built."""
    project = root / "tensorflow-iris"
    project.mkdir()
    for name in ("predictor.py", "cortex.yaml"):
        shutil.copy(EXAMPLE / name, project / name)
    spec = importlib.util.spec_from_file_location("build_model", EXAMPLE / "build_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(project / "model")
    return project


def start(project: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    """Launch `engine serve`; return the process, its URL and the seconds until /readyz was 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(project), "--port", str(port)],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"engine serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return process, url, time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.01)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured calls of each kind")
    parser.add_argument("--starts", type=int, default=3, help="launches of engine serve to time")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from engine_tensorflow_predictor.client import TensorFlowClient
    from engine_tensorflow_predictor.model import TensorFlowModelFormat
    from engine_tensorflow_predictor.signatures import SignatureKeys

    from engine import Device, ModelRepository, Models, usable_cores

    # this process gets the thread pools that the server's single process gets, set before TensorFlow starts
    keys = SignatureKeys(None, {})
    fmt = TensorFlowModelFormat(keys, Device("cpu", threads=usable_cores()))
    with tempfile.TemporaryDirectory(prefix="bench-tf-iris-") as tmp:
        project = prepare(Path(tmp))
        startups = []
        for index in range(args.starts):
            process, url, seconds = start(project, Path(tmp) / f"serve-{index}.log")
            startups.append(seconds)
            if index < args.starts - 1:
                stop(process)

        repository = ModelRepository(Models(path="model"), project, fmt, "tensorflow", poll_interval=3600)
        repository.scan()
        repository.preload()
        client = TensorFlowClient(repository, keys)
        signature = tf.saved_model.load(str(project / "model")).signatures["predict"]
        tensors = {name: tf.constant([value], tf.float32) for name, value in SAMPLE.items()}
        direct, in_process, over_http = [], [], []
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                for round_ in range(args.requests + 100):  # the first 100 rounds warm up
                    t0 = time.perf_counter()
                    signature(**tensors)
                    t1 = time.perf_counter()
                    client.predict(SAMPLE)
                    t2 = time.perf_counter()
                    response = http.post("/iris-classifier", json=SAMPLE)
                    t3 = time.perf_counter()
                    assert response.text == "setosa", response.text
                    if round_ >= 100:
                        direct.append(t1 - t0)
                        in_process.append(t2 - t1)
                        over_http.append(t3 - t2)
        finally:
            stop(process)
            repository.stop()

    print(f"TensorFlow {tf.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"start-up until /readyz 200: median {statistics.median(startups):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in startups)})")
    print(f"signature called directly:   median {median_ms(direct):.3f} ms")
    print(f"tensorflow_client.predict:   median {median_ms(in_process):.3f} ms")
    print(f"POST over HTTP (keep-alive): median {median_ms(over_http):.3f} ms  "
          f"(p90 {statistics.quantiles(over_http, n=10)[-1] * 1000:.3f} ms)")
    print(f"added by HTTP + engine:      {median_ms(over_http) - median_ms(direct):.3f} ms over the signature, "
          f"{median_ms(over_http) - median_ms(in_process):.3f} ms over tensorflow_client.predict "
          f"({args.requests} requests each)")


if __name__ == "__main__":
    main()
