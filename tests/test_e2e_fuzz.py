"""Property-based: random methods, paths, content types, headers and bodies (malformed JSON, broken multipart,
invalid UTF-8, deep nesting) against a live server. A client's mistake is never a 5xx, and the server serves on."""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.testing import Server, api_yaml, write_project

pytestmark = pytest.mark.e2e

# Describes what it received and fails only when asked to: every 5xx below is engine's, not the predictor's.
DESCRIBE = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params, headers):
        return {"payload": type(payload).__name__, "query": dict(query_params)}
"""

CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "text/plain; charset=latin-1",
                 "text/plain; charset=no-such-charset", "multipart/form-data", "multipart/form-data; boundary=xyz",
                 "application/x-www-form-urlencoded", "application/octet-stream", "image/png", "", "JSON", "*/*"]
JSON_LIKE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                         lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=20)
BODIES = st.one_of(
    st.binary(max_size=2000),
    JSON_LIKE.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=500).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 5000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.just(b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nunterminated"),
    st.just(b"\xff\xfe\xfd not utf-8"),
)
HEADER_NAMES = st.sampled_from(["X-Request-ID", "Accept", "X-Custom", "Content-Encoding", "Authorization", "Cookie"])
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300).map(str.strip)
PATHS = st.sampled_from(["/fuzz", "/", "/predict", "/fuzz/", "/nope", "/healthz", "/readyz", "/metrics", "//fuzz",
                         "/fuzz?x=1&x=2", "/fuzz?%ff=%fe", "/FUZZ"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project = write_project(tmp_path_factory.mktemp("fuzz"), {"cortex.yaml": api_yaml("fuzz"),
                                                              "predictor.py": DESCRIBE})
    running = Server(project, "--max-body-size", "64KiB")
    running.wait_ready()
    yield running
    assert running.stop() == 0
    assert "unexpected error while serving" not in running.output and "Traceback" not in running.output


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(method=METHODS, path=PATHS, content_type=st.sampled_from(CONTENT_TYPES), body=BODIES,
       headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3))
def test_a_clients_mistake_is_never_a_5xx(server, method, path, content_type, body, headers):
    sent = {**headers, "Content-Type": content_type} if content_type else headers
    answer = server.client.request(method, path, content=body if method not in ("GET", "HEAD") else None,
                                   headers=sent)
    assert answer.status_code < 500, (answer.status_code, answer.text)
    if answer.status_code >= 400 and method != "HEAD" and answer.headers.get("content-type") == "application/json":
        assert "error" in answer.json() or "detail" in answer.json()


def test_it_still_serves_after_the_fuzzing(server):
    assert httpx.post(server.url + "/fuzz", json={"ok": True}, timeout=30).json() == {"payload": "dict", "query": {}}
