"""`engine predict` as a user runs it (a real process): one prediction through the API's own pipeline, without a
server — each -d form, Content-Types, --include, 4xx and 5xx, tracebacks, start-up errors, --api, post_predict,
streams, and the python, onnx and tensorflow predictor types."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing import api_yaml, write_project

pytestmark = [pytest.mark.e2e, pytest.mark.no_http_server]  # engine predict serves no HTTP

REPO = Path(__file__).resolve().parents[1]

# Answers what it was given: the payload's type, the payload (bytes as their length), the request's Content-Type
# and query parameters. A payload "teapot" is refused with a 418, "fail" raises in helper.py.
ECHO = """
import helper
from starlette.exceptions import HTTPException


class PythonPredictor:
    def __init__(self, config):
        if config.get("fail_init"):
            helper.fail("in __init__")

    def predict(self, payload, query_params, headers):
        print("the predictor's own print")
        if payload == "teapot":
            raise HTTPException(418, "short and stout")
        if payload == "fail":
            helper.fail(payload)
        return {"type": type(payload).__name__, "payload": len(payload) if isinstance(payload, bytes) else payload,
                "content_type": headers.get("content-type"), "query": dict(query_params)}
"""

HELPER = """
def fail(what):
    raise ValueError(f"bad {what}")
"""

# Streams str items: "first", then, once the file config["go"] exists, "second"; with config "fail" it raises
# after the first item. post_predict writes the items it was given to config["out"].
STREAM = """
import json
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload):
        yield "first\\n" if payload == "text" else {"item": 1}
        if self.config.get("fail"):
            raise RuntimeError("the stream broke")
        while not Path(self.config["go"]).exists():
            time.sleep(0.01)
        yield "second" if payload == "text" else {"item": 2}

    def post_predict(self, response, payload):
        Path(self.config["out"]).write_text(json.dumps(response))
"""

# post_predict takes its time, then writes what predict returned.
POST_PREDICT = """
import json
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config):
        self.out = Path(config["out"])

    def predict(self, payload):
        return {"answer": payload["question"] * 2}

    def post_predict(self, response, payload):
        time.sleep(0.3)
        self.out.write_text(json.dumps({"response": response, "payload": payload}))
"""


def engine_predict(*args: str, cwd: Path | None = None, stdin: str | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `engine predict ARGS` to its end."""
    return subprocess.run([sys.executable, "-m", "engine", "predict", *args], capture_output=True, text=True,
                          cwd=cwd, input=stdin, timeout=timeout)


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    return write_project(tmp_path / "echo", {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO,
                                             "helper.py": HELPER})


# --- the python predictor, each -d form ----------------------------------------------------------------------------


def test_the_readmes_engine_predict_commands():
    """Each `engine predict` line of README.md followed by its output (a `# ` line) runs as written and prints it."""
    lines = (REPO / "README.md").read_text().splitlines()
    shown = [(line.split("  #", 1)[0].strip(), lines[index + 1].removeprefix("# "))
             for index, line in enumerate(lines[:-1]) if line.startswith("engine predict ") and
             lines[index + 1].startswith("# ")]
    assert ("engine predict examples/greeter -d '{\"name\": \"Ada\"}'",
            '{"greeting":"Hello, Ada!","signature":"from world!"}') in shown
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for command, expected in shown:
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "PATH": path})
        assert (run.returncode, run.stdout) == (0, expected + "\n"), run.stderr


def test_greeter_query_parameters_and_environment():
    run = engine_predict("examples/greeter", "-d", "{}", "--query", "lang=fr", cwd=REPO)
    assert (run.returncode, run.stdout) == (0, '{"greeting":"Bonjour, world!","signature":"from world!"}\n')


def test_data_from_a_file_and_from_standard_input(echo, tmp_path):
    (tmp_path / "body.json").write_text('{"name": "file"}')
    run = engine_predict(str(echo), "-d", "@body.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"type": "dict", "payload": {"name": "file"}, "content_type": "application/json",
                                      "query": {}}
    run = engine_predict(str(echo), "-d", "-", stdin='["from", "stdin"]')
    assert json.loads(run.stdout)["payload"] == ["from", "stdin"]


def test_the_type_of_a_file_comes_from_its_extension(echo, tmp_path):
    (tmp_path / "words.txt").write_text("some words")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "photo.PNG").write_bytes(b"\x89PNG")
    answers = {name: json.loads(engine_predict(str(echo), "-d", f"@{tmp_path / name}").stdout)
               for name in ("words.txt", "blob.bin", "photo.PNG")}
    assert answers["words.txt"] == {"type": "str", "payload": "some words", "content_type": "text/plain", "query": {}}
    assert answers["blob.bin"] == {"type": "bytes", "payload": 3, "content_type": "application/octet-stream",
                                   "query": {}}
    assert answers["photo.PNG"]["content_type"] == "image/png"


def test_content_type_replaces_the_default(echo):
    run = engine_predict(str(echo), "-d", "not json", "--content-type", "text/plain", "--query", "a=1",
                         "--query", "b=x y")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"type": "str", "payload": "not json", "content_type": "text/plain",
                                      "query": {"a": "1", "b": "x y"}}
    run = engine_predict(str(echo), "-d", "hi", "-H", "Content-Type: text/plain; charset=utf-8")
    assert json.loads(run.stdout)["content_type"] == "text/plain; charset=utf-8"


def test_sample_json_is_the_default_and_its_absence_is_said(echo):
    (echo / "sample.json").write_text('{"from": "sample"}')
    run = engine_predict(str(echo))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["payload"] == {"from": "sample"}
    (echo / "sample.json").unlink()
    run = engine_predict(str(echo))
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.startswith("error: no -d DATA given, and the project has no sample.json")
    assert "-d @FILE" in run.stderr


def test_the_predictors_prints_go_to_standard_error(echo):
    run = engine_predict(str(echo), "-d", "1")
    assert run.stdout == '{"type":"int","payload":1,"content_type":"application/json","query":{}}\n'
    assert "the predictor's own print" in run.stderr


def test_include_prints_the_status_line_and_headers_first(echo):
    run = engine_predict(str(echo), "-d", "2", "--include")
    assert run.returncode == 0, run.stderr
    head, body = run.stdout.split("\n\n", 1)
    lines = head.split("\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body) - 1)  # the newline is engine predict's, not the body's
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert json.loads(body)["payload"] == 2


# --- errors --------------------------------------------------------------------------------------------------------


def test_a_4xx_goes_to_standard_error_with_exit_status_1(echo):
    run = engine_predict(str(echo), "-d", '"teapot"', "--include")
    assert run.returncode == 1
    assert run.stdout.startswith("HTTP/1.1 418 I'm a Teapot\n") and run.stdout.endswith("\n\n")
    assert json.loads(last_line(run.stderr)) == {"error": "short and stout"}


def test_a_bad_json_payload_is_a_400(echo):
    run = engine_predict(str(echo), "-d", "{not json")
    assert (run.returncode, run.stdout) == (1, "")
    assert json.loads(last_line(run.stderr))["error"].startswith("invalid JSON body")


def test_a_predictor_exception_shows_the_users_traceback(echo):
    run = engine_predict(str(echo), "-d", '"fail"')
    assert (run.returncode, run.stdout) == (1, "")
    traceback = run.stderr.split("Traceback (most recent call last):\n", 1)[1]
    frames = [line for line in traceback.splitlines() if line.startswith("  File ")]
    assert frames[0].startswith(f'  File "{echo}/predictor.py", line 15, in predict')
    assert frames[1].startswith(f'  File "{echo}/helper.py", line 2, in fail')
    assert len(frames) == 2 and "engine-project-" not in run.stderr
    assert json.loads(last_line(run.stderr))["error"] == "ValueError: bad fail"


def test_an_init_failure_is_one_error_with_the_users_traceback(echo):
    (echo / "cortex.yaml").write_text(api_yaml("echo", predictor_extra="config:\n  fail_init: true"))
    run = engine_predict(str(echo), "-d", "1")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.startswith("error: api 'echo': PythonPredictor failed to start:\n"
                                 "Traceback (most recent call last):\n"
                                 f'  File "{echo}/predictor.py", line 8, in __init__')
    assert run.stderr.rstrip().endswith("ValueError: bad in __init__")


def test_an_invalid_configuration_is_one_error(echo):
    (echo / "cortex.yaml").write_text(api_yaml("echo", type_="no-such-type"))
    run = engine_predict(str(echo), "-d", "1")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.startswith(f"error: {echo}/cortex.yaml") and "no-such-type" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_several_apis_need_api_and_only_realtime_apis_are_targets(echo):
    (echo / "cortex.yaml").write_text(api_yaml("first") + api_yaml("second") + splitter_yaml())
    run = engine_predict(str(echo), "-d", "1")
    assert run.returncode == 1
    assert "several RealtimeAPIs (first, second): choose one with --api NAME" in run.stderr
    run = engine_predict(str(echo), "-d", "1", "--api", "split")
    assert run.returncode == 1
    assert "--api split: it is a TrafficSplitter" in run.stderr and ": first, second" in run.stderr
    run = engine_predict(str(echo), "-d", "1", "--api", "nope")
    assert "--api nope: there is no api of that name" in run.stderr
    run = engine_predict(str(echo), "-d", '"x"', "--api", "second", "--include")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.split("\n\n", 1)[1])["payload"] == "x"


def test_a_batch_api_is_not_a_target(tmp_path):
    run = engine_predict(str(REPO / "examples" / "batch-iris"), "-d", "[]")
    assert run.returncode == 1
    assert "defines no RealtimeAPI" in run.stderr and "BatchAPIs and TrafficSplitters are not its targets" \
        in run.stderr


def splitter_yaml() -> str:
    return ("- name: split\n  kind: TrafficSplitter\n  apis:\n    - name: first\n      weight: 50\n"
            "    - name: second\n      weight: 50\n")


# --- post_predict and streams --------------------------------------------------------------------------------------


def test_post_predict_has_run_when_the_command_exits(tmp_path):
    out = tmp_path / "post.json"
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("post", predictor_extra=f"config:\n  out: {out}"), "predictor.py": POST_PREDICT})
    run = engine_predict(str(project), "-d", '{"question": 21}')
    assert (run.returncode, run.stdout) == (0, '{"answer":42}\n'), run.stderr
    assert json.loads(out.read_text()) == {"response": {"answer": 42}, "payload": {"question": 21}}


def test_a_stream_is_printed_as_it_comes(tmp_path):
    go, out = tmp_path / "go", tmp_path / "items.json"
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("stream", predictor_extra=f"config:\n  go: {go}\n  out: {out}"),
        "predictor.py": STREAM})
    with subprocess.Popen([sys.executable, "-m", "engine", "predict", str(project), "-d", '"text"'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"first\n"  # the second item waits for this test
        go.touch()
        rest = process.stdout.read()
        assert process.wait(timeout=60) == 0
    assert rest == b"second\n"  # text that does not end with a newline gets one
    assert json.loads(out.read_text()) == ["first\n", "second"]


def test_a_reader_that_leaves_stops_the_stream(tmp_path):
    go, out = tmp_path / "go", tmp_path / "items.json"
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("stream", predictor_extra=f"config:\n  go: {go}\n  out: {out}"),
        "predictor.py": STREAM})
    with subprocess.Popen([sys.executable, "-m", "engine", "predict", str(project), "-d", '"text"'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"first\n"
        process.stdout.close()  # as `| head -n 1` does
        go.touch()
        assert process.wait(timeout=60) == 1
        assert b"BrokenPipeError" not in process.stderr.read()


def test_a_stream_that_fails_midway_exits_1(tmp_path):
    go, out = tmp_path / "go", tmp_path / "items.json"
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("stream", predictor_extra=f"config:\n  go: {go}\n  out: {out}\n  fail: true"),
        "predictor.py": STREAM})
    run = engine_predict(str(project), "-d", '"json"')
    assert run.returncode == 1
    first, error = run.stdout.splitlines()
    assert json.loads(first) == {"item": 1} and json.loads(error)["error"] == "RuntimeError: the stream broke"
    assert f'File "{project}/predictor.py", line 13, in predict' in run.stderr
    run = engine_predict(str(project), "-d", '"text"')  # a plain text stream is cut off, as a client's would be
    assert (run.returncode, run.stdout) == (1, "first\n")
    assert "RuntimeError: the stream broke" in run.stderr


# --- the other predictor types -------------------------------------------------------------------------------------


def test_onnx_with_its_sample_and_inline_data():
    pytest.importorskip("engine_onnx_predictor")
    run = engine_predict("examples/onnx-iris", cwd=REPO)
    assert (run.returncode, run.stdout) == (0, "setosa\n"), run.stderr
    run = engine_predict("examples/onnx-iris", "-d", '{"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": '
                         '4.2, "petal_width": 1.5}', cwd=REPO)
    assert (run.returncode, run.stdout) == (0, "versicolor\n"), run.stderr


@pytest.mark.slow
def test_tensorflow_with_a_model_built_for_it(tmp_path):
    pytest.importorskip("engine_tensorflow_predictor")
    example = REPO / "examples" / "tensorflow-iris"
    project = tmp_path / "tensorflow-iris"
    project.mkdir()
    for name in ("cortex.yaml", "predictor.py", "sample.json"):
        shutil.copy(example / name, project / name)
    subprocess.run([sys.executable, str(example / "build_model.py"), str(project / "model")], check=True,
                   capture_output=True, timeout=300)
    run = engine_predict(str(project), timeout=300)
    assert (run.returncode, run.stdout) == (0, "setosa\n"), run.stderr
