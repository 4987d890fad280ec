"""model_input checks and conversion: names, dtypes, a batch of one, shape errors — and their messages."""
from __future__ import annotations

import numpy as np
import pytest
from engine_tensorflow_predictor.inputs import TensorSpec, convert_inputs

from engine import ModelError

F32 = TensorSpec("x", "float32", "float", (None,), np.float32)
PAIR = TensorSpec("p", "float32", "float", (None, 2), np.float32)
I32 = TensorSpec("i", "int32", "int", (None,), np.int32, (-(2**31), 2**31 - 1))
U8 = TensorSpec("u", "uint8", "int", (None,), np.uint8, (0, 255))
BOOL = TensorSpec("b", "bool", "bool", (None,), np.bool_)
TEXT = TensorSpec("s", "string", "string", (None,), np.object_)
FIXED = TensorSpec("m", "float64", "float", (2, 3), np.float64)
SCALAR = TensorSpec("n", "int64", "int", (), np.int64, (-(2**63), 2**63 - 1))
ANY_RANK = TensorSpec("a", "float32", "float", None, np.float32)
WHERE = "model 'm' of version 'latest'"


def convert(spec: TensorSpec, value):
    return convert_inputs({spec.name: value}, {spec.name: spec}, WHERE)[spec.name]


def rejected(spec: TensorSpec, value) -> str:
    with pytest.raises(ModelError) as error:
        convert(spec, value)
    assert error.value.status_code == 400
    return str(error.value)


# --- names ------------------------------------------------------------------------------------------------------


def test_a_missing_key_is_named_with_the_model_and_the_inputs():
    specs = {"x": F32, "p": PAIR}
    with pytest.raises(ModelError) as error:
        convert_inputs({"x": [1.0]}, specs, WHERE)
    assert error.value.status_code == 400
    assert str(error.value) == ("missing key 'p' for model 'm' of version 'latest'; the signature's inputs are: "
                                "'p', 'x'")


def test_an_unexpected_key_is_named():
    with pytest.raises(ModelError, match=r"unexpected key 'y' for model 'm' of version 'latest'; the signature's "
                                         r"inputs are: 'x'"):
        convert_inputs({"x": 1.0, "y": 2.0}, {"x": F32}, WHERE)


def test_model_input_must_be_a_dict():
    with pytest.raises(ModelError, match=r"model_input for model 'm' of version 'latest' must be a dict keyed by the "
                                         r"signature's input names \('x'\), not list"):
        convert_inputs([1.0], {"x": F32}, WHERE)


# --- dtypes ------------------------------------------------------------------------------------------------------


def test_numbers_are_converted_to_the_input_dtype():
    array = convert(F32, [1, 2.5])
    assert array.dtype == np.float32 and array.tolist() == [1.0, 2.5]
    assert convert(I32, [3.0, -4]).dtype == np.int32
    assert convert(U8, [0, 255]).tolist() == [0, 255]
    assert convert(BOOL, [True, False]).tolist() == [True, False]
    assert convert(F32, np.array([1, 2], dtype=np.int64)).dtype == np.float32


def test_strings_and_bytes_are_accepted_for_string_inputs():
    array = convert(TEXT, ["héllo", b"\x00raw"])
    assert array.dtype == object and array.tolist() == ["héllo", b"\x00raw"]


def test_fractions_are_rejected_for_integer_inputs():
    assert rejected(I32, [1.5]) == ("input 'i' for model 'm' of version 'latest' expects int32 values (integers); "
                                    "received numbers with a fractional part")


def test_integers_out_of_range_are_rejected():
    assert "expects uint8 values, from 0 to 255; received -1 to 300" in rejected(U8, [-1, 300])


def test_strings_are_rejected_for_numeric_inputs():
    assert rejected(F32, ["1.5"]).endswith("expects float32 values; received strings")


def test_null_is_rejected():
    assert rejected(F32, None).endswith("expects float32 values; received null")


def test_numbers_are_rejected_for_string_and_bool_inputs():
    assert rejected(TEXT, [1]).endswith("expects string values (strings or bytes); received int")
    assert rejected(BOOL, [1]).endswith("expects bool values (true or false); received numbers")
    assert rejected(F32, [True]).endswith("expects float32 values; received true/false")


def test_ragged_lists_are_rejected():
    assert "expects float32 values" in rejected(PAIR, [[1, 2], [3]])


# --- shapes ------------------------------------------------------------------------------------------------------


def test_a_scalar_becomes_a_batch_of_one():
    assert convert(F32, 5.2).shape == (1,)


def test_a_list_lacking_only_the_batch_dimension_becomes_a_batch_of_one():
    assert convert(PAIR, [1, 2]).tolist() == [[1.0, 2.0]]
    assert convert(PAIR, [[1, 2], [3, 4], [5, 6]]).shape == (3, 2)


def test_fixed_and_scalar_shapes_are_kept():
    assert convert(FIXED, [[1, 2, 3], [4, 5, 6]]).shape == (2, 3)
    assert convert(SCALAR, 7).shape == ()
    assert convert(ANY_RANK, [[[1.0]]]).shape == (1, 1, 1)


def test_a_shape_that_does_not_fit_names_expected_and_received():
    assert rejected(PAIR, [1, 2, 3]) == ("input 'p' for model 'm' of version 'latest': expected shape [-1, 2] "
                                         "(-1: any size), received shape [3]")
    assert "expected shape [2, 3] (-1: any size), received shape [3, 2]" in rejected(FIXED, np.ones((3, 2)))
    assert "expected shape [] (-1: any size), received shape [2]" in rejected(SCALAR, [1, 2])
    assert "received shape [1, 1, 2]" in rejected(PAIR, [[[1, 2]]])


# --- through a SavedModel ------------------------------------------------------------------------------------------

TYPED = {"f": [0.5, 1], "i": 3, "s": "text", "b": [True], "u8": [200], "fixed": [[1, 2, 3], [4, 5, 6]],
         "scalar": 9, "h": 0.25}


@pytest.fixture(scope="module")
def typed_client(saved_models, tmp_path_factory, copy_model, opener):
    root = tmp_path_factory.mktemp("typed")
    copy_model(saved_models["typed_inputs"], root / "m")
    opened = opener({"model_path": "m"}, root)
    yield opened.client
    opened.repository.stop()


def test_a_saved_model_receives_converted_inputs(typed_client):
    outputs = typed_client.predict(TYPED, raw=True)
    assert outputs["f"].dtype == np.float32 and outputs["f"].tolist() == [[0.5, 1.0]]
    assert outputs["i"].dtype == np.int32 and outputs["i"].tolist() == [3]
    assert outputs["s"].tolist() == [b"text"]
    assert outputs["b"].tolist() == [True]
    assert outputs["u8"].dtype == np.uint8 and outputs["u8"].tolist() == [200]
    assert outputs["fixed"].shape == (2, 3)
    assert outputs["scalar"].shape == () and outputs["scalar"] == 9
    assert outputs["h"].dtype == np.float16 and outputs["h"].tolist() == [0.25]


def test_a_saved_model_input_error_is_a_400_naming_the_signature(typed_client):
    with pytest.raises(ModelError) as error:
        typed_client.predict({**TYPED, "f": [1, 2, 3]})
    assert error.value.status_code == 400
    assert str(error.value) == ("input 'f' for model '_cortex_default' of version 'latest' (signature "
                                "'serving_default'): expected shape [-1, 2] (-1: any size), received shape [3]")
    with pytest.raises(ModelError, match="missing key 'scalar' for model '_cortex_default'"):
        typed_client.predict({key: value for key, value in TYPED.items() if key != "scalar"})
