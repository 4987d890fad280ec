"""Warm-up: the first request after a model loads, without and with warm-up, against the steady-state p50.

    .venv/bin/python benchmarks/warmup.py [--rounds 3] [--steady 300] [--skip-onnx]

TensorFlow: an MLP SavedModel (256 → 1024 → 1024 → 10, random weights) served by `engine serve` (tensorflow type,
one process, access log off) in four variants: no warm-up; the SavedModel's assets.extra/tf_serving_warmup_requests
(one PredictionLog of the request's shape); predictor.warmup_file (the same request through the whole pipeline); both.
ONNX: the same MLP shape (1024 inputs) as .onnx, without and with predictor.warmup_file. Each variant runs in
--rounds fresh servers, the variants alternating. In each server, once /readyz is 200: one POST to a path no API
serves (a 404 on the connection /readyz opened: the client's and the HTTP server's own first-POST costs, the same
with and without warm-up, are not counted), then the first request's latency, then the p50 of --steady requests after
20 more, then "idle": the median of 5 requests each sent as the first was (after 0.1 s without requests and an
unrouted POST) to the now warm server. A server idle for a moment answers more slowly than one answering request
after request (its threads sleep), so first/idle is what warm-up can reach, first/p50 what the goal names. For
TensorFlow a version 2 is then dropped in while serving (with the variant's SavedModel warm-up file, if any): the
latency of the first request that version 2 answers, against the same p50 (predictor.warmup_file runs at start-up
only, so that variant's new version is cold). Printed: the medians over rounds; goal with warm-up: first/p50 <= 1.5x.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from suite import REPO, free_port

GOAL = 1.5
TF_SIZES = (256, 1024, 1024, 10)
ONNX_SIZES = (1024, 1024, 1024, 10)  # benchmarks/mlp/make_model.py reads 1024 inputs
TF_VARIANTS = ("none", "savedmodel", "file", "both")
WARMING = 20
IDLE_S = 0.1  # requests after the first, before the steady-state ones are timed

PREDICTOR = """
class {cls}:
    def __init__(self, {client}, config):
        self.client = {client}

    def predict(self, payload):
        return {answer}
"""
TF_ANSWER = "self.client.predict(payload)"
ONNX_ANSWER = "{'y': self.client.predict(payload['x'])[0].tolist()}"


def body(width: int) -> bytes:
    return json.dumps({"x": [[float(i % 13) / 13 for i in range(width)]]}).encode()


def build_tf(path: Path, version: int) -> None:
    """The MLP as a SavedModel; its "version" output tells versions apart."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rng = np.random.default_rng(version)

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = [tf.Variable((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32))
                            for a, b in zip(TF_SIZES, TF_SIZES[1:], strict=False)]

        @tf.function(input_signature=[tf.TensorSpec([None, TF_SIZES[0]], tf.float32)])
        def serve(self, x):
            for index, weight in enumerate(self.weights):
                x = tf.matmul(x, weight)
                x = tf.nn.relu(x) if index < len(self.weights) - 1 else tf.nn.softmax(x)
            return {"y": x, "version": tf.constant([version])}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})


def write_tf_warmup(path: Path) -> None:
    """One PredictionLog with the benchmark's request, as TensorFlow Serving's warm-up file."""
    import tensorflow as tf
    from engine_tensorflow_predictor.warmup import WARMUP_FILE, message_class

    record = message_class("PredictionLog")()
    inputs = np.asarray(json.loads(body(TF_SIZES[0]))["x"], np.float32)
    record.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(inputs))
    (path / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path / WARMUP_FILE)) as writer:
        writer.write(record.SerializeToString())


def project(root: Path, kind: str, variant: str) -> Path:
    """A project of one API, `kind` tensorflow or onnx, warmed up as `variant` says (none, savedmodel, file, both)."""
    folder = root / f"{kind}-{variant}"
    models = folder / "models" / "mlp"
    if kind == "tensorflow":
        build_tf(models / "1", 1)
        if variant in ("savedmodel", "both"):
            write_tf_warmup(models / "1")
        predictor = PREDICTOR.format(cls="TensorFlowPredictor", client="tensorflow_client", answer=TF_ANSWER)
    else:
        sys.path.insert(0, str(REPO / "benchmarks" / "mlp"))
        import make_model
        import onnx

        (models / "1").mkdir(parents=True)
        onnx.save(make_model.build(ONNX_SIZES), str(models / "1" / "model.onnx"))
        predictor = PREDICTOR.format(cls="ONNXPredictor", client="onnx_client", answer=ONNX_ANSWER)
    width = TF_SIZES[0] if kind == "tensorflow" else ONNX_SIZES[0]
    warmup = "\n    warmup_file: warmup.jsonl" if variant in ("file", "both") else ""
    (folder / "warmup.jsonl").write_text(json.dumps({"payload": json.loads(body(width))}) + "\n")
    (folder / "predictor.py").write_text(predictor)
    (folder / "cortex.yaml").write_text(f"""- name: mlp
  kind: RealtimeAPI
  predictor:
    type: {kind}
    path: predictor.py
    models: {{path: models/mlp}}{warmup}
""")
    return folder


class Served:
    """`engine serve` on a project, and a client whose connection /readyz opened."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = open(folder / f"server-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(folder), "--port", str(self.port), "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "ENGINE_MODEL_POLL_INTERVAL": "0.1", "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready; see {self.log.name}")
            time.sleep(0.05)

    def timed(self, content: bytes) -> tuple[float, dict]:
        """One request's latency in ms, and its answer."""
        started = time.perf_counter()
        response = self.client.post("/mlp", content=content, headers={"Content-Type": "application/json"})
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text}")
        return elapsed, response.json()

    def after_idle(self, content: bytes) -> float:
        """A request's latency after IDLE_S without requests and an unrouted POST, as the first request is sent."""
        time.sleep(IDLE_S)
        self.unrouted(content)
        return self.timed(content)[0]

    def unrouted(self, content: bytes) -> None:
        """A POST that no API answers (the router's 404)."""
        response = self.client.post("/no-such-api", content=content, headers={"Content-Type": "application/json"})
        if response.status_code != 404:
            raise RuntimeError(f"expected a 404, got {response.status_code} {response.text}")

    def stop(self) -> None:
        self.client.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def measure(folder: Path, kind: str, variant: str, steady: int, spare: Path | None) -> dict[str, float]:
    """One fresh server: its first request, the steady p50 and, with a spare version, that version's first answer."""
    content = body(TF_SIZES[0] if kind == "tensorflow" else ONNX_SIZES[0])
    served = Served(folder)
    try:
        served.wait_ready()
        served.unrouted(content)
        first, _ = served.timed(content)
        for _ in range(WARMING):
            served.timed(content)
        p50 = statistics.median(served.timed(content)[0] for _ in range(steady))
        result = {"first": first, "p50": p50, "idle": statistics.median(served.after_idle(content) for _ in range(5))}
        if spare is not None:
            target = folder / "models" / "mlp" / "2"
            shutil.copytree(spare, folder / "models" / "mlp" / ".incoming")
            (folder / "models" / "mlp" / ".incoming").rename(target)
            deadline = time.monotonic() + 120
            while True:
                elapsed, answer = served.timed(content)
                if answer["version"] == [2]:
                    result["new_version"] = elapsed
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("version 2 was never served")
            shutil.rmtree(target)  # the next round starts from version 1 alone
        return result
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steady", type=int, default=300)
    parser.add_argument("--skip-onnx", action="store_true")
    args = parser.parse_args()
    runs = [("tensorflow", variant) for variant in TF_VARIANTS]
    runs += [] if args.skip_onnx else [("onnx", variant) for variant in ("none", "file")]
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="warmup-bench-") as temporary:
        root = Path(temporary)
        folders = {run: project(root, *run) for run in runs}
        spares = {}
        for variant in TF_VARIANTS:
            spares[variant] = root / f"spare-{variant}"
            build_tf(spares[variant], 2)
            if variant in ("savedmodel", "both"):
                write_tf_warmup(spares[variant])
        results: dict[tuple[str, str], list[dict[str, float]]] = {run: [] for run in runs}
        for _ in range(args.rounds):
            for run in runs:  # alternating, so that every variant sees the same machine
                spare = spares[run[1]] if run[0] == "tensorflow" else None
                results[run].append(measure(folders[run], *run, args.steady, spare))
    print(f"\n{'type':<11} {'warm-up':<11} {'first ms':>9} {'p50 ms':>7} {'idle ms':>8} {'first/p50':>10} "
          f"{'first/idle':>11} {'new version/p50':>16}")
    for (kind, variant), rounds in results.items():
        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        def ratio(key: str, base: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] / r[base] for r in rounds)

        new = f"{ratio('new_version', 'p50'):>15.2f}x" if "new_version" in rounds[0] else f"{'-':>16}"
        print(f"{kind:<11} {variant:<11} {median('first'):>9.2f} {median('p50'):>7.2f} {median('idle'):>8.2f} "
              f"{ratio('first', 'p50'):>9.2f}x {ratio('first', 'idle'):>10.2f}x {new}")
    print(f"\ngoal: with warm-up, first/p50 <= {GOAL}x (a new version: the SavedModel's file; at start-up: either); "
          "first/idle: the same first request against a warm server's after a pause")


if __name__ == "__main__":
    main()
