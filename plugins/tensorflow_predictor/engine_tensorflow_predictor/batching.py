"""server_side_batching as TensorFlow Serving did it: concurrent predict() calls run as one batch along dimension 0."""
from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import numpy as np

from engine import Batching
from engine_tensorflow_predictor.model import Signature

log = logging.getLogger("engine.tensorflow")

Outputs = dict[str, np.ndarray]


class SignatureBatcher:
    """Merges concurrent calls of a signature along dimension 0; failed or unsplittable batches rerun call by call."""

    def __init__(self, batching: Batching) -> None:
        self._batcher = batching.thread_batcher(self._run_batch)
        self._warned: set[str] = set()

    def run(self, signature: Signature, arrays: dict[str, np.ndarray]) -> Outputs:
        """The signature's outputs for these inputs, computed within a batch when possible."""
        key = batch_key(signature, arrays)
        if key is None:
            return signature.run(arrays)
        result = self._batcher.call(key, (signature, arrays))
        if isinstance(result, Exception):
            raise result
        return result

    def _run_batch(self, key: Hashable, items: list[tuple[Signature, dict[str, np.ndarray]]]) -> list[Any]:
        signature = items[0][0]
        if len(items) > 1:
            sizes = [len(next(iter(arrays.values()))) for _, arrays in items]
            merged = {name: np.concatenate([arrays[name] for _, arrays in items]) for name in signature.inputs}
            try:
                outputs = signature.run(merged)
            except Exception as error:  # find out whose request it was
                log.info("a batch of %d calls of signature '%s' failed (%s); running them one by one",
                         len(items), signature.key, type(error).__name__)
            else:
                unbatched = [name for name, value in outputs.items() if value.ndim == 0 or len(value) != sum(sizes)]
                if not unbatched:
                    bounds = np.cumsum(sizes)[:-1]
                    parts = {name: np.split(value, bounds) for name, value in outputs.items()}
                    return [{name: split[index] for name, split in parts.items()} for index in range(len(items))]
                self._warn_unbatched(signature, unbatched)
        return [_attempt(signature, arrays) for signature, arrays in items]

    def _warn_unbatched(self, signature: Signature, names: list[str]) -> None:
        if signature.key not in self._warned:
            self._warned.add(signature.key)
            log.warning("signature '%s': outputs %s have no leading batch dimension, so server_side_batching cannot "
                        "split them; its calls run one by one (remove server_side_batching for this model)",
                        signature.key, ", ".join(names))


def batch_key(signature: Signature, arrays: dict[str, np.ndarray]) -> Hashable | None:
    """What calls must share to be batched together (None: run alone)."""
    if not arrays or any(spec.shape is None or not spec.shape or spec.shape[0] is not None
                         for spec in signature.inputs.values()):
        return None
    if len({array.shape[0] for array in arrays.values()}) != 1:
        return None
    return id(signature), tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(arrays.items()))


def _attempt(signature: Signature, arrays: dict[str, np.ndarray]) -> Outputs | Exception:
    try:
        return signature.run(arrays)
    except Exception as error:
        return error
