"""onnx_client over real InferenceSessions: predict, get_model, model paths, versions, live reload, caching, errors."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from engine_onnx_predictor.convert import ONNX_TO_NUMPY
from engine_onnx_predictor.model_format import EXPECTED_TREE, OnnxModel, OnnxModelFormat
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from engine import ModelError


def settled(path: Path) -> None:
    """Backdate every file so that the repository does not wait for them to settle."""
    past = time.time() - 60
    for file in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(file, (past, past))


def answer(client, model_name=None, model_version="latest") -> float:
    return float(client.predict([1.0], model_name, model_version)[0][0])


# --- predict and get_model ------------------------------------------------------------------------------


def test_predict_returns_the_list_of_all_outputs(tmp_path, models, repository):
    models.two_outputs(tmp_path / "model" / "m.onnx")
    _, client = repository({"path": "model"})
    outputs = client.predict([1.0, 2.0])
    assert isinstance(outputs, list) and len(outputs) == 2
    assert outputs[0].tolist() == [1.0, 2.0] and outputs[1].tolist() == [2.0, 4.0]


@pytest.mark.parametrize("type_", sorted(name.removeprefix("tensor(").removesuffix(")") for name in ONNX_TO_NUMPY))
def test_every_element_type_runs_through_a_real_session(tmp_path, models, repository, type_):
    models.identity(tmp_path / "model" / "m.onnx", type_, ["n"])
    _, client = repository({"path": "model"})
    value = ["a", "b"] if type_ == "string" else [True, False] if type_ == "bool" else [1, 2]
    (output,) = client.predict(value)
    assert output.tolist() == value
    assert output.dtype == np.dtype(ONNX_TO_NUMPY[f"tensor({type_})"])


def test_several_inputs_by_name(tmp_path, models, repository):
    models.add(tmp_path / "model" / "add.onnx", "int32", ["n", 2])
    _, client = repository({"path": "model"})
    (total,) = client.predict({"a": [[1, 2]], "b": np.array([[10, 20]], dtype=np.int64)})
    assert total.dtype == np.int32 and total.tolist() == [[11, 22]]
    with pytest.raises(ModelError, match=r"expected model_input to be a dictionary with keys \['a', 'b'\]"):
        client.predict([[1, 2]])


def test_get_model_returns_session_signatures_and_input_signatures(tmp_path, models, repository):
    models.identity(tmp_path / "model" / "m.onnx", "float", [None, 4], name="input")
    _, client = repository({"path": "model"})
    model = client.get_model()
    assert set(model) == {"session", "signatures", "input_signatures"}
    assert isinstance(model["session"], ort.InferenceSession)
    assert [arg.name for arg in model["signatures"]] == ["input"]
    assert model["input_signatures"] == {"input": {"shape": [None, 4], "type": "float32"}}
    (same,) = model["session"].run(None, {"input": np.ones((2, 4), np.float32)})
    assert same.shape == (2, 4)


def test_conversion_errors_are_400_and_name_model_file_and_input(tmp_path, models, repository):
    models.identity(tmp_path / "model" / "iris.onnx", "float", [None, 4], name="input")
    _, client = repository({"path": "model"})
    with pytest.raises(ModelError) as caught:
        client.predict([[1, 2, 3, 4], [5, 6, 7, 8]])
    message = str(caught.value)
    assert caught.value.status_code == 400
    assert "model '_cortex_default' of version latest" in message and "iris.onnx" in message
    assert "input 'input'" in message and "reshaped to [1, 4]" in message and "shape [2, 4]" in message


def test_inference_failures_are_500(tmp_path, models, repository):
    models.reshape_to_3(tmp_path / "model" / "m.onnx")
    _, client = repository({"path": "model"})
    assert client.predict([1, 2, 3])[0].tolist() == [1, 2, 3]
    with pytest.raises(ModelError) as caught:
        client.predict([1, 2, 3, 4])
    assert caught.value.status_code == 500
    assert "failed inference with model '_cortex_default' of version latest" in str(caught.value)
    assert "Reshape" in str(caught.value)


def test_inputs_onnxruntime_rejects_are_400_and_show_what_was_given(tmp_path, models, repository, monkeypatch):
    models.identity(tmp_path / "model" / "m.onnx", "float", ["n"])
    repo, client = repository({"path": "model"})
    real = repo.get()

    class Rejecting:
        def run(self, output_names, feed):
            raise InvalidArgument("Unexpected input data type")

    monkeypatch.setattr(repo, "get", lambda *args: OnnxModel(Rejecting(), real.path, real.inputs))
    with pytest.raises(ModelError) as caught:
        client.predict([1.0, 2.0])
    assert caught.value.status_code == 400
    assert "Unexpected input data type" in str(caught.value)
    assert "inputs given: 'x': a numpy array of dtype float32 and shape [2]" in str(caught.value)


# --- where models are: model_path, models.path (a file), paths, dir ----------------------------------------


def test_single_model_ignores_model_name(tmp_path, models, repository):
    models.constant(tmp_path / "model" / "m.onnx", 7.0)
    _, client = repository({"path": "model"})
    assert answer(client) == answer(client, "whatever") == 7.0


def test_models_path_may_name_a_single_onnx_file(tmp_path, models, repository):
    models.constant(tmp_path / "just-a-file.onnx", 3.0)
    repo, client = repository({"path": "just-a-file.onnx"})
    assert answer(client) == 3.0
    assert repo.metadata()["_cortex_default"]["details"]["1"]["file"] == "just-a-file.onnx"


def test_models_path_naming_a_file_that_is_not_onnx_fails_to_load(tmp_path, repository):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match=r"model\.bin is not an \.onnx file"):
        repository({"path": "model.bin"})


def test_models_paths_select_by_name(tmp_path, models, repository):
    models.constant(tmp_path / "a" / "a.onnx", 1.0)
    models.constant(tmp_path / "b" / "b.onnx", 2.0)
    _, client = repository({"paths": [{"name": "first", "path": "a"}, {"name": "second", "path": "b"}]})
    assert (answer(client, "first"), answer(client, "second")) == (1.0, 2.0)
    with pytest.raises(ModelError, match=r"model_name was not specified, choose one of the following: "
                                         r"\['first', 'second'\]") as caught:
        client.predict([1.0])
    assert caught.value.status_code == 400
    with pytest.raises(ModelError, match="'third' model wasn't found") as caught:
        client.get_model("third")
    assert caught.value.status_code == 404


def test_models_dir_with_versions(tmp_path, models, repository):
    for version, value in ((1, 10.0), (2, 20.0)):
        models.constant(tmp_path / "all" / "alpha" / str(version) / "m.onnx", value)
    models.constant(tmp_path / "all" / "beta" / "m.onnx", 99.0)  # unversioned: version 1
    repo, client = repository({"dir": "all"})
    assert answer(client, "alpha") == 20.0
    assert answer(client, "alpha", "1") == 10.0 and answer(client, "alpha", 2) == 20.0
    assert answer(client, "beta", None) == 99.0
    with pytest.raises(ModelError, match="model alpha of version 3 wasn't found") as caught:
        client.predict([1.0], "alpha", "3")
    assert caught.value.status_code == 404
    with pytest.raises(ModelError, match="model_version must be either a parse-able numeric value or 'latest'"):
        client.predict([1.0], "alpha", "newest")
    assert repo.metadata()["alpha"]["versions"] == ["2", "1"]


# --- live reload and caching ---------------------------------------------------------------------------------


def test_live_reload_new_changed_and_removed_versions(tmp_path, models, repository):
    models.constant(tmp_path / "model" / "1" / "m.onnx", 1.0)
    settled(tmp_path / "model")
    repo, client = repository({"path": "model"})
    assert answer(client) == 1.0

    models.constant(tmp_path / "model" / "2" / "m.onnx", 2.0)
    settled(tmp_path / "model")
    repo.refresh()
    assert answer(client) == 2.0 and answer(client, None, "1") == 1.0

    models.constant(tmp_path / "model" / "2" / "m.onnx", 2.5)  # rewritten in place
    settled(tmp_path / "model")
    repo.refresh()
    assert answer(client) == 2.5

    shutil.rmtree(tmp_path / "model" / "2")
    repo.refresh()
    assert answer(client) == 1.0
    assert repo.metadata()["_cortex_default"]["versions"] == ["1"]


def test_a_broken_new_version_never_replaces_a_working_one(tmp_path, models, repository):
    models.constant(tmp_path / "model" / "1" / "m.onnx", 1.0)
    settled(tmp_path / "model")
    repo, client = repository({"path": "model"})
    (tmp_path / "model" / "2").mkdir()
    (tmp_path / "model" / "2" / "m.onnx").write_bytes(b"not a model")
    settled(tmp_path / "model")
    repo.refresh()
    assert answer(client) == 1.0
    assert "failed to load" in repo.metadata()["_cortex_default"]["errors"]["2"]


def test_lru_cache_keeps_at_most_cache_size_sessions(tmp_path, models, repository):
    for name, value in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        models.constant(tmp_path / "all" / name / "m.onnx", value)
    repo, client = repository({"dir": "all", "cache_size": 1, "disk_cache_size": 2})
    assert repo.memory_usage()[0] == 0  # nothing is loaded before it is asked for
    for name, value in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("a", 1.0)):
        assert answer(client, name) == value
        assert repo.memory_usage()[0] == 1


# --- layouts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files, problem", [
    (["a.onnx", "b.onnx"], "found 2 .onnx files (a.onnx, b.onnx); a version holds exactly one"),
    (["model.onnx", "README.md"], "found files other than the .onnx model: README.md"),
    (["weights.bin"], "found no .onnx file, only weights.bin"),
    (["sub/model.onnx"], "must be directly in the version directory, not in a sub-directory (sub/model.onnx)"),
])
def test_layout_errors_show_the_problem_and_the_expected_tree(tmp_path, models, repository, files, problem):
    for relative in files:
        models.constant(tmp_path / "model" / "3" / relative, 1.0)
    with pytest.raises(ModelError) as caught:
        repository({"path": "model"})
    message = str(caught.value)
    assert "model '_cortex_default' version 3" in message and "onnx predictor" in message
    assert problem in message
    assert EXPECTED_TREE in message
    for relative in files:
        assert relative in message.split("found:")[-1]


def test_validate_accepts_exactly_one_onnx_file_or_a_single_file_model():
    fmt = OnnxModelFormat(["CPUExecutionProvider"], 1)
    assert fmt.validate(["model.onnx"]) is None
    assert fmt.validate(["Any-Name.ONNX"]) is None
    assert fmt.validate([""]) is None  # models.path names the file itself
    assert fmt.validate([]) == "the directory is empty"


# --- GET summary ------------------------------------------------------------------------------------------


def test_metadata_describes_inputs_outputs_providers_and_threads(tmp_path, models, repository):
    models.add(tmp_path / "all" / "adder" / "1" / "add.onnx", "double", ["batch", 3])
    models.two_outputs(tmp_path / "all" / "twins" / "m.onnx", [None])
    _, client = repository({"dir": "all"}, threads=2)
    summary = client.metadata()
    adder = summary["adder"]["details"]["1"]
    assert adder["file"] == "add.onnx"
    assert adder["inputs"] == [{"name": "a", "shape": ["batch", 3], "type": "tensor(double)"},
                               {"name": "b", "shape": ["batch", 3], "type": "tensor(double)"}]
    assert adder["outputs"] == [{"name": "sum", "shape": ["batch", 3], "type": "tensor(double)"}]
    assert adder["providers"] == ["CPUExecutionProvider"] and adder["intra_op_threads"] == 2
    twins = summary["twins"]["details"]["1"]
    assert [output["name"] for output in twins["outputs"]] == ["same", "double"]
    assert twins["inputs"] == [{"name": "x", "shape": [None], "type": "tensor(float)"}]
    assert summary["twins"]["versions"] == ["1"]


def test_threads_share_one_session(tmp_path, models, repository):
    from concurrent.futures import ThreadPoolExecutor

    models.add(tmp_path / "model" / "add.onnx", "int64", ["n"])
    _, client = repository({"path": "model"}, threads=2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.predict({"a": [i, i], "b": [1, 2]})[0].tolist(), range(200)))
    assert results == [[i + 1, i + 2] for i in range(200)]
