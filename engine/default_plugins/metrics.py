"""GET /metrics in Prometheus text format."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import hookimpl

METRICS_PATH = "/metrics"


async def metrics_endpoint(request: Request) -> Response:
    """Render the app's metrics registry."""
    metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


@hookimpl(trylast=True)
def engine_routes():
    """Serve the app's metrics."""
    return [Route(METRICS_PATH, metrics_endpoint, methods=["GET"])]


@hookimpl(trylast=True)
def engine_openapi_paths(apis):
    """Describe GET /metrics."""
    return {METRICS_PATH: {"get": {
        "summary": "Prometheus metrics", "operationId": "metrics", "tags": ["server"],
        "responses": {"200": {"description": "every metric, in Prometheus' text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}}}
