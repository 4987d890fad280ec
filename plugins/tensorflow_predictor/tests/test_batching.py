"""server_side_batching in tensorflow_client: concurrent calls merged along dimension 0, each caller its own rows."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from engine_tensorflow_predictor.batching import batch_key
from engine_tensorflow_predictor.inputs import TensorSpec
from engine_tensorflow_predictor.model import Signature

from engine import ModelError


@pytest.fixture
def runs(monkeypatch):
    """The batch size (rows of the first input) of every signature run, in order."""
    seen: list[int] = []
    original = Signature.run

    def counting(self, arrays):
        seen.append(len(next(iter(arrays.values()))) if next(iter(arrays.values())).ndim else 0)
        return original(self, arrays)

    monkeypatch.setattr(Signature, "run", counting)
    return seen


@pytest.fixture
def batched_client(open_client, saved_models, copy_model, tmp_path):
    """batched_client(model, max_batch_size, interval): a client over a copy of a session model, batching on Cortex's
    interval policy (so that calls made together surely merge)."""
    def build(name: str, max_batch_size: int, interval: str = "30s"):
        copy_model(saved_models[name], tmp_path / name)
        batching = {"max_batch_size": max_batch_size, "batch_interval": interval, "dispatch": "interval"}
        return open_client({"model_path": name, "server_side_batching": batching}).client

    return build


def together(client, inputs, **kwargs):
    """predict() from one thread per input at once; results (or the ModelError raised) in input order."""
    def call(model_input):
        try:
            return client.predict(model_input, **kwargs)
        except ModelError as error:
            return error

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(call, inputs))


def test_a_full_batch_runs_once_and_each_caller_gets_its_rows(batched_client, runs):
    client = batched_client("scaled", max_batch_size=4)  # a 30 s interval: only a full batch runs at once
    inputs = [{"x": 1.0}, {"x": [2.0, 3.0]}, {"x": [4.0]}, {"x": [5.0, 6.0, 7.0]}]
    started = time.monotonic()
    results = together(client, inputs)
    assert time.monotonic() - started < 10
    assert results == [{"y": [2.0]}, {"y": [4.0, 6.0]}, {"y": [8.0]}, {"y": [10.0, 12.0, 14.0]}]
    assert runs == [7]


def test_a_partial_batch_runs_when_its_interval_is_over(batched_client, runs):
    client = batched_client("scaled", max_batch_size=8, interval="200ms")
    assert together(client, [{"x": [1.0]}, {"x": [2.0]}], raw=True)[1]["y"].tolist() == [4.0]
    assert sorted(runs) in ([2], [1, 1])  # both in one batch unless the second call came after the interval
    assert sum(runs) == 2


def test_inputs_without_a_batch_dimension_run_alone_at_once(batched_client, runs):
    client = batched_client("big", max_batch_size=4)
    started = time.monotonic()
    assert client.predict({"n": 3})["first"] == ["7"]
    assert time.monotonic() - started < 10 and runs == [0]


def test_a_failing_request_fails_alone(batched_client, runs):
    client = batched_client("failing", max_batch_size=2)
    good, bad = together(client, [{"x": [4.0]}, {"x": [-1.0]}])
    assert good == {"y": [2.0]}
    assert isinstance(bad, ModelError) and bad.status_code == 500
    assert "x must not be negative" in str(bad)
    assert runs[0] == 2 and sorted(runs[1:]) == [1, 1]


def test_outputs_without_a_batch_dimension_are_computed_call_by_call(batched_client, runs, caplog):
    client = batched_client("summed", max_batch_size=2)
    with caplog.at_level(logging.WARNING, "engine.tensorflow"):
        results = together(client, [{"x": [1.0, 2.0]}, {"x": [10.0]}])
    assert results == [{"total": [3.0]}, {"total": [10.0]}]
    assert "outputs total have no leading batch dimension" in caplog.text


def spec(name: str, shape) -> TensorSpec:
    return TensorSpec(name, "float32", "float", shape, np.float32)


def signature(**shapes) -> Signature:
    return Signature("s", None, {name: spec(name, shape) for name, shape in shapes.items()}, {}, {})


def test_batch_keys_group_calls_that_can_be_concatenated():
    sig = signature(a=(None, 2), b=(None,))
    key = batch_key(sig, {"a": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
    assert key == batch_key(sig, {"a": np.zeros((1, 2), np.float32), "b": np.zeros(1, np.float32)})
    assert key != batch_key(sig, {"a": np.zeros((1, 2), np.float64), "b": np.zeros(1, np.float32)})
    assert batch_key(sig, {"a": np.zeros((2, 2), np.float32), "b": np.zeros(1, np.float32)}) is None
    ragged = signature(a=(None, None))
    assert batch_key(ragged, {"a": np.zeros((1, 2))}) != batch_key(ragged, {"a": np.zeros((1, 3))})
    assert batch_key(ragged, {"a": np.zeros((1, 2))}) != batch_key(signature(a=(None, None)), {"a": np.zeros((1, 2))})
    assert batch_key(signature(a=()), {"a": np.zeros(())}) is None
    assert batch_key(signature(a=(4,)), {"a": np.zeros(4)}) is None
    assert batch_key(signature(a=None), {"a": np.zeros(4)}) is None
