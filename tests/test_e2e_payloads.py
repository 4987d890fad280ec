"""End to end over HTTP: every payload type of the seed's "API requests" and every predict signature."""
from __future__ import annotations

import json

import pytest

from engine.testing import Server, api_yaml, write_project

pytestmark = pytest.mark.e2e

DESCRIBE = """
from starlette.datastructures import FormData, UploadFile


def describe(value):
    if isinstance(value, FormData):
        fields = {}
        for key, item in value.multi_items():
            if isinstance(item, UploadFile):
                fields[key] = {"filename": item.filename, "content": item.file.read().decode("latin-1"),
                               "content_type": item.content_type}
            else:
                fields[key] = item
        return {"type": "FormData", "value": fields}
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.decode("latin-1")}
    return {"type": type(value).__name__, "value": value}


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return describe(payload)
"""

ARGS = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, query_params, headers):
        return {
            "query_params_type": type(query_params).__name__,
            "headers_type": type(headers).__name__,
            "all_k": query_params.getlist("k"),
            "k": query_params.get("k"),
            "custom": headers.get("x-custom"),
            "custom_upper": headers["X-CUSTOM"],
        }
"""

NO_ARGS = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self):
        return "no arguments"
"""

REORDERED = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, headers, batch_id, payload, query_params):
        return {"payload": payload, "q": query_params["q"], "h": headers["x-h"], "batch_id": batch_id}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, processes):
    config = "".join([api_yaml("describe", "describe.py"), api_yaml("args", "args.py"),
                      api_yaml("no-args", "no_args.py"), api_yaml("reordered", "reordered.py")])
    project = write_project(tmp_path_factory.mktemp(f"payloads-{processes}") / "project", {
        "cortex.yaml": config, "describe.py": DESCRIBE, "args.py": ARGS, "no_args.py": NO_ARGS,
        "reordered.py": REORDERED,
    })
    server = Server(project)
    server.wait_ready()
    yield server
    assert server.stop() == 0


def post(server, path="/describe", **kwargs):
    response = server.client.post(path, **kwargs)
    return response


def test_json_object(server):
    response = post(server, json={"key": "value", "n": [1, 2.5, None]})
    assert response.status_code == 200
    assert response.json() == {"type": "dict", "value": {"key": "value", "n": [1, 2.5, None]}}


@pytest.mark.parametrize("body, expected", [("[1, 2]", ["list", [1, 2]]), ('"text"', ["str", "text"]),
                                            ("3.5", ["float", 3.5]), ("null", ["NoneType", None]),
                                            ("true", ["bool", True])])
def test_any_json_value(server, body, expected):
    response = post(server, content=body, headers={"Content-Type": "application/json"})
    assert [response.json()["type"], response.json()["value"]] == expected


def test_content_type_is_matched_case_insensitively_by_prefix(server):
    response = post(server, content=b'{"a": 1}', headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert response.json() == {"type": "dict", "value": {"a": 1}}


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"a": 1'])
def test_invalid_json_is_400_with_json_error(server, body):
    response = post(server, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "invalid JSON" in response.json()["error"]


def test_urlencoded_form(server):
    response = post(server, data={"key": "value", "other": "2"})
    assert response.json() == {"type": "FormData", "value": {"key": "value", "other": "2"}}


def test_multipart_files_and_fields(server):
    files = {"text": ("text.txt", b"hello file", "text/plain"), "object": ("object.pkl", b"\x80\x04binary", None)}
    response = post(server, files=files, data={"field": "plain"})
    value = response.json()["value"]
    assert response.json()["type"] == "FormData"
    assert value["field"] == "plain"
    assert value["text"] == {"filename": "text.txt", "content": "hello file", "content_type": "text/plain"}
    assert value["object"]["filename"] == "object.pkl"
    assert value["object"]["content"] == "\x80\x04binary"


def test_multipart_without_boundary_is_400(server):
    response = post(server, content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400
    assert "form data" in response.json()["error"]


def test_text_plain_is_str(server):
    response = post(server, content="héllo".encode(), headers={"Content-Type": "text/plain"})
    assert response.json() == {"type": "str", "value": "héllo"}


def test_text_plain_charset_is_used(server):
    response = post(server, content="héllo".encode("latin-1"), headers={"Content-Type": "text/plain; charset=latin-1"})
    assert response.json() == {"type": "str", "value": "héllo"}


def test_text_plain_undecodable_is_400(server):
    response = post(server, content=b"\xff\xfe\xfa", headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    assert "utf-8" in response.json()["error"]


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", None])
def test_other_types_and_no_content_type_are_bytes(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = post(server, content=b"\x00\x01raw", headers=headers)
    assert response.json() == {"type": "bytes", "value": "\x00\x01raw"}


def test_query_params_and_headers_are_starlette_objects(server):
    response = post(server, "/args?k=1&k=2&other=x", headers={"X-Custom": "yes"}, content=b"ignored")
    assert response.json() == {"query_params_type": "QueryParams", "headers_type": "Headers", "all_k": ["1", "2"],
                               "k": "2", "custom": "yes", "custom_upper": "yes"}


def test_predict_without_arguments_never_reads_the_body(server):
    response = post(server, "/no-args", content=b"{broken json", headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.text == "no arguments"


def test_arguments_are_passed_by_name_in_any_order(server):
    response = post(server, "/reordered?q=query", json={"p": 1}, headers={"X-H": "header"})
    assert response.json() == {"payload": {"p": 1}, "q": "query", "h": "header", "batch_id": None}


def test_large_json_body(server):
    payload = {"values": list(range(200_000))}
    response = post(server, content=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert response.json()["value"]["values"][-1] == 199_999
