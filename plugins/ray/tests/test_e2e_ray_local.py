"""`engine serve --on ray` without --address: it starts a local Ray instance, serves examples/greeter as `engine serve`
does (/, /predict, .env and predictor.env, a project file), and on SIGTERM leaves no process behind; start-up
failures (configuration, predictor, resources, an address where no cluster runs) are one-paragraph errors with exit
code 1, never hangs."""
from __future__ import annotations

import pytest
import yaml

from engine.testing import Server, wait_for, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

FAILING = """
class PythonPredictor:
    def __init__(self, config):
        raise RuntimeError("the model file is corrupt")

    def predict(self, payload):
        return payload
"""


def test_a_local_instance_serves_the_example_and_sigterm_leaves_nothing(sandbox, ray_server, example):
    project = example("greeter")
    plain = Server(project)
    try:
        plain.wait_ready()
        on_ray = ray_server(project)
        on_ray.wait_ready()
        for path in ("/greeter", "/", "/predict", "/greeter?lang=fr"):
            for body in ({"name": "Ada"}, {}):
                ray_response, plain_response = on_ray.client.post(path, json=body), plain.client.post(path, json=body)
                assert (ray_response.status_code, ray_response.json()) == \
                    (plain_response.status_code, plain_response.json())
        assert on_ray.client.post("/greeter", json={}).json() == {"greeting": "Hello, world!",
                                                                  "signature": "from world!"}
        assert on_ray.client.get("/greeter").json() == plain.client.get("/greeter").json()
        assert on_ray.client.get("/readyz").json() == {"ready": True, "apis": {"greeter": "ready"},
                                                       "replicas": {"greeter": 1}}
        assert on_ray.client.get("/healthz").json() == plain.client.get("/healthz").json()
        wait_for(lambda: 'engine_requests_total{api="greeter"' in on_ray.client.get("/metrics").text,
                 "the replica's metrics reaching /metrics")
        assert on_ray.stop() == 0
    finally:
        plain.close()
    assert wait_for(lambda: not sandbox.processes() or None, "every process of the local Ray instance ending")


def test_a_predictor_that_fails_to_start_is_an_error(sandbox, ray_server, tmp_path):
    project = write_project(tmp_path / "failing", {
        "cortex.yaml": yaml.safe_dump([{"name": "broken", "kind": "RealtimeAPI",
                                        "predictor": {"type": "python", "path": "predictor.py"},
                                        "compute": {"cpu": "100m"}}]),
        "predictor.py": FAILING})
    server = ray_server(project)
    assert server.wait_exit() == 1
    assert "api 'broken': failed to start on Ray" in server.output
    assert "RuntimeError: the model file is corrupt" in server.output
    assert wait_for(lambda: not sandbox.processes() or None, "every process of the local Ray instance ending")


def test_a_replica_no_node_can_hold_is_an_error_not_a_hang(sandbox, ray_server, example):
    project = example("greeter")
    config = yaml.safe_load((project / "cortex.yaml").read_text())
    config[0]["compute"] = {"cpu": 64, "mem": "1Gi"}
    (project / "cortex.yaml").write_text(yaml.safe_dump(config))
    server = ray_server(project)
    assert server.wait_exit() == 1
    assert "error: api 'greeter': one replica asks for CPU 64, memory 1.0 GiB; no node of the Ray cluster has " \
           "that (CPU 2, memory" in server.output
    assert wait_for(lambda: not sandbox.processes() or None, "every process of the local Ray instance ending")


def test_a_configuration_error_is_one_paragraph_before_ray_starts(sandbox, ray_server, tmp_path):
    project = write_project(tmp_path / "misconfigured", {
        "cortex.yaml": yaml.safe_dump([{"name": "api", "kind": "RealtimeAPI",
                                        "predictor": {"type": "python", "path": "predictor.py"},
                                        "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]),
        "predictor.py": FAILING})
    server = ray_server(project)
    assert server.wait_exit() == 1
    last = server.output.strip().splitlines()[-1]
    assert last == f"error: {project / 'cortex.yaml'}: api 'api': autoscaling.min_replicas: must be less than or " \
                   "equal to max_replicas (2) (given: 3)"
    assert "Traceback" not in server.output and "Ray" not in server.output  # refused before Ray starts


def test_an_address_where_no_cluster_runs_is_an_error_at_once(sandbox, ray_server, example):
    server = ray_server(example("greeter"), "--address", "127.0.0.1:6390")
    assert server.wait_exit(timeout=60) == 1
    assert "error: cannot reach the Ray cluster at 127.0.0.1:6390: nothing accepts connections at 127.0.0.1:6390" \
           in server.output
    assert "Traceback" not in server.output
