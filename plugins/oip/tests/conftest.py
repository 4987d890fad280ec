"""Fixtures of engine-oip's suite: servers started with --grpc-port, and the models the tests serve."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.testing import Server, free_port

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
START_TIMEOUT = 120  # seconds: TensorFlow takes a while to import on a small machine


class OipServer(Server):
    """`engine serve` with gRPC on a port of its own; `http` and `grpc` are the addresses tritonclient takes."""

    def __init__(self, project: Path, *args: str, grpc: bool = True, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port() if grpc else None
        super().__init__(project, *args, *(("--grpc-port", str(self.grpc_port)) if grpc else ()), env=env)
        self.http = f"127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="module")
def servers():
    """Start OipServers (not waiting for them); every one is stopped when the module is done."""
    started: list[OipServer] = []

    def start(project: Path, *args: str, **kwargs) -> OipServer:
        server = OipServer(project, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="session")
def copy_example():
    """copy_example(name, into): a copy of examples/<name> (tensorflow-iris without a model) under `into`."""
    return _copy_example


@pytest.fixture(scope="session")
def onnx_models():
    """The ONNX model writers: identity(path, type_, shape, name, output) and double(path)."""
    return {"identity": _identity_model, "double": _double_model}


def _copy_example(name: str, into: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "model")
                                if name == "tensorflow-iris" else shutil.ignore_patterns("__pycache__")))


def _identity_model(path: Path, type_: str = "float", shape=("n",), name: str = "x", output: str = "y") -> Path:
    """An ONNX model whose output is its input: output = Identity(input)."""
    return _save(path, "Identity", [name], output, type_, shape)


def _double_model(path: Path) -> Path:
    """y = x + x (float, any length)."""
    return _save(path, "Add", ["x", "x"], "y", "float", ("n",))


def _save(path: Path, operator: str, inputs: list[str], output: str, type_: str, shape) -> Path:
    """A one-node ONNX model, written to `path`."""
    pytest.importorskip("onnx", reason="the tests build their ONNX models with onnx")
    from onnx import TensorProto, helper
    element = {"float": TensorProto.FLOAT, "int64": TensorProto.INT64, "string": TensorProto.STRING,
               "bool": TensorProto.BOOL}[type_]
    graph = helper.make_graph([helper.make_node(operator, inputs, [output])], operator.lower(),
                              [helper.make_tensor_value_info(inputs[0], element, list(shape))],
                              [helper.make_tensor_value_info(output, element, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
