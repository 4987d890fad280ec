"""SavedModels through the model repository: layouts, versions, live reload, caching, several models, describe()."""
from __future__ import annotations

import gc
import shutil
import time
import weakref

import numpy as np
import pytest
from engine_tensorflow_predictor.model import SavedModel, TensorFlowModelFormat
from engine_tensorflow_predictor.signatures import SignatureKeys

from engine import Device, ModelError

# --- layout ------------------------------------------------------------------------------------------------------

GOOD = ["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"]


@pytest.fixture(scope="module")
def fmt(tf):
    return TensorFlowModelFormat(SignatureKeys(None, {}), Device(kind="cpu", threads=1))


def test_cortex_layout_is_valid_with_extra_files(fmt):
    assert fmt.validate(GOOD) is None
    assert fmt.validate(GOOD + ["fingerprint.pb", "assets/vocab.txt", "variables/variables.data-00001-of-00002"]) \
        is None


@pytest.mark.parametrize("missing, problem", [
    ("saved_model.pb", "saved_model.pb is missing"),
    ("variables/variables.index", "variables/variables.index is missing"),
    ("variables/variables.data-00000-of-00001", "variables/variables.data-00000-of-* is missing"),
])
def test_each_missing_file_is_named(fmt, missing, problem):
    assert fmt.validate([name for name in GOOD if name != missing]) == problem


def test_an_empty_directory_names_everything(fmt):
    assert fmt.validate([]) == ("saved_model.pb and variables/variables.index and variables/variables.data-00000-of-* "
                                "are missing")


def test_on_inferentia_only_saved_model_pb_is_required(tf):
    neuron = TensorFlowModelFormat(SignatureKeys(None, {}), Device(kind="inferentia", threads=1))
    assert neuron.validate(["saved_model.pb"]) is None
    assert neuron.validate(["variables/variables.index"]) == "saved_model.pb is missing"
    assert "no variables/" in neuron.expected_tree


def test_a_bad_layout_stops_the_start_with_expected_and_found_trees(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["scaled"], tmp_path / "m" / "1")
    shutil.rmtree(tmp_path / "m" / "1" / "variables")
    with pytest.raises(ModelError) as error:
        open_client({"model_path": "m"})
    message = str(error.value)
    assert "model '_cortex_default' version 1" in message
    assert "variables/variables.index and variables/variables.data-00000-of-* are missing" in message
    assert "expected (in the model directory" in message and "variables.data-00000-of-00001" in message
    assert "found:\n    " in message and "saved_model.pb" in message


def test_a_corrupt_saved_model_fails_to_load_with_the_reason(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["scaled"], tmp_path / "m")
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="model '_cortex_default': no version could be loaded: model "
                                         "_cortex_default of version 1 failed to load"):
        open_client({"model_path": "m"})


# --- versions, live reload, caching, several models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def versions_root(builders, tmp_path_factory):
    """A model directory with versions 1 (y = 1x) and 2 (y = 2x), and a spare version 3 (y = 3x) to drop in."""
    root = tmp_path_factory.mktemp("versions")
    for version in (1, 2, 3):
        builders["scaled"](root / ("spare" if version == 3 else "models") / str(version), float(version))
    return root


def test_latest_is_the_highest_version_and_each_version_answers(open_client, versions_root, tmp_path):
    shutil.copytree(versions_root / "models", tmp_path / "m")
    client = open_client({"model_path": "m"}).client
    assert client.predict({"x": [1.0]}) == {"y": [2.0]}
    assert client.predict({"x": [1.0]}, model_version="1") == {"y": [1.0]}
    assert client.predict({"x": [1.0]}, model_version=2) == {"y": [2.0]}
    with pytest.raises(ModelError) as error:
        client.predict({"x": [1.0]}, model_version="3")
    assert error.value.status_code == 404
    assert "model _cortex_default of version 3 wasn't found" in str(error.value)
    metadata = client.metadata()["_cortex_default"]
    assert metadata["versions"] == ["2", "1"] and metadata["loaded"] == ["2", "1"]


def test_a_new_version_is_served_after_a_refresh_and_a_removed_one_is_gone(open_client, versions_root, tmp_path):
    shutil.copytree(versions_root / "models", tmp_path / "m")
    opened = open_client({"model_path": "m"})
    shutil.copytree(versions_root / "spare" / "3", tmp_path / "m" / "3")
    opened.repository.settle = 0
    opened.repository.refresh()
    assert opened.client.predict({"x": [1.0]}) == {"y": [3.0]}
    shutil.rmtree(tmp_path / "m" / "3")
    opened.repository.refresh()
    assert opened.client.predict({"x": [1.0]}) == {"y": [2.0]}


def test_caching_loads_on_demand_and_evicts_least_recently_used(open_client, versions_root, tmp_path):
    for name in ("one", "two"):
        shutil.copytree(versions_root / "models", tmp_path / "dir" / name)
    opened = open_client({"models": {"dir": "dir", "cache_size": 1, "disk_cache_size": 2}})
    assert opened.repository.memory_usage()[0] == 0
    assert opened.client.predict({"x": [1.0]}, "one", "1") == {"y": [1.0]}
    assert opened.client.predict({"x": [1.0]}, "two") == {"y": [2.0]}
    assert opened.repository.memory_usage()[0] == 1
    assert opened.client.metadata()["one"]["loaded"] == []
    assert opened.client.predict({"x": [1.0]}, "one") == {"y": [2.0]}


def test_unload_frees_the_model_and_its_memory_soon(fmt, saved_models):
    model = fmt.load(saved_models["scaled"])
    assert isinstance(model, SavedModel) and model.signatures
    # the signature's graph captures the variables' buffers and sits in reference cycles: refcounting never frees it
    graph = weakref.ref(model.signature(None).function.graph)
    gc.disable()  # no automatic collection during the test: only unload's own may free it
    try:
        fmt.unload(model)
        del model  # as the repository does right after unload
        deadline = time.monotonic() + 5
        while graph() is not None:
            assert time.monotonic() < deadline, "the SavedModel's graphs were not freed"
            time.sleep(0.02)
    finally:
        gc.enable()


def test_a_request_still_running_on_an_unloaded_model_finishes(fmt, saved_models):
    model = fmt.load(saved_models["scaled"])
    fmt.unload(model)
    time.sleep(0.2)  # the collection has run
    assert model.signature(None).run({"x": np.array([1.0], np.float32)})["y"].tolist() == [2.0]


def test_several_models_need_a_known_model_name(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["scaled"], tmp_path / "a")
    copy_model(saved_models["iris"], tmp_path / "b")
    client = open_client({"models": {"paths": [{"name": "scaled", "model_path": "a"},
                                               {"name": "iris", "path": "b"}]}}).client
    assert client.predict({"x": [2.0]}, "scaled") == {"y": [4.0]}
    with pytest.raises(ModelError, match=r"model_name was not specified, choose one of the following: "
                                         r"\['iris', 'scaled'\]"):
        client.predict({"x": [2.0]})
    with pytest.raises(ModelError, match="'nope' model wasn't found"):
        client.predict({"x": [2.0]}, "nope")


def test_describe_shows_the_serving_signature_and_its_inputs(fmt, saved_models):
    described = fmt.describe(fmt.load(saved_models["iris"]))
    assert described["signature_key"] == "predict"
    assert described["input_signatures"] == {name: {"shape": [-1], "type": "float32"} for name in
                                             ("petal_length", "petal_width", "sepal_length", "sepal_width")}
    assert sorted(described["signatures"]) == ["predict", "serving_default"]
    outputs = described["signatures"]["predict"]["outputs"]
    assert outputs["class_ids"] == {"shape": [-1, 1], "type": "int64"}
    assert outputs["classes"] == {"shape": [-1, 1], "type": "string"}
    assert outputs["probabilities"] == {"shape": [-1, 3], "type": "float32"}


def test_metadata_of_the_client_is_the_get_summary(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["typed_inputs"], tmp_path / "m")
    metadata = open_client({"model_path": "m"}).client.metadata()["_cortex_default"]
    assert metadata["versions"] == ["1"]
    details = metadata["details"]["1"]
    assert details["signature_key"] == "serving_default"
    assert details["input_signatures"]["fixed"] == {"shape": [2, 3], "type": "float64"}
    assert details["input_signatures"]["scalar"] == {"shape": [], "type": "int64"}
    assert details["input_signatures"]["s"] == {"shape": [-1], "type": "string"}
