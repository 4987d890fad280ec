"""engine: serve Cortex-style predictors over HTTP.

This package's names are the public API for plugins: a plugin imports from `engine` (and, in its tests, from
`engine.testing`) and from nothing else of engine's, so that it keeps working whatever engine renames inside.
Names other than `hookimpl` and the errors are imported on first use, so that `import engine` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from engine.errors import (
    ConfigError,
    EngineError,
    MissingPluginError,
    ModelError,
    PayloadError,
    PluginError,
    PredictorLoadError,
)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("engine")

# name → the module that defines it
_LAZY = {
    # what plugins exchange with the core
    "PredictorType": "engine.types",
    "Device": "engine.types",
    "Api": "engine.project.config",
    "Models": "engine.project.config",
    "ServerSideBatching": "engine.project.config",
    "DEFAULT_MODEL_NAME": "engine.project.config",
    # model clients: the repository they read, and the optional parts engine looks for on them
    "ModelRepository": "engine.models",
    "ModelFormat": "engine.models",
    "Store": "engine.models",
    "FileEntry": "engine.models",
    "VersionInfo": "engine.models",
    "DescribesModels": "engine.plugin_api",
    "LoadsUserModels": "engine.plugin_api",
    "ServesTensors": "engine.plugin_api",
    "TensorSpec": "engine.plugin_api",
    # what plugins contribute besides predictor types: payload parsers, routes, settings (engine serve's flags)
    "PayloadParser": "engine.plugin_api",
    "HttpRoute": "engine.plugin_api",
    "Setting": "engine.plugin_api",
    "port_number": "engine.settings",
    # the paths of the routes engine serves itself, and the JSON codec of payloads and results
    "HEALTHZ_PATH": "engine.routes",
    "READYZ_PATH": "engine.routes",
    "METRICS_PATH": "engine.routes",
    "OPENAPI_PATH": "engine.routes",
    "DOCS_PATH": "engine.routes",
    "json_loads": "engine.jsoncodec",
    "json_dumps": "engine.jsoncodec",
    # plugins' own work on the APIs: operations in the pipeline, routes and services reaching them
    "Operation": "engine.plugin_api",
    "OperationContext": "engine.plugin_api",
    "Served": "engine.plugin_api",
    "Service": "engine.plugin_api",
    "HttpServer": "engine.plugin_api",
    "served": "engine.app",
    # batching inside a client
    "Batching": "engine.serving.batching",
    "ThreadBatcher": "engine.serving.batching",
    # serving elsewhere (engine_serve_on): the app of a project, or of some of its APIs, its settings, the project
    # loaded as data (its APIs, environment and warnings) and the API keys the settings name
    "create_app": "engine.app",
    "ServeSettings": "engine.settings",
    "load_project": "engine.project.loading",
    "LoadedProject": "engine.project.loading",
    "ProjectWarning": "engine.project.files",
    "load_keys": "engine.serving.security",
    # hardware targets: the cores and devices shared among an API's worker processes
    "usable_cores": "engine.hardware",
    "THREAD_ENV_VARS": "engine.hardware",
    "share_cores": "engine.hardware",
    "VisibleDevices": "engine.hardware",
    # ASGI driven in-process: an app's lifespan, a response played into a fake send
    "Lifespan": "engine.asgi",
    "LifespanError": "engine.asgi",
    "play": "engine.asgi",
    "Played": "engine.asgi",
    "http_scope": "engine.asgi",
}

__all__ = ["ConfigError", "EngineError", "MissingPluginError", "ModelError", "PayloadError", "PluginError",
           "PredictorLoadError", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


if TYPE_CHECKING:
    from engine.app import create_app, served  # noqa: F401
    from engine.asgi import Lifespan, LifespanError, Played, http_scope, play  # noqa: F401
    from engine.hardware import (  # noqa: F401
        THREAD_ENV_VARS,
        VisibleDevices,
        share_cores,
        usable_cores,
    )
    from engine.jsoncodec import json_dumps, json_loads  # noqa: F401
    from engine.models import (  # noqa: F401
        FileEntry,
        ModelFormat,
        ModelRepository,
        Store,
        VersionInfo,
    )
    from engine.plugin_api import (  # noqa: F401
        DescribesModels,
        HttpRoute,
        HttpServer,
        LoadsUserModels,
        Operation,
        OperationContext,
        PayloadParser,
        Served,
        ServesTensors,
        Service,
        Setting,
        TensorSpec,
    )
    from engine.project.config import (  # noqa: F401
        DEFAULT_MODEL_NAME,
        Api,
        Models,
        ServerSideBatching,
    )
    from engine.project.files import ProjectWarning  # noqa: F401
    from engine.project.loading import LoadedProject, load_project  # noqa: F401
    from engine.routes import (  # noqa: F401
        DOCS_PATH,
        HEALTHZ_PATH,
        METRICS_PATH,
        OPENAPI_PATH,
        READYZ_PATH,
    )
    from engine.serving.batching import Batching, ThreadBatcher  # noqa: F401
    from engine.serving.security import load_keys  # noqa: F401
    from engine.settings import ServeSettings, port_number  # noqa: F401
    from engine.types import Device, PredictorType  # noqa: F401
