"""GET /docs: Swagger UI over the server's own /openapi.json, to try every API from a browser: pick an operation, edit
its body (pre-filled with the project's sample.json when there is one), send it, see the status, headers and body;
the Authorize button takes an API key when keys are on. Every asset comes from the swagger-ui-py distribution and is
served by engine under /docs/, never from a CDN. `--no-docs` turns the page off (404, as for /openapi.json).

The page is not described in /openapi.json: it is for people, not an API to call.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

import engine
from engine import DOCS_PATH, OPENAPI_PATH, HttpRoute, hookimpl

# The files of swagger-ui-py's static folder the page uses, with their media types (nothing else there is served).
ASSETS = {"swagger-ui.css": "text/css", "index.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
          "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}
# Scripts, styles and requests from and to this server only: no CDN, nothing inline (Swagger UI's icons are data:
# images), no other site framing the page. The browser test fails on any violation the browser reports.
HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "base-uri 'none'; form-action 'none'",
           "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
CONFIG = {  # Swagger UI's options (https://swagger.io/docs/open-source-tools/swagger-ui/usage/configuration/)
    "url": OPENAPI_PATH, "dom_id": "#swagger-ui", "layout": "BaseLayout", "deepLinking": True,
    "displayRequestDuration": True, "showExtensions": False, "validatorUrl": None, "tryItOutEnabled": False,
    "queryConfigEnabled": False, "persistAuthorization": False,
}
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>engine: try the APIs</title>
  <link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
  <link rel="stylesheet" href="{DOCS_PATH}/index.css">
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"""
INIT = f"window.ui = SwaggerUIBundle({json.dumps(CONFIG)});\n"


@functools.cache
def static_dir() -> Path:
    """swagger-ui-py's folder of Swagger UI's files (found without importing the package, which needs Jinja)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:  # a broken install: engine depends on it
        raise HTTPException(500, "the /docs page needs swagger-ui-py, which is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _served(request: Request) -> None:
    if engine.served(request).settings.no_docs:
        raise HTTPException(404)  # the same JSON 404 as any unknown path


async def page(request: Request) -> Response:
    """The page itself."""
    _served(request)
    return HTMLResponse(PAGE, headers=HEADERS)


async def asset(request: Request) -> Response:
    """One of the page's files: Swagger UI's, or its initialisation."""
    _served(request)
    name = request.path_params["name"]
    if name == "init.js":
        return Response(INIT, media_type="text/javascript", headers=HEADERS)
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(static_dir() / name, media_type=ASSETS[name], headers=HEADERS)


@hookimpl(trylast=True)
def engine_http_routes() -> list[HttpRoute]:
    """Serve the page and its assets (each answers 404 under --no-docs); none is described in /openapi.json."""
    return [HttpRoute(DOCS_PATH, page), HttpRoute(DOCS_PATH + "/{name}", asset)]
