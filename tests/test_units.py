"""engine.units: Go duration strings and Kubernetes quantities, as Cortex parsed them."""
from __future__ import annotations

import math

import pytest

from engine.units import parse_duration, parse_quantity


@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0),
    ("+0", 0.0),
    ("-0", 0.0),
    ("0s", 0.0),
    ("100ms", 0.1),
    ("0.5s", 0.5),
    (".5s", 0.5),
    ("5.s", 5.0),
    ("5m", 300.0),
    ("1h", 3600.0),
    ("1.5h", 5400.0),
    ("1h30m", 5400.0),
    ("2m30s", 150.0),
    ("1m0.5s", 60.5),
    ("1h2m3s4ms5us6ns", 3723.004005006),
    ("10us", 1e-5),
    ("10µs", 1e-5),   # U+00B5 MICRO SIGN
    ("10μs", 1e-5),   # U+03BC GREEK SMALL LETTER MU
    ("250ns", 2.5e-7),
    ("+2s", 2.0),
    ("-1.5s", -1.5),
    ("60s", 60.0),
])
def test_parse_duration_accepts_go_syntax(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", [
    "",          # empty
    "5",         # missing unit (only a bare 0 may omit it)
    "1.5",
    "s",         # unit without a number
    "ms",
    ".s",        # no digits at all
    "5 s",       # no spaces inside
    "5S",        # units are case-sensitive
    "5Ms",
    "1d",        # Go has no day unit
    "5sec",
    "5ss",
    "1h-5m",     # a sign only at the start
    "--5s",      # one sign at most
    "+-5s",
    "-",
    "1e3s",      # no exponents
    "0x10s",
    "five seconds",
])
def test_parse_duration_rejects_invalid_text(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_parse_duration_error_names_the_text_and_shows_examples():
    with pytest.raises(ValueError) as error:
        parse_duration("10 seconds")
    assert str(error.value) == ("'10 seconds' is not a duration; use a number with a unit, such as 100ms, 0.5s, 5m "
                                "or 1h30m")


@pytest.mark.parametrize("value", [5, 0.5, None, True, ["1s"]])
def test_parse_duration_rejects_non_strings_with_value_error(value):
    with pytest.raises(ValueError, match="is not a duration; use a string with a unit"):
        parse_duration(value)


@pytest.mark.parametrize("value, number", [
    ("200m", 0.2),
    ("20m", 0.02),
    ("1", 1.0),
    ("1.5", 1.5),
    (".5", 0.5),
    ("+1", 1.0),
    ("-1", -1.0),
    (2, 2.0),
    (0.5, 0.5),
    ("100u", 1e-4),
    ("5n", 5e-9),
    ("1k", 1e3),
    ("1M", 1e6),
    ("1G", 1e9),
    ("2T", 2e12),
    ("1P", 1e15),
    ("1E", 1e18),        # exa, not an exponent without digits
    ("1Ki", 1024.0),
    ("512Mi", 512 * 2**20),
    ("1Gi", 2**30),
    ("1.5Gi", 1.5 * 2**30),
    ("1Ti", 2**40),
    ("1Pi", 2**50),
    ("1Ei", 2**60),
    ("1e3", 1e3),
    ("1E3", 1e3),
    ("1.5e-3", 1.5e-3),
    ("2e+2", 200.0),
    (" 1Gi ", 2**30),
])
def test_parse_quantity_accepts_kubernetes_quantities(value, number):
    assert parse_quantity(value) == pytest.approx(number)


@pytest.mark.parametrize("value", [
    "",
    "abc",
    "Gi",          # suffix without a number
    "1K",          # kilo is a lower-case k
    "1kb",
    "1KB",
    "1mi",
    "1 Gi",
    "1.2.3",
    "1e",
    "1Gi1",
    "1,5",
    "0x10",
    "inf",
    "nan",
    "1e400",       # overflows to infinity
    True,
    False,
    None,
    [1],
    {"cpu": 1},
    math.inf,
    math.nan,
])
def test_parse_quantity_rejects_invalid_values(value):
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(value)


def test_parse_quantity_error_shows_examples():
    with pytest.raises(ValueError) as error:
        parse_quantity("2 cores")
    assert str(error.value) == ("'2 cores' is not a quantity; use a number with an optional suffix, such as 500m, 2, "
                                "512Mi or 1Gi")
