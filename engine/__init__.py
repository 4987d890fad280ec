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
    # TrafficSplitters served elsewhere: their configuration, where they hand a request, its scope sent there
    "TrafficSplitter": "engine.project.splitters",
    "SplitterTarget": "engine.serving.splitter",
    "forwarded_scope": "engine.serving.splitter",
    # BatchAPIs: their configuration (an Api, whose jobs' workers run its predictor; LoadedProject.batch_apis)
    "BatchApi": "engine.project.batch",
    # their jobs' workers run elsewhere (create_app(job_launcher=...), as engine-ray's actors): the launcher it takes,
    # the worker's logic, and the messages a job's supervisor and its workers exchange
    "WorkerLauncher": "engine.jobs.launchers",
    "WorkerHandle": "engine.jobs.launchers",
    "JobWorker": "engine.jobs.worker",
    "Start": "engine.jobs.messages",
    "RunBatch": "engine.jobs.messages",
    "Complete": "engine.jobs.messages",
    "Stop": "engine.jobs.messages",
    "Ready": "engine.jobs.messages",
    "StartFailed": "engine.jobs.messages",
    "BatchDone": "engine.jobs.messages",
    "Completed": "engine.jobs.messages",
    "Exited": "engine.jobs.messages",
    "ToWorker": "engine.jobs.messages",
    "FromWorker": "engine.jobs.messages",
    # hardware targets: the cores and devices shared among an API's worker processes
    "usable_cores": "engine.hardware",
    "THREAD_ENV_VARS": "engine.hardware",
    "share_cores": "engine.hardware",
    "VisibleDevices": "engine.hardware",
    # tracing (engine_tracer): the tracer a plugin gives, the server span it starts, a request crossing processes
    "Tracer": "engine.tracing",
    "RequestSpan": "engine.tracing",
    "Carrier": "engine.tracing",
    # ASGI driven in-process: an app's lifespan, a response played into a fake send
    "Lifespan": "engine.asgi",
    "LifespanError": "engine.asgi",
    "play": "engine.asgi",
    "Played": "engine.asgi",
    "http_scope": "engine.asgi",
    # a plugin's own helper process, bound to the serving process that starts it
    "die_with": "engine.processes",
}

__all__ = ["ConfigError", "EngineError", "MissingPluginError", "ModelError", "PayloadError", "PluginError",
           "PredictorLoadError", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


if TYPE_CHECKING:  # the lazy names, for type checkers (`X as X`: re-exported)
    from engine.app import create_app as create_app
    from engine.app import served as served
    from engine.asgi import Lifespan as Lifespan
    from engine.asgi import LifespanError as LifespanError
    from engine.asgi import Played as Played
    from engine.asgi import http_scope as http_scope
    from engine.asgi import play as play
    from engine.hardware import THREAD_ENV_VARS as THREAD_ENV_VARS
    from engine.hardware import VisibleDevices as VisibleDevices
    from engine.hardware import share_cores as share_cores
    from engine.hardware import usable_cores as usable_cores
    from engine.jobs.launchers import WorkerHandle as WorkerHandle
    from engine.jobs.launchers import WorkerLauncher as WorkerLauncher
    from engine.jobs.messages import BatchDone as BatchDone
    from engine.jobs.messages import Complete as Complete
    from engine.jobs.messages import Completed as Completed
    from engine.jobs.messages import Exited as Exited
    from engine.jobs.messages import FromWorker as FromWorker
    from engine.jobs.messages import Ready as Ready
    from engine.jobs.messages import RunBatch as RunBatch
    from engine.jobs.messages import Start as Start
    from engine.jobs.messages import StartFailed as StartFailed
    from engine.jobs.messages import Stop as Stop
    from engine.jobs.messages import ToWorker as ToWorker
    from engine.jobs.worker import JobWorker as JobWorker
    from engine.jsoncodec import json_dumps as json_dumps
    from engine.jsoncodec import json_loads as json_loads
    from engine.models import FileEntry as FileEntry
    from engine.models import ModelFormat as ModelFormat
    from engine.models import ModelRepository as ModelRepository
    from engine.models import Store as Store
    from engine.models import VersionInfo as VersionInfo
    from engine.plugin_api import DescribesModels as DescribesModels
    from engine.plugin_api import HttpRoute as HttpRoute
    from engine.plugin_api import HttpServer as HttpServer
    from engine.plugin_api import LoadsUserModels as LoadsUserModels
    from engine.plugin_api import Operation as Operation
    from engine.plugin_api import OperationContext as OperationContext
    from engine.plugin_api import PayloadParser as PayloadParser
    from engine.plugin_api import Served as Served
    from engine.plugin_api import ServesTensors as ServesTensors
    from engine.plugin_api import Service as Service
    from engine.plugin_api import Setting as Setting
    from engine.plugin_api import TensorSpec as TensorSpec
    from engine.processes import die_with as die_with
    from engine.project.batch import BatchApi as BatchApi
    from engine.project.config import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
    from engine.project.config import Api as Api
    from engine.project.config import Models as Models
    from engine.project.config import ServerSideBatching as ServerSideBatching
    from engine.project.files import ProjectWarning as ProjectWarning
    from engine.project.loading import LoadedProject as LoadedProject
    from engine.project.loading import load_project as load_project
    from engine.project.splitters import TrafficSplitter as TrafficSplitter
    from engine.routes import DOCS_PATH as DOCS_PATH
    from engine.routes import HEALTHZ_PATH as HEALTHZ_PATH
    from engine.routes import METRICS_PATH as METRICS_PATH
    from engine.routes import OPENAPI_PATH as OPENAPI_PATH
    from engine.routes import READYZ_PATH as READYZ_PATH
    from engine.serving.batching import Batching as Batching
    from engine.serving.batching import ThreadBatcher as ThreadBatcher
    from engine.serving.security import load_keys as load_keys
    from engine.serving.splitter import SplitterTarget as SplitterTarget
    from engine.serving.splitter import forwarded_scope as forwarded_scope
    from engine.settings import ServeSettings as ServeSettings
    from engine.settings import port_number as port_number
    from engine.tracing import Carrier as Carrier
    from engine.tracing import RequestSpan as RequestSpan
    from engine.tracing import Tracer as Tracer
    from engine.types import Device as Device
    from engine.types import PredictorType as PredictorType
