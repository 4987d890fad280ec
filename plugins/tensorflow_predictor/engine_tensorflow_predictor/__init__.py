"""The `tensorflow` predictor type: class TensorFlowPredictor, given tensorflow_client; SavedModels run in-process.

Importing this module must not import TensorFlow (it is imported at every engine start, through the entry point):
TensorFlow is imported when a tensorflow API builds its model format, on the API's thread, before /readyz.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from engine import PredictorType, hookimpl
from engine_tensorflow_predictor.signatures import SignatureKeys

if TYPE_CHECKING:
    from pathlib import Path

    from engine import Api, Batching, Device, ModelRepository

INSTALL_HINT = "pip install 'engine[tensorflow]' (or pip install tensorflow-cpu)"


def _model_format(api: Api, device: Device) -> Any:
    from engine_tensorflow_predictor.model import TensorFlowModelFormat

    return TensorFlowModelFormat(SignatureKeys.from_models(api.predictor.models), device)


def _create_client(api: Api, device: Device, models: ModelRepository | None, batching: Batching | None) -> Any:
    """The tensorflow_client of a tensorflow API, over its model repository (none without models)."""
    from engine_tensorflow_predictor.client import TensorFlowClient

    if models is None:
        return None
    return TensorFlowClient(models, SignatureKeys.from_models(api.predictor.models), batching)


def _validate(api: Api, project_root: Path) -> list[str]:
    """A tensorflow API needs TensorFlow installed (found without importing it)."""
    if importlib.util.find_spec("tensorflow") is not None:
        return []
    return [f"predictor.type: tensorflow needs TensorFlow, which is not installed: {INSTALL_HINT}"]


TENSORFLOW = PredictorType(
    name="tensorflow",
    class_name="TensorFlowPredictor",
    client_arg="tensorflow_client",
    requires_models=True,
    type_fields=frozenset({"signature_key", "tensorflow_serving_image"}),
    client_batching=True,  # server_side_batching merges concurrent client calls; predict() sees one request
    model_format=_model_format,
    create_client=_create_client,
    validate=_validate,
)


@hookimpl
def engine_predictor_types():
    """Provide the tensorflow predictor type."""
    return [TENSORFLOW]
