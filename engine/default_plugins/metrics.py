"""GET /metrics in Prometheus text format."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

import engine
from engine import METRICS_PATH, HttpRoute, hookimpl

OPENAPI = {"get": {
    "summary": "Prometheus metrics", "operationId": "metrics", "tags": ["server"],
    "responses": {"200": {"description": "every metric, in Prometheus' text format",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}}}}


async def metrics_endpoint(request: Request) -> Response:
    """Render every metric of the server."""
    body, media_type = engine.served(request).render_metrics()
    return Response(body, media_type=media_type)


@hookimpl(trylast=True)
def engine_http_routes() -> list[HttpRoute]:
    """Serve the server's metrics."""
    return [HttpRoute(METRICS_PATH, metrics_endpoint, ("GET",), OPENAPI)]
