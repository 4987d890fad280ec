"""Async predictors, streaming responses and WebSockets against a real server, in one process and with worker
processes. Orderings are checked with events: a generator waits for a file the test writes once it has read an item."""
from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import websockets

from engine.testing import api_yaml, in_thread, wait_file

pytestmark = pytest.mark.e2e

ASYNC = """
import asyncio
import os
import time


async def arrived(path):
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    async def predict(self, payload, query_params, headers):
        kind = query_params.get("kind", "echo")
        if kind == "echo":
            await asyncio.sleep(0)
            shown = payload.hex() if isinstance(payload, bytes) else payload
            return {"payload": shown, "query": dict(query_params), "header": headers.get("x-test")}
        if kind == "block":  # a mistake: a blocking call in an async predict
            while not os.path.exists(os.path.join(self.dir, "release-block")):
                time.sleep(0.01)
            time.sleep(0.5)  # whatever the test's pace, this one step holds the loop half a second
            return "unblocked"
        if kind == "wait":  # awaits: a client that leaves cancels it
            try:
                await arrived(os.path.join(self.dir, "never"))
            finally:
                open(os.path.join(self.dir, "cancelled"), "w").close()
        if kind == "fail":
            raise ValueError("async failure")

    async def post_predict(self, response, payload):
        if isinstance(payload, dict) and "mark" in payload:
            open(os.path.join(self.dir, f"post-{payload['mark']}"), "w").close()
"""

STREAMING = """
import asyncio
import os
import time


def wait_file(path):
    while not os.path.exists(path):
        time.sleep(0.01)


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    def predict(self, payload, query_params):
        kind = query_params.get("kind")
        return {"gated": self.gated, "dicts": self.dicts, "text": self.text, "bytes": self.raw,
                "fails": self.fails, "async": self.async_gated, "endless": self.endless}[kind](payload)

    def gated(self, payload):
        try:
            yield {"item": 1}
            wait_file(os.path.join(self.dir, f"release-{payload}"))  # until the test has read the first item
            yield {"item": 2}
        finally:
            open(os.path.join(self.dir, f"closed-{payload}"), "w").close()

    def dicts(self, payload):
        yield from ({"n": n} for n in range(payload))

    def text(self, payload):
        yield "hello "
        yield "world"

    def raw(self, payload):
        yield b"\\x00\\x01"
        yield b"\\x02"

    def fails(self, payload):
        yield {"n": 0}
        raise RuntimeError("the generator broke")

    async def async_gated(self, payload):
        try:
            yield "first"
            while not os.path.exists(os.path.join(self.dir, f"release-{payload}")):
                await asyncio.sleep(0.01)
            yield "second"
        finally:
            open(os.path.join(self.dir, f"closed-{payload}"), "w").close()

    def endless(self, payload):
        try:
            n = 0
            while True:
                n += 1
                yield {"n": n}
                time.sleep(0.01)
        finally:
            open(os.path.join(self.dir, f"closed-{payload}"), "w").close()

    def post_predict(self, response, payload):
        if payload == "record":
            with open(os.path.join(self.dir, "streamed.tmp"), "w") as out:
                out.write(repr(response))
            os.replace(os.path.join(self.dir, "streamed.tmp"), os.path.join(self.dir, "streamed"))
"""


def project(tmp_path, source: str, extra: str = "") -> dict[str, str]:
    predictor = f"threads_per_process: 4\nconfig:\n  dir: {tmp_path}\n{extra}"
    return {"cortex.yaml": api_yaml("s", predictor_extra=predictor), "predictor.py": source}


# --- async predictors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type, body, payload", [
    ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}), ("text/plain", b"plain", "plain")])
def test_async_predict_gets_every_argument_and_async_post_predict_runs(serve, tmp_path, content_type, body, payload):
    server = serve(project(tmp_path, ASYNC))
    answer = server.client.post("/s?kind=echo&q=1", content=body, headers={"content-type": content_type,
                                                                             "x-test": "yes"})
    assert answer.json() == {"payload": payload, "query": {"kind": "echo", "q": "1"}, "header": "yes"}
    server.client.post("/s?kind=echo", json={"mark": "m"})
    wait_file(tmp_path / "post-m")


def test_an_async_predicts_exception_is_a_500(serve, tmp_path):
    server = serve(project(tmp_path, ASYNC))
    answer = server.client.post("/s?kind=fail", json=1)
    assert answer.status_code == 500 and answer.json()["error"] == "ValueError: async failure"


def test_a_client_that_leaves_cancels_its_async_predict(serve, tmp_path):
    server = serve(project(tmp_path, ASYNC))
    with pytest.raises(httpx.ReadTimeout):
        server.client.post("/s?kind=wait", json=1, timeout=1)
    wait_file(tmp_path / "cancelled")  # its `finally` ran: the task was cancelled


def test_a_blocking_async_predict_is_reported_and_the_server_keeps_answering(serve, tmp_path):
    server = serve(project(tmp_path, ASYNC))
    thread, result = in_thread(server.client.post, "/s?kind=block", json=1)
    server.wait_metric('engine_requests_in_flight{api="s"} 1.0')
    assert server.client.get("/healthz", timeout=10).status_code == 200  # answered while its loop is blocked
    (tmp_path / "release-block").touch()
    thread.join()
    assert result["value"].text == "unblocked"
    server.wait_output("api 's': PythonPredictor.predict held its event loop for")
    lag = re.search(r'engine_predictor_loop_lag_seconds\{api="s"\} ([0-9.e+-]+)', server.client.get("/metrics").text)
    assert lag is not None


ASYNC_BATCH = """
import asyncio


class PythonPredictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        await asyncio.sleep(0)
        return [{"got": p, "batch": len(payload)} for p in payload]
"""


def test_an_async_predictor_with_batching_gets_lists(serve, tmp_path):
    extra = "server_side_batching:\n  max_batch_size: 2\n  batch_interval: 10s\n  dispatch: interval"
    server = serve({"cortex.yaml": api_yaml("s", predictor_extra=extra), "predictor.py": ASYNC_BATCH})
    answers = []
    threads = [in_thread(lambda p=p: answers.append(server.client.post("/s", json=p).json())) for p in (1, 2)]
    for thread, _ in threads:
        thread.join()
    assert sorted(a["got"] for a in answers) == [1, 2] and all(a["batch"] == 2 for a in answers)


ASYNC_MODELS = """
import asyncio
import os


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client

    async def load_model(self, model_path):
        await asyncio.sleep(0)
        with open(os.path.join(model_path, "value")) as value:
            return value.read()

    def predict(self, payload):
        return self.client.get_model()
"""


def test_an_async_load_model_loads_on_the_event_loop(serve, tmp_path):
    server = serve({"cortex.yaml": api_yaml("s", predictor_extra="model_path: models"),
                    "predictor.py": ASYNC_MODELS, "models/1/value": "one"})
    assert server.client.post("/s", json=1).text == "one"


# --- streaming -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gated", "async"])
def test_the_first_item_arrives_before_the_generator_ends(serve, tmp_path, kind):
    server = serve(project(tmp_path, STREAMING))
    with server.client.stream("POST", f"/s?kind={kind}", json=kind) as stream:
        chunks = stream.iter_raw()
        first = next(chunks)
        assert first in (b'{"item":1}\n', b"first")  # read while the generator waits for the test
        (tmp_path / f"release-{kind}").touch()
        rest = b"".join(chunks)
    assert rest in (b'{"item":2}\n', b"second")
    wait_file(tmp_path / f"closed-{kind}")


def test_a_client_that_disconnects_stops_the_generator(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    with server.client.stream("POST", "/s?kind=endless", json="gone") as stream:
        next(stream.iter_lines())
    wait_file(tmp_path / "closed-gone")  # its `finally` ran, without anyone releasing it


def test_json_items_are_ndjson_and_post_predict_gets_the_items(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    answer = server.client.post("/s?kind=dicts", json=3)
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.text == '{"n":0}\n{"n":1}\n{"n":2}\n'
    server.client.post("/s?kind=text", json="record")
    wait_file(tmp_path / "streamed")
    assert (tmp_path / "streamed").read_text() == "['hello ', 'world']"


def test_sse_framing_when_the_client_accepts_event_streams(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    answer = server.client.post("/s?kind=dicts", json=2, headers={"accept": "text/event-stream"})
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.text == 'data: {"n":0}\n\ndata: {"n":1}\n\n'


def test_text_and_bytes_items_stream_as_they_are(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    text = server.client.post("/s?kind=text", json=0)
    assert text.text == "hello world" and text.headers["content-type"].startswith("text/plain")
    raw = server.client.post("/s?kind=bytes", json=0)
    assert raw.content == b"\x00\x01\x02" and raw.headers["content-type"] == "application/octet-stream"


def test_an_exception_mid_stream_ends_it_with_an_error_record(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    answer = server.client.post("/s?kind=fails", json=0)
    lines = answer.text.splitlines()
    assert lines[0] == '{"n":0}'
    error = json.loads(lines[1])
    assert error["error"] == "RuntimeError: the generator broke" and error["request_id"] == \
        answer.headers["x-request-id"]
    server.wait_output("the stream's generator failed")


# --- WebSockets -----------------------------------------------------------------------------------------------


def talk(server, path: str, messages: list, replies: int, **options) -> list:
    async def conversation() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}{path}", **options) as socket:
            received = []
            for message in messages:
                await socket.send(message)
            for _ in range(replies):
                received.append(await socket.recv())
            return received
    return asyncio.run(conversation())


def test_websocket_messages_are_payloads_and_results_come_back(serve, tmp_path):
    server = serve(project(tmp_path, ASYNC))
    replies = talk(server, "/s?kind=echo", ['{"a": 1}', "plain text", b"\x00bytes"], 3)
    assert [json.loads(reply)["payload"] for reply in replies] == [{"a": 1}, "plain text", b"\x00bytes".hex()]
    failed = json.loads(talk(server, "/s?kind=fail", ["1", "2"], 2)[1])  # the socket stays open after an error
    assert failed["error"] == "ValueError: async failure"


def test_a_streaming_predict_sends_each_item_as_a_message(serve, tmp_path):
    server = serve(project(tmp_path, STREAMING))
    assert talk(server, "/s?kind=dicts", ["3"], 3) == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert talk(server, "/s?kind=bytes", ["0"], 2) == [b"\x00\x01", b"\x02"]


def test_a_socket_closed_mid_stream_leaves_its_worker_serving(serve, tmp_path, processes):
    server = serve(project(tmp_path, STREAMING))

    async def leave_after_the_first_item() -> str:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/s?kind=gated") as socket:
            await socket.send('"w1"')
            return await socket.recv()  # then the socket closes while the generator waits for its release

    assert json.loads(asyncio.run(leave_after_the_first_item())) == {"item": 1}
    if processes > 1:  # the front has given the message up and told its worker, whose generator still waits
        server.wait_output("s WEBSOCKET /s")
    (tmp_path / "release-w1").touch()
    wait_file(tmp_path / "closed-w1")
    assert talk(server, "/s?kind=dicts", ["2"], 2) == ['{"n":0}', '{"n":1}']
    assert "died" not in server.output and "Traceback" not in server.output


def test_websockets_need_the_api_key_like_any_route(serve, tmp_path):
    server = serve(project(tmp_path, ASYNC), "--api-key", "sock-key")
    with pytest.raises(websockets.exceptions.InvalidStatus):
        talk(server, "/s?kind=echo", ["1"], 1)
    assert json.loads(talk(server, "/s?kind=echo", ["1"], 1,
                           additional_headers={"authorization": "Bearer sock-key"})[0])["payload"] == 1
    assert json.loads(talk(server, "/s?kind=echo&api_key=sock-key", ["2"], 1)[0])["payload"] == 2
