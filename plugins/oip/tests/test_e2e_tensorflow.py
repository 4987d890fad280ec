"""tritonclient[http] and tritonclient[grpc] against examples/tensorflow-iris, its SavedModel built by the example's
own script: the same answers as its Cortex route, BYTES outputs included, and the signature as metadata."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]
pytest.importorskip("tensorflow", reason="the tensorflow type's tests need tensorflow")

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SAMPLES = {
    "setosa": [5.2, 3.6, 1.4, 0.3],
    "versicolor": [5.9, 3.0, 4.2, 1.5],
    "virginica": [6.9, 3.1, 5.4, 2.1],
}
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def iris(servers, tmp_path_factory, copy_example):
    project = copy_example("tensorflow-iris", tmp_path_factory.mktemp("tf"))
    build = subprocess.run([sys.executable, str(project / "build_model.py"), str(project / "model")],
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    server = servers(project)
    server.wait_ready(300)
    return server


def request(protocol: str, binary: bool):
    module = CLIENTS[protocol]
    inputs = []
    for index, name in enumerate(FEATURES):
        tensor = module.InferInput(name, [len(SAMPLES)], "FP32")
        column = np.array([sample[index] for sample in SAMPLES.values()], dtype=np.float32)
        tensor.set_data_from_numpy(column, **({"binary_data": binary} if protocol == "http" else {}))
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput(name, **({"binary_data": binary} if protocol == "http" else {}))
               for name in ("class_ids", "classes", "probabilities")]
    return inputs, outputs


@pytest.mark.parametrize("protocol, binary", [("http", True), ("http", False), ("grpc", True)],
                         ids=["http-binary", "http-json", "grpc"])
def test_tensorflow_iris_answers_as_its_cortex_route(iris, protocol, binary):
    client = CLIENTS[protocol].InferenceServerClient(iris.http if protocol == "http" else iris.grpc)
    inputs, outputs = request(protocol, binary)
    result = client.infer("iris-classifier", inputs, outputs=outputs)
    classes = [value.decode() if isinstance(value, bytes) else value  # JSON: strings
               for value in result.as_numpy("classes").reshape(-1)]
    for (expected, features), found, class_id in zip(SAMPLES.items(), classes,
                                                     result.as_numpy("class_ids").reshape(-1), strict=True):
        cortex = iris.client.post("/iris-classifier", json=dict(zip(FEATURES, features, strict=True)))
        assert cortex.status_code == 200 and cortex.text == expected == found
        assert list(SAMPLES)[class_id] == expected
    assert result.as_numpy("probabilities").shape == (3, 3)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_signature_is_the_metadata_and_a_wrong_datatype_a_400(iris, protocol):
    client = CLIENTS[protocol].InferenceServerClient(iris.http if protocol == "http" else iris.grpc)
    metadata = client.get_model_metadata("iris-classifier", **({"as_json": True} if protocol == "grpc" else {}))
    assert metadata["platform"] == "tensorflow_savedmodel" and metadata["versions"] == ["1"]
    inputs = {t["name"]: (t["datatype"], [int(dim) for dim in t["shape"]]) for t in metadata["inputs"]}
    assert inputs == {name: ("FP32", [-1]) for name in FEATURES}
    outputs = {t["name"]: t["datatype"] for t in metadata["outputs"]}
    assert outputs["classes"] == "BYTES" and outputs["class_ids"] == "INT64" and outputs["logits"] == "FP32"
    module = CLIENTS[protocol]
    inputs = []
    for name in FEATURES:
        tensor = module.InferInput(name, [1], "FP64")
        tensor.set_data_from_numpy(np.array([1.0]))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("iris-classifier", inputs)
    assert str(raised.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "is FP32, not FP64" in raised.value.message()


def test_a_savedmodel_is_unloaded_and_loaded_again(iris):
    """The model repository extension on a tensorflow API (its whole story: test_e2e_repository.py)."""
    grpc = grpcclient.InferenceServerClient(iris.grpc)
    http = httpclient.InferenceServerClient(iris.http)
    grpc.unload_model("iris-classifier")
    assert http.get_model_repository_index() == [
        {"name": "iris-classifier", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    with pytest.raises(InferenceServerException) as raised:
        http.infer("iris-classifier", request("http", True)[0])
    assert str(raised.value.status()) == "503" and "unloaded" in raised.value.message()
    assert iris.client.post("/iris-classifier", json=dict(zip(FEATURES, SAMPLES["setosa"], strict=True))) \
        .status_code == 503
    http.load_model("iris-classifier")
    assert grpc.infer("iris-classifier", request("grpc", True)[0]).as_numpy("class_ids").reshape(-1).tolist() == \
        [0, 1, 2]
