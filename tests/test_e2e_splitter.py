"""TrafficSplitter on live servers: Cortex's traffic-splitter project (a python and an onnx iris classifier behind one
splitter), the split over 10,000 requests, shadows that fail or hang, admission applied once, streams and WebSockets,
new weights on SIGHUP under load, and bad files refused in Cortex's words."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import websockets
from support import samples, value

from engine.testing import api_yaml, in_thread, wait_file, wait_for, write_project

ONNX_IRIS = Path(__file__).resolve().parents[1] / "examples" / "onnx-iris"
SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
HEADER = "x-engine-api"

# Cortex's test/traffic-splitter (v0.23–v0.25): its PyTorch classifier as a plain-python one (nearest class mean).
PYTHON_IRIS = """
labels = ["setosa", "versicolor", "virginica"]
MEANS = [[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]]


class PythonPredictor:
    def __init__(self, config):
        self.means = MEANS

    def predict(self, payload):
        point = [payload[key] for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
        distances = [sum((a - b) ** 2 for a, b in zip(point, mean)) for mean in self.means]
        return labels[distances.index(min(distances))]
"""

IRIS_CONFIG = """
- name: iris-classifier-python
  kind: RealtimeAPI
  predictor:
    type: python
    path: python_predictor.py
  monitoring:
    model_type: classification

- name: iris-classifier-onnx
  kind: RealtimeAPI
  predictor:
    type: onnx
    path: onnx_predictor.py
    models:
      path: model/
  monitoring:
    model_type: classification

- name: iris-classifier
  kind: TrafficSplitter
  apis:
    - name: iris-classifier-onnx
      weight: 30
    - name: iris-classifier-python
      weight: 70
"""

# Answers with its API's name; ?hold=NAME waits for the file release-NAME (after creating started-NAME).
NAMED = """
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config):
        self.name = config["name"]
        self.folder = Path(config.get("folder", "."))

    def predict(self, payload, query_params):
        hold = query_params.get("hold")
        if hold:
            (self.folder / f"started-{hold}").touch()
            while not (self.folder / f"release-{hold}").exists():
                time.sleep(0.01)
        if self.name == "failing":
            raise RuntimeError("the shadow failed")
        if self.name == "hanging":
            while not (self.folder / "release-shadows").exists():
                time.sleep(0.01)
        return {"api": self.name, "payload": payload}
"""

STREAMING = """
class PythonPredictor:
    def __init__(self, config):
        self.name = config["name"]

    def predict(self, payload):
        for n in range(int(payload)):
            yield {"api": self.name, "n": n}
"""


def named(name: str, folder: Path | None = None, extra: str = "", predictor_extra: str = "") -> str:
    """A RealtimeAPI answering with its name (see NAMED)."""
    config = f"config: {{name: {name}" + (f", folder: '{folder}'" if folder else "") + "}"
    return api_yaml(name, predictor_extra=f"{config}\n{predictor_extra}", api_extra=extra)


def splitter(name: str, weights: dict[str, int], shadow: tuple[str, int] | None = None, extra: str = "") -> str:
    """A TrafficSplitter entry of cortex.yaml."""
    lines = [f"- name: {name}", "  kind: TrafficSplitter", *(f"  {line}" for line in extra.splitlines()), "  apis:"]
    lines += [f"    - {{name: {api}, weight: {weight}}}" for api, weight in weights.items()]
    if shadow:
        lines.append(f"    - {{name: {shadow[0]}, weight: {shadow[1]}, shadow: true}}")
    return "\n".join(lines) + "\n"


def post(client: httpx.Client, path: str, payload: object = 1, **kwargs) -> tuple[int, str, object]:
    """POST: (status, the API that answered, the body: JSON, or text)."""
    answer = client.post(path, json=payload, **kwargs)
    json_body = answer.headers.get("content-type", "").startswith("application/json")
    return answer.status_code, answer.headers.get(HEADER, ""), answer.json() if json_body else answer.text


# --- Cortex's project ---------------------------------------------------------------------------------------------


def test_cortex_traffic_splitter_project(serve, tmp_path):
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    shutil.copy(ONNX_IRIS / "model" / "model.onnx", project / "model" / "model.onnx")
    server = serve({"cortex.yaml": IRIS_CONFIG, "python_predictor.py": PYTHON_IRIS,
                    "onnx_predictor.py": (ONNX_IRIS / "predictor.py").read_text()})
    seen = set()
    for _ in range(40):
        status, api, label = post(server.client, "/iris-classifier", SAMPLE)
        assert (status, label) == (200, "setosa")
        seen.add(api)
    assert seen == {"iris-classifier-onnx", "iris-classifier-python"}  # 40 draws: each is missed with p < 1e-6
    for api in seen:  # each API keeps its own route
        assert server.client.post(f"/{api}", json=SAMPLE).text == "setosa"
    described = server.client.get("/iris-classifier").json()["traffic_splitter"]
    assert described == {"name": "iris-classifier", "endpoint": "/iris-classifier", "apis": [
        {"name": "iris-classifier-onnx", "weight": 30, "endpoint": "/iris-classifier-onnx"},
        {"name": "iris-classifier-python", "weight": 70, "endpoint": "/iris-classifier-python"}]}
    found = samples(server)
    counted = {api: value(found, "engine_splitter_requests_total", splitter="iris-classifier", api=api,
                          method="POST", status_code="200") for api in seen}
    assert sum(counted.values()) == 40 and all(counted.values())
    assert "iris-classifier-onnx POST /iris-classifier 200" in server.output
    assert "splitter=iris-classifier" in server.output
    assert "TrafficSplitter 'iris-classifier': POST" in server.output
    route = server.client.get("/openapi.json").json()["paths"]["/iris-classifier"]
    assert (route["post"]["tags"], route["get"]["operationId"]) == (["iris-classifier"], "iris_classifier_split")


def test_engine_validate_lists_the_splitter(tmp_path):
    project = write_project(tmp_path / "p", {"cortex.yaml": IRIS_CONFIG, "python_predictor.py": PYTHON_IRIS,
                                             "onnx_predictor.py": (ONNX_IRIS / "predictor.py").read_text()})
    shutil.copytree(ONNX_IRIS / "model", project / "model")
    done = subprocess.run([sys.executable, "-m", "engine", "validate", str(project)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "ok: api 'iris-classifier' (TrafficSplitter) at /iris-classifier: iris-classifier-onnx 30%, " \
           "iris-classifier-python 70%" in done.stdout


# --- the split ----------------------------------------------------------------------------------------------------

# Run in a process of its own (the app changes the working directory and imports the predictors): the app served
# in process, each request straight into it as an ASGI call, 50 at a time; each splitter's choices seeded.
SPLIT_RUN = """
import asyncio, collections, json, sys
from engine import Lifespan, create_app, http_scope, play


async def post(app, path):
    read = []

    async def receive():
        if read:
            await asyncio.Future()  # the client stays until the response ends
        read.append(True)
        return {"type": "http.request", "body": b"0", "more_body": False}

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    async with play(app, http_scope(path, "POST", headers), receive) as played:
        await played.read()
        return played.status, dict(played.headers).get(b"x-engine-api", b"").decode()


async def main():
    app = create_app(sys.argv[1])
    lifespan = Lifespan(app)
    await lifespan.start()
    state = app.state.engine
    while not state.ready:
        await asyncio.sleep(0.01)
    counts = {}
    for index, splitter in enumerate(state.splitters):
        splitter.random.seed(index)
        chosen = collections.Counter()
        for _ in range(int(sys.argv[2]) // 50):
            for status, api in await asyncio.gather(*(post(app, splitter.endpoint) for _ in range(50))):
                assert status == 200, status
                chosen[api] += 1
        counts[splitter.name] = chosen
    while any(splitter.tasks for splitter in state.splitters):  # the shadow copies still running
        await asyncio.sleep(0.01)
    async with play(app, http_scope("/metrics", headers=[(b"host", b"127.0.0.1")])) as played:
        counts["metrics"] = (await played.read()).decode()
    await lifespan.stop()
    print(json.dumps(counts))


asyncio.run(main())
"""


def test_the_split_over_10000_requests_follows_the_weights(tmp_path):
    """Seeded choices, so never flaky: each weight within 1.5 points, 0 never, 100 always, the shadow's share too."""
    config = "".join(named(name) for name in ("a", "b", "c", "copy")) + \
        splitter("ab", {"a": 30, "b": 70, "c": 0}, shadow=("copy", 25)) + splitter("all-c", {"a": 0, "c": 100})
    project = write_project(tmp_path / "split", {"cortex.yaml": config, "predictor.py": NAMED})
    done = subprocess.run([sys.executable, "-c", SPLIT_RUN, str(project), "10000"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert abs(counts["ab"]["a"] / 100 - 30) <= 1.5 and abs(counts["ab"]["b"] / 100 - 70) <= 1.5
    assert "c" not in counts["ab"]
    assert counts["all-c"] == {"c": 10000}
    copies = [line for line in counts["metrics"].splitlines() if line.startswith("engine_splitter_shadow_copies")]
    sent = next(float(line.split()[-1]) for line in copies if 'outcome="sent"' in line)
    assert abs(sent / 100 - 25) <= 1.5 and not any('outcome="dropped"' in line for line in copies)


# --- shadows ------------------------------------------------------------------------------------------------------


def test_a_failing_shadow_leaves_the_primary_untouched(serve, tmp_path):
    config = named("primary") + named("failing") + splitter("s", {"primary": 100}, shadow=("failing", 100))
    server = serve({"cortex.yaml": config, "predictor.py": NAMED})
    for n in range(10):
        assert post(server.client, "/s", n) == (200, "primary", {"api": "primary", "payload": n})
    wait_for(lambda: value(samples(server), "engine_requests_total", api="failing", method="POST",
                           status_code="500") == 10, "ten failed shadow copies")
    found = samples(server)
    assert value(found, "engine_splitter_shadow_copies_total", splitter="s", api="failing", outcome="sent") == 10
    assert value(found, "engine_splitter_requests_total", splitter="s", api="primary", method="POST",
                 status_code="200") == 10
    assert value(found, "engine_splitter_requests_total", splitter="s", api="failing", method="POST",
                 status_code="500") == 0  # a shadow's answers are its API's, not the splitter's
    server.wait_output("failing POST /s 500")
    assert "splitter=s shadow" in server.output


def test_a_hanging_shadow_is_bounded_and_never_waited_for(serve, tmp_path):
    """The shadow takes two copies at once (max_replica_concurrency: 2) and holds them until released: the primary
    answers every request meanwhile, and the copies beyond two are dropped and counted, not queued."""
    folder = tmp_path / "files"
    folder.mkdir()
    config = named("primary") + named("hanging", folder, "autoscaling: {max_replica_concurrency: 2}") + \
        splitter("s", {"primary": 100}, shadow=("hanging", 100))
    server = serve({"cortex.yaml": config, "predictor.py": NAMED})
    for n in range(10):
        assert post(server.client, "/s", n) == (200, "primary", {"api": "primary", "payload": n})
    found = samples(server)
    assert value(found, "engine_splitter_shadow_copies_total", splitter="s", api="hanging", outcome="sent") == 2
    assert value(found, "engine_splitter_shadow_copies_total", splitter="s", api="hanging", outcome="dropped") == 8
    assert value(found, "engine_requests_in_flight", api="hanging") == 2  # still held: nobody waited for them
    (folder / "release-shadows").touch()
    wait_for(lambda: value(samples(server), "engine_requests_total", api="hanging", method="POST",
                           status_code="200") == 2, "the held copies finishing")
    assert post(server.client, "/s", "after") == (200, "primary", {"api": "primary", "payload": "after"})
    wait_for(lambda: value(samples(server), "engine_splitter_shadow_copies_total", splitter="s", api="hanging",
                           outcome="sent") == 3, "a copy sent once the shadow has room again")


# --- admission once, streams, WebSockets --------------------------------------------------------------------------


def test_the_chosen_apis_admission_applies_once(serve, tmp_path):
    """Keys at the splitter's route as at any; the chosen API's concurrency limit counts the splitter's requests."""
    folder = tmp_path / "files"
    folder.mkdir()
    config = named("one", folder, "autoscaling: {max_replica_concurrency: 1}", "processes_per_replica: 1") + \
        splitter("s", {"one": 100})
    server = serve({"cortex.yaml": config, "predictor.py": NAMED}, "--api-key", "k")
    keyed = {"headers": {"authorization": "Bearer k"}}
    assert server.client.post("/s", json=1).status_code == 401
    held, result = in_thread(server.client.post, "/one?hold=h", json=1, **keyed)
    wait_file(folder / "started-h")
    refused = server.client.post("/s", json=2, **keyed)
    assert (refused.status_code, refused.headers[HEADER]) == (503, "one")
    assert "already has 1 requests in flight" in refused.json()["error"]
    (folder / "release-h").touch()
    held.join()
    assert result["value"].status_code == 200
    assert post(server.client, "/s", 3, **keyed) == (200, "one", {"api": "one", "payload": 3})


def test_streams_and_websockets_go_through_the_splitter(serve, tmp_path):
    config = api_yaml("x", predictor_extra="config: {name: x}") + api_yaml("y", predictor_extra="config: {name: y}") \
        + splitter("s", {"x": 50, "y": 50})
    server = serve({"cortex.yaml": config, "predictor.py": STREAMING})
    answer = server.client.post("/s", json=3)
    api = answer.headers[HEADER]
    assert [json.loads(line) for line in answer.text.splitlines()] == [{"api": api, "n": n} for n in range(3)]

    async def talk() -> tuple[str, list[dict]]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/s") as socket:
            await socket.send("2")
            replies = [json.loads(await socket.recv()) for _ in range(2)]
            return socket.response.headers[HEADER], replies

    api, replies = asyncio.run(talk())
    assert replies == [{"api": api, "n": 0}, {"api": api, "n": 1}]
    server.wait_output(f"{api} WEBSOCKET /s 200")
    assert "splitter=s" in server.output


# --- weights while serving ------------------------------------------------------------------------------------------


def test_sighup_applies_new_weights_under_load_without_failing_a_request(serve, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    apis = named("a", folder, predictor_extra="threads_per_process: 4") + named("b", folder)
    server = serve({"cortex.yaml": apis + splitter("s", {"a": 100, "b": 0}), "predictor.py": NAMED})
    project = tmp_path / "project"
    held = [in_thread(server.client.post, f"/s?hold=h{n}", json=n) for n in range(2)]
    for n in range(2):
        wait_file(folder / f"started-h{n}")
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                reply = client.post("/s", json=0)
                answers.append((reply.status_code, reply.headers.get(HEADER, "")))

    loader = threading.Thread(target=load)
    loader.start()
    wait_for(lambda: len(answers) > 20, "load")
    write_project(project, {"cortex.yaml": apis + splitter("s", {"a": 0, "b": 100})})
    server.process.send_signal(signal.SIGHUP)
    server.wait_output("SIGHUP: TrafficSplitter 's' at /s: a 0%, b 100%")
    assert {post(server.client, "/s")[1] for _ in range(20)} == {"b"}
    wait_for(lambda: answers and answers[-1][1] == "b", "the load reaching b")
    for n, (thread, result) in enumerate(held):  # in flight across the reload: answered by the API they were given
        (folder / f"release-h{n}").touch()
        thread.join()
        assert (result["value"].status_code, result["value"].headers[HEADER]) == (200, "a")
    stop.set()
    loader.join()
    assert {status for status, _ in answers} == {200} and {api for _, api in answers} == {"a", "b"}

    write_project(project, {"cortex.yaml": apis + splitter("s", {"a": 50, "b": 40})})
    server.process.send_signal(signal.SIGHUP)
    server.wait_output("expected weights to sum to 100 but found 90")
    assert "SIGHUP: the TrafficSplitters were not reloaded, the weights in force stay" in server.output
    assert {post(server.client, "/s")[1] for _ in range(20)} == {"b"}
    write_project(project, {"cortex.yaml": apis + splitter("s", {"a": 100}, extra="networking: {endpoint: /t}")})
    server.process.send_signal(signal.SIGHUP)
    server.wait_output("the TrafficSplitters or their endpoints changed (was: s at /s; now: s at /t)")
    assert {post(server.client, "/s")[1] for _ in range(20)} == {"b"}


# --- what is refused ------------------------------------------------------------------------------------------------

TWO = api_yaml("a") + api_yaml("b") + "- name: batch\n  kind: BatchAPI\n  predictor: {type: python, path: p.py}\n"
REFUSED = [
    (splitter("s", {"a": 30, "b": 60}), "api 's' (TrafficSplitter): apis: expected weights to sum to 100 but found 90"),
    (splitter("s", {"a": 30, "b": 70}, shadow=("b", 10)), "apis: api not unique: b"),
    ("- name: s\n  kind: TrafficSplitter\n  apis:\n    - {name: a, weight: 50}\n    - {name: a, weight: 50}\n"
     "    - {name: b, weight: 0}\n    - {name: b, weight: 0}\n", "apis: apis not unique: a, b"),
    (splitter("s", {"a": 100, "nope": 0}), "apis: api nope was either not found or is not a RealtimeAPI"),
    (splitter("s", {"a": 100, "x": 0, "y": 0}), "apis: apis x and y were either not found or are not RealtimeAPIs"),
    (splitter("s", {"a": 100}) + splitter("t", {"a": 90, "s": 10}),
     "api 't' (TrafficSplitter): apis: api s was either not found or is not a RealtimeAPI"),
    (splitter("s", {"a": 100}) + "- name: t\n  kind: TrafficSplitter\n  apis:\n    - {name: a, weight: 100}\n"
     "    - {name: b, weight: 5, shadow: true}\n    - {name: batch, weight: 5, shadow: true}\n",
     "apis: multiple shadow apis detected; only one api is allowed to be marked as a shadow"),
    (splitter("s", {"a": 30, "b": 60}, shadow=("batch", 10)),
     "apis: expected weights of all non-shadow apis to sum to 100 but found 90"),
    (splitter("s", {"a": 101}), "api 's' (TrafficSplitter): apis[0].weight: must be less than or equal to 100"),
    (splitter("s", {"a": -1}), "apis[0].weight: must be greater than or equal to 0"),
    (splitter("s", {"a": 100}, extra="networking: {endpoint: /a}"),
     "api 's': networking.endpoint: the endpoint /a is already used by api 'a'"),
    (splitter("a", {"b": 100}), "api 'a': name: 'a' is already the name of api #1"),
    (splitter("s", {"a": 100}, extra="predictor: {type: python}"),
     "api 's' (TrafficSplitter): predictor: is not a supported field; allowed here: apis, kind, name, networking"),
    ("- name: s\n  kind: TrafficSplitter\n", "api 's' (TrafficSplitter): apis: is required"),
]


@pytest.mark.parametrize(("entry", "message"), REFUSED, ids=[str(n) for n in range(len(REFUSED))])
def test_engine_validate_refuses_bad_splitters_in_cortexs_words(tmp_path, entry, message):
    project = write_project(tmp_path / "p", {"cortex.yaml": TWO + entry, "predictor.py": NAMED})
    done = subprocess.run([sys.executable, "-m", "engine", "validate", str(project)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1 and message in done.stderr, done.stderr


def test_engine_serve_refuses_a_bad_splitter_before_binding(serve, tmp_path):
    server = serve({"cortex.yaml": api_yaml("a") + splitter("s", {"a": 99}), "predictor.py": NAMED}, ready=False)
    assert server.wait_exit() == 1
    assert "api 's' (TrafficSplitter): apis: expected weights to sum to 100 but found 99" in server.output
    assert "Traceback" not in server.output
