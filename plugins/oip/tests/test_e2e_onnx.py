"""tritonclient[http] and tritonclient[grpc] against engine serve: examples/onnx-iris answers as its Cortex route
does, a 1 MB float32 tensor round-trips exactly, versions and named models map to OIP names, worker processes,
health, metadata, and the protocol's status codes for what is wrong."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from engine.testing import api_yaml, in_thread, write_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = {"http": httpclient, "grpc": grpcclient}
ENCODINGS = [("http", True), ("http", False), ("grpc", True)]  # REST's binary extension and JSON; gRPC's raw bytes
LABELS = ["setosa", "versicolor", "virginica"]
SAMPLES = {
    "setosa": {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3},
    "versicolor": {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 4.2, "petal_width": 1.5},
    "virginica": {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1},
}

TENSORS = """
import os

import numpy as np


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"sum": sum(payload["x"])}

    def tensor_signature(self):
        return [("x", "float32", [-1])], [("sum", "float32", [1]), ("pid", "int64", [1])]

    def predict_tensors(self, inputs):
        if inputs["x"].size == 0:
            raise RuntimeError("nothing to add up")
        return {"sum": np.array([inputs["x"].sum()], dtype=np.float32), "pid": np.array([os.getpid()])}
"""

# Cortex's batching policy (a batch when full or after batch_interval), so that calls sent together surely merge.
INTERVAL = "\n  dispatch: interval"

PLAIN = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return "plain"
"""


@pytest.fixture(scope="module")
def iris(servers, tmp_path_factory, copy_example):
    """examples/onnx-iris as shipped."""
    server = servers(copy_example("onnx-iris", tmp_path_factory.mktemp("iris")))
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def zoo(servers, tmp_path_factory, onnx_models):
    """echo: one model (an identity); zoo: named models, a with versions 1 and 2, in two worker processes;
    batched: echo with server-side batching (two calls per batch, or a minute's wait); tensors: a python predictor
    with predict_tensors; plain: one without."""
    root = tmp_path_factory.mktemp("zoo")
    identity, double = onnx_models["identity"], onnx_models["double"]
    identity(root / "echo" / "1" / "model.onnx")
    identity(root / "models" / "a" / "1" / "model.onnx")
    double(root / "models" / "a" / "2" / "model.onnx")
    identity(root / "models" / "b" / "1" / "model.onnx", "int64", shape=("n", 2), name="i", output="o")
    config = (api_yaml("echo", type_="onnx", predictor="echo.py", predictor_extra="model_path: echo")
              + api_yaml("zoo", type_="onnx", predictor="echo.py",
                         predictor_extra="processes_per_replica: 2\nmodels:\n  dir: models")
              + api_yaml("batched", type_="onnx", predictor="echo.py", predictor_extra=(
                  "model_path: echo\nserver_side_batching:\n  max_batch_size: 2\n  batch_interval: 60s" + INTERVAL))
              + api_yaml("tensors", predictor="tensors.py") + api_yaml("plain", predictor="plain.py"))
    echo = "class ONNXPredictor:\n    def __init__(self, onnx_client, config):\n        self.client = onnx_client\n\n" \
           "    def predict(self, payload):\n        return self.client.predict(payload)[0].tolist()\n"
    project = write_project(root, {"cortex.yaml": config, "echo.py": echo, "tensors.py": TENSORS,
                                   "plain.py": PLAIN})
    server = servers(project)
    server.wait_ready()
    return server


def client(server, protocol: str):
    return CLIENTS[protocol].InferenceServerClient(server.http if protocol == "http" else server.grpc)


def infer(server, protocol: str, model: str, arrays: dict[str, np.ndarray], binary: bool = True, outputs=None,
          **kwargs):
    module = CLIENTS[protocol]
    inputs = []
    for name, array in arrays.items():
        datatype = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "object": "BYTES"}[array.dtype.name]
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, **({"binary_data": binary} if protocol == "http" else {}))
        inputs.append(tensor)
    requested = None
    if outputs is not None:
        requested = [module.InferRequestedOutput(name, **({"binary_data": binary} if protocol == "http" else {}))
                     for name in outputs]
    return client(server, protocol).infer(model, inputs, outputs=requested, **kwargs)


def refused(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return str(raised.value.status()), raised.value.message()


def metric(server, name: str) -> float:
    """A sample of the server's /metrics (0.0 before it is first observed)."""
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def status(protocol: str, http: int) -> str:
    return str(http) if protocol == "http" else {400: "StatusCode.INVALID_ARGUMENT", 404: "StatusCode.NOT_FOUND",
                                                 401: "StatusCode.UNAUTHENTICATED", 500: "StatusCode.INTERNAL"}[http]


@pytest.mark.parametrize("protocol, binary", ENCODINGS, ids=["http-binary", "http-json", "grpc"])
def test_iris_answers_as_its_cortex_route(iris, protocol, binary):
    features = np.array([list(sample.values()) for sample in SAMPLES.values()], dtype=np.float32)
    result = infer(iris, protocol, "iris-classifier", {"input": features}, binary=binary,
                   outputs=["label", "probabilities"])
    labels = result.as_numpy("label")
    for (expected, sample), label in zip(SAMPLES.items(), labels, strict=True):
        cortex = iris.client.post("/iris-classifier", json=sample)
        assert cortex.status_code == 200 and cortex.text == expected == LABELS[label]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    assert np.argmax(probabilities, axis=1).tolist() == labels.tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_and_metadata_answer_what_the_clients_expect(iris, zoo, protocol):
    found = client(iris, protocol)
    assert found.is_server_live() and found.is_server_ready() and found.is_model_ready("iris-classifier")
    assert found.is_model_ready("iris-classifier", "1")
    server = found.get_server_metadata(**({"as_json": True} if protocol == "grpc" else {}))
    assert server["name"] == "engine" and "binary_tensor_data" in server["extensions"]
    metadata = found.get_model_metadata("iris-classifier", **({"as_json": True} if protocol == "grpc" else {}))

    def shape(dims):
        return [int(dim) for dim in dims]

    assert metadata["name"] == "iris-classifier" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], shape(t["shape"])) for t in metadata["inputs"]] == [("input", "FP32", [-1, 4])]
    assert [(t["name"], t["datatype"], shape(t["shape"])) for t in metadata["outputs"]] == \
        [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3])]

    named = client(zoo, protocol)
    kwargs = {"as_json": True} if protocol == "grpc" else {}
    assert named.get_model_metadata("zoo.a", **kwargs)["versions"] == ["2", "1"]
    assert [int(dim) for dim in named.get_model_metadata("zoo.b", "1", **kwargs)["inputs"][0]["shape"]] == [-1, 2]
    assert named.is_model_ready("zoo.a", "1") and named.is_model_ready("echo") and named.is_model_ready("plain")
    python = named.get_model_metadata("tensors", **kwargs)
    assert python["platform"] == "python" and python.get("versions", []) == []
    assert [t["name"] for t in python["outputs"]] == ["sum", "pid"]
    assert named.get_model_metadata("plain", **kwargs).get("inputs", []) == []


@pytest.mark.parametrize("protocol, binary", ENCODINGS, ids=["http-binary", "http-json", "grpc"])
def test_a_1mb_float32_tensor_round_trips_exactly(zoo, protocol, binary):
    rng = np.random.default_rng(15)
    data = rng.standard_normal(2**18).astype(np.float32)  # 1 MiB
    data[:4] = [np.float32(1e-45), np.float32(3.4028235e38), -0.0, np.float32(1 / 3)]
    result = infer(zoo, protocol, "echo", {"x": data}, binary=binary, outputs=["y"])
    echoed = result.as_numpy("y")
    assert echoed.dtype == np.float32 and echoed.tobytes() == data.tobytes()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_versions_and_named_models_reach_their_model_in_worker_processes(zoo, protocol):
    x = np.array([1.5, -2.0], dtype=np.float32)
    assert infer(zoo, protocol, "zoo.a", {"x": x}, model_version="1").as_numpy("y").tolist() == [1.5, -2.0]
    assert infer(zoo, protocol, "zoo.a", {"x": x}, model_version="2").as_numpy("y").tolist() == [3.0, -4.0]
    assert infer(zoo, protocol, "zoo.a", {"x": x}).as_numpy("y").tolist() == [3.0, -4.0]  # latest
    pairs = np.array([[1, 2], [3, 4]], dtype=np.int64)
    assert infer(zoo, protocol, "zoo.b", {"i": pairs}).as_numpy("o").tolist() == [[1, 2], [3, 4]]
    summed = infer(zoo, protocol, "tensors", {"x": np.array([1, 2, 3.5], dtype=np.float32)})
    assert summed.as_numpy("sum").tolist() == [6.5]


def test_inference_goes_through_the_apis_server_side_batching(zoo):
    """A REST call and a gRPC call merge into one batch of the API's client: alone, each would wait a minute."""
    count = metric(zoo, 'engine_batch_size_count{api="batched"}')
    total = metric(zoo, 'engine_batch_size_sum{api="batched"}')
    calls = [in_thread(lambda protocol=protocol, value=value: infer(
        zoo, protocol, "batched", {"x": np.array([value], dtype=np.float32)}).as_numpy("y").tolist())
        for protocol, value in (("http", 1.0), ("grpc", 2.0))]
    for thread, _ in calls:
        thread.join(30)
    assert [result.get("value") for _, result in calls] == [[1.0], [2.0]]
    zoo.wait_metric(f'engine_batch_size_count{{api="batched"}} {count + 1}')
    zoo.wait_metric(f'engine_batch_size_sum{{api="batched"}} {total + 2}')


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_errors_have_the_protocol_status_codes(iris, zoo, protocol):
    features = np.array([[5.2, 3.6, 1.4, 0.3]], dtype=np.float32)
    code, message = refused(lambda: infer(iris, protocol, "nope", {"input": features}))
    assert code == status(protocol, 404) and "unknown model 'nope'" in message
    code, message = refused(lambda: infer(iris, protocol, "iris-classifier", {"input": features}, model_version="7"))
    assert code == status(protocol, 404) and "no version 7" in message
    code, message = refused(lambda: infer(iris, protocol, "iris-classifier", {"input": features.astype(np.float64)}))
    assert code == status(protocol, 400) and "is FP32, not FP64" in message
    code, message = refused(lambda: infer(iris, protocol, "iris-classifier", {"input": features[:, :3].copy()}))
    assert code == status(protocol, 400) and "takes the shape [-1, 4]" in message
    code, message = refused(lambda: infer(iris, protocol, "iris-classifier", {"wrong": features}))
    assert code == status(protocol, 400) and "missing: input" in message
    code, message = refused(lambda: infer(iris, protocol, "iris-classifier", {"input": features}, outputs=["nope"]))
    assert code == status(protocol, 400) and "no output 'nope'" in message
    x = np.array([1.0], dtype=np.float32)
    code, message = refused(lambda: infer(zoo, protocol, "zoo", {"x": x}))
    assert code == status(protocol, 404) and "zoo.a, zoo.b" in message
    code, message = refused(lambda: infer(zoo, protocol, "echo.other", {"x": x}))
    assert code == status(protocol, 404)
    code, message = refused(lambda: infer(zoo, protocol, "zoo.c", {"x": x}))
    assert code == status(protocol, 404) and "unknown model 'zoo.c'" in message
    code, message = refused(lambda: infer(zoo, protocol, "plain", {"x": x}))
    assert code == status(protocol, 400) and "without a predict_tensors(self, inputs) method" in message
    code, message = refused(lambda: infer(zoo, protocol, "tensors", {"x": x.astype(np.float64)}))
    assert code == status(protocol, 400) and "is FP32, not FP64" in message
    code, message = refused(lambda: infer(zoo, protocol, "tensors", {"x": np.zeros(0, dtype=np.float32)}))
    assert code == status(protocol, 500)  # the predictor raised
    if protocol == "http":
        assert not client(zoo, protocol).is_model_ready("nope")
    else:
        code, _ = refused(lambda: client(zoo, protocol).is_model_ready("nope"))
        assert code == "StatusCode.NOT_FOUND"


def test_rest_errors_are_the_protocol_error_object(zoo):
    answer = zoo.client.post("/v2/models/echo/infer", content=b"{not json")
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    answer = zoo.client.post("/v2/models/echo/infer", content=b'{"inputs": []}',
                             headers={"Inference-Header-Content-Length": "99"})
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.json()["error"]
    answer = zoo.client.post("/v2/models/echo/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]})
    assert answer.status_code == 400 and "binary_data_size" in answer.json()["error"]
    assert zoo.client.get("/v2/models/zoo.a/versions/abc").status_code == 404
    index = zoo.client.post("/v2/repository/index").json()
    assert {"name": "zoo.a", "version": "2", "state": "READY"} in index
    assert {"name": "plain", "state": "READY"} in index
    metrics = zoo.client.get("/metrics").text
    assert 'method="oip.infer"' in metrics and 'method="oip.infer_grpc"' in metrics
