"""What the plugin registers at start: its REST routes and its operations, each imported on first use (numpy,
protobuf and the codecs load with the first protocol request, not with every engine serve that has the plugin)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine import HttpRoute, Operation

OPERATIONS = {"oip.metadata": "metadata", "oip.ready": "ready", "oip.index": "index", "oip.infer": "infer",
              "oip.infer_grpc": "infer_grpc", "oip.load": "load", "oip.unload": "unload"}  # name → its function
EVERYWHERE = {"oip.load", "oip.unload"}  # run in every worker process of the API (Operation.everywhere)


def routes() -> list[HttpRoute]:
    """The protocol's REST routes (their handlers are in rest.py), each with its OpenAPI description."""
    from engine_oip.openapi import paths

    model = "/v2/models/{model_name}"
    versioned = model + "/versions/{model_version}"
    table = [("/v2", "GET", "metadata_route"), ("/v2/health/live", "GET", "live_route"),
             ("/v2/health/ready", "GET", "ready_route"), ("/v2/repository/index", "POST", "repository_index_route"),
             ("/v2/repository/models/{model_name}/load", "POST", "repository_load_route"),
             ("/v2/repository/models/{model_name}/unload", "POST", "repository_unload_route")]
    for path in (model, versioned):
        table += [(path, "GET", "model_metadata_route"), (path + "/ready", "GET", "model_ready_route"),
                  (path + "/infer", "POST", "infer_route")]
    described = paths()
    return [HttpRoute(path, _handler(handler), (method,), described[path]) for path, method, handler in table]


def operations() -> list[Operation]:
    """The plugin's operations (their functions are in operations.py)."""
    return [Operation(name, _operation(function), everywhere=name in EVERYWHERE)
            for name, function in OPERATIONS.items()]


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
