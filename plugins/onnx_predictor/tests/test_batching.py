"""Transparent batching of onnx_client.predict: merged results equal unbatched ones; fallbacks never fail."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from engine_onnx_predictor import batching
from engine_onnx_predictor.client import ONNXClient
from onnx import TensorProto, helper

from engine import Batching
from engine.testing import Server

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "onnx-iris"


def mlp(models, path: Path, rows=None) -> Path:
    """y = relu(x @ w1) @ w2 with x of shape [rows, 3]: a real model whose outputs depend on every input row."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    initializers = [helper.make_tensor("w1", TensorProto.FLOAT, [3, 5], w1.ravel()),
                    helper.make_tensor("w2", TensorProto.FLOAT, [5, 2], w2.ravel())]
    return models.write(path, nodes, [models.value("x", "float", [rows, 3])], [models.value("y", "float", [rows, 2])],
                        initializers)


def batched_client(repository, config, max_batch_size=8, interval=0.05):
    """A client batching on Cortex's interval policy, so that calls released together surely merge."""
    repo, _ = repository(config)
    sizes = []
    client = ONNXClient(repo, Batching(max_batch_size=max_batch_size, interval=interval, on_batch=sizes.append,
                                       dispatch="interval"))
    return repo, client, sizes


def predict_together(client, inputs):
    barrier = threading.Barrier(len(inputs))

    def call(value):
        barrier.wait()
        return client.predict(value)

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(call, inputs))


def test_concurrent_calls_merge_and_equal_unbatched_results(models, repository, tmp_path):
    mlp(models, tmp_path / "m" / "model.onnx", rows="n")
    repo, client, sizes = batched_client(repository, {"path": "m"})
    inputs = [np.random.default_rng(i).normal(size=(1 + i % 3, 3)).astype(np.float32) for i in range(8)]
    batched = predict_together(client, inputs)
    session = repo.get().session
    for value, result in zip(inputs, batched, strict=True):
        np.testing.assert_allclose(result[0], session.run(None, {"x": value})[0], rtol=1e-6)
    assert sum(sizes) == 8 and max(sizes) > 1


def test_calls_with_other_trailing_shapes_or_types_never_merge(models, repository, tmp_path):
    models.identity(tmp_path / "m" / "model.onnx", shape=("n", "width"))
    _, client, sizes = batched_client(repository, {"path": "m"}, interval=0.2)
    inputs = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), np.ones((2, 2), np.float32)]
    results = predict_together(client, inputs)
    for value, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result[0], value)
    assert sorted(sizes) == [1, 2]  # the [*, 2] calls merged, the [1, 3] one ran alone


def test_a_fixed_first_dimension_runs_unbatched(models, repository, tmp_path):
    mlp(models, tmp_path / "m" / "model.onnx", rows=1)
    _, client, sizes = batched_client(repository, {"path": "m"})
    results = predict_together(client, [np.ones((1, 3), np.float32) * i for i in range(4)])
    assert [r[0].shape for r in results] == [(1, 2)] * 4
    assert sizes == []  # never handed to the batcher


def test_outputs_that_cannot_be_split_fall_back_to_one_run_per_call(models, repository, tmp_path):
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    models.write(tmp_path / "m" / "model.onnx", nodes, [models.value("x", "float", ["n", 2])],
                 [models.value("total", "float", [])])
    _, client, sizes = batched_client(repository, {"path": "m"})
    inputs = [np.full((1, 2), i, np.float32) for i in range(4)]
    results = predict_together(client, inputs)
    assert [float(r[0]) for r in results] == [0.0, 2.0, 4.0, 6.0]
    assert sum(sizes) == 4


def test_a_failing_merged_run_gives_each_call_its_own_outcome():
    class Session:
        def run(self, outputs, feed):
            rows = feed["x"]
            if len(rows) > 1:
                raise RuntimeError("merged run failed")
            if rows[0, 0] < 0:
                raise ValueError("negative")
            return [rows * 2]

    class Model:
        session = Session()

    calls = [(Model, {"x": np.array([[1.0]])}), (Model, {"x": np.array([[-1.0]])})]
    first, second = batching.run_batch(calls)
    np.testing.assert_array_equal(batching.unwrap(first)[0], [[2.0]])
    with pytest.raises(ValueError, match="negative"):
        batching.unwrap(second)


@pytest.mark.e2e
def test_iris_example_with_batching_over_http(tmp_path):
    project = tmp_path / "iris"
    project.mkdir()
    for name in ("predictor.py", "model"):
        source = EXAMPLE / name
        (project / name).symlink_to(source, target_is_directory=source.is_dir())
    (project / "cortex.yaml").write_text(
        "- name: iris-classifier\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n    path: predictor.py\n"
        "    model_path: model/\n    server_side_batching:\n      max_batch_size: 8\n      batch_interval: 100ms\n"
        "      dispatch: interval\n")  # Cortex's policy: requests sent together surely merge
    samples = [({"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}, "setosa"),
               ({"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5}, "versicolor"),
               ({"sepal_length": 7.2, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}, "virginica")] * 3
    server = Server(project)
    try:
        server.wait_ready()
        with ThreadPoolExecutor(len(samples)) as pool:
            answers = list(pool.map(lambda s: httpx.post(server.url + "/iris-classifier", json=s[0], timeout=30).text,
                                    samples))
        assert answers == [label for _, label in samples]
        metrics = server.client.get("/metrics").text
        count = float(next(line.split()[-1] for line in metrics.splitlines()
                           if line.startswith('engine_batch_size_count{api="iris-classifier"}')))
        assert count < len(samples)  # fewer inference calls than requests: calls were merged
    finally:
        assert server.stop() == 0
