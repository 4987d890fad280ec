"""GET /openapi.json describes every route, and schemathesis, driving a live server from that document, finds no
5xx and no response that contradicts it."""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from engine.testing import Server, api_yaml, plugin_environment, write_project

pytestmark = pytest.mark.e2e

DESCRIBE = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        if query_params.get("as") == "text":
            return "text"
        return {"payload": type(payload).__name__}
"""

MEDIA_PLUGIN = """
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine import hookimpl


async def version(request):
    return JSONResponse({"version": 3})


@hookimpl
def engine_routes():
    return [Route("/custom/version", version)]


@hookimpl
def engine_openapi_paths(apis):
    schema = {"type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}}
    return {"/custom/version": {"get": {"operationId": "custom_version", "responses": {"200": {
        "description": "the plugin's version", "content": {"application/json": {"schema": schema}}}}}}}


@hookimpl
def engine_payload_media_types():
    return ["application/x-custom"]


@hookimpl
def engine_parse_payload(body, content_type):
    return {"custom": len(body)} if content_type.startswith("application/x-custom") else None
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    project = write_project(root / "project", {"cortex.yaml": api_yaml("first") + api_yaml("second"),
                                               "predictor.py": DESCRIBE, "sample.json": '{"x": [1, 2]}'})
    # Only these plugins (and the HTTP server's, whose entry point has its name): no protocol plugin's routes.
    only = {"ENGINE_PLUGINS": f"python,custommedia,{os.environ.get('ENGINE_SERVER', '')}"}
    running = Server(project, env={**plugin_environment(root / "site", "custommedia", MEDIA_PLUGIN), **only})
    running.wait_ready()
    yield running
    assert running.stop() == 0


def test_the_document_lists_every_route_with_its_media_types(server):
    spec = server.client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {"/first", "/second", "/healthz", "/readyz", "/metrics", "/custom/version"}
    post = spec["paths"]["/first"]["post"]
    assert {"application/json", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
            "application/octet-stream", "application/x-custom"} <= set(post["requestBody"]["content"])
    assert post["requestBody"]["content"]["application/json"]["example"] == {"x": [1, 2]}  # the project's sample
    assert {"application/json", "text/event-stream", "application/x-ndjson"} <= \
        set(post["responses"]["200"]["content"])
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}}  # described by the plugin that serves it


def test_the_document_describes_api_keys_when_they_are_required(tmp_path):
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": DESCRIBE})
    server = Server(project, "--api-key", "k")
    try:
        server.wait_ready()
        spec = server.client.get("/openapi.json").json()  # open to all, so that a page can ask for the key
        assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert spec["paths"]["/healthz"]["get"]["security"] == []
    finally:
        server.close()


def test_schemathesis_finds_no_5xx_and_no_contradiction(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8  # two APIs' POST and GET, the probes, /metrics, the plugin's route
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case):
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance])

        call()
