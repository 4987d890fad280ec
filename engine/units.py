"""Parsing of Cortex's duration strings (Go syntax) and Kubernetes quantities."""
from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_QUANTITY_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string such as `100ms`, `0.5s` or `1h30m`; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; use a string with a unit, such as 100ms, 0.5s, 5m or 1h30m")
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    body = value[1:] if value.startswith(("+", "-")) else value
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f"'{text}' is not a duration; use a number with a unit, such as 100ms, 0.5s, 5m or 1h30m")
    return sign * total


def parse_quantity(value: str | int | float) -> float:
    """The value of a Kubernetes quantity such as `200m`, `1.5`, `512Mi` or `1G`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, (int, float)):
        return _finite(float(value), value)
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a quantity; use a number with an optional suffix, such as 500m, 2, "
                         "512Mi or 1Gi")
    number, exponent, suffix = match.groups()
    scale = float("1" + exponent) if exponent else _QUANTITY_SUFFIXES.get(suffix, 1.0)
    return _finite(float(number) * scale, value)


def _finite(number: float, given: object) -> float:
    """`number` unless it is infinite or not a number."""
    if not math.isfinite(number):
        raise ValueError(f"{given!r} is not a finite quantity")
    return number
