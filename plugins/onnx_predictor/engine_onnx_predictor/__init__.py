"""The `onnx` predictor type: class ONNXPredictor, given onnx_client, running .onnx models on onnxruntime."""
from __future__ import annotations

from typing import Any

from engine import PredictorType, hookimpl


def _model_format(api: Any, device: Any) -> Any:
    from engine_onnx_predictor.model_format import model_format  # onnxruntime is imported only when it is used

    return model_format(api, device)


ONNX = PredictorType(
    name="onnx",
    class_name="ONNXPredictor",
    client_arg="onnx_client",
    requires_models=True,
    client_batching=True,
    model_format=_model_format,
)


@hookimpl
def engine_predictor_types():
    """Provide the onnx predictor type."""
    return [ONNX]


@hookimpl
def engine_validate_api(api, project_root):
    """What Cortex rejected for ONNX APIs: Inferentia."""
    if api.predictor.type != ONNX.name or not api.compute.inf:
        return []
    return [f"compute.inf: {api.compute.inf}: the onnx predictor type cannot run on Inferentia (Cortex rejected it "
            "too); remove compute.inf (use compute.gpu with engine[gpu] for a GPU)"]


@hookimpl
def engine_create_client(api, models, batching):
    """The onnx_client of an onnx API."""
    if api.predictor.type != ONNX.name or models is None:
        return None
    from engine_onnx_predictor.client import ONNXClient

    return ONNXClient(models, batching)
