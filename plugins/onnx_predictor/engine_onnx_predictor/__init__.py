"""The `onnx` predictor type: class ONNXPredictor, given onnx_client, running .onnx models on onnxruntime."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import PredictorType, hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    from engine import Api, Batching, Device, ModelRepository


def _model_format(api: Api, device: Device) -> Any:
    from engine_onnx_predictor.model_format import (
        model_format,  # onnxruntime is imported only when it is used
    )

    return model_format(api, device)


def _create_client(api: Api, device: Device, models: ModelRepository | None, batching: Batching | None) -> Any:
    """The onnx_client of an onnx API (none without models: engine says they are missing)."""
    from engine_onnx_predictor.client import ONNXClient

    return None if models is None else ONNXClient(models, batching)


def _validate(api: Api, project_root: Path) -> list[str]:
    """What Cortex rejected for ONNX APIs: Inferentia."""
    if not api.compute.inf:
        return []
    return [f"compute.inf: {api.compute.inf}: the onnx predictor type cannot run on Inferentia (Cortex rejected it "
            "too); remove compute.inf (use compute.gpu with engine[gpu] for a GPU)"]


ONNX = PredictorType(
    name="onnx",
    class_name="ONNXPredictor",
    client_arg="onnx_client",
    requires_models=True,
    client_batching=True,
    model_format=_model_format,
    create_client=_create_client,
    validate=_validate,
)


@hookimpl
def engine_predictor_types():
    """Provide the onnx predictor type."""
    return [ONNX]
