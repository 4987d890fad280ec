"""engine: serve Cortex-style predictors over HTTP. Public API for plugins and users."""
import pluggy

from engine.errors import (
    ConfigError,
    EngineError,
    MissingPluginError,
    ModelError,
    PayloadError,
    PredictorLoadError,
)
from engine.types import Device, PredictorType

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("engine")

__all__ = [
    "ConfigError",
    "Device",
    "EngineError",
    "MissingPluginError",
    "ModelError",
    "PayloadError",
    "PredictorLoadError",
    "PredictorType",
    "__version__",
    "hookimpl",
]
