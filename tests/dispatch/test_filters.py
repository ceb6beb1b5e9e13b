"""controller.dispatch.filters: useModelName, stripParams, setParams, setParamsByID
(llama-swap.md §1.3, §2.1)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from controller.dispatch.filters import apply_filters, normalize_strip_params
from controller.errors import BadRequest

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def run(
    body: bytes | str,
    *,
    use: str = "",
    strip: Sequence[str] = (),
    set_params: Mapping[str, Any] | None = None,
    by_id: Mapping[str, Mapping[str, Any]] | None = None,
    requested: str = "m",
) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return apply_filters(
        raw,
        use_model_name=use,
        strip=strip,
        set_params=set_params or {},
        set_params_by_id=by_id or {},
        requested_id=requested,
    )


# -- normalize_strip_params ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("temperature", ("temperature",)),
        (" top_p , temperature,,top_p, ", ("temperature", "top_p")),
        ("model", ()),
        ("model, b, a, model ", ("a", "b")),
        ("a.b, a", ("a", "a.b")),
        (" , ,", ()),
    ],
)
def test_normalize_strip_params(value: str, expected: tuple[str, ...]) -> None:
    assert normalize_strip_params(value) == expected


# -- identity -----------------------------------------------------------------


def test_no_filters_returns_the_same_bytes_object() -> None:
    body = b'{"model":"m",  "x": 1e400}'
    assert run(body) is body


def test_no_filters_does_not_even_parse() -> None:
    body = b"not json at all"
    assert run(body) is body


def test_filters_that_change_nothing_return_the_same_bytes_object() -> None:
    body = b'{ "model": "m", "x": 1 }'
    assert run(body, strip=["absent", "a.b.c", "x.y"]) is body
    assert run(body, use="m") is body
    assert run(body, set_params={"model": "other"}) is body
    assert run(body, by_id={"other-id": {"x": 2}}) is body
    assert run(body, strip=["model", ""]) is body


# -- each filter alone ------------------------------------------------------------


def test_use_model_name_rewrites_model() -> None:
    out = run(b'{"model":"alias","stream":true}', use="upstream-name")
    assert out == b'{"model":"upstream-name","stream":true}'


def test_use_model_name_adds_a_missing_model() -> None:
    assert run(b'{"a":1}', use="u") == b'{"a":1,"model":"u"}'


def test_strip_params_deletes_top_level_keys() -> None:
    out = run(b'{"model":"m","temperature":0.5,"top_p":1}', strip=["temperature"])
    assert out == b'{"model":"m","top_p":1}'


def test_strip_params_nested_path() -> None:
    body = b'{"model":"m","a":{"b":1,"c":2},"b":3}'
    assert run(body, strip=["a.b"]) == b'{"model":"m","a":{"c":2},"b":3}'


def test_strip_params_array_elements() -> None:
    body = b'{"model":"m","xs":[1,2,3],"ys":[{"k":1,"v":2}]}'
    assert run(body, strip=["xs.1"]) == b'{"model":"m","xs":[1,3],"ys":[{"k":1,"v":2}]}'
    assert (
        run(body, strip=["xs.-1"]) == b'{"model":"m","xs":[1,2],"ys":[{"k":1,"v":2}]}'
    )
    assert run(body, strip=["ys.0.k"]) == b'{"model":"m","xs":[1,2,3],"ys":[{"v":2}]}'


def test_strip_params_escaped_dot_is_a_literal_key() -> None:
    body = b'{"model":"m","a.b":1,"a":{"b":2}}'
    assert run(body, strip=["a\\.b"]) == b'{"model":"m","a":{"b":2}}'


def test_model_is_never_stripped() -> None:
    body = b'{"model":"m","x":1}'
    assert run(body, strip=["model", "x"]) == b'{"model":"m"}'


def test_set_params_sets_and_overwrites_any_json_type() -> None:
    out = run(
        b'{"model":"m","temperature":0.9}',
        set_params={
            "temperature": 0.2,
            "n": 3,
            "flag": False,
            "none": None,
            "stop": ["a", "b"],
            "obj": {"k": [1, {"z": True}]},
            "name": "x",
        },
    )
    assert json.loads(out) == {
        "model": "m",
        "temperature": 0.2,
        "flag": False,
        "n": 3,
        "name": "x",
        "none": None,
        "obj": {"k": [1, {"z": True}]},
        "stop": ["a", "b"],
    }


def test_set_params_in_sorted_key_order_appended_at_the_end() -> None:
    out = run(b'{"model":"m","b":0}', set_params={"c": 1, "a": 2, "b": 3})
    assert out == b'{"model":"m","b":3,"a":2,"c":1}'


def test_set_params_ignores_model() -> None:
    out = run(b'{"model":"m"}', set_params={"model": "evil", "x": 1})
    assert out == b'{"model":"m","x":1}'


def test_set_params_nested_creates_objects() -> None:
    out = run(b'{"model":"m"}', set_params={"a.b.c": 1})
    assert out == b'{"model":"m","a":{"b":{"c":1}}}'


def test_set_params_nested_into_existing_object_keeps_siblings() -> None:
    out = run(
        b'{"model":"m","chat_template_kwargs":{"x":1}}',
        set_params={"chat_template_kwargs.enable_thinking": False},
    )
    assert (
        out == b'{"model":"m","chat_template_kwargs":{"x":1,"enable_thinking":false}}'
    )


def test_set_params_nested_replaces_a_scalar_in_the_way() -> None:
    out = run(b'{"model":"m","a":5}', set_params={"a.b": 1})
    assert out == b'{"model":"m","a":{"b":1}}'


def test_set_params_array_index_and_append() -> None:
    body = b'{"model":"m","xs":[1,2]}'
    assert run(body, set_params={"xs.0": 9}) == b'{"model":"m","xs":[9,2]}'
    assert run(body, set_params={"xs.-1": 3}) == b'{"model":"m","xs":[1,2,3]}'
    assert run(body, set_params={"xs.3": 4}) == b'{"model":"m","xs":[1,2,null,4]}'


def test_set_params_colon_forces_an_object_key() -> None:
    out = run(b'{"model":"m"}', set_params={"users.:2313.name": "Sara"})
    assert out == b'{"model":"m","users":{"2313":{"name":"Sara"}}}'


def test_set_params_non_index_key_into_an_array_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        run(b'{"model":"m","xs":[1]}', set_params={"xs.name": 1})
    assert info.value.message == "error setting parameter xs.name in request"


def test_set_params_by_id_applies_only_to_the_requested_id() -> None:
    by_id = {"fast": {"reasoning": "low"}, "deep": {"reasoning": "high"}}
    body = b'{"model":"fast"}'
    assert run(body, by_id=by_id, requested="fast") == (
        b'{"model":"fast","reasoning":"low"}'
    )
    assert run(body, by_id=by_id, requested="deep") == (
        b'{"model":"fast","reasoning":"high"}'
    )
    assert run(body, by_id=by_id, requested="other") is body


def test_set_params_by_id_ignores_model() -> None:
    out = run(b'{"model":"m"}', by_id={"m": {"model": "x", "k": 1}})
    assert out == b'{"model":"m","k":1}'


def test_set_values_are_copied_not_shared_with_the_config() -> None:
    params: dict[str, Any] = {"obj": {"a": 1}}
    by_id = {"m": {"obj.b": 2}}
    out = run(b'{"model":"m"}', set_params=params, by_id=by_id)
    assert out == b'{"model":"m","obj":{"a":1,"b":2}}'
    assert params == {"obj": {"a": 1}}


# -- order and combinations ---------------------------------------------------------


def test_set_params_by_id_overrides_set_params() -> None:
    out = run(
        b'{"model":"m"}',
        set_params={"temperature": 0.1, "top_k": 5},
        by_id={"m": {"temperature": 0.7}},
    )
    assert out == b'{"model":"m","temperature":0.7,"top_k":5}'


def test_strip_runs_before_set() -> None:
    out = run(
        b'{"model":"m","temperature":0.9,"seed":1}',
        strip=["temperature", "seed"],
        set_params={"temperature": 0.3},
    )
    assert out == b'{"model":"m","temperature":0.3}'


def test_strip_runs_after_use_model_name_and_cannot_touch_model() -> None:
    out = run(
        b'{"model":"alias","x":1}', use="real", strip=["model", "x"], set_params={}
    )
    assert out == b'{"model":"real"}'


def test_all_filters_together() -> None:
    out = run(
        b'{"model":"alias","messages":[],"logit_bias":{"1":2},"temperature":1}',
        use="real",
        strip=["logit_bias", "temperature"],
        set_params={"temperature": 0.5, "extra.a": 1},
        by_id={"alias": {"extra.b": 2, "temperature": 0.6}},
        requested="alias",
    )
    assert json.loads(out) == {
        "model": "real",
        "messages": [],
        "extra": {"a": 1, "b": 2},
        "temperature": 0.6,
    }
    assert list(json.loads(out)) == ["model", "messages", "extra", "temperature"]


def test_sorted_set_order_lets_a_parent_be_set_before_its_child() -> None:
    out = run(b'{"model":"m"}', set_params={"a.y": 2, "a": {"x": 1}})
    assert out == b'{"model":"m","a":{"x":1,"y":2}}'


# -- fidelity -------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    ["1e400", "-1E+400", "0.10", "12345678901234567890", "1.0", "-0", "5e-324", "0"],
)
def test_numbers_are_written_back_exactly(literal: str) -> None:
    body = f'{{"model":"m","n":{literal},"deep":[{{"k":{literal}}}]}}'
    out = run(body, set_params={"x": 1})
    assert (
        out
        == f'{{"model":"m","n":{literal},"deep":[{{"k":{literal}}}],"x":1}}'.encode()
    )


def test_key_order_is_kept() -> None:
    body = b'{"z":1,"model":"m","a":2,"m":{"y":1,"b":2}}'
    assert run(body, strip=["a"]) == b'{"z":1,"model":"m","m":{"y":1,"b":2}}'


def test_unicode_is_kept_as_utf8() -> None:
    body = '{"model":"m","content":"héllo 世界 😀","x":1}'.encode()
    out = run(body, strip=["x"])
    assert out == '{"model":"m","content":"héllo 世界 😀"}'.encode()


def test_escaped_unicode_and_surrogate_pairs_decode() -> None:
    body = b'{"model":"m","s":"\\u00e9\\ud83d\\ude00\\n\\"","x":1}'
    out = run(body, strip=["x"])
    assert out == '{"model":"m","s":"é😀\\n\\""}'.encode()


def test_a_lone_surrogate_escape_does_not_crash() -> None:
    body = b'{"model":"m","s":"a\\ud800b","t":"\xc3\xa9","x":1}'
    out = run(body, strip=["x"])
    assert json.loads(out) == {"model": "m", "s": "a\ud800b", "t": "é"}
    assert b"\\ud800" in out
    out.decode("utf-8")  # valid UTF-8


def test_non_finite_constants_pass_through_as_sent() -> None:
    body = b'{"model":"m","a":NaN,"b":-Infinity,"x":1}'
    assert run(body, strip=["x"]) == b'{"model":"m","a":NaN,"b":-Infinity}'


def test_yaml_typed_values_encode() -> None:
    out = run(
        b'{"model":"m"}',
        set_params={"obj": {2: "two", False: "f", None: "n", 1.5: "x"}},
    )
    assert out == b'{"model":"m","obj":{"2":"two","false":"f","null":"n","1.5":"x"}}'


def test_a_non_finite_set_value_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        run(b'{"model":"m"}', set_params={"x": float("inf")})


# -- bad bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"[1,2]", b'"text"', b"42", b"null", b"{", b"", b"\xff\xfe{}"]
)
def test_a_body_that_is_not_a_json_object_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        run(body, strip=["x"])
