"""The model repository extension with the real tritonclient, over REST and gRPC, and `engine models` against the same
server: the index's states, unload (503 naming the model and how to load it; memory freed in both worker processes,
and in a worker process started later), load, API keys, and what cannot be loaded or unloaded."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from engine.testing import api_yaml, free_port, wait_for, write_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "sesame"
CLIENTS = {"http": httpclient, "grpc": grpcclient}
UNLOADED = "model a of api 'zoo' is unloaded; load it again with `engine models load zoo.a`"

PYTHON = """
from pathlib import Path


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client

    def load_model(self, model_path):
        return int(Path(model_path, "value.txt").read_text())

    def predict(self, payload):
        return self.client.get_model() + payload
"""
PLAIN = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n    def predict(self, payload):\n" \
        "        return payload\n"
ONNX = "class ONNXPredictor:\n    def __init__(self, onnx_client, config):\n        pass\n\n" \
       "    def predict(self, payload):\n        return payload\n"


@pytest.fixture(scope="module")
def server(servers, tmp_path_factory, onnx_models):
    """zoo: named ONNX models (a: versions 1 and 2, b) in two worker processes; single: one ONNX model; counter: a
    python API whose model python_client loads; plain: a python API without models. API keys on."""
    root = tmp_path_factory.mktemp("repository") / "project"
    identity, double = onnx_models["identity"], onnx_models["double"]
    identity(root / "models" / "a" / "1" / "model.onnx")
    double(root / "models" / "a" / "2" / "model.onnx")
    identity(root / "models" / "b" / "1" / "model.onnx")
    identity(root / "single" / "1" / "model.onnx")
    config = (api_yaml("zoo", type_="onnx", predictor="onnx.py",
                       predictor_extra="processes_per_replica: 2\nmodels:\n  dir: models")
              + api_yaml("single", type_="onnx", predictor="onnx.py", predictor_extra="model_path: single")
              + api_yaml("counter", predictor="counter.py", predictor_extra="models:\n  path: counted")
              + api_yaml("plain", predictor="plain.py"))
    project = write_project(root, {"cortex.yaml": config, "onnx.py": ONNX, "counter.py": PYTHON, "plain.py": PLAIN,
                                   "counted/1/value.txt": "40"})
    started = servers(project, "--api-key", KEY)
    started.client.headers["authorization"] = f"Bearer {KEY}"
    started.wait_ready()
    return started


def key() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}  # a new dict each time: tritonclient.http adds to the one it gets


def client(server, protocol: str):
    return CLIENTS[protocol].InferenceServerClient(server.http if protocol == "http" else server.grpc)


def index(server, protocol: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) → (state, reason), as tritonclient gets the index."""
    rows = client(server, protocol).get_model_repository_index(
        headers=key(), **({"as_json": True} if protocol == "grpc" else {}))
    rows = rows.get("models", []) if protocol == "grpc" else rows
    return {(row["name"], row.get("version", "")): (row["state"], row.get("reason", "")) for row in rows}


def infer(server, protocol: str, model: str) -> list[float]:
    module = CLIENTS[protocol]
    tensor = module.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.5, -2.0], dtype=np.float32))
    return client(server, protocol).infer(model, [tensor], headers=key()).as_numpy("y").tolist()


def refused(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return str(raised.value.status()), raised.value.message()


def metric(server, name: str, **labels: str) -> float:
    """The sample of /metrics with this name and these labels (0.0 before it is first observed)."""
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(part in line for part in wanted):
            return float(line.split()[-1])
    return 0.0


def model_bytes(server, model: str) -> float:
    """What the zoo model's loaded versions hold in memory, summed over both worker processes."""
    return metric(server, "engine_model_bytes", api="zoo", model=model)


def engine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("protocol, other", [("http", "grpc"), ("grpc", "http")])
def test_unload_makes_a_model_unavailable_everywhere_and_load_brings_it_back(server, protocol, other):
    assert infer(server, other, "zoo.a") == [3.0, -4.0]
    loaded = model_bytes(server, "a")
    assert loaded > 0 and index(server, other)[("zoo.a", "2")] == ("READY", "")

    client(server, protocol).unload_model("zoo.a", headers=key())
    states = index(server, other)
    assert states[("zoo.a", "1")] == states[("zoo.a", "2")] == ("UNAVAILABLE", "unloaded")
    assert states[("zoo.b", "1")] == states[("single", "1")] == ("READY", "")
    assert model_bytes(server, "a") == 0  # freed in both worker processes
    for _ in range(4):
        code, message = refused(lambda: infer(server, other, "zoo.a"))
        assert code == ("503" if other == "http" else "StatusCode.UNAVAILABLE") and message.startswith(UNLOADED)
    assert not client(server, other).is_model_ready("zoo.a", headers=key())
    assert "failed (request_id=" not in server.output  # a 503 says "not now": no traceback in the log
    assert infer(server, other, "zoo.b") == [1.5, -2.0]

    client(server, protocol).load_model("zoo.a", headers=key())
    assert index(server, other)[("zoo.a", "2")] == ("READY", "")
    assert model_bytes(server, "a") == loaded and client(server, other).is_model_ready("zoo.a", headers=key())
    assert infer(server, other, "zoo.a") == [3.0, -4.0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_keys_and_what_cannot_be_loaded_or_unloaded(server, protocol):
    found = client(server, protocol)
    unauthorized = "401" if protocol == "http" else "StatusCode.UNAUTHENTICATED"
    assert refused(lambda: found.unload_model("zoo.a"))[0] == unauthorized
    assert refused(lambda: found.load_model("zoo.a", headers={"authorization": "Bearer wrong"}))[0] == unauthorized
    assert refused(lambda: found.get_model_repository_index())[0] == unauthorized
    assert index(server, protocol)[("zoo.a", "2")] == ("READY", "")

    def status(http: int) -> str:
        return str(http) if protocol == "http" else \
            {400: "StatusCode.INVALID_ARGUMENT", 404: "StatusCode.NOT_FOUND"}[http]

    for name, code, text in (("plain", 400, "api 'plain' is a python predictor without models"),
                             ("zoo", 400, "load or unload each by its name, 'zoo.<model>': zoo.a, zoo.b"),
                             ("zoo.c", 404, "unknown model 'zoo.c'; api 'zoo' serves: zoo.a, zoo.b"),
                             ("nope", 404, "unknown model 'nope'")):
        answer, message = refused(lambda name=name: found.unload_model(name, headers=key()))
        assert answer == status(code) and text in message, message
    code, message = refused(lambda: found.load_model("zoo.a", headers=key(), config='{"backend": "onnxruntime"}'))
    assert code == status(400) and message.startswith("the parameters config are not supported")


def test_a_python_apis_model_is_unloaded_and_loaded_as_its_predictor_sees_it(server):
    assert server.client.post("/counter", json=2).json() == 42
    http = client(server, "http")
    http.unload_model("counter", headers=key())
    assert index(server, "http")[("counter", "1")] == ("UNAVAILABLE", "unloaded")
    answer = server.client.post("/counter", json=2)
    assert answer.status_code == 503 and answer.json()["error"].startswith(
        "the model of api 'counter' is unloaded; load it again with `engine models load counter`")
    assert "predict failed" not in server.output
    http.load_model("counter", headers=key())
    assert server.client.post("/counter", json=2).json() == 42
    assert index(server, "http")[("plain", "")] == ("READY", "")  # a python API without models: its own row


def test_a_worker_process_started_later_catches_up_with_an_unload(server):
    client(server, "grpc").unload_model("zoo.b", headers=key())
    assert model_bytes(server, "b") == 0
    loads = metric(server, "engine_model_loads_total", api="zoo", model="b", outcome="ok")
    os.kill(worker_pid(server.process.pid, "zoo", 1), signal.SIGKILL)
    # its replacement loads every model, as at start-up, then replays the unload before it takes requests
    wait_for(lambda: metric(server, "engine_model_loads_total", api="zoo", model="b", outcome="ok") == loads + 1,
             "the replacement worker loading zoo.b", 60)
    wait_for(lambda: model_bytes(server, "b") == 0, "the replacement worker unloading zoo.b", 30)
    assert index(server, "http")[("zoo.b", "1")] == ("UNAVAILABLE", "unloaded")
    client(server, "http").load_model("zoo.b", headers=key())
    assert model_bytes(server, "b") > 0 and infer(server, "grpc", "zoo.b") == [1.5, -2.0]


def worker_pid(parent: int, api: str, index: int) -> int:
    """The pid of a worker process of `parent` (engine.serving.worker_main --api=API --index=N)."""
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"\nPPid:\t{parent}\n" in status and f"--api={api}".encode() in command and \
                f"--index={index}".encode() in command:
            return int(entry.name)
    raise AssertionError(f"no worker process {index} of api '{api}' under pid {parent}")


def test_the_engine_models_command(server, tmp_path):
    connection = ("--url", server.url)
    listed = engine("models", "list", *connection, env={"ENGINE_API_KEY": KEY})
    assert listed.returncode == 0, listed.stderr
    assert {"zoo.a  1  READY", "zoo.a  2  READY", "zoo.b  1  READY", "single  1  READY", "counter  1  READY",
            "plain  -  READY"} <= set(listed.stdout.splitlines())

    unloaded = engine("models", "unload", "single", *connection, "--api-key", KEY)
    assert (unloaded.returncode, unloaded.stdout) == (0, "single: unloaded\n"), unloaded.stderr
    assert "single  1  UNAVAILABLE  (unloaded)" in engine("models", "list", *connection, "--api-key", KEY).stdout
    assert refused(lambda: infer(server, "http", "single"))[1].startswith(
        "the model of api 'single' is unloaded; load it again with `engine models load single`")
    loaded = engine("models", "load", "single", *connection, "--api-key", KEY)
    assert (loaded.returncode, loaded.stdout) == (0, "single: loaded\n") and infer(server, "http", "single")

    for args, message in (
            (("unload", "single", *connection), "error: a valid API key is required"),
            (("load", "zoo.c", *connection, "--api-key", KEY),
             "error: unknown model 'zoo.c'; api 'zoo' serves: zoo.a, zoo.b (HTTP 404 from POST "
             f"{server.url}/v2/repository/models/zoo.c/load)"),
            (("list", "--url", f"{server.url}/elsewhere", "--api-key", KEY),
             f"error: POST {server.url}/elsewhere/v2/repository/index: HTTP 404: it has no model repository API: the "
             "Open Inference Protocol plugin is not installed where `engine serve` runs (pip install engine[oip], "
             "then restart it)"),
            (("list", "--url", f"http://127.0.0.1:{free_port()}"), "connection refused")):
        failed = engine("models", *args)
        assert failed.returncode == 1 and failed.stdout == "" and message in failed.stderr, failed.stderr
        assert len(failed.stderr.splitlines()) == 1
