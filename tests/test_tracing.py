"""The engine_tracer contract, without OpenTelemetry: a third-party plugin's tracer that writes down every call engine
makes to it, from every process, served at processes_per_replica 1 and 2. A traced request is started in the front
with its headers; its carrier is resumed as it is in a worker process; its phases (admission, predict, encode,
post_predict) come in order as children of its span; a batch gets each request's captured context; log lines carry
ids(); a request the tracer declines is asked nothing more; the span ends with the response's status."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.testing import Server, api_yaml, plugin_environment, write_project

pytestmark = pytest.mark.e2e

# The tracing plugin: every call, one JSON line in $ENGINE_TEST_TRACE_LOG (appended by every process)
RECORDING_TRACER = '''
import contextlib
import contextvars
import json
import os
import threading
import time
import uuid

from engine import Carrier, hookimpl

current = contextvars.ContextVar("recorded_span", default=None)  # (trace id, span id) current here
lock = threading.Lock()


def note(event, **fields):
    line = json.dumps({"event": event, "pid": os.getpid(), "parent": current.get(), **fields}) + "\\n"
    with lock, open(os.environ["ENGINE_TEST_TRACE_LOG"], "a") as log:
        log.write(line)


def new_id():
    return uuid.uuid4().hex[:16]


class RequestSpan:
    def __init__(self, carrier, token):
        self.carrier = carrier
        self.token = token

    def end(self, status):
        current.reset(self.token)
        note("end", span=self.carrier.traceparent.split("-")[2], status=status)


class RecordingTracer:
    def start_request(self, headers, name, attributes, arrived_ns):
        decoded = {key.decode(): value.decode() for key, value in headers}
        traced = "x-untraced" not in decoded
        trace_id, span_id = uuid.uuid4().hex, new_id()
        carrier = Carrier(f"00-{trace_id}-{span_id}-01", f"recorded={os.getpid()}", arrived_ns)
        note("start_request", name=name, attributes=attributes, headers=decoded, arrived_ns=arrived_ns,
             carrier=[carrier.traceparent, carrier.tracestate, carrier.arrived_ns] if traced else None)
        if not traced:
            return None
        return RequestSpan(carrier, current.set((trace_id, span_id)))

    @contextlib.contextmanager
    def resume(self, carrier):
        note("resume", carrier=[carrier.traceparent, carrier.tracestate, carrier.arrived_ns])
        token = current.set(tuple(carrier.traceparent.split("-")[1:3]))
        try:
            yield
        finally:
            current.reset(token)

    @contextlib.contextmanager
    def span(self, name):
        span_id = new_id()
        note("enter", name=name, span=span_id)
        token = current.set((current.get()[0], span_id))
        try:
            yield
        except BaseException as error:
            current.reset(token)
            note("exit", name=name, span=span_id, error=type(error).__name__)
            raise
        current.reset(token)
        note("exit", name=name, span=span_id, error=None)

    def record(self, name, start_ns, end_ns):
        note("record", name=name, start_ns=start_ns, end_ns=end_ns, now=time.time_ns())

    def capture(self):
        return current.get()

    @contextlib.contextmanager
    def batch(self, waits):
        note("batch", waits=[[list(context), since] for context, since in waits])
        token = current.set((waits[0][0][0], new_id()))
        try:
            yield
        finally:
            current.reset(token)
            note("batch_end")

    def ids(self):
        return current.get()


@hookimpl
def engine_tracer():
    return RecordingTracer()
'''

PREDICTOR = """
import logging
import os


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        logging.getLogger("traced").info("predicting %s", payload["id"])
        if payload.get("fail"):
            raise ValueError("asked to fail")
        return {"pid": os.getpid()}

    def post_predict(self, response, payload):
        pass
"""

BATCHED = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return [{"batch": len(payload)} for _ in payload]
"""
BATCH_SIZE = 2  # and a batch only when full: `interval`, with an interval no test reaches
BATCHING = f"server_side_batching:\n  max_batch_size: {BATCH_SIZE}\n  batch_interval: 30s\n  dispatch: interval"


class Recorded:
    """What a server's tracer was told, in the order it was told (lines of one file, from every process)."""

    def __init__(self, path: Path, responses: dict[str, httpx.Response], server_pid: int, output: str) -> None:
        self.events: list[dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines()]
        self.responses = responses  # by the request's name in the test
        self.server_pid = server_pid
        self.logs = [json.loads(line) for line in output.splitlines()]  # the server's (JSON) log lines

    def request(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A request's start_request event, and the events of its trace after it, in order."""
        request_id = self.responses[name].headers["x-request-id"]
        (start,) = [event for event in self.events if event["event"] == "start_request"
                    and event["attributes"]["engine.request_id"] == request_id]
        _, trace_id, span_id, _ = start["carrier"][0].split("-")
        return start, [event for event in self.events[self.events.index(start) + 1:]
                       if (event["parent"] or [None])[0] == trace_id
                       or event["event"] == "resume" and event["carrier"] == start["carrier"]
                       or event["event"] == "end" and event["span"] == span_id]


@pytest.fixture(scope="module")
def recorded(processes, tmp_path_factory):
    """A server with the recording tracer: a traced request, one the tracer declines, a failing one and a batch of
    BATCH_SIZE per process; stopped (post_predicts and all), then what its tracer was told."""
    root = tmp_path_factory.mktemp("tracing")
    log = root / "trace.jsonl"
    env = {**plugin_environment(root / "site", "recorder", RECORDING_TRACER), "ENGINE_TEST_TRACE_LOG": str(log)}
    project = write_project(root / "project", {
        "cortex.yaml": api_yaml("traced") + api_yaml("batched", "batched.py", predictor_extra=BATCHING),
        "predictor.py": PREDICTOR, "batched.py": BATCHED})
    server = Server(project, "--log-format", "json", env=env)
    responses: dict[str, httpx.Response] = {}
    try:
        server.wait_ready()
        responses["traced"] = server.client.post("/traced", json={"id": "traced"}, headers={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-custom": "kept"})
        responses["declined"] = server.client.post("/traced", json={"id": "declined"}, headers={"x-untraced": "1"})
        responses["failing"] = server.client.post("/traced", json={"id": "failing", "fail": True})
        count = BATCH_SIZE * processes  # a full batch in each worker process (requests go to the least loaded)
        together = threading.Barrier(count)

        def send(index: int) -> None:
            together.wait()
            responses[f"batched{index}"] = httpx.post(f"{server.url}/batched", json={}, timeout=60)
        threads = [threading.Thread(target=send, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.stop() == 0
        output = server.output
    finally:
        server.close()
    return Recorded(log, responses, server.process.pid, output)


def test_a_request_is_started_in_the_front_with_its_headers_and_its_carrier_sent_back(recorded):
    start, events = recorded.request("traced")
    response = recorded.responses["traced"]
    assert start["pid"] == recorded.server_pid
    assert start["name"] == "POST /traced"
    assert start["attributes"] == {"http.request.method": "POST", "url.path": "/traced", "engine.api": "traced",
                                   "engine.request_id": response.headers["x-request-id"]}
    assert start["headers"]["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert start["headers"]["x-custom"] == "kept"
    carrier = start["carrier"]
    assert carrier[2] == start["arrived_ns"]
    assert response.headers["traceparent"] == carrier[0]


def test_the_phases_come_in_order_as_children_of_the_request_where_the_predictor_runs(recorded, processes):
    start, events = recorded.request("traced")
    traceparent, tracestate, arrived_ns = start["carrier"]
    _, trace_id, span_id, _ = traceparent.split("-")
    predictor_pid = recorded.responses["traced"].json()["pid"]
    resumed = [event for event in events if event["event"] == "resume"]
    if processes == 1:
        assert predictor_pid == recorded.server_pid and not resumed
    else:  # the worker resumes the very carrier the front made
        assert predictor_pid != recorded.server_pid
        assert [(event["pid"], event["carrier"]) for event in resumed] == \
            [(predictor_pid, [traceparent, tracestate, arrived_ns])]
    phases = [(event["event"], event.get("name"), event["pid"], event["parent"]) for event in events
              if event["event"] in ("record", "enter", "exit")]
    server_span = [trace_id, span_id]
    assert [phase for phase in phases if phase[1] != "post_predict"] == [
        ("record", "admission", predictor_pid, server_span),
        ("enter", "predict", predictor_pid, server_span), ("exit", "predict", predictor_pid, server_span),
        ("enter", "encode", predictor_pid, server_span), ("exit", "encode", predictor_pid, server_span)]
    post = [phase for phase in phases if phase[1] == "post_predict"]
    assert post == [("enter", "post_predict", predictor_pid, server_span),
                    ("exit", "post_predict", predictor_pid, server_span)]
    assert phases.index(post[0]) > phases.index(("exit", "predict", predictor_pid, server_span))
    (admission,) = [event for event in events if event["event"] == "record"]
    assert admission["start_ns"] == arrived_ns <= admission["end_ns"] <= admission["now"]
    (end,) = [event for event in events if event["event"] == "end"]
    assert (end["pid"], end["status"]) == (recorded.server_pid, 200)
    assert events.index(end) > max(index for index, event in enumerate(events)
                                   if event["event"] == "exit" and event["name"] == "encode")


def test_log_lines_written_in_a_phase_carry_its_ids(recorded):
    _, events = recorded.request("traced")
    predict = next(event for event in events if event["event"] == "enter" and event["name"] == "predict")
    (line,) = [line for line in recorded.logs if line["message"] == "predicting traced"]
    assert (line["trace_id"], line["span_id"]) == (predict["parent"][0], predict["span"])
    (declined,) = [line for line in recorded.logs if line["message"] == "predicting declined"]
    assert "trace_id" not in declined and "span_id" not in declined


def test_a_request_the_tracer_declines_is_asked_nothing_more(recorded, processes):
    response = recorded.responses["declined"]
    assert response.status_code == 200 and "traceparent" not in response.headers
    (start,) = [event for event in recorded.events if event["event"] == "start_request" and not event["carrier"]]
    assert start["attributes"]["engine.request_id"] == response.headers["x-request-id"]
    # every span, record and batch of the server belongs to a request the tracer started; each of those ends once
    started = [event["carrier"] for event in recorded.events if event["event"] == "start_request" and event["carrier"]]
    assert all(event["parent"] is not None for event in recorded.events
               if event["event"] in ("enter", "exit", "record", "batch"))
    assert sorted(event["span"] for event in recorded.events if event["event"] == "end") == \
        sorted(carrier[0].split("-")[2] for carrier in started)
    resumed = [event["carrier"] for event in recorded.events if event["event"] == "resume"]
    assert sorted(resumed) == (sorted(started) if processes > 1 else [])  # each traced request once in a worker


def test_a_failing_predict_is_told_to_its_span_and_the_request_ends_with_500(recorded):
    _, events = recorded.request("failing")
    exits = {event["name"]: event["error"] for event in events if event["event"] == "exit"}
    assert exits == {"predict": "ValueError"}  # no encode, no post_predict
    (end,) = [event for event in events if event["event"] == "end"]
    assert end["status"] == recorded.responses["failing"].status_code == 500


def test_a_batch_is_given_the_context_each_of_its_requests_captured(recorded, processes):
    batched = [recorded.request(name) for name in recorded.responses if name.startswith("batched")]
    assert all(recorded.responses[name].json() == {"batch": BATCH_SIZE} for name in recorded.responses
               if name.startswith("batched"))
    arrived = {tuple(start["carrier"][0].split("-")[1:3]): start["arrived_ns"] for start, _ in batched}
    batches = [event for event in recorded.events if event["event"] == "batch"]
    assert len(batches) == processes and all(len(batch["waits"]) == BATCH_SIZE for batch in batches)
    waits = {tuple(context): since for batch in batches for context, since in batch["waits"]}
    assert waits.keys() == arrived.keys()  # each request's server span, in exactly one batch
    assert all(arrived[context] <= since for context, since in waits.items())
    for _, events in batched:  # each request's admission is recorded before it joins its batch; no predict span
        assert [(event["event"], event["name"]) for event in events if event["event"] in ("record", "enter")] == \
            [("record", "admission"), ("enter", "encode")]
