"""The Open Inference Protocol's cost, side by side: the MLP of benchmarks/mlp (1024 → 4096 → 4096 → 10, float32)
through engine's own route (Cortex's JSON), engine-oip over REST (JSON tensors) and gRPC (raw contents), and
MLServer serving the same ONNX model over the protocol's REST and gRPC, at 1 and 32 connections.

    .venv/bin/python plugins/oip/benchmarks/compare.py --mlserver /tmp/mlserver-venv/bin/mlserver [--duration 10]

Needs wrk (Debian: apt-get install wrk), onnx (to write the model) and tritonclient[grpc] in this venv (its
messages make the gRPC requests), and MLServer in a virtual environment of its own (pip install mlserver
onnxruntime: MLServer has no ONNX runtime on PyPI, so this script gives it a ten-line one on onnxruntime, with one
thread as engine's). Every server runs pinned to core 0 and every load generator to core 1 (taskset), as
benchmarks/suite.py does; each measurement follows a 2-second warm-up. wrk drives REST; the gRPC load is this
script's own generator (grpc.aio, one channel per connection, requests prebuilt, bytes in and out). Prints a table:
requests per second and p99 latency.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SERVER_CORE, LOAD_CORE = "0", "1"
FEATURES = [float(i % 13) / 13 for i in range(1024)]
CORTEX_BODY = json.dumps({"x": FEATURES})
OIP_BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": FEATURES}]})

MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options,
                                            providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self.session.run(None, feed)
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name, result) for name, result in zip(self.output_names, results)])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout} s")


def http_ok(url: str, body: str) -> bool:
    import httpx
    try:
        answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        return answer.status_code == 200
    except httpx.TransportError:
        return False


def start_engine(root: Path) -> tuple[subprocess.Popen, int, int]:
    project = root / "engine"
    (project / "model").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "mlp" / "predictor.py", project / "predictor.py")
    shutil.copy(root / "mlp.onnx", project / "model" / "model.onnx")
    (project / "cortex.yaml").write_text("- name: mlp\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n"
                                         "    path: predictor.py\n    model_path: model/\n")
    http, grpc = free_port(), free_port()
    process = subprocess.Popen(["taskset", "-c", SERVER_CORE, sys.executable, "-m", "engine", "serve", str(project),
                                "--port", str(http), "--grpc-port", str(grpc), "--log-level", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{http}/mlp", CORTEX_BODY), "engine", process)
    return process, http, grpc


def start_mlserver(root: Path, mlserver: str) -> tuple[subprocess.Popen, int, int]:
    folder = root / "mlserver"
    (folder / "mlp").mkdir(parents=True)
    shutil.copy(root / "mlp.onnx", folder / "mlp" / "model.onnx")
    (folder / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    http, grpc, metrics = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(json.dumps({"http_port": http, "grpc_port": grpc,
                                                      "metrics_port": metrics, "host": "127.0.0.1"}))
    (folder / "mlp" / "model-settings.json").write_text(json.dumps({
        "name": "mlp", "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": str(folder / "mlp" / "model.onnx")}}))
    with open(Path(tempfile.gettempdir()) / "oip-bench-mlserver.log", "wb") as log:  # what it says, if it fails
        process = subprocess.Popen(["taskset", "-c", SERVER_CORE, mlserver, "start", str(folder)], cwd=folder,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"})
    wait_until(lambda: http_ok(f"http://127.0.0.1:{http}/v2/models/mlp/infer", OIP_BODY), "MLServer", process)
    return process, http, grpc


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- load ------------------------------------------------------------------------------------------------------------


def wrk(url: str, body: str, connections: int, duration: float, root: Path) -> tuple[float, float]:
    script = root / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.body = [[{body}]]\n')
    run = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", "-s", str(script), url, "--latency"]
    subprocess.run([*run[:4], "-d2s", *run[4:]], capture_output=True, check=True)  # warm-up
    output = subprocess.run([*run[:4], f"-d{duration:g}s", *run[4:]], capture_output=True, text=True,
                            check=True).stdout
    if re.search(r"Non-2xx or 3xx responses", output):
        raise RuntimeError(f"errors under load at {url}:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def grpc_load(target: str, connections: int, duration: float) -> tuple[float, float]:
    run = ["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--grpc-load", target, "--connections",
           str(connections)]
    subprocess.run([*run, "--duration", "2"], capture_output=True, check=True)  # warm-up
    answer = subprocess.run([*run, "--duration", str(duration)], capture_output=True, text=True, check=True)
    found = json.loads(answer.stdout)
    return found["rps"], found["p99_ms"]


async def _grpc_load(target: str, connections: int, duration: float) -> dict[str, float]:
    """`connections` channels, each with one call in flight at a time, for `duration` seconds."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1024])
    request.raw_input_contents.append(np.array(FEATURES, dtype=np.float32).tobytes())
    body = request.SerializeToString()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal errors
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while (started := time.perf_counter()) < deadline:
                try:
                    await call(body, timeout=60)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{errors} gRPC calls failed")
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlserver", help="the mlserver command of MLServer's virtual environment")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--grpc-load", metavar="HOST:PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.grpc_load:
        print(json.dumps(asyncio.run(_grpc_load(arguments.grpc_load, arguments.connections[0], arguments.duration))))
        return 0
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="oip-bench-") as directory:
        root = Path(directory)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "mlp" / "make_model.py"), str(root / "mlp.onnx")],
                       check=True)
        processes = []
        try:
            engine, engine_http, engine_grpc = start_engine(root)
            processes.append(engine)
            cases = [
                ("engine, Cortex route (JSON)", "rest", f"http://127.0.0.1:{engine_http}/mlp", CORTEX_BODY),
                ("engine-oip REST (JSON tensors)", "rest", f"http://127.0.0.1:{engine_http}/v2/models/mlp/infer",
                 OIP_BODY),
                ("engine-oip gRPC (raw contents)", "grpc", f"127.0.0.1:{engine_grpc}", None),
            ]
            if arguments.mlserver:
                mlserver, ml_http, ml_grpc = start_mlserver(root, arguments.mlserver)
                processes.append(mlserver)
                cases += [
                    ("MLServer REST (JSON tensors)", "rest", f"http://127.0.0.1:{ml_http}/v2/models/mlp/infer",
                     OIP_BODY),
                    ("MLServer gRPC (raw contents)", "grpc", f"127.0.0.1:{ml_grpc}", None),
                ]
            print(f"{'server':34} {'conns':>5} {'req/s':>9} {'p99 ms':>9}")
            for connections in arguments.connections:
                for name, kind, target, body in cases:
                    if kind == "rest":
                        rps, p99 = wrk(target, body, connections, arguments.duration, root)
                    else:
                        rps, p99 = grpc_load(target, connections, arguments.duration)
                    print(f"{name:34} {connections:>5} {rps:>9.1f} {p99:>9.2f}", flush=True)
        finally:
            for process in processes:
                stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
