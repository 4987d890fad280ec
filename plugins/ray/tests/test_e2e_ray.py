"""examples/payloads with `min_replicas: 2` (one API with `processes_per_replica: 2`), and examples/mpg-estimator's
versioned models, on a one-node Ray cluster started here (2 CPUs, 3 GiB) and joined with --address, checked request
for request against `engine serve` of the same project: every payload and response type, errors, models, routes,
metrics, requests spread over the replicas, the 503 past the concurrency limit, scaling bounds, warnings for what Ray
cannot apply, and what SIGTERM leaves."""
from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from engine.testing import Server, wait_for

RAY_CLIENT_PORT = 10001  # `ray start --head` starts the Ray Client server there

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

# A test API beside the example's two: each request waits until the file named by ?release= exists.
HOLD = """
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config):
        self.folder = Path(config["folder"])

    def predict(self, query_params):
        release = self.folder / query_params["release"]
        while not release.exists():
            time.sleep(0.01)
        return "released"
"""

MPG_SAMPLE = {"cylinders": 4, "displacement": 135, "horsepower": 84, "weight": 2490, "acceleration": 15.7}
MPG_FILES = ("predictor.py", "linear_model.py", "models")

# (method, path, httpx arguments): each is sent to both servers and must be answered alike.
CASES = [
    ("POST", "/describe", {"json": {"key": "value", "n": [1, 2.5, None]}}),
    ("POST", "/describe", {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/describe", {"data": {"key": "value", "other": "2"}}),
    ("POST", "/describe", {"files": {"text": ("a.txt", b"hello file", "text/plain"), "blob": ("b.bin", b"\x80\x04")},
                           "data": {"field": "plain"},
                           "headers": {"Content-Type": "multipart/form-data; boundary=b0"}}),
    ("POST", "/describe", {"content": "héllo".encode(), "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/describe", {"content": b"\x00\x01raw", "headers": {"Content-Type": "application/octet-stream"}}),
    ("POST", "/describe", {"content": b"\x00\x01raw"}),
    ("POST", "/describe?version=2&k=1&k=2", {"json": {}}),
    ("POST", "/describe", {"content": b"{oops", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/describe", {"content": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/describe", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}),
    ("POST", "/respond?as=json", {}),
    ("POST", "/respond?as=text", {}),
    ("POST", "/respond?as=bytes", {}),
    ("POST", "/respond?as=response", {}),
    ("POST", "/respond?as=numpy", {}),
    ("POST", "/respond?as=teapot", {}),
    ("POST", "/respond?as=oops", {}),
    ("GET", "/describe", {}),
    ("PUT", "/describe", {}),
    ("GET", "/no/such/path", {}),
    ("GET", "/healthz", {}),
    ("POST", "/mpg-estimator", {"json": MPG_SAMPLE}),
    ("POST", "/mpg-estimator?version=1", {"json": MPG_SAMPLE}),
    ("POST", "/mpg-estimator?version=9", {"json": MPG_SAMPLE}),
    ("GET", "/mpg-estimator", {}),
]


@pytest.fixture(scope="module")
def project(example, tmp_path_factory):
    """examples/payloads, each API with min_replicas: 2 on a fifth of a CPU, plus the `hold` test API and
    examples/mpg-estimator's first API (its models shipped with the project)."""
    root = example("payloads")
    mpg = example("mpg-estimator")
    for name in MPG_FILES:
        (mpg / name).rename(root / name)
    held = tmp_path_factory.mktemp("held")
    apis = yaml.safe_load((root / "cortex.yaml").read_text())
    for api in apis:
        api["compute"] = {"cpu": "200m"}
        api["autoscaling"] = {"min_replicas": 2, "max_replicas": 3}
        if api["name"] == "respond":  # worker processes inside each replica, as engine serve runs them
            api["predictor"]["processes_per_replica"] = 2
    apis.append({"name": "hold", "kind": "RealtimeAPI",
                 "predictor": {"type": "python", "path": "hold.py", "threads_per_process": 2,
                               "config": {"folder": str(held)}},
                 "compute": {"cpu": "100m"},
                 "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_replica_concurrency": 1,
                                 "max_replica_concurrency": 2, "window": "10s", "upscale_stabilization_period": "0s",
                                 "max_upscale_factor": 2.0}})
    apis.append({"name": "mpg-estimator", "kind": "RealtimeAPI",
                 "predictor": {"type": "python", "path": "predictor.py", "model_path": "models/"},
                 "compute": {"cpu": "100m"}})
    (root / "cortex.yaml").write_text(yaml.safe_dump(apis, sort_keys=False))
    (root / "hold.py").write_text(HOLD)
    return root


@pytest.fixture(scope="module")
def on_ray(ray_cluster, ray_server, project):
    """The project on the cluster, joined with --address."""
    server = ray_server(project, "--address", ray_cluster)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def plain(project):
    """The same project on `engine serve`."""
    server = Server(project)
    server.wait_ready()
    yield server
    server.close()


def answer(response) -> tuple:
    """What must be equal on both servers: status, content type, and the body (request ids and the models' file
    times left out)."""
    body = response.content
    if response.headers.get("content-type", "").startswith("application/json"):
        body = json.loads(body)
        if isinstance(body, dict):
            body.pop("request_id", None)
            for model in body.get("model_metadata", {}).values():  # on a cluster: when the upload was unpacked
                model.pop("timestamps", None)
    return response.status_code, response.headers.get("content-type"), response.headers.get("retry-after"), body


@pytest.mark.parametrize("method, path, arguments", CASES, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(CASES)])
def test_answers_as_engine_serve_does(on_ray, plain, method, path, arguments):
    ray_response = on_ray.client.request(method, path, **arguments)
    assert answer(ray_response) == answer(plain.client.request(method, path, **arguments))
    assert len(ray_response.headers.get_list("x-request-id")) == 1


def test_a_request_id_is_echoed_and_errors_carry_it(on_ray):
    response = on_ray.client.post("/respond?as=oops", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json() == {"error": "ValueError: unknown response type 'oops'", "request_id": "trace-42"}


def test_the_documentation_describes_every_route(on_ray, plain):
    assert on_ray.client.get("/openapi.json").json() == plain.client.get("/openapi.json").json()


def test_readyz_says_every_api_is_ready_with_its_replicas(on_ray):
    response = on_ray.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "apis": {"describe": "ready", "respond": "ready", "hold": "ready",
                                                       "mpg-estimator": "ready"},
                               "replicas": {"describe": 2, "respond": 2, "hold": 1, "mpg-estimator": 1}}


def test_a_field_ray_cannot_apply_is_warned_of_at_start(on_ray):
    assert "api 'hold': autoscaling.max_upscale_factor: Ray Serve has no counterpart; not applied on Ray" \
        in on_ray.output


def test_requests_spread_over_both_replicas_and_metrics_add_them_up(on_ray):
    before = samples(on_ray, "engine_requests_total", api="describe", status_code="200")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: on_ray.client.post("/describe", json={}).status_code, range(40)))
    assert codes == [200] * 40
    wait_for(lambda: samples(on_ray, "engine_requests_total", api="describe", status_code="200") >= before + 40,
             "the metrics counting the requests", timeout=30)
    per_replica = wait_for(lambda: replica_counts(on_ray, "describe") if len(replica_counts(on_ray, "describe"))
                           == 2 else None, "two replicas reporting", timeout=30)
    assert all(count > 0 for count in per_replica.values()), per_replica
    assert samples(on_ray, "engine_replicas", api="describe") == 2


def test_metrics_count_requests_answered_by_worker_processes(on_ray):
    before = samples(on_ray, "engine_requests_total", api="respond", status_code="200")
    assert on_ray.client.post("/respond?as=json").status_code == 200
    wait_for(lambda: samples(on_ray, "engine_requests_total", api="respond", status_code="200") >= before + 1,
             "the metrics counting a request of an API with processes_per_replica: 2", timeout=30)


def test_replicas_scale_up_to_max_replicas_and_no_further(on_ray, project):
    folder, release = held_folder(project), uuid.uuid4().hex
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(on_ray.client.post, f"/hold?release={release}") for _ in range(4)]
        replicas = wait_for(lambda: on_ray.client.get("/readyz").json()["replicas"]["hold"] == 2 or None,
                            "hold scaling up to max_replicas", timeout=180)
        assert replicas and on_ray.client.get("/readyz").json()["replicas"]["hold"] <= 2
        (folder / release).touch()
        statuses = [future.result().status_code for future in held]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert all(count <= 3 for count in [on_ray.client.get("/readyz").json()["replicas"][api]
                                        for api in ("describe", "respond")])


def test_past_the_concurrency_limit_requests_get_503(on_ray, project):
    folder, release = held_folder(project), uuid.uuid4().hex
    with ThreadPoolExecutor(12) as pool:
        held = [pool.submit(on_ray.client.post, f"/hold?release={release}") for _ in range(12)]
        refused = wait_for(lambda: [future.result() for future in held if future.done()], "a 503", timeout=60)
        (folder / release).touch()
        responses = [future.result() for future in held]
    assert refused[0].status_code == 503 and refused[0].headers["retry-after"] == "1"
    assert {response.status_code for response in responses} == {200, 503}
    assert all(response.text == "released" for response in responses if response.status_code == 200)


def test_sigterm_deletes_every_application_and_leaves_nothing_engine_started(on_ray, sandbox):
    assert on_ray.stop() == 0
    assert "Deleting app" in on_ray.output
    left = wait_for(lambda: not [line for line in sandbox.processes() if serve_process(line)] or None,
                    "Serve's actors and engine's replicas ending", timeout=60)
    assert left


def serve_process(command_line: str) -> bool:
    """A process of Serve (controller, proxy, replicas) or of engine on Ray (its collector)."""
    return bool(re.search(r"ServeController|ProxyActor|ServeReplica|MetricsCollector|engine serve", command_line))


def held_folder(project: Path) -> Path:
    """Where the hold API looks for its release files."""
    config = yaml.safe_load((project / "cortex.yaml").read_text())
    return Path(next(api for api in config if api["name"] == "hold")["predictor"]["config"]["folder"])


def samples(server, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, from /metrics."""
    total = 0.0
    for line in server.client.get("/metrics").text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match.group(3))
    return total


def replica_counts(server, api: str) -> dict[str, float]:
    """engine_replica_requests_total of each replica of an API."""
    counts = {}
    for line in server.client.get("/metrics").text.splitlines():
        match = re.fullmatch(r'engine_replica_requests_total\{api="([^"]*)",replica="([^"]*)"\} (\S+)', line)
        if match and match.group(1) == api:
            counts[match.group(2)] = float(match.group(3))
    return counts


def ray_client(gcs_address: str) -> str:
    """The Ray Client address (ray://, as KubeRay's head service offers it) of the cluster `ray start` made."""
    return f"ray://{gcs_address.rpartition(':')[0]}:{RAY_CLIENT_PORT}"


def test_on_a_cluster_a_replica_that_cannot_be_placed_is_an_error_after_the_timeout(ray_cluster, ray_server, example,
                                                                                    sandbox, on_ray):
    on_ray.stop()  # one engine per cluster
    project = example("greeter")
    config = yaml.safe_load((project / "cortex.yaml").read_text())
    config[0]["compute"] = {"cpu": 64}
    (project / "cortex.yaml").write_text(yaml.safe_dump(config))
    server = ray_server(project, "--address", ray_client(ray_cluster), "--worker-init-timeout", "5",
                        "--graceful-timeout", "1")  # Ray waits that long before it gives up the unplaced replica
    assert server.wait_exit() == 1
    assert "api 'greeter': one replica asks for CPU 64; no node of the Ray cluster has that (CPU 2); waiting up to " \
           "--worker-init-timeout" in server.output
    assert "error: the applications were not running after --worker-init-timeout (5 s)" in server.output
    assert "api 'greeter': DEPLOYING: its replicas are waiting for a node to hold them" in server.output
    assert wait_for(lambda: not [line for line in sandbox.processes() if serve_process(line)] or None,
                    "Serve's actors ending", timeout=60)
