"""The request path in process, without `engine serve`: the admission layer (engine.serving.admission) in front of a
real Pipeline in an inline Starlette app, the pipeline's arguments, encodings and errors, and the worker protocol
(engine.serving.messages, engine.serving.worker_main, engine.serving.worker_pool) over socket pairs and one real worker
process.

The test_e2e_* modules reach the same paths through real servers; these reach them in milliseconds, and hold a
request where a test needs it with threading.Events on the predictor instance (pipeline.predictor.instance)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pickle
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from engine import plugins
from engine.serving import admission as admission_module
from engine.serving import messages, worker_main
from engine.serving.admission import Admission
from engine.serving.metrics import Metrics
from engine.serving.pipeline import GET_MESSAGE, Pipeline
from engine.serving.worker_pool import WorkerGroup
from engine.settings import ServeSettings
from engine.testing import api_yaml, make_api, write_project

pytestmark = pytest.mark.anyio

API = "api"
PATH = "/api"
TIMEOUT = 30  # seconds after which a wait for something that never comes fails the test instead of hanging it

# predict holds a request whose payload starts with "wait" until the test opens the gate
GATED = """
import threading

class PythonPredictor:
    def __init__(self, config):
        self.started = threading.Event()
        self.gate = threading.Event()
        self.seen = []

    def predict(self, payload):
        self.seen.append(payload)
        if str(payload).startswith("wait"):
            self.started.set()
            self.gate.wait(30)
        return {"echo": payload}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Front:
    """The server as the admission layer sees it (engine.serving.admission.ServerState)."""

    draining = False


@pytest.fixture
def pipeline_of(tmp_path, pm) -> Callable[..., Pipeline]:
    """A Pipeline, not started, of a project in tmp_path with one API whose predictor.py is `source`."""

    def make(source: str, predictor_extra: str = "", api_extra: str = "", shows_errors: bool = True) -> Pipeline:
        write_project(tmp_path, {"predictor.py": source})
        api = make_api(api_yaml(API, predictor_extra=predictor_extra, api_extra=api_extra))
        return Pipeline(api, pm, Metrics(), model_poll_interval=10, shows_errors=shows_errors)

    return make


@contextlib.asynccontextmanager
async def running(pipeline: Pipeline, root: Path) -> AsyncIterator[Any]:
    """The started pipeline's predictor instance; afterwards every gate of it opens and the pipeline stops."""
    await pipeline.start(root, root)
    try:
        yield pipeline.predictor.instance
    finally:
        for value in vars(pipeline.predictor.instance).values():
            if isinstance(value, threading.Event):
                value.set()
        await pipeline.stop()


def admission(backend: Any, front: Front | None = None, **settings: Any) -> Admission:
    """The admission layer of `backend`, under these serve settings."""
    return Admission(backend, backend.metrics if isinstance(backend, Pipeline) else Metrics(),
                     ServeSettings(**settings), front or Front())


def client(app: Any) -> httpx.AsyncClient:
    """An HTTP client of an inline Starlette app that routes PATH to `app` (an Admission) for every method."""
    inline = Starlette(routes=[Route(PATH, app)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(inline), base_url="http://testserver")


async def started(event: threading.Event) -> None:
    """Wait, off the event loop, until a predictor's thread sets `event`."""
    assert await asyncio.to_thread(event.wait, TIMEOUT), "the predictor never got there"


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` is true, letting the event loop run meanwhile."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} never happened"
        await asyncio.sleep(0.01)


def sample(metrics: Metrics, name: str) -> float:
    """One of the API's counters as /metrics would show it (0 when it was never counted)."""
    return metrics.registry.get_sample_value(name, {"api": API}) or 0.0


def http_scope(method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    """An ASGI HTTP scope for PATH, as a server would pass it."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": PATH, "raw_path": PATH.encode(), "root_path": "", "query_string": b"",
            "headers": headers or [], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8888)}


async def played(app: Any, scope: dict, receive: Callable) -> list[dict]:
    """The messages an ASGI app sends for one request whose client is `receive`."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
    await asyncio.wait_for(app(scope, receive, send), TIMEOUT)
    return sent


# --- admission: request ids ----------------------------------------------------------------------------------------

HEADERS_ECHO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, headers):
        return {"ids": headers.getlist("x-request-id")}
"""


async def test_a_sane_request_id_is_echoed_and_is_the_one_the_predictor_sees(pipeline_of, tmp_path):
    pipeline = pipeline_of(HEADERS_ECHO)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        for sent in ("abc-123", "x" * 200, "!~"):
            response = await http.post(PATH, headers={"x-request-id": sent})
            assert response.status_code == 200
            assert response.headers["x-request-id"] == sent
            assert response.json() == {"ids": [sent]}


@pytest.mark.parametrize("sent", [None, b"", b"x" * 201, b"two words", b"caf\xc3\xa9", b"tab\there"],
                         ids=["none", "empty", "too-long", "space", "non-ascii", "control"])
async def test_a_missing_or_unsafe_request_id_is_replaced_everywhere_by_a_fresh_one(pipeline_of, tmp_path, sent):
    pipeline = pipeline_of(HEADERS_ECHO)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        headers = [] if sent is None else [(b"x-request-id", sent)]
        first = await http.post(PATH, headers=headers)
        second = await http.post(PATH, headers=headers)
    given = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", given)
    assert first.json() == {"ids": [given]}  # the sent one is gone: never echoed, logged or seen by predict
    assert second.headers["x-request-id"] != given


# --- admission: readiness, methods, the server draining ----------------------------------------------------------


async def test_an_api_answers_503_with_retry_after_until_its_predictor_is_ready(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    async with client(admission(pipeline)) as http:
        initialising = await http.post(PATH, json="a")
        pipeline.failure = "RuntimeError: no model"
        failed = await http.get(PATH)
        pipeline.failure = None
        async with running(pipeline, tmp_path) as predictor:
            ready = await http.post(PATH, json="a")
    assert (initialising.status_code, initialising.headers["retry-after"]) == (503, "1")
    assert initialising.json() == {"error": "api 'api' is not ready: its predictor is still initialising"}
    assert initialising.headers["x-request-id"]
    assert (failed.status_code, failed.headers["retry-after"]) == (503, "1")
    assert failed.json() == {"error": "api 'api' is not ready: failed to start: RuntimeError: no model"}
    assert ready.status_code == 200 and predictor.seen == ["a"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_a_method_other_than_get_head_post_is_405_with_allow(pipeline_of, tmp_path, method):
    pipeline = pipeline_of(GATED)
    async with client(admission(pipeline)) as http:  # not even started: the method is refused first
        response = await http.request(method, PATH, json="a")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert response.json() == {"error": "Method Not Allowed"}


async def test_get_and_head_answer_the_summary_without_calling_predict(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline)) as http:
        got = await http.get(PATH)
        head = await http.head(PATH)
    assert got.status_code == 200 and got.json() == {"message": GET_MESSAGE}
    assert head.status_code == 200 and head.content == b""
    assert predictor.seen == []


async def test_while_the_server_drains_each_response_closes_its_connection(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    front = Front()
    async with running(pipeline, tmp_path), client(admission(pipeline, front)) as http:
        before = await http.post(PATH, json="a")
        front.draining = True
        during = await http.post(PATH, json="b")
    assert "connection" not in before.headers
    assert during.status_code == 200 and during.headers["connection"] == "close"


# --- admission: the body ------------------------------------------------------------------------------------------


async def test_a_body_over_max_body_size_is_413_and_closes_whether_announced_or_streamed(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)

    async def chunks(size: int):
        for _ in range(size):
            yield b"1"

    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline, max_body_size=8)) as http:
        at_limit = await http.post(PATH, content=b"12345678", headers={"content-type": "application/json"})
        announced = await http.post(PATH, content=b"123456789", headers={"content-type": "application/json"})
        streamed = await http.post(PATH, content=chunks(9), headers={"content-type": "application/json"})
    assert at_limit.status_code == 200 and predictor.seen == [12345678]
    assert "transfer-encoding" in streamed.request.headers and "content-length" not in streamed.request.headers
    for response in (announced, streamed):
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert "larger than 8 bytes (--max-body-size)" in response.json()["error"]


async def test_content_length_with_transfer_encoding_is_400(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    scope = http_scope(headers=[(b"content-length", b"3"), (b"transfer-encoding", b"chunked")])
    async with running(pipeline, tmp_path) as predictor:
        sent = await played(admission(pipeline), scope, _never_called)
    assert sent[0]["status"] == 400
    assert (b"connection", b"close") in sent[0]["headers"]
    assert predictor.seen == []


async def _never_called() -> dict:
    raise AssertionError("the body was read")


async def test_a_body_that_stops_arriving_is_408_after_body_timeout(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    parts = [{"type": "http.request", "body": b'"wa', "more_body": True}]

    async def stalling() -> dict:
        if parts:
            return parts.pop()
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    async with running(pipeline, tmp_path) as predictor:
        sent = await played(admission(pipeline, body_timeout=0.05), http_scope(), stalling)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"did not arrive within 0.05 s" in sent[1]["body"]
    assert predictor.seen == []


async def test_a_client_that_leaves_mid_predict_gets_nothing_and_is_counted(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    parts = [{"type": "http.request", "body": b'"wait"', "more_body": False}]

    async with running(pipeline, tmp_path) as predictor:
        async def leaving() -> dict:
            if parts:
                return parts.pop()
            await started(predictor.started)
            return {"type": "http.disconnect"}

        gate = admission(pipeline)
        sent = await played(gate, http_scope(headers=[(b"content-type", b"application/json")]), leaving)
        assert sent == []
        assert sample(pipeline.metrics, "engine_client_disconnects_total") == 1
        assert gate.in_flight == 1  # its predict still runs on its thread: the slot stays taken until it returns
        predictor.gate.set()
        await until(lambda: gate.in_flight == 0, "the slot's release")


async def test_a_request_answered_within_watch_after_never_watches_its_client(pipeline_of, tmp_path, monkeypatch):
    pipeline = pipeline_of(GATED)
    calls = []

    def receiving(payload: bytes) -> Callable:
        async def receive() -> dict:
            calls.append(payload)
            if calls.count(payload) == 1:
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.get_running_loop().create_future()  # a client that stays: nothing more comes
            raise AssertionError("unreachable")
        return receive

    async with running(pipeline, tmp_path) as predictor:
        gate = admission(pipeline)
        scope = http_scope(headers=[(b"content-type", b"application/json")])
        monkeypatch.setattr(admission_module, "WATCH_AFTER", TIMEOUT)  # answered long before
        quick = await played(gate, dict(scope), receiving(b'"quick"'))
        monkeypatch.setattr(admission_module, "WATCH_AFTER", 0.0)  # watched from the loop's next pass
        slow = asyncio.ensure_future(played(gate, dict(scope), receiving(b'"wait"')))
        await started(predictor.started)
        await until(lambda: calls.count(b'"wait"') == 2, "the slow request's watcher")
        predictor.gate.set()
        answered = await slow
    assert quick[0]["status"] == answered[0]["status"] == 200
    assert calls.count(b'"quick"') == 1  # its body only: no watcher


# --- admission: the concurrency limit and the deadline --------------------------------------------------------------


async def test_past_max_replica_concurrency_a_request_is_503_with_retry_after(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED, predictor_extra="threads_per_process: 2",
                           api_extra="autoscaling:\n  max_replica_concurrency: 2")
    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline)) as http:
        first = asyncio.ensure_future(http.post(PATH, json="wait-1"))
        await started(predictor.started)
        predictor.started.clear()
        second = asyncio.ensure_future(http.post(PATH, json="wait-2"))
        await started(predictor.started)
        refused = await http.post(PATH, json="third")
        predictor.gate.set()
        answered = [(await first).status_code, (await second).status_code]
        after = await http.post(PATH, json="fourth")  # both slots came back with their responses
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"error": "api 'api' already has 2 requests in flight, its max_replica_concurrency; "
                                       "retry later"}
    assert answered == [200, 200] and after.status_code == 200
    assert predictor.seen == ["wait-1", "wait-2", "fourth"]
    assert sample(pipeline.metrics, "engine_requests_rejected_total") == 1


async def test_past_its_deadline_a_request_is_504_and_one_still_waiting_for_a_thread_never_runs(pipeline_of,
                                                                                                tmp_path):
    pipeline = pipeline_of(GATED)  # one thread
    gate = admission(pipeline, request_timeout=0.2)
    async with running(pipeline, tmp_path) as predictor, client(gate) as http:
        running_one = asyncio.ensure_future(http.post(PATH, json="wait"))
        await started(predictor.started)
        waiting_one = await http.post(PATH, json="queued")
        overran = await running_one
        # A 504 is sent as its work is cancelled; the work stops (and gives its slot back) a moment later. Only
        # "queued" stops: "wait" runs on, keeping its slot.
        await until(lambda: gate.in_flight == 1, "the given-up work's end")
        predictor.gate.set()
        async with client(admission(pipeline, request_timeout=None)) as patient:
            after = await patient.post(PATH, json="after")  # the one thread runs what is queued, in order
    for response in (overran, waiting_one):
        assert response.status_code == 504
        assert response.json() == {"error": "api 'api' did not answer within the request timeout (0.2 s)"}
    assert after.status_code == 200
    assert predictor.seen == ["wait", "after"]  # "queued" was dropped before its predict
    assert sample(pipeline.metrics, "engine_requests_timed_out_total") == 2
    assert sample(pipeline.metrics, "engine_predict_overruns_total") == 1  # "wait" ran on past its 504


async def test_a_request_past_its_deadline_keeps_its_slot_until_its_predict_returns(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED, api_extra="autoscaling:\n  max_replica_concurrency: 1")
    gate = admission(pipeline, request_timeout=0.2)
    async with running(pipeline, tmp_path) as predictor, client(gate) as http:
        overran = await http.post(PATH, json="wait")
        refused = await http.post(PATH, json="next")
        predictor.gate.set()
        await until(lambda: gate.in_flight == 0, "the slot's release")
        served = await http.post(PATH, json="last")
    assert (overran.status_code, refused.status_code, served.status_code) == (504, 503, 200)
    assert predictor.seen == ["wait", "last"]


# --- the pipeline: arguments by the parameters predict declares ----------------------------------------------------

PAYLOAD_TYPE = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        shown = dict(payload) if type(payload).__name__ == "FormData" else payload
        return {"type": type(payload).__name__, "value": shown if not isinstance(shown, bytes) else shown.hex()}
"""


@pytest.mark.parametrize("content_type, body, expected", [
    ("application/json", b'{"a": [1, 2]}', {"type": "dict", "value": {"a": [1, 2]}}),
    ("application/json; charset=utf-8", b"3", {"type": "int", "value": 3}),
    ("text/plain; charset=latin-1", b"caf\xe9", {"type": "str", "value": "caf\u00e9"}),
    ("application/x-www-form-urlencoded", b"a=1&b=two", {"type": "FormData", "value": {"a": "1", "b": "two"}}),
    ("application/octet-stream", b"\x00\xff", {"type": "bytes", "value": "00ff"}),
    ("", b"raw", {"type": "bytes", "value": "726177"}),
], ids=["json", "json-charset", "text", "form", "octet-stream", "no-type"])
async def test_the_payload_is_parsed_by_its_content_type(pipeline_of, tmp_path, content_type, body, expected):
    pipeline = pipeline_of(PAYLOAD_TYPE)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH, content=body, headers={"content-type": content_type} if content_type else {})
    assert response.status_code == 200
    assert response.json() == expected


async def test_an_unparseable_payload_is_400_and_predict_is_not_called(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline)) as http:
        response = await http.post(PATH, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid JSON body:")
    assert predictor.seen == []


NO_PAYLOAD = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, query_params, headers):
        return {"query": dict(query_params), "header": headers.get("x-thing")}
"""

NOTHING = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self):
        return "called with nothing"
"""


async def test_predict_gets_only_what_it_declares_and_an_undeclared_payload_is_never_parsed(pipeline_of, tmp_path):
    pipeline = pipeline_of(NO_PAYLOAD)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH + "?k=v&n=1", content=b"{not json",
                                   headers={"content-type": "application/json", "x-thing": "yes"})
    assert response.status_code == 200
    assert response.json() == {"query": {"k": "v", "n": "1"}, "header": "yes"}


async def test_a_predict_without_parameters_is_called_with_none(pipeline_of, tmp_path):
    pipeline = pipeline_of(NOTHING)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH + "?k=v", content=b"{not json", headers={"content-type": "application/json"})
    assert (response.status_code, response.text) == (200, "called with nothing")


# --- the pipeline: the response, by what predict returns ----------------------------------------------------------

RETURNS = """
from starlette.responses import PlainTextResponse

RESULTS = {
    "dict": {"a": 1},
    "list": [1, "two", None],
    "none": None,
    "str": "caf\\u00e9",
    "bytes": b"\\x00\\x01",
    "bytearray": bytearray(b"ab"),
    "response": PlainTextResponse("made", status_code=201, headers={"x-made": "by predict"}),
}

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return RESULTS[payload]
"""


@pytest.mark.parametrize("kind, status, content_type, body", [
    ("dict", 200, "application/json", b'{"a":1}'),
    ("list", 200, "application/json", b'[1,"two",null]'),
    ("none", 200, "application/json", b"null"),
    ("str", 200, "text/plain; charset=utf-8", "caf\u00e9".encode()),
    ("bytes", 200, "application/octet-stream", b"\x00\x01"),
    ("bytearray", 200, "application/octet-stream", b"ab"),
    ("response", 201, "text/plain; charset=utf-8", b"made"),
])
async def test_the_response_is_encoded_by_the_type_predict_returns(pipeline_of, tmp_path, kind, status, content_type,
                                                                   body):
    pipeline = pipeline_of(RETURNS)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH, json=kind)
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    assert response.content == body
    assert response.headers["x-request-id"]
    if kind == "response":
        assert response.headers["x-made"] == "by predict"


# --- the pipeline: predictor errors ---------------------------------------------------------------------------------

RAISES = """
from starlette.exceptions import HTTPException

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload == "http":
            raise HTTPException(418, "short and stout", headers={"x-why": "teapot"})
        raise ValueError("the model saw " + payload)
"""


@pytest.mark.parametrize("shows_errors", [True, False], ids=["expose-errors", "hide-errors"])
async def test_a_predictor_exception_is_a_500_with_the_request_id_and_the_traceback_logged(pipeline_of, tmp_path,
                                                                                           caplog, shows_errors):
    pipeline = pipeline_of(RAISES, shows_errors=shows_errors)
    caplog.set_level(logging.ERROR, logger="engine")
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH, json="a secret", headers={"x-request-id": "req-42"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    shown = "ValueError: the model saw a secret" if shows_errors \
        else "predict raised an exception; the server's log has it under this request id"
    assert response.json() == {"error": shown, "request_id": "req-42"}
    (record,) = [r for r in caplog.records if r.name == "engine" and r.exc_info]
    assert "api 'api': predict failed (request_id=req-42)" in record.getMessage()
    assert record.exc_info[0] is ValueError
    assert "predictor.py" in caplog.text and "ValueError: the model saw a secret" in caplog.text
    assert sample(pipeline.metrics, "engine_predictor_exceptions_total") == 1


async def test_an_http_exception_from_predict_is_its_own_status_without_a_logged_traceback(pipeline_of, tmp_path,
                                                                                            caplog):
    pipeline = pipeline_of(RAISES)
    async with running(pipeline, tmp_path), client(admission(pipeline)) as http:
        response = await http.post(PATH, json="http")
    assert response.status_code == 418
    assert response.headers["x-why"] == "teapot"
    assert response.json() == {"error": "short and stout"}
    assert not [r for r in caplog.records if r.exc_info]
    assert sample(pipeline.metrics, "engine_predictor_exceptions_total") == 0


# --- the pipeline: post_predict -------------------------------------------------------------------------------------

POST_PREDICT = """
import threading

class PythonPredictor:
    def __init__(self, config):
        self.answered = threading.Event()  # the test sets it once it holds the response
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls = []

    def predict(self, payload):
        return {"got": payload}

    def post_predict(self, response, payload):
        self.calls.append((response, payload, self.answered.wait(30)))
        self.entered.set()
        self.release.wait(30)
        self.finished.set()
"""


async def test_post_predict_runs_after_the_response_with_what_predict_returned(pipeline_of, tmp_path):
    pipeline = pipeline_of(POST_PREDICT)
    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline)) as http:
        response = await http.post(PATH, json="x")
        assert not predictor.entered.is_set()  # the response came while post_predict waited for it
        predictor.answered.set()
        predictor.release.set()
        await started(predictor.finished)
    assert response.status_code == 200 and response.json() == {"got": "x"}
    assert predictor.calls == [({"got": "x"}, "x", True)]


async def test_stopping_the_pipeline_waits_for_a_pending_post_predict(pipeline_of, tmp_path):
    pipeline = pipeline_of(POST_PREDICT)
    async with running(pipeline, tmp_path) as predictor, client(admission(pipeline)) as http:
        await http.post(PATH, json="x")
        stopping = asyncio.ensure_future(pipeline.stop())
        predictor.answered.set()
        await started(predictor.entered)
        await asyncio.wait({stopping}, timeout=0.2)  # a stop that does not wait ends well within this
        assert not stopping.done()  # never done while post_predict runs
        predictor.release.set()
        await stopping
    assert predictor.calls == [({"got": "x"}, "x", True)]


# --- the worker protocol: framing -----------------------------------------------------------------------------------

End = tuple[messages.Channel, asyncio.Queue]  # a channel, and the queue its messages are put in as they are read


@contextlib.asynccontextmanager
async def linked() -> AsyncIterator[tuple[End, End]]:
    """Two Channels on the ends of a Unix socket pair: the front's and a worker's."""
    ends: list[End] = []
    for sock in socket.socketpair():
        received: asyncio.Queue = asyncio.Queue()
        _, channel = await asyncio.get_running_loop().create_unix_connection(
            functools.partial(messages.Channel, received.put_nowait), sock=sock)
        ends.append((channel, received))
    try:
        yield ends[0], ends[1]
    finally:
        for channel, _ in ends:
            channel.close()


async def expect(received: asyncio.Queue) -> messages.Message:
    """The next message read, or a failed test if none comes."""
    return await asyncio.wait_for(received.get(), TIMEOUT)


def every_message(pm) -> list[messages.Message]:
    """One message of each kind, with realistic contents."""
    api = make_api(api_yaml(API))
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"r1")]
    return [messages.Hello(3), messages.Ready(), messages.Failed("Traceback ...\nValueError: no"),
            messages.Reply(7, 200, headers, b'{"a":1}', True, False, 0.0), messages.ReplyStart(8, 200, headers, False),
            messages.Chunk(8, b"part", False), messages.Chunk(8, b"", True), messages.Done(7, 0.25),
            messages.Setup(api, plugins.portable(pm), Path("/tmp/view"), Path("/srv/project"), 10.0, False),
            messages.Call(9, "operate:infer", http_scope(headers=headers), b"\x00" * 70000), messages.Sent(7),
            messages.Cancel(9), messages.Stop()]


async def test_every_message_round_trips_through_a_channel(pm):
    sent = every_message(pm)
    async with linked() as ((channel, _), (_, received)):
        for message in sent:  # in one pass of the loop: they go out in one write
            assert channel.send(message) is True
        got = [await expect(received) for _ in sent]
    assert got == sent
    assert [type(m) for m in got] == [type(m) for m in sent]


@pytest.mark.parametrize("piece", [1, 3, 4, 5, 4096, 65536])
async def test_frames_split_anywhere_by_the_socket_are_read_whole_and_in_order(pm, piece):
    sent = every_message(pm)
    data = b"".join(messages.encode(message) for message in sent)
    one, other = socket.socketpair()
    received: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(functools.partial(messages.Channel, received.put_nowait),
                                                   sock=other)
    one.setblocking(False)
    try:
        for start in range(0, len(data), piece):
            await loop.sock_sendall(one, data[start:start + piece])
            if piece < 4096:  # let the channel read pieces this small one by one, now and then
                await asyncio.sleep(0)
        got = [await expect(received) for _ in sent]
    finally:
        one.close()
        channel.close()
    assert got == sent


async def test_a_frame_is_a_big_endian_length_then_a_pickle_of_the_kind_and_fields(pm):
    message = every_message(pm)[3]
    frame = messages.encode(message)
    data = pickle.dumps((3, *message), protocol=pickle.HIGHEST_PROTOCOL)  # Reply is kind 3
    assert frame == struct.pack("!I", len(data)) + data
    assert messages.decode(frame[4:]) == message and type(messages.decode(frame[4:])) is messages.Reply


async def test_a_frame_cut_off_by_the_other_sides_exit_is_dropped_and_the_channel_closes():
    one, other = socket.socketpair()
    received: asyncio.Queue = asyncio.Queue()
    _, channel = await asyncio.get_running_loop().create_unix_connection(
        functools.partial(messages.Channel, received.put_nowait), sock=other)
    one.sendall(messages.encode(messages.Done(1, 0.5)) + struct.pack("!I", 10) + b"short")
    one.close()
    await asyncio.wait_for(channel.closed, TIMEOUT)
    assert await expect(received) == messages.Done(1, 0.5)
    assert received.empty()
    assert channel.send(messages.Ready()) is False


async def test_send_is_false_and_closed_resolves_once_the_other_side_has_gone():
    async with linked() as ((channel, _), (far, _)):
        far.close()
        await asyncio.wait_for(channel.closed, TIMEOUT)
        assert channel.send(messages.Ready()) is False


# --- the worker protocol: a worker's side (engine.serving.worker_main), driven in process -----------------------------


@contextlib.asynccontextmanager
async def worker_serving(pipeline: Pipeline) -> AsyncIterator[tuple[messages.Channel, asyncio.Queue, asyncio.Task]]:
    """A worker answering calls with `pipeline` (started): the front's channel and what it receives, and the task
    serving the calls (it ends after Stop, once its calls are done)."""
    async with linked() as ((front, received), (channel, _)):
        calls = worker_main.Calls(pipeline, channel)
        channel.on_message = calls.on_message
        serving = asyncio.ensure_future(calls.serve())
        try:
            yield front, received, serving
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


def is_done(message: messages.Message, call: int) -> bool:
    """Whether `message` says the worker is done with `call` (after some time of its own on it)."""
    return isinstance(message, messages.Done) and message.call == call and message.took >= 0


def call_scope(request_id: str) -> dict:
    """The scope of a forwarded request: what the admission layer made of it."""
    return http_scope(headers=[(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())])


async def test_a_worker_answers_a_call_with_a_reply_that_says_it_is_done(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)
    async with running(pipeline, tmp_path) as predictor, worker_serving(pipeline) as (front, received, serving):
        front.send(messages.Call(5, "predict", call_scope("r5"), b'"hello"'))
        reply = await expect(received)
        front.send(messages.Call(6, "summary", http_scope("GET"), b""))
        summary = await expect(received)
        front.send(messages.Stop())
        await asyncio.wait_for(serving, TIMEOUT)
        assert received.empty()  # no Done: each Reply said it
    assert isinstance(reply, messages.Reply)
    assert (reply.call, reply.status, reply.wants_sent, reply.done) == (5, 200, False, True)
    assert (b"content-type", b"application/json") in reply.headers
    assert reply.body == b'{"echo":"hello"}'
    assert isinstance(summary, messages.Reply) and summary.done
    assert summary.body == b'{"message":"%s"}' % GET_MESSAGE.encode()
    assert predictor.seen == ["hello"]


STREAMS = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        for word in payload:
            yield word
"""


async def test_a_streamed_response_is_a_reply_start_then_chunks_then_done(pipeline_of, tmp_path):
    pipeline = pipeline_of(STREAMS)
    async with running(pipeline, tmp_path), worker_serving(pipeline) as (front, received, serving):
        front.send(messages.Call(7, "predict", call_scope("r7"), b'["one ", "two"]'))
        start = await expect(received)
        chunks = [await expect(received)]
        while isinstance(chunks[-1], messages.Chunk) and not chunks[-1].last:
            chunks.append(await expect(received))
        if start.wants_sent:  # as the front does, once the client has the whole stream
            front.send(messages.Sent(7))
        assert is_done(await expect(received), 7)
        front.send(messages.Stop())
        await asyncio.wait_for(serving, TIMEOUT)
    assert isinstance(start, messages.ReplyStart) and (start.call, start.status) == (7, 200)
    assert (b"content-type", b"text/plain; charset=utf-8") in start.headers
    assert all(isinstance(chunk, messages.Chunk) and chunk.call == 7 for chunk in chunks)
    assert b"".join(chunk.data for chunk in chunks) == b"one two"


async def test_a_call_cancelled_before_its_predict_starts_is_dropped_with_a_done(pipeline_of, tmp_path):
    pipeline = pipeline_of(GATED)  # one thread
    async with running(pipeline, tmp_path) as predictor, worker_serving(pipeline) as (front, received, serving):
        front.send(messages.Call(1, "predict", call_scope("r1"), b'"wait"'))
        await started(predictor.started)
        front.send(messages.Call(2, "predict", call_scope("r2"), b'"queued"'))
        front.send(messages.Cancel(2))
        assert is_done(await expect(received), 2)  # and no Reply: it waited for the thread call 1 holds
        front.send(messages.Stop())  # the call in hand still finishes
        predictor.gate.set()
        reply = await expect(received)
        await asyncio.wait_for(serving, TIMEOUT)
    assert isinstance(reply, messages.Reply) and (reply.call, reply.status, reply.done) == (1, 200, True)
    assert predictor.seen == ["wait"]


async def test_with_post_predict_a_call_waits_for_sent_and_is_done_only_once_post_predict_returns(pipeline_of,
                                                                                                     tmp_path):
    pipeline = pipeline_of(POST_PREDICT)
    async with running(pipeline, tmp_path) as predictor, worker_serving(pipeline) as (front, received, serving):
        front.send(messages.Call(3, "predict", call_scope("r3"), b'"x"'))
        reply = await expect(received)
        assert isinstance(reply, messages.Reply) and reply.wants_sent and not reply.done
        predictor.answered.set()  # post_predict records whether this was set when it ran: only Sent lets it run
        front.send(messages.Sent(3))
        await started(predictor.entered)
        front.send(messages.Call(4, "summary", http_scope("GET"), b""))
        meanwhile = await expect(received)  # and no Done(3): post_predict still runs
        predictor.release.set()
        assert is_done(await expect(received), 3)
        front.send(messages.Stop())
        await asyncio.wait_for(serving, TIMEOUT)
    assert isinstance(meanwhile, messages.Reply) and (meanwhile.call, meanwhile.done) == (4, True)
    assert predictor.calls == [({"got": "x"}, "x", True)]


async def test_after_stop_a_worker_finishes_the_calls_in_hand_sent_included_then_ends(pipeline_of, tmp_path):
    pipeline = pipeline_of(POST_PREDICT)
    async with running(pipeline, tmp_path) as predictor, worker_serving(pipeline) as (front, received, serving):
        front.send(messages.Call(3, "predict", call_scope("r3"), b'"x"'))
        reply = await expect(received)
        front.send(messages.Stop())
        predictor.answered.set()
        predictor.release.set()
        front.send(messages.Sent(3))  # still read: the call in hand waits for it
        assert is_done(await expect(received), 3)
        await asyncio.wait_for(serving, TIMEOUT)
    assert isinstance(reply, messages.Reply) and reply.wants_sent
    assert predictor.calls == [({"got": "x"}, "x", True)]


# --- the worker protocol: the front's side (engine.serving.worker_pool) with a real worker process --------------------

DIES = """
import os

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload == "die":
            os._exit(3)
        return {"pid": os.getpid()}
"""


async def test_a_worker_that_dies_mid_request_is_a_502_and_is_replaced(tmp_path, pm):
    write_project(tmp_path, {"predictor.py": DIES})
    fatal: list[str] = []
    group = WorkerGroup(make_api(api_yaml(API)), pm, capacity=1, settings=ServeSettings(), on_fatal=fatal.append)
    await group.start(tmp_path, tmp_path)
    try:
        async with client(admission(group)) as http:
            first = await http.post(PATH, json="hello")
            died = await http.post(PATH, json="die")
            await until(lambda: group.ready or fatal, "the replacement worker's start")
            assert not fatal
            after = await http.post(PATH, json="hello")
    finally:
        await group.stop()
    assert first.status_code == 200
    assert died.status_code == 502
    assert died.json() == {"error": "worker process 0 of api 'api' died (exit code 3) while handling this request"}
    assert died.headers["x-request-id"]
    assert after.status_code == 200 and after.json()["pid"] != first.json()["pid"]
    assert fatal == []
