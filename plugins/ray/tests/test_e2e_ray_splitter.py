"""A TrafficSplitter on `engine serve --on ray` (a local instance, in the loopback-only namespace): Cortex's
traffic-splitter project (a python and an onnx iris classifier behind one splitter) with a shadow API, routed across
the APIs' deployments with engine serve's weights, shadows and x-engine-api header."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.testing import wait_for, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(400)]

ONNX_IRIS = Path(__file__).resolve().parents[3] / "examples" / "onnx-iris"
SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}

PYTHON_IRIS = """
labels = ["setosa", "versicolor", "virginica"]
MEANS = [[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]]


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        point = [payload[key] for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
        distances = [sum((a - b) ** 2 for a, b in zip(point, mean)) for mean in MEANS]
        return labels[distances.index(min(distances))]
"""

# The shadow: records each copy it gets as a file.
RECORDER = """
import uuid
from pathlib import Path


class PythonPredictor:
    def __init__(self, config):
        self.folder = Path(config["folder"])

    def predict(self, payload, headers):
        (self.folder / uuid.uuid4().hex).write_text(headers.get("host", ""))
        return "recorded"
"""

CONFIG = """
- name: iris-classifier-python
  kind: RealtimeAPI
  predictor: {{type: python, path: python_predictor.py}}
  compute: {{cpu: 100m}}
- name: iris-classifier-onnx
  kind: RealtimeAPI
  predictor: {{type: onnx, path: onnx_predictor.py, models: {{path: model/}}}}
  compute: {{cpu: 100m}}
- name: request-recorder
  kind: RealtimeAPI
  predictor: {{type: python, path: recorder.py, config: {{folder: '{folder}'}}}}
  compute: {{cpu: 100m}}
- name: iris-classifier
  kind: TrafficSplitter
  apis:
    - {{name: iris-classifier-onnx, weight: 30}}
    - {{name: iris-classifier-python, weight: 70}}
    - {{name: request-recorder, weight: 100, shadow: true}}
- name: all-python
  kind: TrafficSplitter
  networking: {{endpoint: /everything/python}}
  apis:
    - {{name: iris-classifier-onnx, weight: 0}}
    - {{name: iris-classifier-python, weight: 100}}
"""


def test_the_splitter_routes_across_the_apis_deployments(sandbox, ray_server, tmp_path):
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    project = write_project(tmp_path / "iris", {"cortex.yaml": CONFIG.format(folder=recorded),
                                                "python_predictor.py": PYTHON_IRIS, "recorder.py": RECORDER,
                                                "onnx_predictor.py": (ONNX_IRIS / "predictor.py").read_text()})
    shutil.copytree(ONNX_IRIS / "model", project / "model")
    server = ray_server(project)
    server.wait_ready()
    client = server.client
    chosen = []
    for _ in range(400):
        answer = client.post("/iris-classifier", json=SAMPLE)
        assert (answer.status_code, answer.text) == (200, "setosa")
        assert len(answer.headers.get_list("x-request-id")) == 1
        chosen.append(answer.headers["x-engine-api"])
    # the same Split as engine serve's (exact shares: tests/test_splitters.py); here 400 draws, 10 points apart
    assert abs(chosen.count("iris-classifier-onnx") / 4 - 30) <= 10, chosen.count("iris-classifier-onnx")
    assert set(chosen) == {"iris-classifier-onnx", "iris-classifier-python"}
    for _ in range(50):
        answer = client.post("/everything/python", json=SAMPLE)
        assert (answer.status_code, answer.headers["x-engine-api"]) == (200, "iris-classifier-python")
    wait_for(lambda: len(list(recorded.iterdir())) == 400, "a shadow copy of each request", timeout=60)
    assert {path.read_text().endswith("-shadow") for path in recorded.iterdir()} == {True}
    described = client.get("/iris-classifier").json()["traffic_splitter"]
    assert [(api["name"], api["weight"], api.get("shadow", False)) for api in described["apis"]] == [
        ("iris-classifier-onnx", 30, False), ("iris-classifier-python", 70, False), ("request-recorder", 100, True)]
    assert client.post("/iris-classifier-onnx", json=SAMPLE).headers.get("x-engine-api") is None  # its own route

    def splitter_metrics() -> bool:
        text = client.get("/metrics").text
        return 'engine_splitter_requests_total{api="iris-classifier-python",method="POST",splitter="all-python",' \
               'status_code="200"} 50.0' in text and 'outcome="sent",splitter="iris-classifier"} 400.0' in text
    wait_for(splitter_metrics, "the splitters' metrics on /metrics", timeout=60)
    assert "TrafficSplitter 'iris-classifier': POST" in server.output
    assert server.stop() == 0
    assert wait_for(lambda: not sandbox.processes() or None, "every process of the local Ray instance ending")
