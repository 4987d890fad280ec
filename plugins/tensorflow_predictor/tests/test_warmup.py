"""A SavedModel's assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog), replayed as each version loads:
at start-up, and for a version found while serving before it is published; a failing one is never served."""
from __future__ import annotations

import logging

import pytest
from engine_tensorflow_predictor.warmup import WARMUP_FILE

from engine import ModelError

pytestmark = pytest.mark.slow  # loads TensorFlow

FAILED = "model _cortex_default of version 2 failed to load: WarmupError: "


def predict(client, version="latest"):
    return client.predict({"x": [1.0]}, model_version=version)


def test_the_warmup_records_run_when_the_model_loads(open_client, warmed, tmp_path, caplog):
    warmed(tmp_path / "m" / "1", 1.0, {"x": [1.0, 2.0]}, {"x": [3.0]}, other=2)
    with caplog.at_level(logging.INFO, "engine.tensorflow"):
        client = open_client({"model_path": "m"}).client
    assert predict(client) == {"y": [1.0], "calls": [3]}  # two replayed before it: the model's own count
    assert f"skipped 2 classify_log of {WARMUP_FILE}: engine replays predict_log records only" in caplog.text
    assert f"2 warm-up records of {WARMUP_FILE} replayed in" in caplog.text


def test_a_new_version_is_warmed_up_before_it_is_published(open_client, warmed, tmp_path):
    warmed(tmp_path / "m" / "1", 1.0, {"x": [1.0]})
    opened = open_client({"model_path": "m"})
    assert predict(opened.client) == {"y": [1.0], "calls": [2]}
    warmed(tmp_path / "m" / "2", 2.0, {"x": [1.0]}, {"x": [2.0]}, {"x": [3.0]})
    opened.repository.settle = 0
    opened.repository.refresh()  # what the poller does; version 2 is published once it has loaded (and warmed up)
    assert predict(opened.client) == {"y": [2.0], "calls": [4]}


@pytest.mark.parametrize("record, problem", [
    ({"x": [-1.0]}, "warm-up record 1 of assets.extra/tf_serving_warmup_requests failed: InvalidArgumentError: "),
    ({"z": [1.0]}, "warm-up record 1 of assets.extra/tf_serving_warmup_requests failed: signature 'serving_default' "
                   "has no input z; its inputs: ['x']"),
])
def test_a_version_whose_warmup_fails_is_not_served(open_client, warmed, builders, warmup_requests, tmp_path, caplog,
                                                    record, problem):
    warmed(tmp_path / "m" / "1", 1.0, {"x": [1.0]})
    opened = open_client({"model_path": "m"})
    builders["failing"](tmp_path / "m" / "2")  # fails for negative values
    warmup_requests(tmp_path / "m" / "2", record)
    opened.repository.settle = 0
    opened.repository.refresh()
    assert predict(opened.client) == {"y": [1.0], "calls": [2]}  # the old version serves on
    assert f"{FAILED}{problem}" in caplog.text
    metadata = opened.client.metadata()["_cortex_default"]
    assert metadata["versions"] == ["1"] and metadata["errors"]["2"].startswith(f"{FAILED}{problem}")


def test_a_record_runs_the_signature_it_names_and_a_file_that_is_not_tfrecord_fails(open_client, saved_models,
                                                                                      copy_model, warmup_requests,
                                                                                      tmp_path):
    model = copy_model(saved_models["ambiguous"], tmp_path / "m" / "1")  # signatures "a" and "b"
    served = {"model_path": "m", "signature_key": "b"}
    warmup_requests(model, {"x": [1.0]}, signature="nope")
    with pytest.raises(ModelError, match=f"failed to load: WarmupError: warm-up record 1 of {WARMUP_FILE} failed: "
                                         "signature_key 'nope' is not a signature of the model; its keys are: 'a', "
                                         "'b'"):
        open_client(served)
    warmup_requests(model, {"x": [1.0]}, signature="a")
    assert open_client(served).client.predict({"x": [1.0]}) == {"y": [2.0]}
    (model / WARMUP_FILE).write_bytes(b"not a TFRecord file")
    with pytest.raises(ModelError, match=f"WarmupError: {WARMUP_FILE} is not a readable TFRecord file: "
                                         "DataLossError: "):
        open_client(served)
