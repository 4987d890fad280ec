"""End to end over HTTP: every response type of the seed's "API responses", errors and HTTPException."""
from __future__ import annotations

import pytest

from engine.testing import Server, api_yaml, write_project

pytestmark = pytest.mark.e2e

RESPONDER = """
import numpy as np
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

RESULTS = {
    "dict": lambda: {"a": 1, "b": [1, 2]},
    "list": lambda: [1, 2, 3],
    "int": lambda: 7,
    "float": lambda: 2.5,
    "none": lambda: None,
    "str": lambda: "class 1",
    "bytes": lambda: b"\\x00\\x01",
    "bytearray": lambda: bytearray(b"ab"),
    "response": lambda: Response(content="custom", status_code=201, media_type="text/csv",
                                 headers={"X-Extra": "1"}),
    "json_response": lambda: JSONResponse({"ok": True}, status_code=202),
    "plain_response": lambda: PlainTextResponse("plain"),
    "streaming": lambda: StreamingResponse(iter([b"a", b"b", b"c"]), media_type="text/event-stream"),
    "numpy": lambda: {"f32": np.float32(1.5), "arr": np.arange(3), "nested": [np.int64(2), {"m": np.array([[1.0]])}],
                      "flag": np.bool_(True)},
    "numpy_array": lambda: np.array([1, 2]),
    "nan": lambda: float("nan"),
    "unserializable": lambda: {"x": object()},
}


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        kind = payload["kind"]
        if kind == "http_exception":
            raise HTTPException(status_code=418, detail="I'm a teapot")
        if kind == "http_exception_headers":
            raise HTTPException(status_code=401, detail="who are you?", headers={"WWW-Authenticate": "Basic"})
        if kind == "error":
            raise ZeroDivisionError("boom")
        return RESULTS[kind]()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, processes):
    project = write_project(tmp_path_factory.mktemp(f"responses-{processes}") / "project",
                            {"cortex.yaml": api_yaml("respond"), "predictor.py": RESPONDER})
    server = Server(project)
    server.wait_ready()
    yield server
    assert server.stop() == 0


def ask(server, kind):
    return server.client.post("/respond", json={"kind": kind})


@pytest.mark.parametrize("kind, expected", [("dict", {"a": 1, "b": [1, 2]}), ("list", [1, 2, 3]), ("int", 7),
                                            ("float", 2.5), ("none", None), ("numpy_array", [1, 2])])
def test_json_serialisable_results(server, kind, expected):
    response = ask(server, kind)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


def test_numpy_values_anywhere_are_encoded(server):
    response = ask(server, "numpy")
    assert response.json() == {"f32": 1.5, "arr": [0, 1, 2], "nested": [2, {"m": [[1.0]]}], "flag": True}


def test_nan_is_encoded_like_the_standard_library(server):
    response = ask(server, "nan")
    assert response.status_code == 200
    assert response.text == "NaN"


def test_str_is_text_plain_utf8(server):
    response = ask(server, "str")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "class 1"


@pytest.mark.parametrize("kind, body", [("bytes", b"\x00\x01"), ("bytearray", b"ab")])
def test_bytes_are_octet_stream(server, kind, body):
    response = ask(server, kind)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == body


def test_starlette_response_is_returned_as_is(server):
    response = ask(server, "response")
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-extra"] == "1"
    assert response.text == "custom"
    assert ask(server, "json_response").status_code == 202
    assert ask(server, "plain_response").text == "plain"


def test_streaming_response(server):
    response = ask(server, "streaming")
    assert response.text == "abc"
    assert response.headers["content-type"].startswith("text/event-stream")


def test_http_exception_gives_its_status_and_detail(server):
    response = ask(server, "http_exception")
    assert response.status_code == 418
    assert response.json() == {"error": "I'm a teapot"}
    response = ask(server, "http_exception_headers")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Basic"


def test_exception_is_500_logged_and_server_keeps_serving(server):
    response = ask(server, "error")
    assert response.status_code == 500
    assert response.json() == {"error": "ZeroDivisionError: boom", "request_id": response.headers["x-request-id"]}
    assert "Traceback" in server.output and "ZeroDivisionError: boom" in server.output
    assert f"predict failed (request_id={response.headers['x-request-id']})" in server.output
    assert ask(server, "dict").status_code == 200


def test_unserialisable_result_is_500_with_advice(server):
    response = ask(server, "unserializable")
    assert response.status_code == 500
    assert "JSON serializable" in response.json()["error"]
    assert ask(server, "int").json() == 7
