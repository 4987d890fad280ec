"""What the app hands an API's requests to: a Backend. The app never knows which kind it has.

Two kinds today: the API's Pipeline in the front process itself (processes_per_replica: 1), and a WorkerGroup that
forwards each request to a worker process running that same Pipeline. Whatever the kind, the front process's
admission layer (engine.serving.admission) has already read the body, counted the request and checked the limits.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from starlette.datastructures import Headers, QueryParams

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import Scope

    from engine.project.config import Api


@dataclass(slots=True)
class ApiRequest:
    """One request to an API, its body read; headers and query parameters are parsed only when asked for."""

    scope: Scope
    body: bytes
    _headers: Headers | None = field(default=None, repr=False)
    # Work the request leaves running after its response (its post_predict): whoever must know when the request is
    # really over (a worker telling the front it is free again) waits for these.
    after: list[Future[None]] = field(default_factory=list, repr=False)

    @property
    def headers(self) -> Headers:
        """The request's headers, as the predictor's `headers` argument gets them."""
        if self._headers is None:
            self._headers = Headers(scope=self.scope)
        return self._headers

    @property
    def request_id(self) -> str:
        """Its X-Request-ID (the admission layer makes sure there is one)."""
        return self.headers.get("x-request-id", "")

    @property
    def query_params(self) -> QueryParams:
        """The query string, as the predictor's `query_params` argument gets it."""
        return QueryParams(self.scope["query_string"])


class Backend(Protocol):
    """Runs one API's predictor somewhere and answers its requests."""

    api: Api
    failure: str | None  # why it could not start, once it could not

    @property
    def ready(self) -> bool:
        """True once the predictor can answer (its __init__ has returned)."""

    async def start(self, view: Path, project_root: Path) -> None:
        """Initialise the predictor from the project view; raise what stops it from serving."""

    async def stop(self) -> None:
        """Finish the requests and post_predicts in progress, then release everything."""

    async def predict(self, request: ApiRequest) -> Response:
        """Run predict for one request (a POST)."""

    async def summary(self, request: ApiRequest) -> Response:
        """The API's summary (a GET): Cortex's message, and its models' metadata."""

    async def operate(self, operation: str, request: ApiRequest) -> Response:
        """Run a plugin's operation (engine.Operation) for one request, where the predictor is."""
