"""The `python` predictor type: class PythonPredictor, given python_client when models are configured."""
from __future__ import annotations

from engine import PredictorType, hookimpl

PYTHON = PredictorType(
    name="python",
    class_name="PythonPredictor",
    client_arg="python_client",
    requires_models=False,
    user_loads_models=True,
    type_fields=frozenset({"multi_model_reloading"}),
    extra="engine-python-predictor",
)


@hookimpl
def engine_predictor_types():
    """Provide the python predictor type."""
    return [PYTHON]
