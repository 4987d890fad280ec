"""The Open Inference Protocol over REST, on the API port: the routes (in the front process, on the event loop), and
the JSON body of an inference with the binary tensor data extension (decoded and encoded inside the operation)."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import engine
from engine import ModelError
from engine_oip.models import InferRequest, locate, unknown_model
from engine_oip.repository import refused_parameters
from engine_oip.tensors import (
    check_header,
    datatype_of,
    from_json_data,
    from_raw,
    to_json_data,
    to_raw,
)

SERVER_NAME = "engine"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
HEADER_LENGTH = "inference-header-content-length"
# What a route tells its operation, as headers of the call (any such header a client sends is dropped).
MODEL_HEADER, VERSION_HEADER = b"oip-model", b"oip-version"
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def server_metadata() -> dict[str, Any]:
    """The protocol's server metadata: name, version, extensions."""
    return {"name": SERVER_NAME, "version": engine.__version__, "extensions": EXTENSIONS}


def error(status: int, message: str) -> JSONResponse:
    """The protocol's error body, {"error": message}."""
    return JSONResponse({"error": message}, status_code=status)


# --- routes --------------------------------------------------------------------------------------------------------


async def metadata_route(request: Request) -> Response:
    return JSONResponse(server_metadata())


async def live_route(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready_route(request: Request) -> Response:
    ready = engine.served(request).is_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


async def model_metadata_route(request: Request) -> Response:
    return await _model_call(request, "oip.metadata", b"")


async def model_ready_route(request: Request) -> Response:
    served = engine.served(request)
    name = request.path_params["model_name"]
    api = locate([api.name for api in served.apis], name)
    if api is not None and not served.is_ready(api):
        return JSONResponse({"name": name, "ready": False}, status_code=400)
    return await _model_call(request, "oip.ready", b"")


async def infer_route(request: Request) -> Response:
    body = await engine.served(request).read_body(request)
    if isinstance(body, Response):  # refused: already the protocol's {"error": ...} with its status
        return body
    return await _model_call(request, "oip.infer", body)


async def repository_index_route(request: Request) -> Response:
    """Every model version of every API and its state (Triton's repository index); the optional body
    {"ready": true} keeps the READY ones."""
    served = engine.served(request)
    document = await _json_body(request, "the repository index request")
    if isinstance(document, Response):
        return document
    if not isinstance(document, dict) or not isinstance(document.get("ready", False), bool):
        return error(400, 'the repository index request is a JSON object, {"ready": true} or {"ready": false}')
    return JSONResponse(await repository_index(served, request.headers.raw, document.get("ready") is True))


async def repository_index(served: Any, headers: list[tuple[bytes, bytes]], ready_only: bool) -> list[dict[str, Any]]:
    """The index rows of every API (an API not ready: one UNAVAILABLE row saying why), for REST and gRPC."""
    async def one(api_name: str) -> list[dict[str, Any]]:
        if not served.is_ready(api_name):
            return [{"name": api_name, "state": "UNAVAILABLE", "reason": "the api is not ready"}]
        answer = await served.operate(api_name, "oip.index", b"", headers)
        if answer.status_code != 200:
            return [{"name": api_name, "state": "UNAVAILABLE", "reason": orjson.loads(answer.body).get("error", "")}]
        rows: list[dict[str, Any]] = orjson.loads(answer.body)
        return rows

    index = [row for rows in await asyncio.gather(*(one(api.name) for api in served.apis)) for row in rows]
    return [row for row in index if row["state"] == "READY"] if ready_only else index


async def repository_load_route(request: Request) -> Response:
    return await _repository_call(request, "oip.load")


async def repository_unload_route(request: Request) -> Response:
    return await _repository_call(request, "oip.unload")


async def _repository_call(request: Request, operation: str) -> Response:
    """Load or unload a model; the optional body is Triton's {"parameters": {...}} (overrides refused)."""
    served = engine.served(request)
    document = await _json_body(request, "the request")
    if isinstance(document, Response):
        return document
    parameters = document.get("parameters", {}) if isinstance(document, dict) else None
    if not isinstance(parameters, dict):
        return error(400, 'the request is a JSON object, with optional "parameters": {...}')
    refused = refused_parameters(parameters)
    if refused:
        return error(400, refused)
    return await repository_call(served, operation, request.path_params["model_name"], request.headers.raw)


async def repository_call(served: Any, operation: str, name: str, headers: list[tuple[bytes, bytes]]) -> Response:
    """Run oip.load or oip.unload for the OIP model `name` in its API, for REST and gRPC."""
    return await _operate_for(served, name, operation, orjson.dumps({"name": name}), headers, [])


async def _model_call(request: Request, operation: str, body: bytes) -> Response:
    name = request.path_params["model_name"]
    named = [(MODEL_HEADER, name.encode())]
    version = request.path_params.get("model_version")
    if version is not None:
        named.append((VERSION_HEADER, version.encode()))
    return await _operate_for(engine.served(request), name, operation, body, request.headers.raw, named)


async def _operate_for(served: Any, name: str, operation: str, body: bytes, headers: list[tuple[bytes, bytes]],
                       extra: list[tuple[bytes, bytes]]) -> Response:
    """Run `operation` in the API of the OIP model `name` (404 when none serves it), with the request's headers less
    any oip-* a client sent, and `extra`."""
    api_names = [api.name for api in served.apis]
    api = locate(api_names, name)
    if api is None:
        return error(404, unknown_model(name, api_names))
    kept = [(key, value) for key, value in headers if not key.startswith(b"oip-")]
    return await served.operate(api, operation, body, kept + extra)


async def _json_body(request: Request, what: str) -> Any:
    """The request's body as JSON ({} when empty), or the Response to answer instead: the body refused (size, time)
    or not JSON."""
    body = await engine.served(request).read_body(request)
    if isinstance(body, Response):
        return body
    try:
        return orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as problem:
        return error(400, f"{what} is not JSON: {problem}")


def target(headers: Any) -> tuple[str, str | None]:
    """The OIP model name and version a route passed to its operation."""
    return headers.get(MODEL_HEADER.decode(), ""), headers.get(VERSION_HEADER.decode())


# --- the inference body (inside the operation) -------------------------------------------------------------------


def decode_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, bool], bool]:
    """The request, whether each requested output is wanted as binary data, and whether the others are."""
    binary = memoryview(b"")
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ModelError(f"Inference-Header-Content-Length is {header_length!r}, but the body has "
                             f"{len(body)} bytes", 400)
        cut = int(header_length)
        binary = memoryview(body)[cut:]
        body = body[:cut]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as problem:
        raise ModelError(f"the inference request is not JSON: {problem}", 400) from None
    if not isinstance(document, dict):
        raise ModelError("the inference request must be a JSON object with `inputs`", 400)
    request = InferRequest(id=_string(document.get("id", ""), "id"),
                           parameters=_parameters(document.get("parameters"), "the request"))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ModelError("the inference request needs `inputs`, a list of tensors", 400)
    offset = 0
    for index, tensor in enumerate(inputs):
        name, datatype, shape = check_header(tensor, f"input {index}")
        if name in request.inputs:
            raise ModelError(f"input '{name}' is given twice", 400)
        size = _parameters(tensor.get("parameters"), f"input '{name}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ModelError(f"input '{name}': binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                 "bytes of binary data left after the JSON header", 400)
            array = from_raw(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            array = from_json_data(name, datatype, shape, tensor["data"])
        else:
            raise ModelError(f"input '{name}' has neither data nor a binary_data_size parameter", 400)
        request.inputs[name] = array
        request.datatypes[name] = datatype
    if offset != len(binary):
        raise ModelError(f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input "
                         "(binary_data_size)", 400)
    default_binary = request.parameters.get("binary_data_output") is True
    wanted: dict[str, bool] = {}
    outputs = document.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise ModelError("`outputs` must be a list of {\"name\": ...} objects", 400)
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise ModelError(f"output {index} needs a name (a string)", 400)
            parameters = _parameters(output.get("parameters"), f"output '{output['name']}'")
            wanted[output["name"]] = parameters.get("binary_data", default_binary) is True
        request.outputs = list(wanted)
    return request, wanted, default_binary


def encode_response(model: str, version: str | None, request: InferRequest, outputs: list[tuple[str, np.ndarray]],
                    wanted: dict[str, bool], default_binary: bool) -> Response:
    """The inference response: JSON, followed by the binary outputs when any were asked for."""
    described, parts = [], []
    for name, array in outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if wanted.get(name, default_binary):
            raw = to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            tensor["data"] = to_json_data(name, array)
        described.append(tensor)
    document: dict[str, Any] = {"model_name": model}
    if version is not None:
        document["model_version"] = version
    if request.id:
        document["id"] = request.id
    document["outputs"] = described
    header = orjson.dumps(document, option=JSON_OPTIONS)
    if not parts:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *parts]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ModelError(f"`{what}` must be a string", 400)
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelError(f"the parameters of {where} must be a JSON object", 400)
    return value
