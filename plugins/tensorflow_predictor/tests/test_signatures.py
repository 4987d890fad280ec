"""Signature choice as in Cortex: the configured key (per model or shared), the only one, "predict", or an error."""
from __future__ import annotations

import pytest
from engine_tensorflow_predictor.signatures import (
    SignatureError,
    SignatureKeys,
    select_signature,
)

from engine import ModelError, Models


def test_configured_key_wins_when_present():
    assert select_signature(["a", "predict", "serving_default"], "a") == "a"


def test_configured_key_that_the_model_lacks_is_an_error_listing_the_keys():
    with pytest.raises(SignatureError, match=r"signature_key 'x' is not a signature of the model; its keys are: "
                                             r"'a', 'b'"):
        select_signature(["b", "a"], "x")


def test_the_only_signature_is_used_whatever_its_name():
    assert select_signature(["serving_default"], None) == "serving_default"


def test_predict_is_the_fallback_among_several():
    assert select_signature(["serving_default", "predict", "classification"], None) == "predict"


def test_several_signatures_without_predict_is_an_error_listing_them():
    with pytest.raises(SignatureError) as error:
        select_signature(["serving_default", "classification"], None)
    message = str(error.value)
    assert "signature_key was not configured" in message
    assert "'classification', 'serving_default'" in message
    assert "predictor.signature_key" in message


def test_a_model_without_signatures_is_an_error():
    with pytest.raises(SignatureError, match="has no signatures"):
        select_signature([], None)


def test_keys_come_from_the_model_entry_or_the_shared_key():
    models = Models.model_validate({"paths": [{"name": "a", "path": "a", "signature_key": "ka"},
                                              {"name": "b", "path": "b"}], "signature_key": "shared"})
    keys = SignatureKeys.from_models(models)
    assert keys.for_model("a") == "ka"
    assert keys.for_model("b") == "shared"
    assert not keys.uniform
    assert SignatureKeys.from_models(Models(path="m", signature_key="k")).uniform
    assert SignatureKeys.from_models(None).for_model("x") is None


# --- through the client, on real SavedModels -------------------------------------------------------------------


def test_ambiguous_model_fails_to_load_and_says_which_keys_to_choose(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["ambiguous"], tmp_path / "m")
    with pytest.raises(ModelError) as error:
        open_client({"model_path": "m"})
    assert "signature_key was not configured" in str(error.value)
    assert "'a', 'b'" in str(error.value)


def test_predictor_signature_key_selects_the_signature(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["ambiguous"], tmp_path / "m")
    client = open_client({"model_path": "m", "signature_key": "b"}).client
    assert client.predict({"x": [1.5]}) == {"y": [3.0]}


def test_a_configured_key_the_model_lacks_fails_the_load(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["with_predict"], tmp_path / "m")
    with pytest.raises(ModelError, match="signature_key 'nope' is not a signature of the model; its keys are: "
                                         "'other', 'predict'"):
        open_client({"model_path": "m", "signature_key": "nope"})


def test_predict_is_chosen_among_several(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["with_predict"], tmp_path / "m")
    client = open_client({"model_path": "m"}).client
    assert client.predict({"x": [1.0]}) == {"y": [3.0]}


def test_shared_models_signature_key_applies_to_dir_models(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["with_predict"], tmp_path / "dir" / "one")
    copy_model(saved_models["with_predict"], tmp_path / "dir" / "two")
    client = open_client({"models": {"dir": "dir", "signature_key": "other"}}).client
    assert client.predict({"x": [1.0]}, "two") == {"y": [4.0]}


def test_each_model_uses_its_own_signature_key(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["ambiguous"], tmp_path / "amb")
    copy_model(saved_models["with_predict"], tmp_path / "wp")
    client = open_client({"models": {"paths": [
        {"name": "first", "model_path": "amb", "signature_key": "a"},
        {"name": "second", "model_path": "amb", "signature_key": "b"},
        {"name": "third", "model_path": "wp"},
    ]}}).client
    assert client.predict({"x": [2.0]}, "first") == {"y": [2.0]}
    assert client.predict({"x": [2.0]}, "second") == {"y": [4.0]}
    assert client.predict({"x": [2.0]}, "third") == {"y": [6.0]}
    metadata = client.metadata()
    assert [metadata[name]["details"]["1"]["signature_key"] for name in ("first", "second", "third")] == \
        ["a", "b", "predict"]
    assert metadata["first"]["details"]["1"]["input_signatures"] == {"x": {"shape": [-1], "type": "float32"}}


def test_per_model_key_missing_from_its_model_fails_its_requests(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["with_predict"], tmp_path / "wp")
    client = open_client({"models": {"paths": [
        {"name": "good", "model_path": "wp", "signature_key": "other"},
        {"name": "bad", "model_path": "wp", "signature_key": "missing"},
    ]}}).client
    assert client.predict({"x": [1.0]}, "good") == {"y": [4.0]}
    with pytest.raises(ModelError) as error:
        client.predict({"x": [1.0]}, "bad")
    assert error.value.status_code == 500
    assert "model 'bad' of version 'latest': signature_key 'missing' is not a signature" in str(error.value)
    assert "signature_key 'missing'" in client.metadata()["bad"]["details"]["1"]["signature_error"]


def test_tensorflow_1_saved_models_load_and_predict(open_client, saved_models, copy_model, tmp_path):
    copy_model(saved_models["tf1"], tmp_path / "m")
    client = open_client({"model_path": "m"}).client
    assert client.predict({"features": [1.0, 2.0, 3.5]}) == {"total": [65.0]}
