"""The OpenAPI description of the plugin's REST routes (each HttpRoute's), with the protocol's JSON schemas."""
from __future__ import annotations

from typing import Any

from engine_oip.datatypes import DTYPE_NAMES

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"},
                                                                 "request_id": {"type": "string"}}}
PARAMETERS = {"type": "object", "additionalProperties": True}
SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
DATA = {"type": "array", "items": {}}  # numbers, booleans or strings, flat or nested in row-major order
TENSOR_METADATA = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": SHAPE}}
MODEL_METADATA = {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "platform": {"type": "string"}, "inputs": {"type": "array", "items": TENSOR_METADATA},
    "outputs": {"type": "array", "items": TENSOR_METADATA}}}
INFER_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": PARAMETERS,
    "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DTYPE_NAMES)}, "parameters": PARAMETERS, "data": DATA}}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": PARAMETERS}}}}}
INFER_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "parameters": PARAMETERS,
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": SHAPE, "datatype": {"type": "string"}, "parameters": PARAMETERS,
        "data": DATA}}}}}
INDEX_ROW = {"type": "object", "required": ["name", "state"], "properties": {
    "name": {"type": "string"}, "version": {"type": "string"},
    "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]}, "reason": {"type": "string"}}}
MODEL = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "`<api>` for an api of one model (or a python api), `<api>.<model>` for a named model"}
VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "a version directory's number"}
TAG = "Open Inference Protocol"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    meaning = {"400": "a request the model cannot take", "401": "a valid API key is required",
               "404": "no such model or version", "408": "the body came too slowly", "413": "the body is too large",
               "500": "the model failed", "504": "the request timed out",
               "503": "the api is not ready, at its concurrency limit, or the model is unloaded"}
    return {status: _json(ERROR, meaning[status]) for status in statuses}


def paths() -> dict[str, Any]:
    """The OpenAPI path items of every route in routes.routes()."""
    model_errors = _errors("401", "404", "500", "503", "504")
    described: dict[str, Any] = {
        "/v2": {"get": {"summary": "server metadata", "operationId": "oip_server_metadata", "tags": [TAG],
                        "responses": {"200": _json({"type": "object", "required": ["name", "version", "extensions"],
                                                    "properties": {"name": {"type": "string"},
                                                                   "version": {"type": "string"},
                                                                   "extensions": {"type": "array",
                                                                                  "items": {"type": "string"}}}},
                                                   "the server's name, version and protocol extensions"),
                                      **_errors("401")}}},
        "/v2/health/live": {"get": {"summary": "server live", "operationId": "oip_server_live", "tags": [TAG],
                                    "responses": {"200": _json({"type": "object", "properties": {
                                        "live": {"type": "boolean"}}}, "the server is live"), **_errors("401")}}},
        "/v2/health/ready": {"get": {"summary": "server ready", "operationId": "oip_server_ready", "tags": [TAG],
                                     "responses": {
                                         "200": _json({"type": "object", "properties": {"ready": {"const": True}}},
                                                      "every model is ready"),
                                         "400": _json({"type": "object", "properties": {"ready": {"const": False}}},
                                                      "not every model is ready yet"), **_errors("401")}}},
        "/v2/repository/index": {"post": {
            "summary": "every model version and its state (the model repository extension)",
            "operationId": "oip_repository_index", "tags": [TAG],
            "description": "READY, or UNAVAILABLE with a reason: `unloaded` for a model unloaded through "
                           "/v2/repository/models/{model_name}/unload, or why its api is not ready.",
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"ready": {
                    "type": "boolean", "description": "true: only the READY ones"}}}}}},
            "responses": {"200": _json({"type": "array", "items": INDEX_ROW}, "the model versions"),
                          **_errors("400", "401")}}},
    }
    for action, what in (("load", "make a model available and load it now (its latest version; every version "
                                  "when the api loads models before serving), in every process of its api"),
                         ("unload", "make a model unavailable (503 until loaded again) and free its memory, in "
                                    "every process of its api")):
        described[f"/v2/repository/models/{{model_name}}/{action}"] = {"post": {
            "summary": f"{action} a model (the model repository extension)", "operationId": f"oip_repository_{action}",
            "tags": [TAG], "description": what, "parameters": [MODEL],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"parameters": {
                    **PARAMETERS, "description": "Triton's; its model overrides (config, file:...) are refused"}}}}}},
            "responses": {"200": _json(INDEX_ROW, f"{action}ed"),
                          **_errors("400", "401", "404", "500", "503", "504")}}}
    for prefix, parameters, suffix in (("/v2/models/{model_name}", [MODEL], ""),
                                       ("/v2/models/{model_name}/versions/{model_version}", [MODEL, VERSION],
                                        "_version")):
        described[prefix] = {"get": {
            "summary": "model metadata", "operationId": f"oip_model_metadata{suffix}", "tags": [TAG],
            "parameters": parameters,
            "responses": {"200": _json(MODEL_METADATA, "the model's versions and tensors"), **model_errors}}}
        described[prefix + "/ready"] = {"get": {
            "summary": "model ready", "operationId": f"oip_model_ready{suffix}", "tags": [TAG],
            "parameters": parameters,
            "responses": {"200": _json({"type": "object", "properties": {"name": {"type": "string"},
                                                                        "ready": {"const": True}}}, "ready"),
                          "400": _json({"type": "object", "properties": {"name": {"type": "string"},
                                                                        "ready": {"const": False}}},
                                       "its api is not ready yet, or it is unloaded"),
                          **model_errors}}}
        described[prefix + "/infer"] = {"post": {
            "summary": "inference", "operationId": f"oip_model_infer{suffix}", "tags": [TAG],
            "parameters": parameters,
            "description": "JSON tensors; with the binary tensor data extension, the JSON is followed by the "
                           "tensors' bytes and the Inference-Header-Content-Length header gives its length.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": INFER_REQUEST},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "the outputs", "content": {
                "application/json": {"schema": INFER_RESPONSE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors("400", "401", "404", "408", "413", "500", "503", "504")}}}
    return described
