"""`engine serve --log-format json` on real processes, at processes_per_replica 1 (Hypercorn) and 2 (uvicorn): every
line the server writes, its worker processes' included, is one JSON object, whatever the predictor prints, writes to
its standard streams as bytes, or logs (fuzzed: quotes, newlines, control characters, invalid UTF-8, lone
surrogates, a 1 MB line, a traceback, prints in __init__); what a predictor writes while it handles a request carries
that request's X-Request-ID, and each line comes back exactly as written. A BatchAPI job's worker logs JSON too."""
from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.logformat import JsonFormatter
from engine.serving.accesslog import AccessLog, _engines_handler
from engine.testing import Server, api_yaml, write_project
from engine.tracebacks import HANDLER_NAME

pytestmark = [pytest.mark.e2e]

# Does what each step of the payload says, in order.
PREDICTOR = r'''
import logging
import sys

log = logging.getLogger("fuzz")


class PythonPredictor:
    def __init__(self, config):
        print('init: "quoted"\ttab')
        print("init on stderr", file=sys.stderr)
        sys.stdout.buffer.write(b"init \xff\xfe bytes\n")

    def predict(self, payload):
        for step in payload["steps"]:
            kind, text = step["kind"], step.get("text", "")
            if kind == "print":
                print(text)
            elif kind == "stderr":
                print(text, file=sys.stderr)
            elif kind == "log":
                log.info(text)
            elif kind == "stdout_bytes":
                sys.stdout.buffer.write(bytes.fromhex(step["hex"]) + b"\n")
            elif kind == "stderr_bytes":
                sys.stderr.buffer.write(bytes.fromhex(step["hex"]) + b"\n")
            elif kind == "surrogates":
                print(text + "\udcff\ud800")
                log.info(text + "\udcff")
            elif kind == "big":
                print("x" * step["size"] + "|end")
            elif kind == "raise":
                raise ValueError(text)
        if payload.get("stream"):
            return self.stream(payload["stream"])
        return {"steps": len(payload["steps"])}

    def stream(self, count):
        for index in range(count):
            print(f"streaming {index}")
            yield {"index": index}

    def post_predict(self, response, payload):
        if payload.get("post"):
            print(payload["post"])
'''

# async predict, stream and post_predict (on the predictor's own event loop)
ASYNC_PREDICTOR = r'''
import logging


class PythonPredictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        print("async predict")
        logging.getLogger("fuzz").info("async logged")
        return self.stream(payload["stream"])

    async def stream(self, count):
        for index in range(count):
            print(f"async streaming {index}")
            yield {"index": index}

    async def post_predict(self, response, payload):
        print("async post_predict")
'''

BATCH_PREDICTOR = r'''
import logging
import sys


class PythonPredictor:
    def __init__(self, config, job_spec):
        print("batch worker starting")

    def predict(self, payload, batch_id):
        print(f"batch {payload} printed")
        sys.stderr.buffer.write(b"batch \xff on stderr\n")
        logging.getLogger("fuzz").info("batch %s logged", payload)
'''

BATCH_API = """
- name: batch
  kind: BatchAPI
  predictor:
    type: python
    path: batch.py
"""

JOB_LOG_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


class JsonLines:
    """The server's output (stdout and stderr together), read as it grows; every whole line must be a JSON object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Every record so far."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n", self.offset) + 1
        for line in data[self.offset:end].split(b"\n")[:-1]:
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line[:500]!r}") from None
            assert isinstance(record, dict), line[:500]
            assert {"time", "level", "logger", "message"} <= record.keys(), record
            self.records.append(record)
        self.offset = max(self.offset, end)
        return self.records

    def wait_for(self, what: str, **fields: Any) -> dict[str, Any]:
        """The first record with these fields, once it has been written."""
        deadline = time.monotonic() + 30
        while True:
            for record in self.read():
                if all(record.get(name) == value for name, value in fields.items()):
                    return record
            assert time.monotonic() < deadline, f"no {what} ({fields}) in:\n{self.path.read_text()[-5000:]}"
            time.sleep(0.01)


@pytest.fixture(scope="module", params=[(1, "hypercorn"), (2, "uvicorn")], ids=["1-process", "2-processes"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module per processes_per_replica; stopping it, its last lines are JSON too."""
    processes, http_server = request.param
    root = tmp_path_factory.mktemp(f"json-logs-{processes}")
    files = {"cortex.yaml": api_yaml("fuzz", predictor_extra=f"processes_per_replica: {processes}") + BATCH_API
             + api_yaml("async", "async.py", predictor_extra=f"processes_per_replica: {processes}"),
             "predictor.py": PREDICTOR, "async.py": ASYNC_PREDICTOR, "batch.py": BATCH_PREDICTOR}
    running = Server(write_project(root / "project", files), "--log-format", "json", "--server", http_server,
                     "--state-dir", str(root / "state"))
    running.lines = JsonLines(running.log_path)
    running.processes = processes
    running.state_dir = root / "state"
    try:
        running.wait_ready(60)
        yield running
        assert running.stop() == 0
        records = running.lines.read()
        assert running.log_path.read_bytes().endswith(b"\n")  # nothing unfinished left after the last line
        assert any(record["message"].startswith("stopping: no new connections") for record in records)
        assert not [record for record in records if record["level"] == "CRITICAL"]
    finally:
        running.close()


def send(server: Server, steps: list[dict[str, Any]], status: int = 200, api: str = "fuzz", **options: Any) -> str:
    """POST the steps (and `options`) with an X-Request-ID of our own; the id, once the request's access line is
    written."""
    request_id = f"fuzz-{uuid.uuid4().hex}"
    answer = httpx.post(f"{server.url}/{api}", json={"steps": steps, **options}, headers={"X-Request-ID": request_id},
                        timeout=60)
    assert answer.status_code == status, answer.text
    access = server.lines.wait_for("access line", logger="engine.access", request_id=request_id)
    assert access["api"] == api and access["method"] == "POST" and access["path"] == f"/{api}"
    assert access["status"] == status and access["level"] == "INFO"
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    return request_id


def of_request(server: Server, request_id: str, logger: str, level: str, api: str = "fuzz") -> list[str]:
    """The messages of one logger at one level that carry the request's id, in order."""
    records = [record for record in server.lines.read() if record.get("request_id") == request_id
               and record["logger"] == logger and record["level"] == level]
    assert all(record["api"] == api for record in records)
    if server.processes > 1:
        assert all(record["worker"].startswith(f"{api}:") for record in records)
    return [record["message"] for record in records]


def lines_of(written: bytes) -> list[str]:
    """The lines of a stream that was written these bytes, as engine logs them: UTF-8, invalid bytes as \\xNN."""
    assert written.endswith(b"\n")
    return [line.decode("utf-8", "backslashreplace") for line in written.split(b"\n")[:-1]]


def test_start_up_lines_and_prints_in_init_are_json(server):
    records = server.lines.read()
    messages = [record["message"] for record in records]
    assert messages[0].startswith("engine ") and " starting " in messages[0]
    assert any(message.startswith("listening on http://127.0.0.1:") for message in messages)
    assert any(message.startswith("ready in ") for message in messages)
    for message, level in (('init: "quoted"\ttab', "INFO"), ("init on stderr", "WARNING"),
                           ("init \\xff\\xfe bytes", "INFO")):
        printed = [record for record in records if record["message"] == message]
        assert len(printed) == server.processes, (message, records)
        assert all(record["logger"] == "predictor" and record["level"] == level and "request_id" not in record
                   for record in printed)
    if server.processes > 1:
        assert {record["worker"] for record in records if record["message"] == "init on stderr"} == {"fuzz:0",
                                                                                                      "fuzz:1"}


TEXT = st.text(max_size=300)  # any character but a surrogate: quotes, newlines, tabs, NUL, ESC, U+2028, emoji
STEP = st.one_of(
    st.builds(lambda text: {"kind": "print", "text": text}, TEXT),
    st.builds(lambda text: {"kind": "stderr", "text": text}, TEXT),
    st.builds(lambda text: {"kind": "log", "text": text}, TEXT),
    st.builds(lambda text: {"kind": "surrogates", "text": text}, TEXT),
    st.builds(lambda data: {"kind": "stdout_bytes", "hex": data.hex()}, st.binary(max_size=200)),
    st.builds(lambda data: {"kind": "stderr_bytes", "hex": data.hex()}, st.binary(max_size=200)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=6))
def test_what_predict_writes_comes_back_line_by_line_with_the_request_id(server, steps):
    request_id = send(server, steps)
    stdout, stderr, logged = b"", b"", []
    for step in steps:
        text = step.get("text", "")
        if step["kind"] == "print":
            stdout += text.encode() + b"\n"
        elif step["kind"] == "stderr":
            stderr += text.encode() + b"\n"
        elif step["kind"] == "log":
            logged.append(text)
        elif step["kind"] == "surrogates":  # written out as their escapes: valid UTF-8, which any parser takes
            stdout += text.encode() + b"\\udcff\\ud800\n"
            logged.append(text + "\\udcff")
        elif step["kind"] == "stdout_bytes":
            stdout += bytes.fromhex(step["hex"]) + b"\n"
        else:
            stderr += bytes.fromhex(step["hex"]) + b"\n"
    assert of_request(server, request_id, "predictor", "INFO") == (lines_of(stdout) if stdout else [])
    assert of_request(server, request_id, "predictor", "WARNING") == (lines_of(stderr) if stderr else [])
    assert of_request(server, request_id, "fuzz", "INFO") == logged


def test_a_1_mb_line_stays_one_line(server):
    size = 2**20
    request_id = send(server, [{"kind": "big", "size": size}, {"kind": "print", "text": "after"}])
    assert of_request(server, request_id, "predictor", "INFO") == ["x" * size + "|end", "after"]


def test_a_traceback_is_one_record(server):
    request_id = send(server, [{"kind": "print", "text": "before"}, {"kind": "raise", "text": 'boom "quoted"\nline'}],
                      status=500)
    (error,) = [record for record in server.lines.read()
                if record.get("request_id") == request_id and record["level"] == "ERROR"]
    assert error["logger"] == "engine" and error["message"] == f"api 'fuzz': predict failed (request_id={request_id})"
    assert error["traceback"].startswith("Traceback (most recent call last):\n")
    assert "predictor.py" in error["traceback"] and error["traceback"].endswith('ValueError: boom "quoted"\nline')
    assert of_request(server, request_id, "predictor", "INFO") == ["before"]


def test_a_stream_and_post_predict_carry_the_request_id(server):
    request_id = send(server, [{"kind": "print", "text": "predict"}], stream=3, post="post_predict")
    server.lines.wait_for("post_predict's print", message="post_predict", request_id=request_id)
    assert of_request(server, request_id, "predictor", "INFO") == [
        "predict", "streaming 0", "streaming 1", "streaming 2", "post_predict"]


def test_async_predict_stream_and_post_predict_carry_the_request_id(server):
    request_id = send(server, [], api="async", stream=2)
    server.lines.wait_for("post_predict's print", message="async post_predict", request_id=request_id)
    assert of_request(server, request_id, "predictor", "INFO", api="async") == [
        "async predict", "async streaming 0", "async streaming 1", "async post_predict"]
    assert of_request(server, request_id, "fuzz", "INFO", api="async") == ["async logged"]


def test_a_job_workers_output_is_json(server):
    answer = server.client.post("/batch", json={"workers": 1, "item_list": {"items": [1, 2, 3], "batch_size": 1}})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["job_id"]
    server.lines.wait_for("the job's end", logger="engine.jobs",
                          message=f"job {job_id} (batch api): job ended: status_succeeded")
    job_log = server.state_dir / "jobs" / "batch" / f"{job_id}.log"
    workers = []
    for line in job_log.read_text().splitlines():
        if JOB_LOG_TEXT_LINE.match(line):  # the supervisor's own (engine.jobs: JSON on the server's log)
            continue
        workers.append(json.loads(line))
    name = f"batch:{job_id}:0"
    assert all(record["worker"] == name for record in workers), workers
    shown = {(record["logger"], record["level"], record["message"]) for record in workers}
    assert ("predictor", "INFO", "batch worker starting") in shown
    for item in (1, 2, 3):
        assert {("predictor", "INFO", f"batch [{item}] printed"), ("fuzz", "INFO", f"batch [{item}] logged"),
                ("predictor", "WARNING", "batch \\xff on stderr")} <= shown


def test_the_access_lines_two_ways_give_the_same_json():
    """Written directly (engine's handler alone) and through logging (another handler beside it), in this process."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)  # setLevel: it also clears the loggers' cached isEnabledFor answers
        assert _engines_handler() is handler  # the direct way
        AccessLog().request("api", "POST", "/api", 200, 0.0015, "r1", "splitter=s shadow")
        root.addHandler(logging.NullHandler())
        AccessLog().request("api", "POST", "/api", 200, 0.0015, "r1", "splitter=s shadow")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    direct, through_logging = (json.loads(line) for line in stream.getvalue().splitlines())
    for line in (direct, through_logging):
        del line["time"]
    assert direct == through_logging == {
        "level": "INFO", "logger": "engine.access", "message": "api POST /api 200 1.5ms request_id=r1 "
        "splitter=s shadow", "request_id": "r1", "api": "api", "method": "POST", "path": "/api", "status": 200,
        "duration_ms": 1.5, "via": "splitter=s shadow"}
