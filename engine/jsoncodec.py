"""JSON for payloads and results: orjson's speed with exactly the standard library's results.

orjson differs from the standard library in a few corners, so each is detected cheaply and handed to the standard
library: integers of 19 digits or more (orjson reads big ones as floats), NaN and Infinity (orjson writes null, and
does not read them), non-string keys, and anything else orjson refuses. numpy values are encoded through tolist(),
as the standard library path does, so float32 values keep their exact float64 expansion.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

NOT_SERIALIZABLE = ("please return an object that is JSON serializable (including its nested fields), a bytes "
                    "object, a string, or a starlette.responses.Response object")

_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))  # every digit → '0', else ' '
_LONG_NUMBER = b"0" * 19  # a run this long may be an integer beyond 64 bits
# datetimes and dataclasses go to `default` (and so fail) as with the standard library
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def loads(body: bytes) -> Any:
    """Parse JSON exactly as json.loads would; raises ValueError (json.JSONDecodeError) with its message."""
    if _LONG_NUMBER not in body.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, lone surrogates...: the standard library decides, with its own message
    return json.loads(body)


def _tolist(value: Any) -> Any:
    # numpy arrays and scalars both have tolist(); checking the module keeps numpy an optional import.
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode as json.dumps would (NaN as NaN, numpy through tolist()); TypeError with Cortex's advice otherwise."""
    try:
        encoded = orjson.dumps(value, default=_tolist, option=_OPTIONS)
        if b"null" not in encoded:  # orjson writes NaN and Infinity as null: only then must we look closer
            return encoded
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(value, default=_tolist, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise TypeError(f"{error}; {NOT_SERIALIZABLE}") from None


# Their names in engine's public API (engine.json_loads, engine.json_dumps), for plugins that read or write JSON as
# engine does.
json_loads, json_dumps = loads, dumps
