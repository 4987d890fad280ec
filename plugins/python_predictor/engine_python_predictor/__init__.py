"""The `python` predictor type: class PythonPredictor, given python_client when models are configured."""
from __future__ import annotations

from engine import PredictorType, hookimpl
from engine_python_predictor.client import PythonClient, PythonModelFormat


def _model_format(api, device) -> PythonModelFormat:
    return PythonModelFormat()


PYTHON = PredictorType(
    name="python",
    class_name="PythonPredictor",
    client_arg="python_client",
    requires_models=False,
    user_loads_models=True,
    type_fields=frozenset({"multi_model_reloading"}),
    model_format=_model_format,
)


@hookimpl
def engine_predictor_types():
    """Provide the python predictor type."""
    return [PYTHON]


@hookimpl
def engine_create_client(api, models):
    """A python_client for python APIs with models; none without models, as Cortex did."""
    if api.predictor.type != PYTHON.name or models is None:
        return None
    return PythonClient(models)
