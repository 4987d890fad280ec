"""Signature outputs in the form Cortex's TensorFlow Serving client returned: flat lists, int64 as strings, base64."""
from __future__ import annotations

import base64
from typing import Any

import numpy as np

from engine import ModelError

# How protobuf's JSON mapping (json_format.MessageToDict, used by Cortex) writes non-finite floats.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def cortex_outputs(outputs: dict[str, np.ndarray]) -> dict[str, list]:
    """Every output as a flat list of JSON values, as `PredictResponse` outputs simplified by Cortex."""
    return {name: cortex_values(name, array) for name, array in outputs.items()}


def cortex_values(name: str, array: np.ndarray) -> list:
    """One output flattened: numbers stay numbers except 64-bit integers (strings); strings are base64."""
    flat = np.asarray(array).ravel()
    kind, dtype = flat.dtype.kind, flat.dtype
    if kind == "O" or kind == "S":  # TensorFlow strings are bytes
        return [base64.b64encode(_bytes(name, item)).decode("ascii") for item in flat.tolist()]
    if kind == "b":
        return flat.tolist()
    if kind in "iu":
        return flat.astype(str).tolist() if dtype.itemsize == 8 else flat.tolist()
    if kind == "c":  # TensorFlow Serving's scomplex_val/dcomplex_val: real and imaginary parts interleaved
        return _floats(flat.view(np.float32 if dtype.itemsize == 8 else np.float64))
    if kind == "f":
        return _floats(flat)
    if dtype.name == "bfloat16":
        return _floats(flat.astype(np.float32))
    raise ModelError(f"output '{name}' has dtype {dtype.name}, which has no JSON form; call "
                     "tensorflow_client.predict(..., raw=True) to get numpy arrays")


def _floats(flat: np.ndarray) -> list:
    values = flat.tolist()
    if np.isfinite(flat).all():
        return values
    return [NON_FINITE.get(repr(value), value) for value in values]


def _bytes(name: str, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ModelError(f"output '{name}' holds {type(item).__name__} values, not strings")
