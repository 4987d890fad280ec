"""engine-oip: the Open Inference Protocol (V2) for engine's APIs, over REST on the API port and over gRPC on
--grpc-port; built on engine's public plugin API only. See docs/oip.md."""
from __future__ import annotations

from engine import hookimpl


@hookimpl
def engine_routes():
    from engine_oip import routes
    return routes.routes()


@hookimpl
def engine_openapi_paths(apis):
    from engine_oip import openapi
    return openapi.paths()


@hookimpl
def engine_operations():
    from engine_oip import routes
    return routes.operations()


@hookimpl
def engine_services(served, settings):
    if settings.grpc_port is None:
        return []
    from engine_oip.grpc_service import GrpcService  # grpcio is imported only when gRPC is served
    return [GrpcService(served, settings)]
