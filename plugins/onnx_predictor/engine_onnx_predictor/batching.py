"""Transparent server-side batching: concurrent onnx_client.predict calls merged along the first dimension.

The rule: calls on the same model version merge when every model input has a free first dimension (symbolic or
unknown), every fed array has at least one dimension, all inputs of a call agree on its number of rows, and the
other dimensions and element types agree between calls (they are part of the batch key). After the merged run,
every output must have one row per input row to be split back; otherwise, or if the merged run fails, each call
runs on its own. Batching never causes an error of its own.
"""
from __future__ import annotations

import logging
from collections.abc import Hashable
from itertools import pairwise
from typing import Any

import numpy as np

log = logging.getLogger("engine.onnx")

Call = tuple[Any, dict[str, Any]]  # (OnnxModel, feed)


def batch_key(model: Any, feed: dict[str, Any]) -> Hashable | None:
    """What calls must share to merge; None when this call cannot be merged with others."""
    if not feed or any(not spec.shape or isinstance(spec.shape[0], int) for spec in model.inputs):
        return None
    arrays = [a for spec in model.inputs if isinstance(a := feed.get(spec.name), np.ndarray) and a.ndim > 0]
    if len(arrays) != len(model.inputs):  # an input is missing, or not an array with rows
        return None
    if len({a.shape[0] for a in arrays}) != 1:
        return None
    return id(model), tuple((spec.name, a.dtype.str, a.shape[1:]) for spec, a in zip(model.inputs, arrays, strict=True))


def run_batch(calls: list[Call]) -> list[list[Any]]:
    """Run the calls as one inference and split the outputs; fall back to one run per call when that cannot work."""
    model = calls[0][0]
    if len(calls) == 1:
        return [model.session.run(None, calls[0][1])]
    rows = [next(iter(feed.values())).shape[0] for _, feed in calls]
    merged = {name: np.concatenate([feed[name] for _, feed in calls]) for name in calls[0][1]}
    try:
        outputs = model.session.run(None, merged)
    except Exception as error:  # let each call meet its own error, if it has one
        log.debug("merged run of %d calls failed (%s); running them one by one", len(calls), error)
        return [_run_alone(model, feed) for _, feed in calls]
    total = sum(rows)
    if not all(isinstance(out, np.ndarray) and out.ndim >= 1 and out.shape[0] == total for out in outputs):
        return [_run_alone(model, feed) for _, feed in calls]
    bounds = np.cumsum([0, *rows])
    return [[out[start:end] for out in outputs] for start, end in pairwise(bounds)]


def _run_alone(model: Any, feed: dict[str, Any]) -> Any:
    try:
        return model.session.run(None, feed)
    except Exception as error:  # handed back to that caller, who raises it as if unbatched
        return _Failure(error)


class _Failure:
    """An exception travelling back to its own caller through the batch results."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def unwrap(result: Any) -> Any:
    """A call's outputs, or its own exception raised."""
    if isinstance(result, _Failure):
        raise result.error
    return result
