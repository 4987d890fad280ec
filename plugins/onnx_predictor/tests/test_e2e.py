"""End to end over HTTP with a real `engine serve`: the iris example, versions and live reload, start-up errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_onnx_predictor.model_format import EXPECTED_TREE

from engine import usable_cores
from engine.testing import Server, api_yaml, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "onnx-iris"
SAMPLES = {
    "setosa": {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3},
    "versicolor": {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 4.2, "petal_width": 1.5},
    "virginica": {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1},
}

ROUTED = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        name, version = query_params.get("model"), query_params.get("version", "latest")
        outputs = self.client.predict(payload, name, version)
        session = self.client.get_model(name, version)["session"]
        return {"out": outputs[0].tolist(), "threads": session.get_session_options().intra_op_num_threads}
"""


@pytest.fixture
def servers():
    """Start `engine serve` on a project; every server is stopped at teardown."""
    started: list[Server] = []

    def start(project: Path, ready: bool = True, env: dict[str, str] | None = None) -> Server:
        server = Server(project, env=env)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.close()


def copy_example(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "onnx-iris", ignore=shutil.ignore_patterns("__pycache__")))


def assert_iris_answers(server: Server) -> None:
    for label, sample in SAMPLES.items():
        response = server.client.post("/iris-classifier", json=sample)
        assert response.status_code == 200, response.text
        assert response.text == label and response.headers["content-type"].startswith("text/plain")


def test_iris_example_answers_each_class(tmp_path, servers):
    server = servers(copy_example(tmp_path))
    assert_iris_answers(server)
    for alias in ("/", "/predict"):
        assert server.client.post(alias, json=SAMPLES["setosa"]).text == "setosa"

    summary = server.client.get("/iris-classifier").json()
    details = summary["model_metadata"]["_cortex_default"]["details"]["1"]
    assert details["inputs"] == [{"name": "input", "shape": [None, 4], "type": "tensor(float)"}]
    assert [output["name"] for output in details["outputs"]] == ["label", "probabilities"]

    bad = server.client.post("/iris-classifier", json={**SAMPLES["setosa"], "petal_width": "wide"})
    assert bad.status_code == 400
    assert "failed to convert input 'input' for model '_cortex_default'" in bad.json()["error"]
    assert "could not convert string to float: 'wide'" in bad.json()["error"]


def test_iris_model_made_locally_by_the_example_script(tmp_path, servers):
    pytest.importorskip("sklearn", reason="make_model.py needs scikit-learn")
    pytest.importorskip("skl2onnx", reason="make_model.py needs skl2onnx")
    project = copy_example(tmp_path)
    shutil.rmtree(project / "model")
    subprocess.run([sys.executable, str(project / "make_model.py")], check=True, capture_output=True)
    assert (project / "model" / "model.onnx").stat().st_size < 100_000
    assert_iris_answers(servers(project))


def test_models_dir_versions_live_reload_and_errors(tmp_path, servers, models):
    root = tmp_path / "project"
    models.constant(root / "models" / "alpha" / "1" / "m.onnx", 1.0)
    models.constant(root / "models" / "alpha" / "2" / "m.onnx", 2.0)
    models.add(root / "models" / "adder" / "add.onnx", "int64", ["n"])
    write_project(root, {"cortex.yaml": api_yaml("multi", type_="onnx", predictor_extra="models:\n  dir: models/"),
                         "predictor.py": ROUTED})
    server = servers(root, env={"ENGINE_MODEL_POLL_INTERVAL": "0.2"})
    post = lambda query, payload: server.client.post(f"/multi?{query}", json=payload)  # noqa: E731

    assert post("model=alpha", [5, 6]).json()["out"] == [2.0, 2.0]
    assert post("model=alpha&version=1", [5]).json()["out"] == [1.0]
    assert post("model=adder", {"a": [1, 2], "b": [10, 20]}).json()["out"] == [11, 22]

    missing = post("model=adder", {"a": [1, 2]})
    assert missing.status_code == 400 and "missing key 'b'" in missing.json()["error"]
    unknown = post("model=gamma", [1])
    assert unknown.status_code == 404 and "'gamma' model wasn't found" in unknown.json()["error"]

    staging = tmp_path / "staging"
    models.constant(staging / "m.onnx", 3.0)
    staging.rename(root / "models" / "alpha" / "3")  # a new version appears whole
    deadline = time.monotonic() + 15
    while post("model=alpha", [5]).json()["out"] != [3.0]:
        assert time.monotonic() < deadline, f"version 3 was never served:\n{server.output}"
        time.sleep(0.1)
    metadata = server.client.get("/multi").json()["model_metadata"]
    assert metadata["alpha"]["versions"] == ["3", "2", "1"]
    assert metadata["adder"]["details"]["1"]["inputs"][0] == {"name": "a", "shape": ["n"], "type": "tensor(int64)"}


def test_a_bad_model_layout_stops_the_server_with_the_expected_tree(tmp_path, servers, models):
    root = tmp_path / "project"
    models.constant(root / "model" / "first.onnx", 1.0)
    models.constant(root / "model" / "second.onnx", 2.0)
    write_project(root, {"cortex.yaml": api_yaml("clf", type_="onnx", predictor_extra="model_path: model/"),
                         "predictor.py": ROUTED})
    server = servers(root, ready=False)
    assert server.wait_exit() != 0
    assert "found 2 .onnx files (first.onnx, second.onnx)" in server.output
    assert EXPECTED_TREE in server.output


def test_worker_processes_share_the_cores(tmp_path, servers, models):
    root = tmp_path / "project"
    models.constant(root / "model" / "m.onnx", 4.0)
    write_project(root, {"cortex.yaml": api_yaml("clf", type_="onnx",
                                                 predictor_extra="model_path: model/\nprocesses_per_replica: 2"),
                         "predictor.py": ROUTED})
    server = servers(root, env={"ENGINE_ONNX_INTRA_OP_THREADS": ""})
    answers = [server.client.post("/clf", json=[1, 2]).json() for _ in range(4)]
    assert all(answer == {"out": [4.0, 4.0], "threads": max(1, usable_cores() // 2)} for answer in answers)


def test_intra_op_threads_env_override(tmp_path, servers, models):
    root = tmp_path / "project"
    models.constant(root / "model" / "m.onnx", 4.0)
    write_project(root, {"cortex.yaml": api_yaml("clf", type_="onnx", predictor_extra="model_path: model/"),
                         "predictor.py": ROUTED})
    server = servers(root, env={"ENGINE_ONNX_INTRA_OP_THREADS": "3"})
    assert server.client.post("/clf", json=[1]).json() == {"out": [4.0], "threads": 3}
