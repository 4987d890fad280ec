"""Errors the core raises; each message says what to change."""


class EngineError(Exception):
    """Base of every error engine reports to the user without a traceback."""


class ConfigError(EngineError):
    """cortex.yaml (or the project it points at) is invalid."""


class PredictorLoadError(EngineError):
    """The predictor module or class cannot be loaded or fails its signature checks."""


class MissingPluginError(EngineError):
    """No installed plugin answers a hook the configuration needs."""


class PluginError(EngineError):
    """An installed plugin breaks engine's plugin contract; the message names the plugin and its distribution."""


class PayloadError(ValueError):
    """A request body cannot be parsed as its Content-Type says; answered with 400."""


class ModelError(EngineError):
    """A model is missing, unloadable or asked for wrongly; `status_code` answers the request that caused it."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code
