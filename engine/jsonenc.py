"""JSON encoding of predictor results: the standard library's output, with numpy values encoded too."""
from __future__ import annotations

import json
from typing import Any

NOT_SERIALIZABLE = ("please return an object that is JSON serializable (including its nested fields), a bytes "
                    "object, a string, or a starlette.responses.Response object")


def _encode_numpy(value: Any) -> Any:
    # numpy arrays and scalars both have tolist(); checking the module keeps numpy an optional import.
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode `value` as JSON bytes; raise TypeError with Cortex's advice when it cannot be encoded."""
    try:
        return json.dumps(value, default=_encode_numpy).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise TypeError(f"{error}; {NOT_SERIALIZABLE}") from None
