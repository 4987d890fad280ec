"""model_input → one numpy array per signature input: names checked, values converted, batch of one added."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import ModelError

Shape = tuple[int | None, ...] | None  # None: unknown rank; a None dimension: any size


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature, with what converting a value to it needs."""

    name: str
    dtype: str  # TensorFlow's name: "float32", "int64", "string", ...
    kind: str  # "float", "int", "bool", "complex", "string" or "other"
    shape: Shape
    np_dtype: Any = None  # numpy dtype of a tensor of this dtype (object for strings)
    bounds: tuple[int, int] | None = None  # value range of integer dtypes

    def describe(self) -> dict[str, Any]:
        """{"shape": [-1, 4], "type": "float32"}, as Cortex's GET summary showed signatures (-1: any size)."""
        return {"shape": show_shape(self.shape), "type": self.dtype}


def show_shape(shape: Shape) -> list[int] | None:
    """A shape with -1 for dimensions of any size (None for an unknown rank)."""
    return None if shape is None else [-1 if dim is None else dim for dim in shape]


def convert_inputs(model_input: Any, specs: dict[str, TensorSpec], where: str) -> dict[str, np.ndarray]:
    """One array per input of the signature, or ModelError 400 naming the input and what is wrong with it."""
    names = ", ".join(f"'{name}'" for name in sorted(specs))
    if not isinstance(model_input, Mapping):
        raise ModelError(f"model_input for {where} must be a dict keyed by the signature's input names ({names}), "
                         f"not {type(model_input).__name__}", 400)
    for name in sorted(specs):
        if name not in model_input:
            raise ModelError(f"missing key '{name}' for {where}; the signature's inputs are: {names}", 400)
    for key in model_input:
        if key not in specs:
            raise ModelError(f"unexpected key {key!r} for {where}; the signature's inputs are: {names}", 400)
    return {name: fit_shape(to_array(model_input[name], spec, where), spec, where) for name, spec in specs.items()}


def to_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """`value` as an array of the input's dtype; ModelError 400 when it holds something else."""
    problem = f"input '{spec.name}' for {where} expects {spec.dtype} values"
    if spec.kind == "other":  # quantized and other exotic dtypes: TensorFlow converts (or refuses) when run
        return np.asarray(value)
    if spec.kind == "string":
        return _strings(value, problem)
    try:
        array = np.asarray(value)
    except ValueError as error:  # nested lists of different lengths
        raise ModelError(f"{problem}: {error}", 400) from None
    kind = array.dtype.kind
    if kind not in "biufc":
        found = "null" if value is None else "strings" if kind in "US" else f"{type(value).__name__} values"
        raise ModelError(f"{problem}; received {found}", 400)
    if spec.kind == "bool" and kind != "b":
        raise ModelError(f"{problem} (true or false); received numbers", 400)
    if spec.kind != "bool" and kind == "b":
        raise ModelError(f"{problem}; received true/false", 400)
    if spec.kind in ("int", "float") and kind == "c":
        raise ModelError(f"{problem}; received complex numbers", 400)
    if spec.kind == "int":
        _check_integers(array, spec, problem)
    try:
        return array.astype(spec.np_dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as error:
        raise ModelError(f"{problem}: {error}", 400) from None


def fit_shape(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """The array as is when its shape fits, with a leading batch dimension of one when only that is missing."""
    if spec.shape is None or _fits(array.shape, spec.shape):
        return array
    if len(spec.shape) == array.ndim + 1 and spec.shape[0] in (None, 1) and _fits(array.shape, spec.shape[1:]):
        return array[np.newaxis]
    raise ModelError(f"input '{spec.name}' for {where}: expected shape {show_shape(spec.shape)} (-1: any size), "
                     f"received shape {list(array.shape)}", 400)


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(want is None or want == got
                                               for got, want in zip(shape, expected, strict=True))


def _check_integers(array: np.ndarray, spec: TensorSpec, problem: str) -> None:
    if array.size == 0:
        return
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (np.mod(array, 1) == 0).all()):
        raise ModelError(f"{problem} (integers); received numbers with a fractional part", 400)
    low, high = spec.bounds or (None, None)
    if low is not None and (array.min() < low or array.max() > high):
        raise ModelError(f"{problem}, from {low} to {high}; received {array.min()} to {array.max()}", 400)


def _strings(value: Any, problem: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=object)
    except ValueError as error:
        raise ModelError(f"{problem}: {error}", 400) from None
    for item in array.flat:
        if not isinstance(item, (str, bytes)):
            raise ModelError(f"{problem} (strings or bytes); received {type(item).__name__}", 400)
    return array
