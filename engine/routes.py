"""The paths of the routes engine serves itself, each written here only: the probes, the OpenAPI document, and the
built-in plugins' /metrics and /docs. An API's endpoint may not be one of them."""
from __future__ import annotations

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"  # served by the built-in metrics plugin
DOCS_PATH = "/docs"  # served by the built-in docs plugin, with its assets under DOCS_PATH/
PROBES = (HEALTHZ_PATH, READYZ_PATH)
SERVER_PATHS = (*PROBES, METRICS_PATH, OPENAPI_PATH, DOCS_PATH)


def reserved(endpoint: str) -> bool:
    """True when an API at `endpoint` would clash with a route engine serves itself."""
    return endpoint in SERVER_PATHS or endpoint.startswith(DOCS_PATH + "/")


def reserved_shown() -> str:
    """The reserved paths, as an error lists them."""
    return f"{', '.join(SERVER_PATHS)} and the paths under {DOCS_PATH}/"
