"""Small SavedModels built once per test session, and clients over them built the way `engine serve` builds them."""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Api, Batching, Device, ModelRepository
from engine.testing import create_client, plugin_manager, predictor_type

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "tensorflow-iris"


def load_example_builder() -> Any:
    """examples/tensorflow-iris/build_model.py as a module."""
    spec = importlib.util.spec_from_file_location("iris_build_model", EXAMPLE / "build_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def saved_models(tf, tmp_path_factory) -> dict[str, Path]:
    """Every test SavedModel, by name (see the builders below)."""
    root = tmp_path_factory.mktemp("saved-models")
    paths = {"iris": load_example_builder().build(root / "iris")}
    for name, build in BUILDERS.items():
        paths[name] = root / name
        build(tf, paths[name])
    return paths


@pytest.fixture(scope="session")
def builders(tf) -> dict[str, Callable[..., None]]:
    """The builders by name, each called as build(path, ...) with TensorFlow passed in."""
    return {name: (lambda path, *args, _build=build: _build(tf, path, *args)) for name, build in BUILDERS.items()}


def _save(tf, path: Path, module, signatures: dict[str, Any]) -> None:
    tf.saved_model.save(module, str(path), signatures=signatures)


def build_scaled(tf, path: Path, factor: float = 2.0) -> None:
    """One signature "serving_default": x float32 [None] → y = x * factor (a variable)."""
    class Scaled(tf.Module):
        def __init__(self):
            super().__init__()
            self.factor = tf.Variable(factor)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def scale(self, x):
            return {"y": x * self.factor}

    module = Scaled()
    _save(tf, path, module, {"serving_default": module.scale.get_concrete_function()})


def _multiplier(tf, factor: float):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def multiply(x):
        return {"y": x * factor}

    return multiply.get_concrete_function()


def build_ambiguous(tf, path: Path) -> None:
    """Signatures "a" (x * 1) and "b" (x * 2): no "predict", so a signature_key is needed."""
    _save(tf, path, tf.Module(), {"a": _multiplier(tf, 1.0), "b": _multiplier(tf, 2.0)})


def build_with_predict(tf, path: Path) -> None:
    """Signatures "predict" (x * 3) and "other" (x * 4)."""
    _save(tf, path, tf.Module(), {"predict": _multiplier(tf, 3.0), "other": _multiplier(tf, 4.0)})


def build_typed_inputs(tf, path: Path) -> None:
    """One signature whose inputs cover the dtypes and shapes users send; every output echoes its input."""
    specs = {"f": ([None, 2], tf.float32), "i": ([None], tf.int32), "s": ([None], tf.string),
             "b": ([None], tf.bool), "u8": ([None], tf.uint8), "fixed": ([2, 3], tf.float64),
             "scalar": ([], tf.int64), "h": ([None], tf.float16)}

    @tf.function(input_signature=[tf.TensorSpec(shape, dtype, name=name) for name, (shape, dtype) in specs.items()])
    def echo(f, i, s, b, u8, fixed, scalar, h):
        return {"f": f, "i": i, "s": s, "b": b, "u8": u8, "fixed": fixed, "scalar": scalar, "h": h}

    _save(tf, path, tf.Module(), {"serving_default": echo.get_concrete_function()})


def build_dtypes(tf, path: Path) -> None:
    """Outputs of every dtype TensorFlow Serving answered, from x float32 [None] (send [1.5, -2.0])."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def every_dtype(x):
        column = x[:, tf.newaxis]
        pair = tf.concat([column, column], axis=1)  # shape [batch, 2]
        outputs = {dtype.name: tf.cast(pair, dtype) for dtype in [
            tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int8, tf.int16, tf.int32, tf.int64]}
        outputs.update({dtype.name: tf.cast(tf.abs(pair), dtype) for dtype in [
            tf.uint8, tf.uint16, tf.uint32, tf.uint64]})
        outputs["bool"] = x > 0
        outputs["string"] = tf.strings.as_string(x, precision=1)
        outputs["complex64"] = tf.complex(x, -x)
        outputs["complex128"] = tf.complex(tf.cast(x, tf.float64), tf.cast(x * 2, tf.float64))
        outputs["non_finite"] = tf.stack([x / 0.0, -x / 0.0, x * float("nan")], axis=1)
        return outputs

    _save(tf, path, tf.Module(), {"serving_default": every_dtype.get_concrete_function()})


def build_big(tf, path: Path) -> None:
    """Input n int32 scalar → "zeros" float32 [n] and "first" int64 [1]: outputs as large as asked."""
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="n")])
    def big(n):
        return {"zeros": tf.zeros([n], tf.float32) + 0.5, "first": tf.constant([7], tf.int64)}

    _save(tf, path, tf.Module(), {"serving_default": big.get_concrete_function()})


def build_failing(tf, path: Path) -> None:
    """x float32 [None] → fails at run time for any x with a negative value (a check op)."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def checked(x):
        tf.debugging.assert_non_negative(x, message="x must not be negative")
        return {"y": tf.sqrt(x)}

    _save(tf, path, tf.Module(), {"serving_default": checked.get_concrete_function()})


def build_summed(tf, path: Path) -> None:
    """x float32 [None] → "total": the sum of x, a scalar (no batch dimension in the output)."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def summed(x):
        return {"total": tf.reduce_sum(x)}

    _save(tf, path, tf.Module(), {"serving_default": summed.get_concrete_function()})


def build_tf1(tf, path: Path) -> None:
    """A TensorFlow 1 SavedModel (graph, placeholders, SavedModelBuilder), like the Estimator exports Cortex served."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="features")
        weight = v1.get_variable("weight", initializer=10.0)
        total = tf.reduce_sum(x, axis=1) * weight
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            signature = v1.saved_model.predict_signature_def({"features": x}, {"total": total})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"predict": signature})
            builder.save()


BUILDERS: dict[str, Callable] = {
    "scaled": build_scaled, "ambiguous": build_ambiguous, "with_predict": build_with_predict,
    "typed_inputs": build_typed_inputs, "dtypes": build_dtypes, "big": build_big, "failing": build_failing,
    "summed": build_summed, "tf1": build_tf1,
}


def build_counted(tf, path: Path, factor: float = 1.0) -> None:
    """x float32 [None] → y = x * factor, and "calls": how many times the signature has run in this process."""
    class Counted(tf.Module):
        def __init__(self):
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def count(self, x):
            return {"y": x * factor, "calls": self.calls.assign_add(1)}

    module = Counted()
    _save(tf, path, module, {"serving_default": module.count.get_concrete_function()})


def write_warmup_requests(tf, model: Path, *inputs: dict[str, Any], other: int = 0, signature: str = "") -> Path:
    """A TensorFlow Serving warm-up file in the SavedModel: one PredictionLog (predict_log) per dict of inputs
    (float32 arrays), for `signature` (none: the serving one), then `other` classify_log records; its path."""
    from engine_tensorflow_predictor.warmup import WARMUP_FILE, message_class

    path = model / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for named in inputs:
            record = message_class("PredictionLog")()
            record.predict_log.request.model_spec.name = "counted"
            record.predict_log.request.model_spec.signature_name = signature
            for name, value in named.items():
                record.predict_log.request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
            writer.write(record.SerializeToString())
        for _ in range(other):
            record = message_class("PredictionLog")()
            record.classify_log.SetInParent()
            writer.write(record.SerializeToString())
    return path


@pytest.fixture(scope="session")
def warmup_requests(tf) -> Callable[..., Path]:
    """warmup_requests(model, *inputs, other=0, signature=""): write_warmup_requests with TensorFlow passed in."""
    return lambda model, *inputs, **options: write_warmup_requests(tf, model, *inputs, **options)


@pytest.fixture(scope="session")
def warmed(tf) -> Callable[..., Path]:
    """warmed(path, factor, *inputs, other=0): a counted SavedModel (build_counted) with a warm-up file."""
    def build(path: Path, factor: float, *inputs: dict[str, Any], other: int = 0) -> Path:
        build_counted(tf, path, factor)
        write_warmup_requests(tf, path, *inputs, other=other)
        return path

    return build


def _copy_model(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def copy_model() -> Callable[[Path, Path], Path]:
    """copy_model(source, target): copy a SavedModel directory, creating parents; returns target."""
    return _copy_model


def make_api(predictor: dict[str, Any]) -> Api:
    """A tensorflow RealtimeAPI with these predictor fields."""
    return Api.model_validate({"name": "tf", "kind": "RealtimeAPI",
                               "predictor": {"type": "tensorflow", "path": "predictor.py", **predictor}})


class Opened:
    """A tensorflow_client over a repository, built as engine's request pipeline builds them."""

    def __init__(self, predictor: dict[str, Any], root: Path, preload: bool = True) -> None:
        self.api = make_api(predictor)
        pm = plugin_manager(entry_points=True)
        ptype = predictor_type(pm, "tensorflow")
        device = Device(kind="cpu", threads=1)
        self.format = ptype.model_format(self.api, device)
        self.repository = ModelRepository(self.api.predictor.models, root, self.format, "tensorflow",
                                          poll_interval=3600)
        self.repository.scan()
        batching = self.api.predictor.server_side_batching  # the type batches in its client: it gets the limits
        self.client = create_client(pm, self.api, device, self.repository,
                                    Batching(batching.max_batch_size, batching.batch_interval,
                                             dispatch=batching.dispatch) if batching else None)
        if preload and self.repository.cache_size is None:
            self.repository.preload()


@pytest.fixture(scope="session")
def opener() -> type[Opened]:
    """Opened itself, for module-scoped clients (stop their repository at teardown)."""
    return Opened


@pytest.fixture
def open_client(tmp_path) -> Iterator[Callable[..., Opened]]:
    """Build a client for predictor fields (model paths relative to tmp_path); repositories stop at teardown."""
    opened: list[Opened] = []

    def build(predictor: dict[str, Any], preload: bool = True) -> Opened:
        result = Opened(predictor, tmp_path, preload)
        opened.append(result)
        return result

    yield build
    for result in opened:
        result.repository.stop()
