"""GET /openapi.json: an OpenAPI 3.1 description of every route the server answers — each API's, the server's own,
and those plugins add (each engine.HttpRoute carries its own description)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import __version__, plugin_routes, plugins, routes
from engine.project.config import Api
from engine.project.splitters import TrafficSplitter
from engine.serving import parsing
from engine.settings import ServeSettings

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}}}
# What an API's POST may answer, by the type predict returned (and a stream's by the request's Accept).
RESULT_TYPES = {
    "application/json": {},
    "text/plain": {"type": "string"},
    "application/octet-stream": {"type": "string", "format": "binary"},
    "application/x-ndjson": {"type": "string"},
    "text/event-stream": {"type": "string"},
}
REQUEST_SCHEMAS = {"application/json": {}, "text/plain": {"type": "string"},
                   "multipart/form-data": {"type": "object"}, "application/x-www-form-urlencoded": {"type": "object"}}
SAMPLE_FILE = "sample.json"  # as Cortex's examples have: a request body to try the API with


def document(apis: list[Api], paths_of: dict[str, list[str]], pm: plugins.PluginManager, settings: ServeSettings,
             project_root: Path, keyed: bool, splitters: Sequence[TrafficSplitter] = ()) -> dict[str, Any]:
    """The OpenAPI document of this server (`splitters`: the TrafficSplitters it serves)."""
    media_types = parsing.media_types(pm)
    paths: dict[str, Any] = {
        routes.HEALTHZ_PATH: _probe("healthz", "200 while the process is up", {"status": {"const": "alive"}}),
        routes.READYZ_PATH: _probe("readyz", "200 once every predictor has finished __init__, 503 before", {
            "ready": {"type": "boolean"}, "apis": {"type": "object", "additionalProperties": {"type": "string"}}}),
    }
    sample = _sample(project_root)
    for api in apis:
        for path in paths_of[api.name]:
            paths[path] = _api_paths(api, path, media_types, sample)
    by_name = {api.name: api for api in apis}
    for splitter in splitters:
        if splitter.primaries[0].name in by_name:
            paths[splitter.endpoint] = _splitter_paths(splitter, by_name[splitter.primaries[0].name], media_types,
                                                       sample)
    paths.update(plugin_routes.openapi_paths(pm, apis))
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "engine", "version": __version__,
                 "description": "The APIs of this project, served by engine (Cortex's predictor interface)."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
    if keyed:
        spec["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}
        spec["security"] = [{"bearer": []}, {"apiKey": []}]
    return spec


def _api_paths(api: Api, path: str, media_types: list[str], sample: Any) -> dict[str, Any]:
    errors = {status: {"description": description, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}} for status, description in (
        ("400", "the body cannot be parsed as its Content-Type says"), ("401", "a valid API key is required"),
        ("413", "the body is too large"), ("500", "predict raised an exception"),
        ("503", "not ready, or max_replica_concurrency requests in flight"), ("504", "the request timed out"))}
    request_content = {}
    for media in media_types:
        entry: dict[str, Any] = {"schema": REQUEST_SCHEMAS.get(media, {"type": "string", "format": "binary"})}
        if media == "application/json" and sample is not None:
            entry["example"] = sample
        request_content[media] = entry
    operation_id = api.name.replace("-", "_") + ("" if path == api.endpoint else path.replace("/", "_") or "_root")
    return {
        "post": {
            "summary": f"predict with api '{api.name}'", "operationId": f"{operation_id}_predict",
            "tags": [api.name],
            "description": "The body is parsed by its Content-Type into `payload`; the result is encoded by its type.",
            "requestBody": {"required": False, "content": request_content},
            "responses": {"200": {"description": "what predict returned",
                                  "content": {media: {"schema": schema} for media, schema in RESULT_TYPES.items()}},
                          **errors},
        },
        "get": {
            "summary": f"api '{api.name}' and its models", "operationId": f"{operation_id}_summary",
            "tags": [api.name],
            "responses": {"200": {"description": "Cortex's message, and the models' metadata", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "message": {"type": "string"}, "model_metadata": {"type": "object"}}}}}},
                          **{status: errors[status] for status in ("401", "503", "504")}},
        },
    }


def _splitter_paths(splitter: TrafficSplitter, first: Api, media_types: list[str], sample: Any) -> dict[str, Any]:
    """A TrafficSplitter's route: POST as its APIs' (the first one's entry stands for them all), GET the split."""
    entry = _api_paths(first, splitter.endpoint, media_types, sample)
    operation = splitter.name.replace("-", "_")
    entry["post"].update(summary=f"predict with one of the APIs of TrafficSplitter '{splitter.name}' (at start: "
                                 f"{splitter.describe()})", operationId=f"{operation}_predict", tags=[splitter.name],
                         description="Answered by the API chosen by weight, exactly as at its own route; the "
                                     "x-engine-api response header names it.")
    entry["get"] = {"summary": f"the split of TrafficSplitter '{splitter.name}'", "operationId": f"{operation}_split",
                    "tags": [splitter.name], "responses": {"200": {"description": "the split in force", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "message": {"type": "string"}, "traffic_splitter": {"type": "object"}}}}}}}}
    return entry


def _probe(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": description, "operationId": name, "tags": ["server"], "security": [],
                    "responses": {"200": {"description": description, "content": {"application/json": {
                        "schema": {"type": "object", "properties": properties}}}},
                                  "503": {"description": "not ready", "content": {"application/json": {
                                      "schema": {"type": "object", "properties": properties}}}}}}}


def _sample(project_root: Path) -> Any:
    """The project's sample.json, when it has one that is JSON."""
    try:
        return json.loads((project_root / SAMPLE_FILE).read_text())
    except (OSError, ValueError):
        return None
