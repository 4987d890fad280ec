"""The fast JSON codec gives exactly the standard library's results."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine import jsoncodec

BODIES = [
    b'{"key": "value", "n": [1, 2.5, -0.0, 1e-7, 1e300, null, true, false]}',
    b'[12345678901234567890123, -98765432109876543210, 9223372036854775807, 18446744073709551616]',
    b'[NaN, Infinity, -Infinity]',
    b'{"a": 1e400, "b": "\\u00e9\\ud83d\\ude00"}',
    b'"\\ud800"',
    b'{"a": 1, "a": 2}',
    '{"ünï": "cödé"}'.encode(),
    b'{"x": [0.07692307692307693, 0.15384615384615385, 12345678901234567.5]}',
    b"  [1]  ",
]


@pytest.mark.parametrize("body", BODIES)
def test_loads_equals_the_standard_library(body):
    expected, found = json.loads(body), jsoncodec.loads(body)
    assert json.dumps(found, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert type(found) is type(expected)


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff"])
def test_loads_errors_are_the_standard_librarys(body):
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(ValueError) as found:
        jsoncodec.loads(body)
    assert str(found.value) == str(expected.value)


VALUES = [
    {"a": 1, "b": [1, 2.5, None, True], "c": "é😀"},
    [2**70, -(2**64), 2**63 - 1],
    [float("nan"), float("inf"), -float("inf")],
    {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
    ("tuple", 1),
    {"f32": np.float32(0.1), "f16": np.float16(0.5), "i64": np.int64(7), "bool": np.bool_(True)},
    {"array": np.arange(6, dtype=np.float32).reshape(2, 3) / 3, "ints": np.array([1, 2], dtype=np.uint8)},
    np.array([[1.5, np.nan]]),
    [[], {}, "", 0, -0.0, 1e-7, 1e16, 0.1],
]


def standard(value):
    return json.dumps(value, default=lambda v: v.tolist())


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_dumps_equals_the_standard_library(value):
    encoded = jsoncodec.dumps(value)
    found, expected = json.loads(encoded), json.loads(standard(value))
    assert repr(found) == repr(expected)  # repr tells NaN and -0.0 apart, and float32 expansions too


def test_nan_is_written_as_the_standard_library_writes_it():
    assert jsoncodec.dumps([math.nan, None]) == b"[NaN,null]"


def test_unserialisable_values_get_cortexs_advice():
    with pytest.raises(TypeError, match="please return an object that is JSON serializable"):
        jsoncodec.dumps({"x": object()})
    with pytest.raises(TypeError, match="JSON serializable"):
        jsoncodec.dumps({"x": np.datetime64("2020-01-01")})
