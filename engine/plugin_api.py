"""The Protocols and types of the plugin API that the core defines for plugins (all re-exported by `engine`).

What engine may find on a model client (what `PredictorType.create_client` returns) is optional, part by part: engine
checks for each with isinstance, so a client implements only the parts it needs, by their names alone.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import socket

    from numpy.typing import NDArray
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp

    from engine.models import ModelRepository
    from engine.project.config import Api
    from engine.settings import ServeSettings


@runtime_checkable
class DescribesModels(Protocol):
    """A client whose models the API's GET summary shows, as `model_metadata`."""

    def metadata(self) -> dict[str, Any]:
        """Per model: versions, which are loaded, load errors and what the format tells of a loaded version."""


@runtime_checkable
class LoadsUserModels(Protocol):
    """The client of a predictor type with `user_loads_models`: the predictor's own load_model() loads versions."""

    def set_load_method(self, load_model: Callable[[str], object]) -> None:
        """Called once the predictor's __init__ has returned, with its load_model(model_path)."""


# --- tensors: a model client's models as named tensors in, named tensors out (the Open Inference Protocol's view) ---


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: its name, numpy dtype name ("float32", "int64", "bool", "object" for
    strings) and shape (-1 for a dimension of any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@runtime_checkable
class ServesTensors(Protocol):
    """A client whose models take and give named tensors; the onnx and tensorflow types' clients are ones."""

    def tensor_models(self) -> dict[str, list[str]]:
        """Each model's versions, newest first, by the model's name within its API."""

    def tensor_signature(self, model_name: str, version: str | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """A version's inputs and outputs (None: the latest); ModelError (404) for one that does not exist."""

    def infer(self, model_name: str, version: str | None, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Run a version on named numpy arrays; its outputs by name. ModelError (400) for inputs it cannot take."""


# --- operations: a plugin's work on an API's models, wherever the API's predictor runs -------------------------------


@dataclass(frozen=True)
class OperationContext:
    """What an operation works with: the API, its model client, the user's predictor object, and its models."""

    api: Api
    client: object  # what the type's create_client returned (None without one): isinstance it against the Protocols
    predictor: object  # the user's predictor object, reached by getattr
    headers: Headers  # the request's headers
    models: ModelRepository | None = None  # the API's models (load, unload, unloaded); None when it has none


@dataclass(frozen=True)
class Operation:
    """Work a plugin does for a request inside an API's pipeline — in the front process or in a worker process,
    wherever the API's predictor is — with the API's client and predictor at hand. `run(context, body)` runs on the
    API's thread pool and returns a starlette Response; raising engine.ModelError or engine.PayloadError answers
    with that status. A plugin calls it through Served.operate, under the API's concurrency limit and deadline.

    `everywhere`: run it in every worker process of the API (processes_per_replica > 1), for work that changes what
    each process holds (loading or unloading a model); the answer is the first failure, else the first process's.
    A worker process started later (a replacement) runs the latest call of each distinct (operation, body) first,
    in the order they last ran, before it takes requests: such an operation sets a state, with all it needs to know
    in its body."""

    name: str
    run: Callable[[OperationContext, bytes], Response]
    everywhere: bool = False


# --- what plugins contribute, one object per capability -----------------------------------------------------------


@dataclass(frozen=True)
class PayloadParser:
    """How request bodies of some media types become predict's `payload` (engine_payload_parsers).

    engine chooses by the request's Content-Type, case-insensitively: the parser of that media type, else the first
    whose media type it starts with (installed plugins' before the built-in ones); a body that no parser claims is
    given as bytes. `parse(body, content_type, headers, api)` returns the payload, or an awaitable of it; raising
    engine.PayloadError answers 400. It runs on the event loop (a body over 256 KiB on a thread): keep it quick."""

    media_types: tuple[str, ...]  # also listed as each API's request body types in GET /openapi.json
    parse: Callable[[bytes, str, Headers, Api], object]  # the payload, or an awaitable of it


@dataclass(frozen=True)
class HttpRoute:
    """A route a plugin serves beside the APIs (engine_http_routes), with its description in GET /openapi.json."""

    path: str  # Starlette's syntax: /v2/models/{model_name}
    endpoint: Callable[[Request], Awaitable[Response]]
    methods: tuple[str, ...] = ("GET",)
    openapi: dict[str, Any] | None = None  # its OpenAPI 3.1 path item, operations by method; None: not described


@dataclass(frozen=True)
class Setting:
    """An `engine serve` setting a plugin owns (engine_settings): the flag --NAME (dashes for underscores), the
    variable ENGINE_NAME (the flag wins), listed by engine serve --help; plugins read it as `settings.NAME`."""

    name: str
    help: str
    default: object = None  # also the value of an empty flag or variable
    parse: Callable[[str], object] = str  # the value of the flag's text; ValueError for text it refuses
    metavar: str = "VALUE"


class Served(Protocol):
    """The running APIs, as a plugin's routes and services reach them (engine.served(request), or the argument of
    engine_services)."""

    apis: list[Api]
    settings: ServeSettings  # the settings the server runs with

    def render_metrics(self) -> tuple[bytes, str]:
        """Every metric in Prometheus' text format, and that format's media type (what GET /metrics serves)."""

    def is_ready(self, api_name: str | None = None) -> bool:
        """True when that API (or every API) can answer."""

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when these request headers carry a valid API key, or when none is required."""

    async def read_body(self, request: Request) -> bytes | Response:
        """A plugin route's request body (bytes) under --max-body-size and --body-timeout, as an API's, or the
        starlette Response (400, 408 or 413, JSON {"error": ...}) to send instead."""

    async def operate(self, api_name: str, operation: str, body: bytes,
                      headers: list[tuple[bytes, bytes]]) -> Response:
        """Run a plugin's operation for one of an API's requests: its starlette Response."""


class HttpServer(Protocol):
    """An HTTP server that runs engine's ASGI app (engine_http_servers); Hypercorn is the built-in one."""

    name: str  # what --server chooses it by
    features: frozenset[str]  # of "tls", "client_certificates", "http2", "websockets", "max_connections"

    async def serve(self, app: ASGIApp, listener: socket.socket, settings: ServeSettings,
                    shutdown: Callable[[], Awaitable[None]]) -> None:
        """Serve `app` (running its lifespan) on `listener`, a bound and listening socket, with the settings'
        keep-alive timeout, TLS and connection bound, until the coroutine function `shutdown` returns; then close the
        listener at once (before the next await: engine starts answering `Connection: close` one event-loop step
        later, and a client that reconnects meanwhile must be refused, not reset) and let what is in flight finish
        within settings.graceful_timeout."""


class Service(Protocol):
    """Something a plugin runs beside the HTTP server, started and stopped with it (e.g. a gRPC server)."""

    async def start(self) -> None:
        """Start serving (the APIs may still be initialising: Served.is_ready says)."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, let what is in flight finish within `grace` seconds, then stop."""
