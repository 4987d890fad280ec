"""The `python` predictor type: class PythonPredictor, given python_client when models are configured."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import PredictorType, hookimpl
from engine_python_predictor.client import PythonClient, PythonModelFormat

if TYPE_CHECKING:
    from engine import Api, Batching, Device, ModelRepository


def _model_format(api: Api, device: Device) -> PythonModelFormat:
    return PythonModelFormat()


def _create_client(api: Api, device: Device, models: ModelRepository | None, batching: Batching | None) -> Any:
    """A python_client for an API with models; none without models, as Cortex did."""
    return None if models is None else PythonClient(models)


PYTHON = PredictorType(
    name="python",
    class_name="PythonPredictor",
    client_arg="python_client",
    requires_models=False,
    user_loads_models=True,
    type_fields=frozenset({"multi_model_reloading"}),
    model_format=_model_format,
    create_client=_create_client,
)


@hookimpl
def engine_predictor_types():
    """Provide the python predictor type."""
    return [PYTHON]
