"""Cortex's ONNX input conversion: the value a predictor passes → the numpy arrays an InferenceSession expects."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import ModelError

# Cortex's ONNX_TO_NP_TYPE: the element types a model input may declare, as numpy dtypes.
ONNX_TO_NUMPY: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input as onnxruntime reports it: name, type such as 'tensor(float)', shape such as [None, 4]."""

    name: str
    type: str
    shape: tuple[Dim, ...]

    @classmethod
    def of(cls, node_arg: Any) -> InputSpec:
        """From an onnxruntime NodeArg (session.get_inputs())."""
        return cls(node_arg.name, node_arg.type, tuple(node_arg.shape or ()))

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of the element type; None for types numpy cannot hold (sequences, maps, bfloat16)."""
        found = ONNX_TO_NUMPY.get(self.type)
        return None if found is None else np.dtype(found)

    @property
    def target_shape(self) -> list[int]:
        """Cortex's rule: symbolic dimensions become -1, unknown (None) ones 1, fixed sizes stay."""
        return [-1 if isinstance(dim, str) else 1 if dim is None else int(dim) for dim in self.shape]


def to_feed(model_input: Any, inputs: list[InputSpec], model: str) -> dict[str, Any]:
    """The input dict for session.run; ModelError(400) naming the model and input when model_input does not fit."""
    if not inputs:
        return {}
    names = [spec.name for spec in inputs]
    if len(inputs) == 1 and not isinstance(model_input, dict):
        return {names[0]: to_array(model_input, inputs[0], model)}
    if not isinstance(model_input, dict):
        raise ModelError(f"{model} has {len(inputs)} inputs: expected model_input to be a dictionary with keys "
                         f"{names}, received {describe_value(model_input)}", 400)
    missing = [name for name in names if model_input.get(name) is None]
    if missing:
        rule = "a dict model_input must hold the input's name (or pass the input's value itself)" \
            if len(names) == 1 else f"model_input must hold every input of the model, {names}"
        raise ModelError(f"missing key {', '.join(repr(name) for name in missing)} for {model}: {rule}; received a "
                         f"dict with keys {sorted(map(str, model_input))}", 400)
    return {spec.name: to_array(model_input[spec.name], spec, model) for spec in inputs}


def to_array(value: Any, spec: InputSpec, model: str) -> Any:
    """One input: cast to the model's element type, then reshaped to its shape when at most one size is free."""
    dtype = spec.dtype
    if dtype is None:  # not a plain tensor type: handed to onnxruntime as given
        return value
    return _reshape(_cast(value, dtype, spec, model), value, spec, model)


def _cast(value: Any, dtype: np.dtype, spec: InputSpec, model: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype == dtype:
            return value
        if _numeric(value.dtype) and _numeric(dtype):
            return value.astype(dtype)
        if dtype == np.object_ and value.dtype.kind in "USO":  # text arrays feed string inputs
            return (value.astype(str) if value.dtype.kind == "S" else value).astype(np.object_)
        raise _error(spec, model, value, f"expected dtype '{_dtype_name(dtype)}' but found '{value.dtype}' (numpy "
                                         "arrays are cast only from one numeric type to another)")
    try:
        return np.array(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _error(spec, model, value, f"cannot make a {_dtype_name(dtype)} array of it: {error}") from None


def _reshape(array: np.ndarray, given: Any, spec: InputSpec, model: str) -> np.ndarray:
    target = spec.target_shape
    if not target:  # a scalar input, or one whose shape the model does not declare: left as it is
        return array
    if target.count(-1) <= 1:
        try:
            reshaped = array.reshape(target)
        except ValueError as error:
            raise _error(spec, model, given, str(error)) from None
        return array if reshaped.shape == array.shape else reshaped
    fixed_ok = all(not isinstance(dim, int) or dim == size for dim, size in zip(spec.shape, array.shape, strict=False))
    if array.ndim != len(target) or not fixed_ok:
        raise _error(spec, model, given, f"its shape {list(array.shape)} does not fit the model's "
                                         f"{_shape_text(spec.shape)}")
    return array


def _error(spec: InputSpec, model: str, value: Any, reason: str) -> ModelError:
    expected = f"{spec.type} (numpy {_dtype_name(spec.dtype)}) of shape {_shape_text(spec.shape)}"
    target = spec.target_shape
    if target and target.count(-1) <= 1 and list(spec.shape) != target:
        expected += f", reshaped to {target}"
        if None in spec.shape:
            expected += (" (unknown dimensions count as 1, as in Cortex; a named dimension such as 'batch' takes "
                         "any size)")
    return ModelError(f"failed to convert input '{spec.name}' for {model}: {reason}. Expected {expected}; "
                      f"received {describe_value(value)}", 400)


def describe_value(value: Any) -> str:
    """What a value is, for error messages: its type, shape and element type."""
    if isinstance(value, np.ndarray):
        return f"a numpy array of dtype {value.dtype} and shape {list(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    kind = type(value).__name__
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return f"a {kind} of nested sequences of different lengths"
    if array.ndim == 0:
        return f"a {kind} ({str(value)[:40]!r})" if isinstance(value, str) else f"a {kind} ({value!r:.40})"
    return f"a {kind} of shape {list(array.shape)} holding {_dtype_name(array.dtype)} values"


def _numeric(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.number))


def _dtype_name(dtype: np.dtype | None) -> str:
    if dtype is None:
        return "as given"
    return {"U": "str", "S": "bytes"}.get(dtype.kind, dtype.name)


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("None" if dim is None else str(dim) for dim in shape) + "]"
