"""End to end over HTTP with real `engine serve`: the iris example, and several models with versions and live reload."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.testing import Server, api_yaml, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tensorflow-iris"
START_TIMEOUT = 120  # importing TensorFlow alone takes seconds

SAMPLES = [
    ({"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}, "setosa"),
    ({"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5}, "versicolor"),
    ({"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}, "virginica"),
]


def test_the_seed_iris_predictor_classifies_three_samples(iris_server):
    for sample, label in SAMPLES:
        response = iris_server.client.post("/iris-classifier", json=sample)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == label
    sample = json.loads((EXAMPLE / "sample.json").read_text())
    assert iris_server.client.post("/predict", json=sample).text == "setosa"


def test_the_iris_summary_shows_the_signature_and_its_inputs(iris_server):
    body = iris_server.client.get("/iris-classifier").json()
    details = body["model_metadata"]["_cortex_default"]["details"]["1"]
    assert details["signature_key"] == "predict"
    assert details["input_signatures"]["sepal_length"] == {"shape": [-1], "type": "float32"}


def test_a_bad_iris_request_is_a_400_naming_the_missing_key(iris_server):
    response = iris_server.client.post("/iris-classifier", json={"sepal_length": 5.2})
    assert response.status_code == 400
    assert response.json()["error"].startswith("missing key 'petal_length' for model '_cortex_default'")


GENERIC = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        if query_params.get("threads"):
            import tensorflow as tf
            return [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()]
        name, version = query_params.get("model"), query_params.get("version", "latest")
        if query_params.get("raw"):
            outputs = self.client.predict(payload, name, version, raw=True)
            return {key: [list(value.shape), str(value.dtype)] for key, value in outputs.items()}
        return self.client.predict(payload, name, version)
"""

MODELS = """
processes_per_replica: 2
threads_per_process: 2
server_side_batching:
  max_batch_size: 4
  batch_interval: 20ms
models:
  paths:
    - name: scaled
      model_path: models/scaled
    - name: ambiguous
      model_path: models/ambiguous
      signature_key: b
    - name: big
      path: models/big
    - name: iris
      path: models/iris
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory, saved_models, builders, copy_model):
    """Both servers, started side by side since each spends seconds importing TensorFlow."""
    # iris: the example as shipped (predictor.py, cortex.yaml), its model built by its own script.
    # models: four models (one with versions 1 and 2, one with its own signature_key), server-side batching,
    # two worker processes, new versions looked for every 0.2 s.
    root = tmp_path_factory.mktemp("e2e")
    iris = root / "tensorflow-iris"
    iris.mkdir()
    for name in ("predictor.py", "cortex.yaml", "sample.json"):
        shutil.copy(EXAMPLE / name, iris / name)
    build = subprocess.Popen([sys.executable, str(EXAMPLE / "build_model.py"), str(iris / "model")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started: list[Server] = []
    try:
        project = write_project(root / "project", {"cortex.yaml": api_yaml("models", type_="tensorflow",
                                                                           predictor_extra=MODELS),
                                                   "predictor.py": GENERIC})
        for version in (1, 2):
            builders["scaled"](project / "models" / "scaled" / str(version), float(version))
        builders["scaled"](root / "spare-version-3", 3.0)
        for name in ("ambiguous", "big", "iris"):
            copy_model(saved_models[name], project / "models" / name / "1")
        started.append(Server(project, env={"ENGINE_MODEL_POLL_INTERVAL": "0.2"}))
        output, _ = build.communicate(timeout=300)
        assert build.returncode == 0, output
        started.append(Server(iris))
        for server in started:
            server.wait_ready(START_TIMEOUT)
        yield {"models": started[0], "iris": started[1], "spare": root / "spare-version-3"}
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        for server in started:
            server.close()


@pytest.fixture
def iris_server(servers):
    return servers["iris"]


@pytest.fixture
def models_server(servers):
    return servers["models"]


def post(server, model, payload, **params):
    return server.client.post("/models", params={"model": model, **params}, json=payload)


def test_tensorflow_thread_pools_are_sized_from_the_cpu_device(models_server):
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # the cpu device shares the cores between the 2 processes
    assert models_server.client.post("/models?threads=1", json={}).json() == [threads, threads]
    assert f"TensorFlow thread pools: {threads} intra-op, {threads} inter-op threads" in models_server.output


def test_models_and_versions_over_http(models_server):
    assert post(models_server, "scaled", {"x": [1.0, 2.0]}).json() == {"y": [2.0, 4.0]}
    assert post(models_server, "scaled", {"x": 1.0}, version="1").json() == {"y": [1.0]}
    assert post(models_server, "ambiguous", {"x": [1.0]}).json() == {"y": [2.0]}
    missing = post(models_server, "scaled", {"x": 1.0}, version="7")
    assert missing.status_code == 404 and "model scaled of version 7 wasn't found" in missing.json()["error"]
    unknown = post(models_server, "nope", {"x": 1.0})
    assert unknown.status_code == 404 and "'nope' model wasn't found" in unknown.json()["error"]


def test_batched_requests_each_get_their_own_answer(models_server):
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda x: post(models_server, "scaled", {"x": [x, x + 1]}, version="2").json(),
                               [1.0, 3.0, 5.0, 7.0]))
    assert bodies == [{"y": [2 * x, 2 * x + 2]} for x in (1.0, 3.0, 5.0, 7.0)]  # predict() saw one payload each


def test_input_errors_are_400s_over_http(models_server):
    response = post(models_server, "scaled", {"x": [[1.0, 2.0]]})
    assert response.status_code == 400
    assert response.json() == {"error": "input 'x' for model 'scaled' of version 'latest' (signature "
                                        "'serving_default'): expected shape [-1] (-1: any size), received shape "
                                        "[1, 2]"}


def test_raw_outputs_keep_shapes_and_dtypes(models_server):
    body = post(models_server, "iris", SAMPLES[0][0], raw="1").json()
    assert body["class_ids"] == [[1, 1], "int64"] and body["probabilities"] == [[1, 3], "float32"]
    assert body["classes"] == [[1, 1], "object"]


def test_an_output_over_8_mb_crosses_http(models_server):
    elements = 2_600_000
    response = post(models_server, "big", {"n": elements})
    assert response.status_code == 200
    assert len(response.content) > 8_000_000
    body = response.json()
    assert len(body["zeros"]) == elements and body["zeros"][0] == 0.5 and body["first"] == ["7"]


def test_the_summary_shows_each_models_signature(models_server):
    metadata = models_server.client.get("/models").json()["model_metadata"]
    assert metadata["scaled"]["versions"] == ["2", "1"]
    assert metadata["ambiguous"]["details"]["1"]["signature_key"] == "b"
    assert metadata["iris"]["details"]["1"]["signature_key"] == "predict"
    assert metadata["big"]["details"]["1"]["input_signatures"] == {"n": {"shape": [], "type": "int32"}}


def test_a_new_version_is_served_while_serving(models_server, servers):
    target = servers["spare"].parent / "project" / "models" / "scaled"
    shutil.copytree(servers["spare"], target / ".incoming-3")
    (target / ".incoming-3").rename(target / "3")
    deadline = time.monotonic() + 30
    while post(models_server, "scaled", {"x": 1.0}).json() != {"y": [3.0]}:
        assert time.monotonic() < deadline, models_server.output
        time.sleep(0.1)
    assert post(models_server, "scaled", {"x": 1.0}, version="2").json() == {"y": [2.0]}
