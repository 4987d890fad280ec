"""engine-oip: the Open Inference Protocol (V2) for engine's APIs, over REST on the API port and over gRPC on
--grpc-port; built on engine's public plugin API only. See docs/oip.md."""
from __future__ import annotations

import os

from engine import Setting, hookimpl, port_number

GRPC_PORT = Setting("grpc_port", "serve the Open Inference Protocol over gRPC on this port too (engine-oip)",
                    parse=port_number, metavar="PORT")


@hookimpl
def engine_settings():
    return [GRPC_PORT]


@hookimpl
def engine_http_routes():
    from engine_oip import routes
    return routes.routes()


@hookimpl
def engine_operations():
    from engine_oip import routes
    return routes.operations()


@hookimpl
def engine_services(served, settings):
    if settings.grpc_port is None:
        return []
    # engine's worker processes are started by fork and exec, which needs none of gRPC's fork handlers: without them,
    # gRPC's C core does not print its "skipping fork() handlers" notice past engine's log format
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from engine_oip.grpc_service import (
        GrpcService,  # grpcio is imported only when gRPC is served
    )
    return [GrpcService(served, settings)]
