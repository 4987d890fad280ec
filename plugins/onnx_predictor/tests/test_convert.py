"""Cortex's input conversion, case by case: one input or several, dict/list/numpy, element types and shapes."""
from __future__ import annotations

import numpy as np
import pytest
from engine_onnx_predictor.convert import ONNX_TO_NUMPY, InputSpec, to_array, to_feed

from engine import ModelError

MODEL = "model 'm' of version latest (m.onnx)"
IRIS = InputSpec("input", "tensor(float)", (None, 4))


def feed(model_input, *specs: InputSpec) -> dict:
    return to_feed(model_input, list(specs), MODEL)


def error_of(model_input, *specs: InputSpec) -> ModelError:
    with pytest.raises(ModelError) as caught:
        feed(model_input, *specs)
    assert caught.value.status_code == 400
    return caught.value


# --- which value is which input ----------------------------------------------------------------------


def test_one_input_takes_the_whole_model_input_and_a_flat_list_becomes_one_row():
    result = feed([5.2, 3.6, 1.4, 0.3], IRIS)
    assert list(result) == ["input"]
    assert result["input"].dtype == np.float32 and result["input"].shape == (1, 4)
    np.testing.assert_allclose(result["input"], [[5.2, 3.6, 1.4, 0.3]], rtol=1e-6)


def test_one_input_given_as_a_dict_holding_its_name():
    result = feed({"input": [1, 2, 3, 4], "ignored": "extra keys are ignored"}, IRIS)
    assert result["input"].tolist() == [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize("model_input", [{"other": [1, 2, 3, 4]}, {"input": None}])
def test_one_input_dict_without_its_name_is_a_missing_key(model_input):
    message = str(error_of(model_input, IRIS))
    assert "missing key 'input'" in message and MODEL in message
    assert str(sorted(model_input)) in message


A = InputSpec("a", "tensor(float)", ("n", 2))
B = InputSpec("b", "tensor(int64)", ("n",))


def test_several_inputs_take_a_dict_with_every_name_each_converted_to_its_own_type():
    result = feed({"a": [[1, 2], [3, 4]], "b": [7, 8], "c": "ignored"}, A, B)
    assert set(result) == {"a", "b"}
    assert result["a"].dtype == np.float32 and result["a"].shape == (2, 2)
    assert result["b"].dtype == np.int64 and result["b"].tolist() == [7, 8]


def test_several_inputs_need_a_dict_and_the_error_lists_the_expected_keys():
    message = str(error_of([[1, 2]], A, B))
    assert "expected model_input to be a dictionary with keys ['a', 'b']" in message
    assert "received a list of shape [1, 2]" in message


def test_several_inputs_report_every_missing_key():
    message = str(error_of({"a": [[1, 2]], "b": None}, A, B))
    assert "missing key 'b'" in message and "['a', 'b']" in message
    message = str(error_of({}, A, B))
    assert "missing key 'a', 'b'" in message


def test_a_model_without_inputs_gets_an_empty_feed():
    assert feed("anything") == {}


# --- shapes -------------------------------------------------------------------------------------------


def test_target_shape_symbolic_dims_are_free_unknown_dims_are_one():
    assert InputSpec("x", "tensor(float)", ("batch", None, 3)).target_shape == [-1, 1, 3]


def test_one_symbolic_dim_takes_any_size():
    spec = InputSpec("x", "tensor(float)", ("batch", 3))
    assert feed([[1, 2, 3], [4, 5, 6]], spec)["x"].shape == (2, 3)
    assert feed([1, 2, 3, 4, 5, 6], spec)["x"].shape == (2, 3)  # reshaped: one free size left


def test_fixed_shape_is_reshaped():
    assert feed([1, 2, 3, 4], InputSpec("x", "tensor(int32)", (2, 2)))["x"].tolist() == [[1, 2], [3, 4]]


def test_unknown_dims_count_as_one_so_a_batch_does_not_fit_and_the_error_says_why():
    # Cortex #1186 / #414: [None, None] becomes [1, 1]; the message explains it and how to export the model.
    message = str(error_of([[1, 2, 3], [4, 5, 6]], InputSpec("x", "tensor(float)", (None, None))))
    assert "input 'x'" in message and MODEL in message
    assert "cannot reshape array of size 6 into shape (1,1)" in message
    assert "tensor(float) (numpy float32) of shape [None, None], reshaped to [1, 1]" in message
    assert "unknown dimensions count as 1" in message
    assert "received a list of shape [2, 3] holding int64 values" in message  # what the predictor passed


def test_a_batch_into_the_iris_input_is_rejected_as_cortex_did():
    message = str(error_of([[5.2, 3.6, 1.4, 0.3], [6.9, 3.1, 5.4, 2.1]], IRIS))
    assert "cannot reshape array of size 8 into shape (1,4)" in message


def test_two_symbolic_dims_are_not_reshaped_but_rank_and_fixed_sizes_are_checked():
    spec = InputSpec("tokens", "tensor(int64)", ("batch", "sequence"))
    assert feed([[1, 2, 3], [4, 5, 6]], spec)["tokens"].shape == (2, 3)
    message = str(error_of([1, 2, 3], spec))
    assert "its shape [3] does not fit the model's [batch, sequence]" in message
    spec = InputSpec("x", "tensor(float)", ("batch", "sequence", 3))
    assert feed(np.zeros((2, 5, 3)), spec)["x"].shape == (2, 5, 3)
    assert "its shape [2, 5, 4] does not fit" in str(error_of(np.zeros((2, 5, 4)), spec))


def test_undeclared_or_scalar_shape_is_left_as_given():
    spec = InputSpec("x", "tensor(float)", ())
    assert feed(3, spec)["x"].shape == ()
    assert feed([[1, 2], [3, 4]], spec)["x"].shape == (2, 2)


# --- element types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("onnx_type, dtype", sorted(ONNX_TO_NUMPY.items()))
def test_every_element_type_of_the_map(onnx_type, dtype):
    spec = InputSpec("x", onnx_type, ("n",))
    value = ["a", "b"] if dtype is np.object_ else [True, False] if dtype is np.bool_ else [1, 2]
    array = feed(value, spec)["x"]
    assert array.dtype == np.dtype(dtype)
    assert array.tolist() == value


def test_numpy_arrays_are_cast_between_numeric_types():
    assert feed(np.array([[1.5, 2, 3, 4]], dtype=np.float64), IRIS)["input"].dtype == np.float32
    assert feed(np.arange(4), IRIS)["input"].dtype == np.float32
    cast = feed(np.array([1.9, 2.0]), InputSpec("x", "tensor(int64)", ("n",)))["x"]
    assert cast.dtype == np.int64 and cast.tolist() == [1, 2]  # astype, as Cortex did


def test_numpy_array_of_the_right_type_is_passed_through_unchanged():
    array = np.zeros((3, 4), dtype=np.float32)
    assert to_array(array, InputSpec("x", "tensor(float)", ("n", 4)), MODEL) is array


@pytest.mark.parametrize("array, onnx_type, found", [
    (np.array([True, False]), "tensor(float)", "bool"),
    (np.array([1.0, 0.0]), "tensor(bool)", "float64"),
    (np.array(["1.0", "2.0"]), "tensor(float)", "<U3"),
    (np.array([1.0, 2.0]), "tensor(string)", "float64"),
])
def test_numpy_arrays_are_not_cast_between_numeric_and_non_numeric_types(array, onnx_type, found):
    message = str(error_of(array, InputSpec("x", onnx_type, ("n",))))
    assert f"expected dtype '{np.dtype(ONNX_TO_NUMPY[onnx_type]).name}' but found '{found}'" in message
    assert f"received a numpy array of dtype {array.dtype} and shape [2]" in message


def test_numpy_text_arrays_feed_string_inputs():
    spec = InputSpec("words", "tensor(string)", ("n",))
    for array in (np.array(["ab", "c"]), np.array([b"ab", b"c"]), np.array(["ab", "c"], dtype=object)):
        converted = feed(array, spec)["words"]
        assert converted.dtype == object and converted.tolist() == ["ab", "c"]


@pytest.mark.parametrize("value, onnx_type, reason, received", [
    (["a", "b", "c", "d"], "tensor(float)", "could not convert string to float: 'a'",
     "a list of shape [4] holding str"),
    ([[1, 2], [3]], "tensor(float)", "inhomogeneous", "a list of nested sequences of different lengths"),
    ([300], "tensor(int8)", "out of bounds for int8", "a list of shape [1] holding int64"),
    ({"nested": 1}, "tensor(float)", "", "a dict with keys ['nested']"),
])
def test_python_values_that_do_not_convert_name_model_input_types_and_shapes(value, onnx_type, reason, received):
    spec = InputSpec("x", onnx_type, ("n",))
    model_input = {"x": value} if isinstance(value, dict) else value
    message = str(error_of(model_input, spec))
    assert f"failed to convert input 'x' for {MODEL}" in message
    assert reason in message and received in message
    assert f"Expected {onnx_type}" in message and "of shape [n]" in message


def test_types_numpy_cannot_hold_are_passed_as_given():
    value = [np.zeros(2, np.float32)]
    assert feed(value, InputSpec("x", "seq(tensor(float))", ()))["x"] is value
