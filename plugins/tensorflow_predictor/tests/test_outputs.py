"""Outputs as Cortex's TensorFlow Serving client returned them (flat lists, int64 strings, base64), or raw numpy."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from engine_tensorflow_predictor.outputs import cortex_outputs, cortex_values

from engine import ModelError

BIG_OUTPUT_ELEMENTS = 2_600_000  # float32: 10.4 MB, well over gRPC's 4 MiB default that broke Cortex (#1740)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_floats_are_numbers(dtype):
    assert cortex_values("o", np.array([[1.5, -2.0]], dtype=dtype)) == [1.5, -2.0]


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "uint8", "uint16", "uint32"])
def test_integers_up_to_32_bits_are_numbers(dtype):
    values = cortex_values("o", np.array([[1], [2]], dtype=dtype))
    assert values == [1, 2] and all(type(value) is int for value in values)


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_64_bit_integers_are_strings(dtype):
    assert cortex_values("o", np.array([[2], [9007199254740993]], dtype=dtype)) == ["2", "9007199254740993"]


def test_negative_int64_strings():
    assert cortex_values("o", np.array([-5], dtype=np.int64)) == ["-5"]


def test_bools_are_booleans():
    assert cortex_values("o", np.array([True, False])) == [True, False]


def test_strings_are_base64():
    values = cortex_values("o", np.array([[b"setosa"], [b"\x00\xff"]], dtype=object))
    assert values == ["c2V0b3Nh", "AP8="]
    assert base64.b64decode(values[0]) == b"setosa"


def test_complex_values_interleave_real_and_imaginary_parts():
    assert cortex_values("o", np.array([1 + 2j, 3 - 4j], dtype=np.complex64)) == [1.0, 2.0, 3.0, -4.0]
    assert cortex_values("o", np.array([0.5j], dtype=np.complex128)) == [0.0, 0.5]


def test_non_finite_floats_are_written_as_protobuf_json_does():
    assert cortex_values("o", np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)) == \
        ["NaN", "Infinity", "-Infinity", 1.0]


def test_a_dtype_without_json_form_says_to_use_raw():
    with pytest.raises(ModelError, match=r"output 'o' has dtype datetime64\[s\], which has no JSON form; call "
                                         r"tensorflow_client.predict\(..., raw=True\)"):
        cortex_values("o", np.array(["2020-01-01"], dtype="datetime64[s]"))


def test_every_output_is_converted():
    assert cortex_outputs({"a": np.zeros((2, 2), np.float32), "b": np.array([1], np.int64)}) == \
        {"a": [0.0, 0.0, 0.0, 0.0], "b": ["1"]}


# --- from a SavedModel -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_of(saved_models, tmp_path_factory, copy_model, opener):
    """client_of(name): a client over one of the session's SavedModels."""
    opened = []

    def build(name):
        root = tmp_path_factory.mktemp(name)
        copy_model(saved_models[name], root / "m")
        opened.append(opener({"model_path": "m"}, root))
        return opened[-1].client

    yield build
    for item in opened:
        item.repository.stop()


def test_every_tensorflow_dtype_as_cortex_returned_it(client_of):
    outputs = client_of("dtypes").predict({"x": [1.5, -2.0]})
    for name in ("float16", "bfloat16", "float32", "float64"):
        assert outputs[name] == [1.5, 1.5, -2.0, -2.0], name
    for name in ("int8", "int16", "int32"):
        assert outputs[name] == [1, 1, -2, -2], name
    for name in ("uint8", "uint16", "uint32"):
        assert outputs[name] == [1, 1, 2, 2], name
    assert outputs["int64"] == ["1", "1", "-2", "-2"]
    assert outputs["uint64"] == ["1", "1", "2", "2"]
    assert outputs["bool"] == [True, False]
    assert [base64.b64decode(value) for value in outputs["string"]] == [b"1.5", b"-2.0"]
    assert outputs["complex64"] == [1.5, -1.5, -2.0, 2.0]
    assert outputs["complex128"] == [1.5, 3.0, -2.0, -4.0]
    assert outputs["non_finite"] == ["Infinity", "-Infinity", "NaN", "-Infinity", "Infinity", "NaN"]
    json.dumps(outputs, allow_nan=False)  # plain JSON, no NaN tokens


def test_raw_outputs_are_numpy_arrays_with_shapes_and_dtypes(client_of):
    outputs = client_of("dtypes").predict({"x": [1.5, -2.0]}, raw=True)
    assert outputs["int64"].dtype == np.int64 and outputs["int64"].shape == (2, 2)
    assert outputs["string"].tolist() == [b"1.5", b"-2.0"]
    assert outputs["complex64"].dtype == np.complex64
    assert outputs["bool"].tolist() == [True, False]


def test_the_iris_model_answers_like_cortexs(client_of):
    prediction = client_of("iris").predict({"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4,
                                            "petal_width": 0.3})
    assert prediction["class_ids"] == ["0"]
    assert int(prediction["class_ids"][0]) == 0
    assert base64.b64decode(prediction["classes"][0]) == b"setosa"
    assert len(prediction["probabilities"]) == 3 and abs(sum(prediction["probabilities"]) - 1) < 1e-5
    assert prediction["all_class_ids"] == [0, 1, 2]


def test_outputs_over_8_mb_are_returned_whole(client_of):
    client = client_of("big")
    raw = client.predict({"n": BIG_OUTPUT_ELEMENTS}, raw=True)
    assert raw["zeros"].nbytes > 8_000_000 and raw["zeros"].shape == (BIG_OUTPUT_ELEMENTS,)
    values = client.predict({"n": BIG_OUTPUT_ELEMENTS})
    assert len(values["zeros"]) == BIG_OUTPUT_ELEMENTS and values["zeros"][-1] == 0.5
    assert values["first"] == ["7"]


def test_an_inference_failure_is_a_500_naming_the_model(client_of):
    client = client_of("failing")
    assert client.predict({"x": [4.0]}) == {"y": [2.0]}
    with pytest.raises(ModelError) as error:
        client.predict({"x": [-1.0]})
    assert error.value.status_code == 500
    assert str(error.value).startswith("inference failed for model '_cortex_default' of version 'latest' "
                                       "(signature 'serving_default'): InvalidArgumentError")
    assert "x must not be negative" in str(error.value)
