"""Every hook engine calls, grouped by phase. Implementations are plain `def`; return None to decline.

A capability is one object a discovery hook returns (a PredictorType, a PayloadParser, an HttpRoute, a Setting):
engine dispatches by its name or media type, so no implementation filters on them. The hooks marked deprecated are
the older way to the same capabilities: they keep working for one release, and engine logs a warning naming each
plugin that still implements them (see DEPRECATED in engine.plugins)."""
# mypy: disable-error-code="empty-body"
# (a hookspec is a signature: pluggy never calls its body)
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.datastructures import Headers
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from engine.models import ModelRepository
    from engine.plugin_api import (
        HttpRoute,
        HttpServer,
        Operation,
        PayloadParser,
        Served,
        Service,
        Setting,
    )
    from engine.project.config import Api
    from engine.serving.batching import Batching
    from engine.settings import ServeSettings
    from engine.tracing import Tracer
    from engine.types import Device, PredictorType

hookspec = pluggy.HookspecMarker("engine")


# --- discovery: at start-up, in every process -------------------------------------------------


@hookspec
def engine_predictor_types() -> list[PredictorType]:
    """Return the predictor types this plugin provides, each with its create_client, model_format and validate."""


@hookspec
def engine_payload_parsers() -> list[PayloadParser]:
    """Return the payload parsers this plugin provides, each with its media types."""


@hookspec
def engine_http_routes() -> list[HttpRoute]:
    """Return routes to serve next to the APIs (e.g. /metrics), each with its OpenAPI description."""


@hookspec
def engine_settings() -> list[Setting]:
    """Return the engine serve settings this plugin owns (each a --flag and an ENGINE_* variable)."""


@hookspec
def engine_hardware_targets() -> list[str]:
    """Return the compute targets this plugin owns: "cpu", "gpu" (compute.gpu > 0) or "inf" (compute.inf > 0)."""


@hookspec
def engine_validate_api(api: Api, project_root: Path) -> list[str]:
    """Return problems with any `api` that this plugin knows of (empty when none), such as a hardware target's; run
    by serve and validate. (A predictor type's own checks are its PredictorType.validate.)"""


@hookspec
def engine_routes() -> list[BaseRoute]:
    """Deprecated (engine_http_routes): return extra Starlette routes to serve next to the APIs."""


@hookspec
def engine_openapi_paths(apis: list[Api]) -> dict[str, dict[str, Any]]:
    """Deprecated (HttpRoute.openapi): describe engine_routes' routes, as OpenAPI path items by path."""


@hookspec
def engine_operations() -> list[Operation]:
    """Return operations: work this plugin does on an API's models inside its pipeline (see engine.Operation)."""


@hookspec
def engine_services(served: Served, settings: ServeSettings) -> list[Service]:
    """Return services to run beside the HTTP server, started and stopped with it (e.g. a gRPC server)."""


@hookspec
def engine_http_servers() -> list[HttpServer]:
    """Return the HTTP servers this plugin provides (engine serve --server NAME chooses one)."""


@hookspec(firstresult=True)
def engine_tracer() -> Tracer | None:
    """Return the tracer that records each request's spans in this process (engine.Tracer), or None to decline."""


@hookspec
def engine_payload_media_types() -> list[str]:
    """Deprecated (PayloadParser.media_types): the media types engine_parse_payload turns into payloads."""


# --- per worker process, before the predictor is built ----------------------------------------


@hookspec(firstresult=True)
def engine_serve_on(target: str, project_dir: Path, config_file: Path | None, settings: ServeSettings) -> int | None:
    """Serve the project on the distributed engine `target` names (engine serve --on), until it is told to stop;
    return the exit code. The plugin that provides `target` answers; the others return None."""


@hookspec(firstresult=True)
def engine_setup_device(api: Api, process_index: int) -> Device | None:
    """Set up one worker process's hardware for `api`, before any framework import; its owner returns a Device."""


@hookspec(firstresult=True)
def engine_create_client(api: Api, device: Device, models: ModelRepository | None,
                         batching: Batching | None) -> object:
    """Deprecated (PredictorType.create_client): build the model client of an API of a type this plugin owns."""


@hookspec
def engine_startup(apis: list[Api]) -> None:
    """Called once every predictor has finished `__init__`, on a worker thread (warm-up, announcements)."""


# --- per request ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def engine_parse_payload(body: bytes, content_type: str, headers: Headers, api: Api) -> object:
    """Deprecated (engine_payload_parsers): turn a request body into the `payload` argument, or decline."""


@hookspec(firstresult=True)
def engine_encode_response(result: object, request_headers: Headers, api: Api) -> Response | None:
    """Turn what `predict` returned into a Starlette Response."""
