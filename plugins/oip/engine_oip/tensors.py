"""Tensors as the Open Inference Protocol writes them: its datatypes and numpy's, JSON tensors (datatype, shape,
row-major data), and raw little-endian bytes (the binary tensor data extension over REST, raw_*_contents over gRPC).

Every problem with what a client sent is a ModelError with status 400, whose message names the tensor.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from engine import ModelError
from engine_oip.datatypes import DTYPE_NAMES

# The protocol's datatypes and the numpy dtypes that hold them (BYTES: an object array of bytes).
DATATYPES: dict[str, np.dtype] = {datatype: np.dtype(name) for datatype, name in DTYPE_NAMES.items()}
_BY_DTYPE_NAME = {dtype.name: datatype for datatype, dtype in DATATYPES.items()}
_BY_DTYPE_NAME.update({"object": "BYTES", "str": "BYTES", "bytes": "BYTES", "bfloat16": "BF16"})
_LENGTH = struct.Struct("<I")  # a BYTES element's length, before its bytes


def datatype_of(dtype: Any) -> str:
    """The protocol's datatype for a numpy dtype or a dtype name ("float32", "object", np.str_ ...)."""
    if isinstance(dtype, str):
        name = dtype
    else:
        found = np.dtype(dtype)
        name = "object" if found.kind in "OUS" else found.name
    datatype = _BY_DTYPE_NAME.get(name)
    if datatype is None:  # a type the protocol has no name for: say what it is rather than guess
        return name.upper()
    return datatype


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    """How many elements a tensor of that shape holds."""
    return math.prod(shape)


def check_header(tensor: Any, where: str) -> tuple[str, str, list[int]]:
    """A tensor's name, datatype and shape as a JSON request gives them, checked."""
    if not isinstance(tensor, dict):
        raise ModelError(f"{where} must be a JSON object with name, datatype, shape and data", 400)
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{where} needs a name (a string)", 400)
    return name, check_datatype(datatype, name), check_shape(shape, name)


def check_datatype(datatype: object, name: str) -> str:
    """`datatype` if it is one of the protocol's that this server takes, else a 400."""
    if isinstance(datatype, str) and datatype in DATATYPES:
        return datatype
    if datatype == "BF16":
        raise ModelError(f"tensor '{name}': BF16 is not supported by this server", 400)
    raise ModelError(f"tensor '{name}': datatype {datatype!r} is not one of the protocol's: "
                     f"{', '.join(DATATYPES)}", 400)


def check_shape(shape: Any, name: str) -> list[int]:
    """The shape as a list of non-negative integers, or a 400."""
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < 2**63 for dim in shape):
        raise ModelError(f"tensor '{name}': shape must be a list of non-negative integers, not {shape!r}", 400)
    return list(shape)


# --- from the client ---------------------------------------------------------------------------------------------


def from_json_data(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A tensor from its JSON `data`: the elements in row-major order, flat or nested."""
    if not isinstance(data, list):
        raise ModelError(f"input '{name}': data must be a list of the tensor's elements, not {type(data).__name__}",
                         400)
    dtype = DATATYPES[datatype]
    try:
        if datatype == "BYTES":
            array = np.array(_flat(data), dtype=object)
            for index, item in enumerate(array):
                if isinstance(item, str):
                    array[index] = item.encode()
                elif not isinstance(item, bytes):
                    raise TypeError(f"a BYTES element must be a string, not {type(item).__name__}")
        else:
            array = np.array(data, dtype=dtype).reshape(-1)  # flat or nested alike; ragged lists raise
            if datatype == "BOOL" and not all(isinstance(item, bool) for item in _flat(data)):
                raise TypeError("BOOL elements must be true or false")
    except (ValueError, TypeError, OverflowError) as error:
        raise ModelError(f"input '{name}': data is not {datatype}: {error}", 400) from None
    if array.size != element_count(shape):
        raise ModelError(f"input '{name}': shape {shape} holds {element_count(shape)} elements, but data has "
                         f"{array.size}", 400)
    return array.reshape(shape)


def _flat(data: list) -> list:
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw bytes: row-major, little-endian, no padding (BYTES: length-prefixed elements)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ModelError(f"input '{name}': shape {shape} of {datatype} takes {count * dtype.itemsize} bytes, but "
                         f"{len(raw)} were given", 400)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES elements, each a 4-byte little-endian length and that many bytes."""
    raw = memoryview(raw)
    items = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ModelError(f"input '{name}': the BYTES data ends before its element {index}", 400)
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ModelError(f"input '{name}': the BYTES data ends inside its element {index}", 400)
        items[index] = bytes(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise ModelError(f"input '{name}': {len(raw) - offset} bytes are left after its {count} BYTES elements", 400)
    return items


# --- to the client -----------------------------------------------------------------------------------------------


def as_output(name: str, value: Any) -> np.ndarray:
    """What a model or a predictor returned for an output, as an array the protocol can carry."""
    array = np.asarray(value)
    if array.dtype.kind in "US":
        array = array.astype(object)
    if datatype_of(array.dtype) not in DATATYPES:
        raise ModelError(f"output '{name}' is {array.dtype}, which the Open Inference Protocol cannot carry", 500)
    return array


def to_raw(array: np.ndarray) -> bytes:
    """An array's raw bytes, as from_raw reads them."""
    if array.dtype == object:
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements as deserialize_bytes reads them."""
    parts = []
    for item in array.reshape(-1):
        item = _as_bytes(item)
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def to_json_data(name: str, array: np.ndarray) -> Any:
    """An array's elements, flat in row-major order, as JSON can hold them (BYTES as UTF-8 strings); numeric
    arrays are given to orjson as they are."""
    if array.dtype == object:
        try:
            return [_as_bytes(item).decode() for item in array.reshape(-1)]
        except UnicodeDecodeError:
            raise ModelError(f"output '{name}' holds bytes that are not UTF-8, which JSON cannot carry: ask for it "
                             "with the binary_data parameter", 400) from None
    return np.ascontiguousarray(array.reshape(-1))


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return str(item).encode()
