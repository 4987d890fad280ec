"""What the plugin registers at start: its REST routes and its operations, each imported on first use (numpy,
protobuf and the codecs load with the first protocol request, not with every engine serve that has the plugin)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import Operation

OPERATIONS = {"oip.metadata": "metadata", "oip.ready": "ready", "oip.models": "models", "oip.infer": "infer",
              "oip.infer_grpc": "infer_grpc"}  # operation name → its function in operations.py


def routes() -> list[Route]:
    """The protocol's REST routes (their handlers are in rest.py)."""
    model = "/v2/models/{model_name}"
    versioned = model + "/versions/{model_version}"
    return [
        Route("/v2", _handler("metadata_route"), methods=["GET"]),
        Route("/v2/health/live", _handler("live_route"), methods=["GET"]),
        Route("/v2/health/ready", _handler("ready_route"), methods=["GET"]),
        Route("/v2/repository/index", _handler("repository_index_route"), methods=["POST"]),
        *(Route(path, _handler("model_metadata_route"), methods=["GET"]) for path in (model, versioned)),
        *(Route(path + "/ready", _handler("model_ready_route"), methods=["GET"]) for path in (model, versioned)),
        *(Route(path + "/infer", _handler("infer_route"), methods=["POST"]) for path in (model, versioned)),
    ]


def operations() -> list[Operation]:
    """The plugin's operations (their functions are in operations.py)."""
    return [Operation(name, _operation(function)) for name, function in OPERATIONS.items()]


def _handler(name: str) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        from engine_oip import rest
        return await getattr(rest, name)(request)

    handle.__name__ = name
    return handle


def _operation(name: str) -> Callable[[Any, bytes], Response]:
    def run(context: Any, body: bytes) -> Response:
        from engine_oip import operations
        return getattr(operations, name)(context, body)

    run.__name__ = name
    return run
