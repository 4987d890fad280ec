"""SavedModels in the model repository: layout check, tf.saved_model.load, signatures, freeing."""
from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import Device
from engine_tensorflow_predictor import runtime, warmup
from engine_tensorflow_predictor.inputs import TensorSpec
from engine_tensorflow_predictor.signatures import SignatureKeys, select_signature

INDEX_FILE = "variables/variables.index"
DATA_PREFIX = "variables/variables.data-"
TREE = ("saved_model.pb\nvariables/\n    variables.index\n    variables.data-00000-of-00001\n"
        "(other files, such as assets/ and fingerprint.pb, are allowed)")
NEURON_TREE = "saved_model.pb\n(other files are allowed; Neuron-compiled models need no variables/)"


@dataclass(frozen=True)
class Signature:
    """One signature of a loaded SavedModel: its concrete function and its tensors."""

    key: str
    function: Any  # a ConcreteFunction called with one keyword argument per input
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    input_dtypes: dict[str, Any]  # tf.DType of each input

    def describe(self) -> dict[str, Any]:
        """Inputs and outputs as the GET summary shows them."""
        return {"inputs": {name: spec.describe() for name, spec in sorted(self.inputs.items())},
                "outputs": {name: spec.describe() for name, spec in sorted(self.outputs.items())}}

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature in this process; outputs as numpy arrays."""
        tf = runtime.tensorflow()
        tensors = {name: tf.constant(array, dtype=self.input_dtypes[name]) for name, array in arrays.items()}
        return {name: tensor.numpy() for name, tensor in self.function(**tensors).items()}


class SavedModel:
    """A loaded version: the object tf.saved_model.load returned and its signatures."""

    def __init__(self, path: Path, loaded: Any, signatures: dict[str, Signature]) -> None:
        self.path = path
        self.loaded = loaded  # keeps the variables alive while the signatures are in use
        self.signatures = signatures
        self._chosen: dict[str | None, Signature] = {}

    def signature(self, configured: str | None) -> Signature:
        """The signature that serves requests given a configured signature_key (SignatureError if none can)."""
        chosen = self._chosen.get(configured)
        if chosen is None:
            chosen = self._chosen[configured] = self.signatures[select_signature(list(self.signatures), configured)]
        return chosen


class TensorFlowModelFormat:
    """How the model repository checks, loads and frees TensorFlow SavedModels."""

    def __init__(self, keys: SignatureKeys, device: Device) -> None:
        self.keys = keys
        self.neuron = device.kind == "inferentia"  # Neuron-compiled SavedModels have no variables
        self.expected_tree = NEURON_TREE if self.neuron else TREE
        runtime.configure(device)  # before any model load initialises TensorFlow's runtime

    def validate(self, files: list[str]) -> str | None:
        """Cortex's rule: saved_model.pb and variables/variables.{index,data-*}; saved_model.pb alone on Inferentia."""
        present = set(files)
        required = ["saved_model.pb"] if self.neuron else ["saved_model.pb", INDEX_FILE]
        missing = [name for name in required if name not in present]
        if not self.neuron and not any(name.startswith(DATA_PREFIX) for name in present):
            missing.append(f"{DATA_PREFIX}00000-of-*")
        if missing:
            return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        return None

    def load(self, path: Path) -> SavedModel:
        """tf.saved_model.load, then check that the configured signature_key (or Cortex's default) exists, then
        replay its assets.extra/tf_serving_warmup_requests (a failure fails the load: the version is not served)."""
        tf = runtime.tensorflow()
        loaded = tf.saved_model.load(str(path))
        signatures = {key: _signature(tf, key, function) for key, function in loaded.signatures.items()}
        model = SavedModel(path, loaded, signatures)
        if self.keys.uniform:  # with per-model keys the key is known only for a request (see TensorFlowClient)
            model.signature(self.keys.shared)
        try:
            warmup.replay(model, self.keys.shared if self.keys.uniform else None)
        except warmup.WarmupError:
            _collector.request()  # the loaded graphs hold cycles
            raise
        return model

    def size(self, model: SavedModel) -> int | None:
        """The bytes the memory budget counts: its variables' (their checkpoint data files) and its graph's
        (saved_model.pb); None without variables (Neuron), to measure its load's memory instead."""
        data = list((model.path / "variables").glob("variables.data-*"))
        if not data:
            return None
        return sum(file.stat().st_size for file in [*data, model.path / "saved_model.pb"])

    def unload(self, model: SavedModel) -> None:
        """Collect it soon after the repository drops it (its graphs hold cycles); running requests still finish."""
        _collector.request()

    def describe(self, model: SavedModel) -> dict[str, Any]:
        """Every signature with its inputs and outputs; the serving one when the configuration fixes it."""
        described: dict[str, Any] = {}
        if self.keys.uniform:
            chosen = model.signature(self.keys.shared)
            described = {"signature_key": chosen.key, "input_signatures": chosen.describe()["inputs"]}
        described["signatures"] = {key: signature.describe() for key, signature in sorted(model.signatures.items())}
        return described


class _Collector:
    """Runs gc.collect() shortly after models are unloaded, once per burst of unloads (a collection takes ~0.3 s)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._pending = False

    def request(self) -> None:
        """Ask for a collection; a request while one is pending joins it."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
        timer = threading.Timer(self.delay, self._collect)
        timer.daemon = True
        timer.start()

    def _collect(self) -> None:
        with self._lock:
            self._pending = False
        gc.collect()


_collector = _Collector()


def _signature(tf: Any, key: str, function: Any) -> Signature:
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    return Signature(key, function, {name: _spec(tf, name, spec) for name, spec in inputs.items()},
                     {name: _spec(tf, name, spec) for name, spec in outputs.items()},
                     {name: spec.dtype for name, spec in inputs.items()})


def _spec(tf: Any, name: str, spec: Any) -> TensorSpec:
    dtype = spec.dtype
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    kind = "string" if dtype == tf.string else "bool" if dtype.is_bool else "complex" if dtype.is_complex \
        else "int" if dtype.is_integer else "float" if dtype.is_floating else "other"
    bounds = (int(dtype.min), int(dtype.max)) if kind == "int" else None
    np_dtype = dtype.as_numpy_dtype if kind != "other" else None
    return TensorSpec(name, dtype.name, kind, shape, np_dtype, bounds)
