"""predictor.warmup_file end to end: its requests go through the whole pipeline (payload parsing, predict, encoding,
post_predict) in every process that runs the predictor before /readyz is 200, and one that fails stops the start as a
failing __init__ does. (A SavedModel's tf_serving_warmup_requests: plugins/tensorflow_predictor/tests.)"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import engine.testing
from engine.app import create_app
from engine.serving.warmup import WarmupError, WarmupRequest, read_requests
from engine.testing import Server, api_yaml, free_port, make_api, wait_for, write_project

REPO = Path(__file__).resolve().parents[1]

# Records each call in the file config["record"]; a warm-up request (x-mode: warm-up) also records what /readyz
# answered while it was in predict.
RECORDING = """
import json, os, urllib.error, urllib.request

class PythonPredictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params, headers):
        event = {"pid": os.getpid(), "call": "predict", "payload": payload, "query": dict(query_params),
                 "mode": headers.get("x-mode")}
        if headers.get("x-mode") == "warm-up":
            event["readyz"] = readyz(self.config["readyz"])
        record(self.config["record"], event)
        if payload == "fail":
            raise RuntimeError("warm-up input rejected")
        return {"echo": payload}

    def post_predict(self, response, payload):
        record(self.config["record"], {"pid": os.getpid(), "call": "post_predict", "response": response})


def readyz(url):
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def record(path, event):
    with open(path, "a") as file:
        file.write(json.dumps(event) + "\\n")
"""

ONNX_RECORDING = """
import json, os, urllib.error, urllib.request

class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client, self.config = onnx_client, config

    def predict(self, payload, headers):
        features = [payload[key] for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
        label = int(self.client.predict(features)[0][0])
        event = {"call": "predict", "label": label, "mode": headers.get("x-mode")}
        if headers.get("x-mode") == "warm-up":
            event["readyz"] = readyz(self.config["readyz"])
        record(self.config["record"], event)
        return {"label": label}

    def post_predict(self, response):
        record(self.config["record"], {"call": "post_predict", "response": response})
""" + RECORDING[RECORDING.index("\n\ndef readyz"):]

WARMUP = """
{"payload": {"text": "hello"}, "headers": {"x-mode": "warm-up"}}

{"body": "a,b", "content_type": "text/plain", "query": {"model": "m"}, "headers": {"x-mode": "warm-up"}, "repeat": 2}
"""

SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}


@pytest.fixture
def start(tmp_path, monkeypatch) -> Iterator[Callable[..., Server]]:
    """Start `engine serve` on a project whose predictor config holds its record file and the server's /readyz."""
    servers: list[Server] = []

    def run(files: dict[str, str], config: str, ready: bool = True) -> Server:
        port = free_port()
        record = tmp_path / "record.jsonl"
        config += f"\nconfig: {{record: {record}, readyz: 'http://127.0.0.1:{port}/readyz'}}"
        project = write_project(tmp_path / "project", {**files, "cortex.yaml": api_yaml("warm", **yaml_of(config))})
        monkeypatch.setattr(engine.testing, "free_port", lambda: port)  # the port the config names
        server = Server(project)
        servers.append(server)
        if ready:
            server.wait_ready(60)
        return server

    yield run
    for server in servers:
        server.close()


def yaml_of(config: str) -> dict[str, str]:
    """api_yaml's keyword arguments: the predictor type line first, then the rest under predictor."""
    type_, _, rest = config.partition("\n")
    return {"type_": type_.removeprefix("type: "), "predictor_extra": rest}


def events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_the_warmup_requests_run_through_the_pipeline_in_every_process_before_ready(start, tmp_path, processes):
    server = start({"predictor.py": RECORDING, "warmup.jsonl": WARMUP},
                   f"type: python\nwarmup_file: warmup.jsonl\nprocesses_per_replica: {processes}")
    warmed = events(tmp_path)  # everything recorded before /readyz was 200
    answer = server.client.post("/warm", json="live")
    assert answer.json() == {"echo": "live"}
    predicts = [event for event in warmed if event["call"] == "predict"]
    assert len({event["pid"] for event in predicts}) == processes  # each worker warmed itself up
    for pid in {event["pid"] for event in predicts}:
        own = [event for event in predicts if event["pid"] == pid]
        assert [(event["payload"], event["query"]) for event in own] == \
            [({"text": "hello"}, {}), ("a,b", {"model": "m"}), ("a,b", {"model": "m"})]  # parsed, repeated
        assert all(event["readyz"] == 503 for event in own)  # not ready while it ran
    responses = [event["response"] for event in warmed if event["call"] == "post_predict"]
    assert sorted(map(json.dumps, responses)) == \
        sorted(map(json.dumps, [{"echo": {"text": "hello"}}, {"echo": "a,b"}, {"echo": "a,b"}] * processes))
    assert "api 'warm': 3 warm-up requests of warmup.jsonl replayed in" in server.output


@pytest.mark.e2e
def test_the_onnx_type_is_warmed_up_through_its_client(start, tmp_path):
    shutil.copytree(REPO / "examples" / "onnx-iris" / "model", tmp_path / "project" / "model")
    warmup = json.dumps({"payload": SETOSA, "headers": {"x-mode": "warm-up"}})
    server = start({"predictor.py": ONNX_RECORDING, "warmup.jsonl": warmup},
                   "type: onnx\nmodel_path: model/\nwarmup_file: warmup.jsonl")
    warmed = events(tmp_path)
    assert warmed == [{"call": "predict", "label": 0, "mode": "warm-up", "readyz": 503},
                      {"call": "post_predict", "response": {"label": 0}}]
    assert server.client.post("/warm", json=SETOSA).json() == {"label": 0}


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_warmup_request_stops_the_start_naming_the_file_and_line(start, processes):
    warmup = '{"payload": "fine"}\n{"payload": "fail"}\n'
    server = start({"predictor.py": RECORDING, "warmup.jsonl": warmup},
                   f"type: python\nwarmup_file: warmup.jsonl\nprocesses_per_replica: {processes}", ready=False)
    assert server.wait_exit(60) == 1
    assert "api 'warm': " in server.output and " failed to start:\nwarm-up request warmup.jsonl:2 answered 500: " \
        '{"error":"RuntimeError: warm-up input rejected","request_id":"warmup-2"}' in server.output
    assert "Traceback" in server.output  # predict's, logged under its request id as any request's


def test_a_failed_warmup_keeps_the_api_unready_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an in-process app enters its project's view; undone at the end
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.setattr("os.environ", dict(__import__("os").environ))
    files = {"predictor.py": RECORDING, "warmup.jsonl": '{"payload": 1, "repeat": 0}\n',
             "cortex.yaml": api_yaml("warm", predictor_extra="warmup_file: warmup.jsonl\n"
                                                             f"config: {{record: {tmp_path / 'record.jsonl'}}}")}
    fatal: list[str] = []
    app = create_app(write_project(tmp_path / "project", files), on_fatal=fatal.append)
    from starlette.testclient import TestClient

    with TestClient(app, base_url="http://localhost") as client:
        wait_for(lambda: fatal, "the warm-up failing")
        readyz = client.get("/readyz")
        predict = client.post("/warm", json=1)
    reason = "warmup.jsonl:1: repeat must be a whole number from 1 to 1000 (given: 0)"
    assert fatal == [f"api 'warm': PythonPredictor failed to start:\n{reason}"]
    assert readyz.status_code == 503 and readyz.json()["apis"] == {"warm": f"failed: {reason}"}
    assert predict.status_code == 503 and predict.json()["error"] == f"api 'warm' is not ready: failed to start: " \
                                                                     f"{reason}"
    assert not (tmp_path / "record.jsonl").exists()


# --- the file's format ---------------------------------------------------------------------------------------------


def test_each_line_is_a_request_with_a_body_its_type_a_query_and_headers(tmp_path):
    path = tmp_path / "warmup.jsonl"
    path.write_text('{"payload": [1, "é"]}\n\n{"body": "hi", "query": "a=1&a=2", "headers": {"X-Mode": "w"}}\n'
                    '{"body_base64": "AAE=", "content_type": "image/png", "query": {"a": ["1", "é"]}, "repeat": 3}\n'
                    '{"headers": {"content-type": "text/csv"}}\n')
    assert read_requests(path, "warmup.jsonl") == [
        WarmupRequest(1, b'[1, "\\u00e9"]', (("content-type", "application/json"),), ""),
        WarmupRequest(3, b"hi", (("X-Mode", "w"), ("content-type", "text/plain; charset=utf-8")), "a=1&a=2"),
        WarmupRequest(4, b"\x00\x01", (("content-type", "image/png"),), "a=1&a=%C3%A9", 3),
        WarmupRequest(5, b"", (("content-type", "text/csv"),), ""),
    ]
    request = read_requests(path, "warmup.jsonl")[1].to_api_request("/warm")
    assert (request.body, request.query_params.getlist("a"), request.headers["x-mode"]) == (b"hi", ["1", "2"], "w")
    assert request.request_id == "warmup-3"


@pytest.mark.parametrize("line, problem", [
    ("[1]", "each line must be a JSON object with some of: payload, body, body_base64, content_type, query, "
            "headers, repeat"),
    ('{"payload": 1, "bdy": "x"}', "unknown key 'bdy'; allowed: payload, body, body_base64, content_type, query, "
                                   "headers, repeat"),
    ('{"payload": 1, "body": "x"}', "give at most one of payload, body, body_base64 (given: payload, body)"),
    ('{"body": 1}', "body must be a string (given: int)"),
    ('{"body_base64": "%%"}', "body_base64 must be base64 text"),
    ('{"headers": {"a": 1}}', 'headers must be an object of strings, e.g. {"x-mode": "fast"}'),
    ('{"headers": {"a": "é"}}', "headers must be ASCII text, as HTTP headers are"),
    ('{"query": "a=é"}', "a query string must be ASCII (percent-encode other characters, or give an object)"),
    ('{"query": 3}', 'query must be a query string or an object of strings (or lists of strings), e.g. {"k": "v"}'),
    ('{"repeat": true}', "repeat must be a whole number from 1 to 1000 (given: True)"),
    ('{"payload": ', "Expecting value: line 1 column 13 (char 12)"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, line, problem):
    path = tmp_path / "w.jsonl"
    path.write_text('{"payload": 1}\n' + line + "\n")
    with pytest.raises(WarmupError) as error:
        read_requests(path, "warm/w.jsonl")
    assert str(error.value) == f"warm/w.jsonl:2: {problem}"


def test_a_missing_file_and_a_path_outside_the_project_are_errors(tmp_path):
    with pytest.raises(WarmupError, match=r"^predictor.warmup_file: w.jsonl does not exist \(it is relative to the "
                                          r"project directory\)$"):
        read_requests(tmp_path / "w.jsonl", "w.jsonl")
    with pytest.raises(ValueError, match="must stay inside the project directory"):
        make_api(api_yaml("warm", predictor_extra="warmup_file: ../w.jsonl"))
    assert make_api(api_yaml("warm", predictor_extra="warmup_file: ./w/x.jsonl")).predictor.warmup_file == "w/x.jsonl"


def test_validate_says_when_the_warmup_file_is_missing(tmp_path):
    from engine.errors import ConfigError

    project = write_project(tmp_path / "p", {"cortex.yaml": api_yaml("w", predictor_extra="warmup_file: nowhere.jsonl"),
                                             "predictor.py": "class PythonPredictor:\n    def __init__(self, config):\n"
                                                             "        pass\n    def predict(self, payload):\n"
                                                             "        return payload\n"})
    with pytest.raises(ConfigError, match="predictor.warmup_file: nowhere.jsonl does not exist"):
        engine.testing.validate(project)
