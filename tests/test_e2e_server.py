"""End to end over HTTP: routes, readiness, concurrency, post_predict, graceful stop and start-up failures."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.testing import api_yaml, free_port, in_thread, wait_file, write_project

pytestmark = pytest.mark.e2e

SIMPLE = """
class PythonPredictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload):
        return {"echo": payload, "config": self.config}
"""

# Blocks in __init__ or predict until the test creates a file: deterministic, no sleeps.
GATED = """
import os
import threading
import time


def wait_for(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]
        self.init_thread = threading.current_thread().name
        if config.get("gate_init"):
            wait_for(os.path.join(self.dir, "release-init"))

    def predict(self, payload):
        open(os.path.join(self.dir, f"entered-{payload['id']}"), "w").close()
        if payload.get("wait"):
            wait_for(os.path.join(self.dir, f"release-{payload['id']}"))
        return {"id": payload["id"], "init_thread": self.init_thread, "thread": threading.current_thread().name}

    def post_predict(self, response, payload):
        if payload.get("post_fail"):
            raise RuntimeError("post_predict exploded")
        if payload.get("post_wait"):
            wait_for(os.path.join(self.dir, f"release-post-{payload['id']}"))
        path = os.path.join(self.dir, f"post-{payload['id']}")
        with open(path + ".tmp", "w") as out:
            out.write(str(response["id"]))
        os.replace(path + ".tmp", path)  # the test waits for this file: it must appear whole
"""


def gated_project(tmp_path: Path, threads: int = 1, extra: str = "", gate_init: bool = False) -> dict[str, str]:
    predictor_extra = f"threads_per_process: {threads}\nconfig:\n  dir: {tmp_path}\n  gate_init: {gate_init}"
    return {"cortex.yaml": api_yaml("gated", predictor_extra=predictor_extra, api_extra=extra), "predictor.py": GATED}


def test_single_api_is_served_at_its_name_and_the_aliases(serve):
    server = serve({"cortex.yaml": api_yaml("iris", predictor_extra="config:\n  k: v"), "predictor.py": SIMPLE})
    for path in ("/iris", "/", "/predict"):
        response = server.client.post(path, json={"x": 1})
        assert response.json() == {"echo": {"x": 1}, "config": {"k": "v"}}, path
        summary = server.client.get(path)
        assert summary.json() == {"message": "make a prediction by sending a post request to this endpoint with a "
                                             "json payload"}


def test_several_apis_custom_endpoint_and_no_aliases(serve):
    config = api_yaml("first") + api_yaml("second", api_extra="networking:\n  endpoint: /v1/second")
    server = serve({"cortex.yaml": config, "predictor.py": SIMPLE})
    assert server.client.post("/first", json=1).json()["echo"] == 1
    assert server.client.post("/v1/second", json=2).json()["echo"] == 2
    assert server.client.post("/second", json=2).status_code == 404
    assert server.client.post("/", json=2).status_code == 404
    assert "api 'second': POST/GET http://127.0.0.1" in server.output and "/v1/second" in server.output


def test_unknown_path_and_wrong_method_are_json_errors(serve):
    server = serve({"cortex.yaml": api_yaml("iris"), "predictor.py": SIMPLE})
    missing = server.client.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = server.client.put("/iris", json={})
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}


def test_metrics_count_requests_by_api_method_and_status(serve):
    server = serve({"cortex.yaml": api_yaml("iris"), "predictor.py": SIMPLE})
    for _ in range(3):
        server.client.post("/iris", json={})
    server.client.post("/iris", content=b"{", headers={"Content-Type": "application/json"})
    server.client.get("/iris")
    text = server.client.get("/metrics").text
    assert 'engine_requests_total{api="iris",method="POST",status_code="200"} 3.0' in text
    assert 'engine_requests_total{api="iris",method="POST",status_code="400"} 1.0' in text
    assert 'engine_requests_total{api="iris",method="GET",status_code="200"} 1.0' in text


def test_readiness_waits_for_init_which_runs_on_the_request_pool(serve, tmp_path):
    server = serve(gated_project(tmp_path, gate_init=True), ready=False)
    server.wait_alive()
    assert server.client.get("/healthz").status_code == 200
    not_ready = server.client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["apis"] == {"gated": "initialising"}
    early = server.client.post("/gated", json={"id": "early"})
    assert early.status_code == 503 and "still initialising" in early.json()["error"]
    (tmp_path / "release-init").touch()
    server.wait_ready()
    body = server.client.post("/gated", json={"id": "a"}).json()
    assert body["init_thread"] == body["thread"] and body["thread"].startswith("api-gated")
    assert re.search(r"ready in \d+\.\d+ s", server.output)


def test_threads_per_process_run_predicts_concurrently(serve, tmp_path):
    server = serve(gated_project(tmp_path, threads=2))
    first, first_result = in_thread(httpx.post, server.url + "/gated", json={"id": "1", "wait": True})
    wait_file(tmp_path / "entered-1")
    second = server.client.post("/gated", json={"id": "2"})  # must not queue behind the blocked one
    assert second.status_code == 200
    (tmp_path / "release-1").touch()
    first.join()
    assert first_result["value"].status_code == 200


def test_more_than_max_replica_concurrency_in_flight_is_503(serve, tmp_path):
    extra = "autoscaling:\n  max_replica_concurrency: 2\n  target_replica_concurrency: 1"
    server = serve(gated_project(tmp_path, threads=2, extra=extra))
    pending = [in_thread(httpx.post, server.url + "/gated", json={"id": str(i), "wait": True}) for i in (1, 2)]
    wait_file(tmp_path / "entered-1")
    wait_file(tmp_path / "entered-2")
    rejected = server.client.post("/gated", json={"id": "3"})
    assert rejected.status_code == 503
    assert "max_replica_concurrency" in rejected.json()["error"]
    assert not (tmp_path / "entered-3").exists()
    for i in (1, 2):
        (tmp_path / f"release-{i}").touch()
    for thread, result in pending:
        thread.join()
        assert result["value"].status_code == 200
    assert server.client.post("/gated", json={"id": "4"}).status_code == 200


def test_post_predict_runs_after_the_response_is_sent(serve, tmp_path):
    server = serve(gated_project(tmp_path, threads=2))
    # post_predict blocks until we release it: if it ran before the response was sent, this would time out.
    response = server.client.post("/gated", json={"id": "p", "post_wait": True})
    assert response.status_code == 200
    assert not (tmp_path / "post-p").exists()
    (tmp_path / "release-post-p").touch()
    wait_file(tmp_path / "post-p")
    assert (tmp_path / "post-p").read_text() == "p"


def test_post_predict_exceptions_are_logged(serve, tmp_path):
    server = serve(gated_project(tmp_path))
    assert server.client.post("/gated", json={"id": "f", "post_fail": True}).status_code == 200
    deadline = time.monotonic() + 10
    while "post_predict exploded" not in server.output:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    assert "post_predict failed" in server.output and "Traceback" in server.output
    assert server.client.post("/gated", json={"id": "after"}).status_code == 200


def test_sigterm_finishes_in_flight_requests_and_post_predicts(serve, tmp_path):
    server = serve(gated_project(tmp_path, threads=2))
    thread, result = in_thread(httpx.post, server.url + "/gated", json={"id": "s", "wait": True})
    wait_file(tmp_path / "entered-s")
    server.process.terminate()
    server.wait_output("stopping: no new connections")
    assert server.process.poll() is None, "the server must wait for its in-flight request"
    (tmp_path / "release-s").touch()
    thread.join()
    assert result["value"].status_code == 200
    assert server.wait_exit() == 0
    assert (tmp_path / "post-s").read_text() == "s"


def test_config_error_exits_1_with_a_readable_message(serve):
    config = api_yaml("bad", predictor_extra="processes_per_replica: 0")
    server = serve({"cortex.yaml": config, "predictor.py": SIMPLE}, ready=False)
    assert server.wait_exit() == 1
    assert "api 'bad': predictor.processes_per_replica: must be at least 1 (given: 0)" in server.output
    assert "Traceback" not in server.output


def test_init_exception_exits_non_zero_with_the_traceback(serve):
    broken = "class PythonPredictor:\n    def __init__(self, config):\n        raise RuntimeError('no model here')\n" \
             "    def predict(self):\n        return 1\n"
    server = serve({"cortex.yaml": api_yaml("broken"), "predictor.py": broken}, ready=False)
    assert server.wait_exit() == 1
    assert "api 'broken': PythonPredictor failed to start" in server.output
    assert "Traceback" in server.output and "RuntimeError: no model here" in server.output


def test_import_error_exits_non_zero_naming_the_file(serve):
    broken = "import not_a_module_anywhere\n\nclass PythonPredictor:\n    def __init__(self, config):\n        pass\n" \
             "    def predict(self):\n        return 1\n"
    server = serve({"cortex.yaml": api_yaml("broken"), "predictor.py": broken}, ready=False)
    assert server.wait_exit() == 1
    assert "error in predictor.py" in server.output and "not_a_module_anywhere" in server.output


def test_missing_class_and_bad_signature_fail_before_binding(serve):
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": "class Other:\n    pass\n"}, ready=False)
    assert server.wait_exit() == 1
    assert "PythonPredictor class is not defined in predictor.py" in server.output
    bad = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self, body):\n" \
          "        return 1\n"
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": bad}, ready=False, name="bad-signature")
    assert server.wait_exit() == 1
    assert 'predict() argument "body" is not a supported argument' in server.output


def test_uninstalled_predictor_type_names_what_to_install(serve):
    config = api_yaml("x", type_="caffe")
    server = serve({"cortex.yaml": config, "predictor.py": SIMPLE}, ready=False)
    assert server.wait_exit() == 1
    assert re.search(r"no plugin provides predictor type 'caffe'; installed: [a-z, ]*python", server.output)


def test_port_in_use_is_a_clear_error(serve, tmp_path):
    first = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    project = write_project(tmp_path / "second", {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    run = subprocess.run([sys.executable, "-m", "engine", "serve", str(project), "--port", str(first.port)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in run.stderr


def test_config_flag_is_relative_to_the_working_directory(tmp_path):
    project = write_project(tmp_path / "sub", {"api.yaml": api_yaml("named"), "predictor.py": SIMPLE})
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "-f", "sub/api.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "ok: api 'named'" in run.stdout
    assert project.is_dir()


def test_validate_lists_fields_not_applied_locally(tmp_path):
    config = api_yaml("x", predictor_extra="image: quay.io/x/y:1",
                      api_extra="compute:\n  cpu: 1\nautoscaling:\n  min_replicas: 2\n  max_replica_concurrency: 5")
    write_project(tmp_path, {"cortex.yaml": config, "predictor.py": SIMPLE})
    run = subprocess.run([sys.executable, "-m", "engine", "validate", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "not applied locally" in run.stdout
    assert "predictor.image, compute.cpu, autoscaling.min_replicas" in run.stdout
    assert "max_replica_concurrency" not in run.stdout


def test_app_is_hostable_by_hypercorn_directly(tmp_path):
    project = write_project(tmp_path / "p", {"cortex.yaml": api_yaml("hosted"), "predictor.py": SIMPLE})
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "hypercorn", f"engine.app:create_app('{project}')",
                                "--bind", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, process.stdout.read().decode()
            time.sleep(0.05)
        assert httpx.post(f"http://127.0.0.1:{port}/hosted", json=5).json()["echo"] == 5
    finally:
        process.terminate()
        assert process.wait(30) == 0
