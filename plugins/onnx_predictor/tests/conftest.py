"""Fixtures: tiny ONNX models built with onnx.helper, and repositories and clients over them."""
from __future__ import annotations

from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests build their models with onnx: "
                                          "pip install -e 'plugins/onnx_predictor[test]'")
from engine_onnx_predictor.client import ONNXClient  # noqa: E402
from engine_onnx_predictor.model_format import OnnxModelFormat  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from engine import ModelRepository  # noqa: E402
from engine import Models as ModelsConfig  # noqa: E402

# onnx type name → TensorProto element type, for every type the converter maps.
ELEMENT_TYPES = {
    "float": TensorProto.FLOAT, "double": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "int8": TensorProto.INT8, "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64, "bool": TensorProto.BOOL, "string": TensorProto.STRING,
}


class ModelFiles:
    """Writes tiny .onnx models: Identity, Add, two outputs, a constant, or a Reshape that fails at run time."""

    def identity(self, path: Path, type_: str = "float", shape: list | None = (None, 4), name: str = "x") -> Path:
        """y = x, with x of the given element type and shape (None entries: unknown, str entries: symbolic)."""
        node = helper.make_node("Identity", [name], ["y"])
        return self.write(path, [node], [self.value(name, type_, shape)], [self.value("y", type_, shape)])

    def add(self, path: Path, type_: str = "float", shape: list | None = ("n", 2), names=("a", "b")) -> Path:
        """sum = a + b."""
        node = helper.make_node("Add", list(names), ["sum"])
        inputs = [self.value(name, type_, shape) for name in names]
        return self.write(path, [node], inputs, [self.value("sum", type_, shape)])

    def two_outputs(self, path: Path, shape=("n",)) -> Path:
        """same = x and double = x + x: predict returns both, in this order."""
        nodes = [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Add", ["x", "x"], ["double"])]
        outputs = [self.value("same", "float", shape), self.value("double", "float", shape)]
        return self.write(path, nodes, [self.value("x", "float", shape)], outputs)

    def constant(self, path: Path, value: float, input_shape=("n",)) -> Path:
        """out = x * 0 + value: tells versions apart by what they answer."""
        nodes = [helper.make_node("Mul", ["x", "zero"], ["zeros"]),
                 helper.make_node("Add", ["zeros", "value"], ["out"])]
        initializers = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                        helper.make_tensor("value", TensorProto.FLOAT, [], [value])]
        inputs, outputs = [self.value("x", "float", input_shape)], [self.value("out", "float", input_shape)]
        return self.write(path, nodes, inputs, outputs, initializers)

    def reshape_to_3(self, path: Path) -> Path:
        """Reshapes its input to [3]: any other size fails inside onnxruntime."""
        node = helper.make_node("Reshape", ["x", "shape"], ["y"])
        shape = helper.make_tensor("shape", TensorProto.INT64, [1], [3])
        return self.write(path, [node], [self.value("x", "float", ["n"])], [self.value("y", "float", [3])], [shape])

    @staticmethod
    def value(name: str, type_: str, shape):
        """A graph input or output; a shape of None leaves the shape undeclared."""
        return helper.make_tensor_value_info(name, ELEMENT_TYPES[type_], None if shape is None else list(shape))

    @staticmethod
    def write(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
        """Check and save a model (IR 8, opset 17: loadable by any onnxruntime >= 1.14)."""
        graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
        return path


@pytest.fixture
def models() -> ModelFiles:
    """Builds tiny .onnx files."""
    return ModelFiles()


@pytest.fixture
def repository(tmp_path):
    """Make a scanned repository (and its client) for a Models config; every one is stopped at teardown."""
    made: list[ModelRepository] = []

    def make(config: ModelsConfig | dict, threads: int = 1, preload: bool = True) -> tuple[ModelRepository, ONNXClient]:
        if isinstance(config, dict):
            config = ModelsConfig.model_validate(config)
        repo = ModelRepository(config, tmp_path, OnnxModelFormat(["CPUExecutionProvider"], threads), "onnx",
                               poll_interval=3600)
        made.append(repo)
        repo.scan()
        if preload and repo.cache_size is None:
            repo.preload()
        return repo, ONNXClient(repo)

    yield make
    for repo in made:
        repo.stop()
