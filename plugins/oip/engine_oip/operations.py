"""The plugin's operations (engine.Operation): what its REST routes and gRPC service ask of an API, run on the API's
thread pool where its predictor and client are (the front process, or a worker process)."""
from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from engine_oip import grpc_messages, repository, rest
from engine_oip.models import Model


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _model(context: Any) -> Model:
    name, version = rest.target(context.headers)
    return Model(context, name, version)


def metadata(context: Any, body: bytes) -> Response:
    """The model's metadata (versions, platform, tensors)."""
    return _json(_model(context).metadata())


def ready(context: Any, body: bytes) -> Response:
    """The model's readiness (400 when not ready, as the protocol's health calls answer): it exists with that
    version, and is not unloaded."""
    model = _model(context)
    ready = model.ready()
    return _json({"name": model.name, "ready": ready}, 200 if ready else 400)


def index(context: Any, body: bytes) -> Response:
    """Every model version of the API and its state, for the repository index."""
    return _json(repository.index(context))


def load(context: Any, body: bytes) -> Response:
    """Load a model (in every process of the API): body {"name": OIP name}."""
    return _json(repository.load(context, body))


def unload(context: Any, body: bytes) -> Response:
    """Unload a model (in every process of the API): body {"name": OIP name}."""
    return _json(repository.unload(context, body))


def infer(context: Any, body: bytes) -> Response:
    """REST: the JSON request (with binary data after it when Inference-Header-Content-Length says so)."""
    model = _model(context)
    request, wanted, default_binary = rest.decode_request(body, context.headers.get(rest.HEADER_LENGTH))
    outputs = model.infer(request)
    return rest.encode_response(model.name, model.version, request, outputs, wanted, default_binary)


def infer_grpc(context: Any, body: bytes) -> Response:
    """gRPC: a serialized ModelInferRequest in, a serialized ModelInferResponse out."""
    model = _model(context)
    request = grpc_messages.decode_request(body)
    outputs = model.infer(request)
    return Response(grpc_messages.encode_response(model.name, model.version, request, outputs),
                    media_type="application/grpc+proto")
