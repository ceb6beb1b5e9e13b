"""The config reads and prints values as llama-swap's Go does: plain YAML
scalars as yaml.v3 resolves them, and a float macro interpolated into text as
Go's ``%v`` (``strconv.FormatFloat(f, 'g', -1, 64)``) prints it."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from controller.config.loader import go_scalar, parse_config, parse_yaml
from controller.config.macros import go_float

# Go 1.19's fmt.Sprintf("%v", f) for each value, recorded from the toolchain.
GO_PRINTS = [
    (1.0, "1"),
    (1000.0, "1000"),
    (100000000.0, "1e+08"),
    (math.inf, "+Inf"),
    (-math.inf, "-Inf"),
    (math.nan, "NaN"),
    (0.0, "0"),
    (-0.0, "-0"),
    (0.5, "0.5"),
    (1e-05, "1e-05"),
    (0.0001, "0.0001"),
    (0.00012345, "0.00012345"),
    (123456.0, "123456"),
    (1234567.0, "1.234567e+06"),
    (999999.0, "999999"),
    (999999.5, "999999.5"),
    (1000000.0, "1e+06"),
    (1.5e300, "1.5e+300"),
    (5e-324, "5e-324"),
    (0.1 + 0.2, "0.30000000000000004"),
    (1e21, "1e+21"),
    (1e20, "1e+20"),
    (2.5e-07, "2.5e-07"),
    (-3.75, "-3.75"),
    (1 / 3, "0.3333333333333333"),
    (9007199254740992.0, "9.007199254740992e+15"),
    (9223372036854775808.0, "9.223372036854776e+18"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (2.2250738585072014e-308, "2.2250738585072014e-308"),
    (12345678.9, "1.23456789e+07"),
    (100.0, "100"),
    (1e15, "1e+15"),
    (1.23e-18, "1.23e-18"),
    (70368744177664.625, "7.036874417766462e+13"),
]


@pytest.mark.parametrize(("value", "printed"), GO_PRINTS)
def test_go_float_prints_as_go(value: float, printed: str) -> None:
    assert go_float(value) == printed


def reference_go_g(value: float) -> str:
    """Go's shortest ``'g'``, derived independently of ``go_float``: exact
    rational arithmetic finds the fewest significant digits whose decimal
    lies in the value's rounding interval (the midpoints to its neighbours,
    included when the significand is even, as Go's Ryu does) and takes the
    one nearest the value; then Go's layout (exponent form when the decimal
    exponent is < -4 or >= 6, at least two exponent digits)."""
    sign = "-" if math.copysign(1, value) < 0 else ""
    x = abs(value)
    if x == 0:
        return sign + "0"
    exact = Fraction(x)
    below = Fraction(math.nextafter(x, 0))
    above_f = math.nextafter(x, math.inf)
    above = Fraction(above_f) if math.isfinite(above_f) else 2 * exact - below
    low, high = (exact + below) / 2, (exact + above) / 2
    even = math.frexp(x)[0] * 2**53 % 2 == 0

    def inside(d: Fraction) -> bool:
        return low <= d <= high if even else low < d < high

    exp10 = math.floor(math.log10(x))
    while Fraction(10) ** exp10 > exact:
        exp10 -= 1
    while Fraction(10) ** (exp10 + 1) <= exact:
        exp10 += 1
    for digits in range(1, 18):
        step = Fraction(10) ** (exp10 - digits + 1)
        n = math.floor(exact / step)
        near = [c for c in (n * step, (n + 1) * step) if inside(c)]
        if near:
            # Nearest; a tie goes to the even last digit (70368744177664.625
            # prints as ...62e+13 in Go).
            best = min(near, key=lambda c: (abs(c - exact), c / step % 2))
            break
    else:
        raise AssertionError(f"no decimal found for {value!r}")
    scale = exp10 - digits + 1
    mantissa = best / Fraction(10) ** scale
    assert mantissa.denominator == 1
    text = str(mantissa.numerator).rstrip("0")
    point = len(str(mantissa.numerator)) + scale  # value = 0.TEXT x 10^point
    exp = point - 1
    if exp < -4 or exp >= 6:
        head = text[0] + ("." + text[1:] if text[1:] else "")
        return f"{sign}{head}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{text}"
    if point >= len(text):
        return sign + text + "0" * (point - len(text))
    return f"{sign}{text[:point]}.{text[point:]}"


@pytest.mark.parametrize(
    ("value", "printed"), [p for p in GO_PRINTS if math.isfinite(p[0])]
)
def test_reference_agrees_with_go_on_the_recorded_values(
    value: float, printed: str
) -> None:
    assert reference_go_g(value) == printed


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_float_matches_the_reference(value: float) -> None:
    assert go_float(value) == reference_go_g(value)


@settings(max_examples=1000, deadline=None)
@given(st.integers(-(10**12), 10**12), st.integers(-30, 30))
def test_go_float_matches_the_reference_on_round_numbers(m: int, e: int) -> None:
    value = float(m) * 10.0**e
    assert go_float(value) == reference_go_g(value)


@pytest.mark.parametrize(
    ("macro", "printed"),
    [
        ("1.0", "1"),
        ("1e3", "1000"),
        ("100000000.0", "1e+08"),
        (".inf", "+Inf"),
        ("-.inf", "-Inf"),
        (".nan", "NaN"),
        ("0.5", "0.5"),
        ("1_000", "1000"),
        ("0x1F", "31"),
        ("017", "15"),
        ("true", "true"),
        ("on", "on"),
    ],
)
def test_macro_value_interpolated_as_llama_swap_prints_it(
    macro: str, printed: str
) -> None:
    text = (
        f"macros:\n  v: {macro}\n"
        "models:\n  m:\n    cmd: srv --x ${v}\n    proxy: http://127.0.0.1:1\n"
    )
    assert parse_config(text).config.models["m"].cmd == f"srv --x {printed}"


def test_setparamsbyid_key_macro_prints_a_float_as_go() -> None:
    text = (
        "macros:\n  t: 0.70\n"
        "models:\n  m:\n    cmd: srv\n    proxy: http://127.0.0.1:1\n"
        "    filters:\n      setParamsByID:\n        'm:t${t}':\n          temperature: ${t}\n"
    )
    by_id = parse_config(text).config.models["m"].filters.set_params_by_id
    assert by_id == {"m:t0.7": {"temperature": 0.7}}


# -- plain scalars as yaml.v3 reads them ---------------------------------------------

# (text, Python value) as yaml.v3 v3.0.1 decodes "v: <text>" into any,
# recorded from it (int, float64, bool, nil or string).
YAML_V3 = [
    ("1e3", 1000.0),
    ("1.0", 1.0),
    ("017", 15),
    ("0x1F", 31),
    ("0o17", 15),
    ("0b11", 3),
    ("1_000", 1000),
    ("08", 8.0),
    ("-.5", -0.5),
    (".5", 0.5),
    (".412_65", 0.41265),
    ("+.inf", math.inf),
    ("-.INF", -math.inf),
    ("on", "on"),
    ("yes", "yes"),
    ("No", "No"),
    ("2024-01-01", "2024-01-01"),
    ("1:30", "1:30"),
    ("99999999999999999999", 1e20),
    ("18446744073709551615", 18446744073709551615),
    ("1e400", "1e400"),
    ("0o-6", -6),
    ("~", None),
    ("", None),
    ("Null", None),
    ("TRUE", True),
    ("False", False),
    ("=", "="),
]


@pytest.mark.parametrize(("text", "value"), YAML_V3)
def test_plain_scalars_read_as_yaml_v3(text: str, value: object) -> None:
    assert go_scalar(text)[1] == value
    read = parse_yaml(f"v: {text}\n")["v"]
    assert read == value and type(read) is type(value)


def test_nan_reads_as_a_float() -> None:
    assert math.isnan(parse_yaml("v: .nan\n")["v"])


def test_quoted_and_tagged_scalars() -> None:
    doc = parse_yaml("a: '1e3'\nb: !!float 1\nc: !!str 12\nd: &x {k: 1}\ne: {<<: *x}\n")
    assert doc == {"a": "1e3", "b": 1.0, "c": "12", "d": {"k": 1}, "e": {"k": 1}}
    assert type(doc["b"]) is float
