"""onnx_client's models as named tensors (engine.ServesTensors): signatures from the sessions, inference on arrays."""
from __future__ import annotations

from typing import Any

import numpy as np

from engine import ModelError, TensorSpec
from engine_onnx_predictor.convert import ONNX_TO_NUMPY, InputSpec


def signature(session: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A session's inputs and outputs, with numpy dtype names and -1 for dimensions of any size."""
    return [_spec(node) for node in session.get_inputs()], [_spec(node) for node in session.get_outputs()]


def _spec(node: Any) -> TensorSpec:
    found = ONNX_TO_NUMPY.get(node.type)
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape or ())
    return TensorSpec(node.name, np.dtype(found).name if found is not None else node.type, shape)


def feed(inputs: dict[str, Any], specs: list[InputSpec], label: str) -> dict[str, np.ndarray]:
    """Named arrays checked against the model's inputs: every input given, of its dtype and rank."""
    missing = [spec.name for spec in specs if spec.name not in inputs]
    unknown = sorted(set(inputs) - {spec.name for spec in specs})
    if missing or unknown:
        raise ModelError(f"{label} takes the inputs {[spec.name for spec in specs]}; missing: {missing}, "
                         f"unknown: {unknown}", 400)
    checked = {}
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        expected = spec.dtype
        if expected is not None and array.dtype != expected and not (
                expected == np.object_ and array.dtype.kind in "OUS"):
            raise ModelError(f"{label}: input '{spec.name}' is {np.dtype(expected).name}, not {array.dtype.name}",
                             400)
        if spec.shape and len(spec.shape) != array.ndim:
            raise ModelError(f"{label}: input '{spec.name}' has {len(spec.shape)} dimensions, not {array.ndim}",
                             400)
        for axis, (declared, given) in enumerate(zip(spec.shape, array.shape, strict=False)):  # shape: () if unknown
            if isinstance(declared, int) and declared >= 0 and declared != given:
                raise ModelError(f"{label}: input '{spec.name}' has {declared} at axis {axis}, not {given}", 400)
        checked[spec.name] = array.astype(object) if expected == np.object_ else array
    return checked
