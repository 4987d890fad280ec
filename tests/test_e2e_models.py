"""End to end over HTTP: python_client, versions, live reloading and LRU caching on real servers, local and S3."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import boto3
import pytest
from support import samples, value

from engine.testing import Server, free_port, write_project

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
MPG_EXAMPLE = REPO / "examples" / "mpg-estimator"
SAMPLE = json.loads((MPG_EXAMPLE / "sample.json").read_text())
POLL = "0.2"


def copy_example(tmp_path: Path) -> Path:
    project = tmp_path / "mpg"
    shutil.copytree(MPG_EXAMPLE, project)
    return project


def linear_prediction(model: dict) -> float:
    features = [SAMPLE[k] for k in ("cylinders", "displacement", "horsepower", "weight", "acceleration")]
    return sum(w * x for w, x in zip(model["weights"], features, strict=True)) + model["bias"]


def add_version(models: Path, version: int, weights: dict) -> None:
    """Write a version beside the directory, then move it in at once (as a careful deploy script would)."""
    staging = models.parent / f".staging-{version}"
    staging.mkdir()
    (staging / "model.json").write_text(json.dumps(weights))
    staging.rename(models / str(version))


def wait_until(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def mpg(tmp_path):
    project = copy_example(tmp_path)
    server = Server(project, "--model-poll-interval", POLL)
    server.wait_ready()
    yield project, server
    server.close()


def predict(server, path="/mpg-estimator", **params):
    return server.client.post(path, params=params, json=SAMPLE)


def test_seed_mpg_estimator_pattern_with_versions(mpg):
    project, server = mpg
    v1 = json.loads((project / "models/1/model.json").read_text())
    v2 = json.loads((project / "models/2/model.json").read_text())
    latest = predict(server).json()
    assert latest == {"prediction": pytest.approx(linear_prediction(v2)), "model": {"version": None}}
    assert predict(server, version="1").json()["prediction"] == pytest.approx(linear_prediction(v1))
    assert predict(server, version="2").json()["prediction"] == pytest.approx(linear_prediction(v2))
    summary = server.client.get("/mpg-estimator").json()["model_metadata"]["_cortex_default"]
    assert summary["versions"] == ["2", "1"] and summary["loaded"] == ["2", "1"]


@pytest.mark.parametrize("version, status", [("9", 404), ("x", 400), ("../1", 400), ("%2e%2e", 400), ("1.0", 400)])
def test_bad_versions_are_4xx_with_a_json_reason(mpg, version, status):
    _, server = mpg
    response = predict(server, version=version)
    assert response.status_code == status
    assert "version" in response.json()["error"]


def test_new_version_is_served_without_restart_and_removal_is_picked_up(mpg):
    project, server = mpg
    v3 = {"weights": [0, 0, 0, 0, 0], "bias": 33.0}
    add_version(project / "models", 3, v3)
    wait_until(lambda: predict(server).json()["prediction"] == pytest.approx(33.0))
    assert predict(server, version="3").status_code == 200
    shutil.rmtree(project / "models" / "3")
    wait_until(lambda: predict(server, version="3").status_code == 404)
    assert predict(server).json()["prediction"] != pytest.approx(33.0)


def test_broken_new_version_never_replaces_the_working_one(mpg):
    project, server = mpg
    before = predict(server).json()["prediction"]
    staging = project / ".broken"
    staging.mkdir()
    (staging / "model.json").write_text("{not json")
    staging.rename(project / "models" / "5")
    summary = wait_until(lambda: server.client.get("/mpg-estimator").json()["model_metadata"]["_cortex_default"]
                         .get("errors"))
    assert "5" in summary and "failed to load" in summary["5"]
    assert predict(server).json()["prediction"] == before
    assert server.client.get("/readyz").status_code == 200


def test_models_dir_with_cache_size_1(mpg):
    project, server = mpg
    for region in ("usa", "europe", "japan", "usa"):
        response = predict(server, "/mpg-regional", region=region)
        assert response.status_code == 200 and response.json()["region"] == region
        loaded = [name for name, model in server.client.get("/mpg-regional").json()["model_metadata"].items()
                  if model["loaded"]]
        assert loaded == [region]  # cache_size: 1 → only the model just used stays in memory
    missing = predict(server, "/mpg-regional", region="mars")
    assert missing.status_code == 404 and "europe" in missing.json()["error"]
    shutil.copytree(project / "regions" / "usa", project / "regions" / ".new-mars")
    (project / "regions" / ".new-mars").rename(project / "regions" / "mars")
    wait_until(lambda: predict(server, "/mpg-regional", region="mars").status_code == 200)


def test_python_client_requires_load_model_and_client_argument(tmp_path):
    no_client = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n" \
                "    def load_model(self, model_path):\n        return 1\n    def predict(self):\n        return 1\n"
    config = "- name: m\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: p.py\n    model_path: models/\n"
    project = write_project(tmp_path / "a", {"cortex.yaml": config, "p.py": no_client, "models/model.txt": "x"})
    server = Server(project)
    assert server.wait_exit() == 1
    assert 'argument "python_client" is required' in server.output
    no_load = "class PythonPredictor:\n    def __init__(self, config, python_client):\n        pass\n" \
              "    def predict(self):\n        return 1\n"
    project = write_project(tmp_path / "b", {"cortex.yaml": config, "p.py": no_load, "models/model.txt": "x"})
    server = Server(project)
    assert server.wait_exit() == 1
    assert "load_model(self, model_path) must be defined" in server.output


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, setting in env.items():
        monkeypatch.setenv(key, setting)
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="models")
    yield s3, env
    server.stop()


def test_s3_models_versions_and_live_reload(s3_server, tmp_path):
    s3, env = s3_server
    for version, bias in ((1, 10.0), (2, 20.0)):
        s3.put_object(Bucket="models", Key=f"mpg/{version}/model.json",
                      Body=json.dumps({"weights": [0, 0, 0, 0, 0], "bias": bias}))
    project = copy_example(tmp_path)
    (project / "cortex.yaml").write_text(
        "- name: mpg-estimator\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
        "    model_path: s3://models/mpg/\n")
    server = Server(project, "--model-poll-interval", POLL, env=env)
    try:
        server.wait_ready()
        assert predict(server).json()["prediction"] == 20.0
        assert predict(server, version="1").json()["prediction"] == 10.0
        s3.put_object(Bucket="models", Key="mpg/3/model.json", Body=json.dumps({"weights": [0] * 5, "bias": 30.0}))
        wait_until(lambda: predict(server).json()["prediction"] == 30.0)
        s3.delete_object(Bucket="models", Key="mpg/3/model.json")
        wait_until(lambda: predict(server).json()["prediction"] == 20.0)
    finally:
        assert server.stop() == 0


def test_model_load_metrics(mpg):
    _, server = mpg
    for region in ("usa", "europe", "usa"):
        assert predict(server, "/mpg-regional", region=region).status_code == 200
    found = samples(server)
    loads = {(model, kind): value(found, "engine_model_loads_total", api="mpg-regional", model=model, kind=kind,
                                  outcome="ok") for model in ("usa", "europe") for kind in ("load", "reload")}
    assert loads == {("usa", "load"): 1, ("usa", "reload"): 1, ("europe", "load"): 1, ("europe", "reload"): 0}
    assert value(found, "engine_model_load_duration_seconds_count", api="mpg-regional", model="usa") == 2
    assert value(found, "engine_model_loads_total", api="mpg-estimator", model="_cortex_default", kind="load",
                 outcome="ok") == 2  # versions 1 and 2 preloaded
