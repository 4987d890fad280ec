"""The tensor codec: datatypes, JSON data (flat and nested), raw bytes (BYTES included), and what it refuses."""
from __future__ import annotations

import numpy as np
import pytest
from engine_oip.tensors import (
    DATATYPES,
    check_header,
    datatype_of,
    deserialize_bytes,
    from_json_data,
    from_raw,
    serialize_bytes,
    to_json_data,
    to_raw,
)

from engine import ModelError


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_every_numeric_datatype_round_trips_through_raw_bytes_and_json(datatype):
    array = (np.arange(6) % 2 == 0) if datatype == "BOOL" else np.arange(6).astype(DATATYPES[datatype])
    array = array.reshape(2, 3)
    assert datatype_of(array.dtype) == datatype
    back = from_raw("x", datatype, [2, 3], to_raw(array))
    assert back.dtype == array.dtype and np.array_equal(back, array)
    data = to_json_data("x", array).tolist()
    assert np.array_equal(from_json_data("x", datatype, [2, 3], data), array)


def test_raw_bytes_are_little_endian_and_row_major():
    array = np.array([[1, 2], [3, 4]], dtype=np.int32)
    assert to_raw(array) == b"".join(int(v).to_bytes(4, "little") for v in (1, 2, 3, 4))
    assert to_raw(array.T) == b"".join(int(v).to_bytes(4, "little") for v in (1, 3, 2, 4))


def test_bytes_elements_are_length_prefixed():
    array = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    raw = serialize_bytes(array)
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00\xc3\xa9"
    assert list(deserialize_bytes("s", raw, 3)) == [b"ab", b"", b"\xc3\xa9"]
    assert to_json_data("s", array) == ["ab", "", "\u00e9"]
    assert list(from_json_data("s", "BYTES", [3], ["ab", "", "\u00e9"])) == [b"ab", b"", b"\xc3\xa9"]


def test_nested_json_data_is_read_in_row_major_order():
    assert from_json_data("x", "INT64", [2, 2], [[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert from_json_data("x", "INT64", [2, 2], [1, 2, 3, 4]).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("datatype, shape, data, message", [
    ("FP32", [3], [1.0, 2.0], "shape [3] holds 3 elements, but data has 2"),
    ("FP32", [2], ["a", "b"], "data is not FP32"),
    ("UINT8", [1], [300], "data is not UINT8"),
    ("BOOL", [2], [1, 0], "data is not BOOL"),
    ("INT32", [2, 2], [[1, 2], [3]], "data is not INT32"),
    ("BYTES", [1], [3], "data is not BYTES"),
    ("FP32", [1], {"a": 1}, "data must be a list"),
])
def test_json_data_that_does_not_fit_is_a_400(datatype, shape, data, message):
    with pytest.raises(ModelError) as raised:
        from_json_data("x", datatype, shape, data)
    assert raised.value.status_code == 400 and message in str(raised.value)


@pytest.mark.parametrize("datatype, shape, raw, message", [
    ("FP32", [2], b"\x00" * 7, "takes 8 bytes, but 7 were given"),
    ("BYTES", [2], b"\x01\x00\x00\x00a", "ends before its element 1"),
    ("BYTES", [1], b"\x05\x00\x00\x00a", "ends inside its element 0"),
    ("BYTES", [1], b"\x01\x00\x00\x00ab", "1 bytes are left"),
])
def test_raw_data_that_does_not_fit_is_a_400(datatype, shape, raw, message):
    with pytest.raises(ModelError) as raised:
        from_raw("x", datatype, shape, raw)
    assert raised.value.status_code == 400 and message in str(raised.value)


@pytest.mark.parametrize("datatype, message", [
    ("BF16", "BF16 is not supported"),
    ("FP8", "datatype 'FP8' is not one of the protocol's"),
    (["FP32"], "datatype ['FP32'] is not one of the protocol's"),  # unhashable: still the client's mistake
    (None, "datatype None is not one of the protocol's"),
])
def test_a_datatype_the_server_does_not_take_is_a_400(datatype, message):
    with pytest.raises(ModelError) as raised:
        check_header({"name": "x", "datatype": datatype, "shape": [1]}, "input 0")
    assert raised.value.status_code == 400 and message in str(raised.value)


def test_numpy_names_map_to_the_protocol():
    assert [datatype_of(name) for name in ("float32", "int64", "bool", "object", "float16")] == \
        ["FP32", "INT64", "BOOL", "BYTES", "FP16"]
    assert datatype_of(np.array(["a"]).dtype) == "BYTES"
