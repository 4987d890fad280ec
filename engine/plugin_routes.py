"""The routes plugins serve beside the APIs (engine.HttpRoute), each with its OpenAPI description, as Starlette
serves them and as GET /openapi.json describes them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import plugins
from engine.errors import PluginError
from engine.plugin_api import HttpRoute

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from engine.project.config import Api


def http_routes(pm: plugins.PluginManager) -> list[HttpRoute]:
    """Every route the plugins serve beside the APIs; a PluginError for one whose path is not a path."""
    found = plugins.contributed(pm, "engine_http_routes", HttpRoute)
    for plugin, route in found:
        if not route.path.startswith("/"):
            raise PluginError(f"{plugins.named(pm, plugin)}: the path of an engine.HttpRoute must start with /, not "
                              f"{route.path!r}")
    return [route for _, route in found]


def starlette_routes(pm: plugins.PluginManager) -> list[BaseRoute]:
    """The plugins' routes as Starlette serves them (the deprecated engine_routes' included)."""
    from starlette.routing import Route

    routes: list[BaseRoute] = [Route(route.path, route.endpoint, methods=list(route.methods))
                               for route in http_routes(pm)]
    return routes + [route for answer in pm.hook.engine_routes() for route in answer or ()]


def openapi_paths(pm: plugins.PluginManager, apis: list[Api]) -> dict[str, dict[str, Any]]:
    """The OpenAPI path items of the plugins' routes (the deprecated engine_openapi_paths' included)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in http_routes(pm):
        if route.openapi:
            paths.setdefault(route.path, {}).update(route.openapi)
    for answer in pm.hook.engine_openapi_paths(apis=apis):
        paths.update(answer or {})
    return paths
