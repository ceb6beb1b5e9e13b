"""controller.dispatch.request's scan: the model read without a JSON tree agrees
with json.loads, and bodies it cannot read are a 400 naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from controller.dispatch.request import (
    SCAN_DEPTH,
    ModelRequest,
    read_model,
    replace_json_model,
    scan_model,
)
from controller.errors import BadRequest

JSON = "application/json"

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    # Strings that look like structure: quotes, escapes, brackets.
    | st.text(alphabet='"\\[]{}:,\n\x00\x1fab', max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(["stream", "messages", "m", ""]) | st.text(max_size=8).filter(
    lambda k: k != "model"
)
# JSON's whitespace, in the places it may go.
spaces = st.text(alphabet=" \t\n\r", max_size=2)


@st.composite
def objects(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A JSON object as text with one or two string "model" members (json.loads
    keeps the last), maybe other repeated keys, any spacing and either
    escaping; and whether some key is written with an escape."""
    members: list[tuple[str, Any]] = draw(st.lists(st.tuples(keys, values), max_size=5))
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(members)))
        members.insert(at, ("model", draw(st.text(max_size=12))))
    ascii_only = draw(st.booleans())
    indent = draw(st.sampled_from([None, 0, 2]))
    parts = []
    for key, value in members:
        encoded = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
        parts.append(
            draw(spaces)
            + json.dumps(key, ensure_ascii=ascii_only)
            + draw(spaces)
            + ":"
            + draw(spaces)
            + encoded
            + draw(spaces)
        )
    text = "{" + ",".join(parts) + draw(spaces) + "}" + draw(spaces)
    escaped = any("\\" in json.dumps(k, ensure_ascii=ascii_only) for k, _ in members)
    return text.encode(), escaped


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(objects())
def test_scan_agrees_with_json_loads(case: tuple[bytes, bool]) -> None:
    body, escaped_keys = case
    data = json.loads(body)
    model, stream = data["model"], data.get("stream") is True
    found = scan_model(body)
    assert found is None or found == (model, stream)
    # The scan reads every body whose keys have no escapes (an escaped key
    # might spell "model") and whose values nest no deeper than SCAN_DEPTH.
    if not escaped_keys and depth(data) <= SCAN_DEPTH:
        assert found == (model, stream)
    if model.strip():
        assert read_model("POST", JSON, {}, body) == ModelRequest(model, stream, "json")
    else:
        with pytest.raises(BadRequest):
            read_model("POST", JSON, {}, body)


@settings(max_examples=200, deadline=None)
@given(objects(), st.text(min_size=1, max_size=12))
def test_scan_rewrite_changes_only_the_model(
    case: tuple[bytes, bool], new: str
) -> None:
    body = case[0]
    rewritten = replace_json_model(body, new)
    assert json.loads(rewritten) == {**json.loads(body), "model": new}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | objects().map(lambda c: c[0][: len(c[0]) // 2]))
def test_scan_any_bytes_are_read_or_a_bad_request(body: bytes) -> None:
    try:
        read_model("POST", JSON, {}, body)
    except BadRequest:
        pass


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model": "a", "model": "b"}', ("b", False)),  # the last wins
        (b'{"stream": true, "model": "m", "stream": false}', ("m", False)),
        (b'{"model": "m", "x": "q\\"}{[", "stream": true}', ("m", True)),
        (b'{"x": "ends in a backslash\\\\", "model": "m"}', ("m", False)),
        (b'{"model": "caf\\u00e9 \\"m\\""}', ('café "m"', False)),
        (b'{"x": [1, {"y": [true, null]}], "model": "m"}', ("m", False)),
        (b'{"model": "m", "n": -1.5e3, "a": NaN, "b": -Infinity}', ("m", False)),
    ],
)
def test_scan_reads(body: bytes, expected: tuple[str, bool]) -> None:
    assert scan_model(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"mod\\u0065l": "m"}',  # an escaped key: the parser reads it
        b'\xef\xbb\xbf{"model": "m"}',  # a BOM
        b'{"model": "m", "x": ' + b"[" * 20 + b"]" * 20 + b"}",  # deeper than the scan
    ],
)
def test_scan_leaves_to_the_parser(body: bytes) -> None:
    assert scan_model(body) is None
    assert read_model("POST", JSON, {}, body).model == "m"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m",}',
        b'{"model": "m" "x": 1}',
        b'{"model": "m"} x',
        b'{"model": "m\x01"}',  # a raw control character
        b'{"model": "\\q"}',  # an invalid escape
        b'{"model": "m", "x": 01}',
    ],
)
def test_scan_refuses_what_json_refuses(body: bytes) -> None:
    assert scan_model(body) is None
    with pytest.raises(BadRequest, match="^invalid JSON in request body: "):
        read_model("POST", JSON, {}, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b',"model":"m"}',
    ],
)
def test_scan_deep_nesting_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        read_model("POST", JSON, {}, body)
    assert info.value.message == "the JSON request body nests too deeply to read"
