"""controller.config.macros and macro expansion in parse_config (llama-swap.md §1.1, §1.4)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller.config.loader import expand_config_macros
from controller.config.macros import (
    expand_env,
    leftover_macros,
    strip_cmd_comments,
    substitute,
    validate_macros,
)
from controller.errors import ConfigError
from tests.config.helpers import error_of, load


def expanded(text: str) -> dict[str, Any]:
    """The raw tree after macro expansion, before pydantic coerces types."""
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return expand_config_macros(raw)


# -- ${PORT} -------------------------------------------------------------------------


def test_macros_port_allocated_in_sorted_model_id_order() -> None:
    text = (
        "startPort: 9000\n"
        "models:\n"
        "  b:\n    cmd: srv ${PORT}\n"
        "  fixed:\n    cmd: srv 1234\n    proxy: http://127.0.0.1:1234\n"
        "  a:\n    cmd: srv ${PORT}\n"
        "  c:\n    cmd: srv ${PORT}\n"
    )
    ms = load(text).models
    assert [ms[k].cmd for k in ("a", "b", "c", "fixed")] == [
        "srv 9000",
        "srv 9001",
        "srv 9002",
        "srv 1234",
    ]


def test_macros_port_sorting_is_by_string() -> None:
    text = "models:\n  m9:\n    cmd: s ${PORT}\n  m10:\n    cmd: s ${PORT}\n"
    ms = load(text).models
    assert (ms["m10"].cmd, ms["m9"].cmd) == ("s 5800", "s 5801")


def test_macros_port_default_start_is_5800() -> None:
    assert load("models:\n  m:\n    cmd: s ${PORT}\n").models["m"].cmd == "s 5800"


def test_macros_port_substituted_throughout_the_model() -> None:
    text = (
        "models:\n  m:\n    cmd: s ${PORT}\n"
        "    proxy: http://h:${PORT}/x\n    checkEndpoint: /h/${PORT}\n"
        "    aliases: ['p${PORT}']\n    cmdStop: stop ${PORT}\n"
    )
    m = load(text).models["m"]
    assert (m.proxy, m.check_endpoint, m.aliases, m.cmd_stop) == (
        "http://h:5800/x",
        "/h/5800",
        ["p5800"],
        "stop 5800",
    )


def test_macros_port_is_typed_when_whole_value() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    extra: ${PORT}\n"
    assert expanded(text)["models"]["m"]["extra"] == 5800


def test_macros_port_via_a_macro_in_cmd_counts() -> None:
    text = "macros:\n  srv: s --port ${PORT}\nmodels:\n  m:\n    cmd: ${srv} -x\n"
    assert load(text).models["m"].cmd == "s --port 5800 -x"


def test_macros_port_in_a_comment_line_does_not_count() -> None:
    text = "models:\n  m:\n    cmd: |\n      s 8080\n      # --port ${PORT}\n"
    assert error_of(text).startswith("model m: proxy uses ${PORT} but cmd does not")


def test_macros_start_port_may_be_a_macro() -> None:
    text = "macros:\n  p: 7000\nstartPort: ${p}\nmodels:\n  m:\n    cmd: s ${PORT}\n"
    c = load(text)
    assert (c.start_port, c.models["m"].cmd) == (7000, "s 7000")


def test_macros_proxy_port_without_cmd_port_is_an_error() -> None:
    text = "models:\n  m:\n    cmd: s --port 8080\n    proxy: http://h:${PORT}\n"
    assert error_of(text) == (
        "model m: proxy uses ${PORT} but cmd does not - ${PORT} is only available "
        "when used in cmd"
    )


def test_macros_default_proxy_with_fixed_port_cmd_is_the_same_error() -> None:
    assert error_of("models:\n  m:\n    cmd: s --port 8080\n").startswith(
        "model m: proxy uses ${PORT} but cmd does not"
    )


def test_macros_port_in_cmd_stop_without_cmd_port_is_an_error() -> None:
    text = (
        "models:\n  m:\n    cmd: s 1\n    proxy: http://h:1\n    cmdStop: k ${PORT}\n"
    )
    assert error_of(text) == "macro '${PORT}' should have been substituted in m.cmdStop"


# -- ${MODEL_ID} and ${PID} ------------------------------------------------------------


def test_macros_model_id_is_the_config_key() -> None:
    text = "models:\n  org/m:q4:\n    cmd: s ${PORT} --alias ${MODEL_ID}\n"
    assert load(text).models["org/m:q4"].cmd == "s 5800 --alias org/m:q4"


def test_macros_model_id_in_a_global_macro_expands_per_model() -> None:
    text = (
        "macros:\n  run: s ${PORT} --name ${MODEL_ID}\n"
        "models:\n  a:\n    cmd: ${run} -x\n  b:\n    cmd: ${run} -y\n"
    )
    ms = load(text).models
    assert (ms["a"].cmd, ms["b"].cmd) == ("s 5800 --name a -x", "s 5801 --name b -y")


def test_macros_whole_cmd_from_a_global_macro_expands_model_id() -> None:
    text = (
        "macros:\n  run: s ${PORT} --name ${MODEL_ID}\nmodels:\n  a:\n    cmd: ${run}\n"
    )
    assert load(text).models["a"].cmd == "s 5800 --name a"


def test_macros_model_id_outside_models_is_unknown() -> None:
    assert error_of("logLevel: ${MODEL_ID}\n") == (
        "logLevel: unknown macro '${MODEL_ID}'"
    )


def test_macros_pid_survives_in_cmd_stop() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    cmdStop: kill ${PID}\n"
    assert load(text).models["m"].cmd_stop == "kill ${PID}"


def test_macros_pid_in_cmd_is_an_error() -> None:
    # ${PID} exists only in cmdStop; elsewhere it is an unknown macro.
    assert error_of("models:\n  m:\n    cmd: s ${PORT} ${PID}\n") == (
        "unknown macro '${PID}' found in m.cmd"
    )


def test_macros_pid_in_proxy_is_an_error() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    proxy: http://h/${PID}\n"
    assert "m.proxy" in error_of(text)


def test_macros_pid_in_env_is_an_error() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    env: ['P=${PID}']\n"
    assert error_of(text) == "model m env[0]: unknown macro '${PID}'"


# -- ${env.NAME} -------------------------------------------------------------------------


def test_macros_env_is_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SV_MODEL_DIR", "/models")
    text = "models:\n  m:\n    cmd: s ${PORT} -m ${env.SV_MODEL_DIR}/a.gguf\n"
    assert load(text).models["m"].cmd == "s 5800 -m /models/a.gguf"


def test_macros_env_unset_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SV_UNSET", raising=False)
    assert error_of("logLevel: ${env.SV_UNSET}\n") == (
        "environment variable 'SV_UNSET' is not set"
    )


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_macros_env_newline_or_nul_is_an_error(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    if "\0" in bad:  # os.environ cannot hold NUL: use the mapping argument
        with pytest.raises(ConfigError) as info:
            expand_env("x: ${env.SV_BAD}\n", {"SV_BAD": bad})
        msg = str(info.value)
    else:
        monkeypatch.setenv("SV_BAD", bad)
        msg = error_of("logLevel: ${env.SV_BAD}\n")
    assert msg == (
        "environment variable 'SV_BAD' contains newlines or null bytes which are "
        "not allowed in YAML substitution"
    )


def test_macros_env_escapes_for_double_quotes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SV_WEIRD", 'a\\b"c')
    text = (
        "models:\n  m:\n    cmd: s ${PORT}\n"
        '    name: "${env.SV_WEIRD}"\n    description: ${env.SV_WEIRD}\n'
    )
    m = load(text).models["m"]
    assert m.name == 'a\\b"c'  # double-quoted: the escapes are undone by YAML
    assert m.description == 'a\\\\b\\"c'  # plain scalar: escapes stay literal


def test_macros_env_ignored_in_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SV_UNSET", raising=False)
    text = "# ${env.SV_UNSET}\nlogLevel: debug # ${env.SV_UNSET}\n"
    assert load(text).log_level == "debug"


def test_macros_env_hash_inside_quotes_is_not_a_comment() -> None:
    text = 'x: "a # ${env.V}"\n'
    assert expand_env(text, {"V": "v"}) == 'x: "a # v"\n'


def test_macros_env_in_flow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SV_ALIAS", "fast")
    text = "models:\n  m:\n    cmd: s ${PORT}\n    aliases: [${env.SV_ALIAS}, b]\n"
    assert load(text).models["m"].aliases == ["fast", "b"]


def test_macros_env_in_comment_after_apostrophe_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SV_UNSET", raising=False)
    text = (
        "models:\n  m:\n    cmd: s ${PORT}\n    description: Bob's # ${env.SV_UNSET}\n"
    )
    assert load(text).models["m"].description == "Bob's"


# -- substitution order and types ----------------------------------------------------------


def test_macros_may_use_earlier_macros() -> None:
    text = (
        "macros:\n  base: /models\n  path: ${base}/llama\n  full: ${path}/m.gguf\n"
        "models:\n  m:\n    cmd: s ${PORT} ${full}\n"
    )
    assert load(text).models["m"].cmd == "s 5800 /models/llama/m.gguf"


def test_macros_forward_reference_is_unknown() -> None:
    text = "macros:\n  B: ${A}-y\n  A: x\nmodels:\n  m:\n    cmd: s ${PORT} ${B}\n"
    assert error_of(text) == "unknown macro '${A}' found in m.cmd"


def test_macros_substitute_is_lifo() -> None:
    assert substitute("<${b}>", {"a": "x", "b": "${a}y"}) == "<xy>"
    assert substitute("<${a}>", {"a": "${b}", "b": "z"}) == "<${b}>"


def test_macros_whole_value_is_typed() -> None:
    text = (
        "macros:\n  ctx: 8192\n  t: 0.7\n  flag: true\n"
        "models:\n  m:\n    cmd: s ${PORT}\n    x: ${ctx}\n    y: ${t}\n    z: ${flag}\n"
    )
    m = expanded(text)["models"]["m"]
    assert (m["x"], m["y"], m["z"]) == (8192, 0.7, True)
    assert type(m["x"]) is int


def test_macros_typed_int_reaches_an_int_field() -> None:
    text = "macros:\n  lim: 3\nmodels:\n  m:\n    cmd: s ${PORT}\n    concurrencyLimit: ${lim}\n"
    assert load(text).concurrency_limit("m") == 3


def test_macros_interpolated_values_are_text() -> None:
    text = (
        "macros:\n  ctx: 8192\n  t: 0.7\n  flag: true\n"
        "models:\n  m:\n    cmd: s ${PORT} -c ${ctx} --t ${t} --f ${flag}\n"
    )
    assert load(text).models["m"].cmd == "s 5800 -c 8192 --t 0.7 --f true"


def test_macros_whole_value_alias_of_another_macro_expands() -> None:
    text = (
        "macros:\n  A: x\n  B: ${A}\n"
        "models:\n  m:\n    cmd: s ${PORT}\n    name: ${B}\n"
    )
    assert load(text).models["m"].name == "x"


def test_macros_model_macro_overrides_global() -> None:
    text = (
        "macros:\n  tag: global\n  msg: value-${tag}\n"
        "models:\n"
        "  a:\n    macros:\n      tag: model\n    cmd: s ${PORT} ${msg}\n"
        "  b:\n    cmd: s ${PORT} ${msg}\n"
    )
    ms = load(text).models
    assert (ms["a"].cmd, ms["b"].cmd) == ("s 5800 value-model", "s 5801 value-global")


def test_macros_model_macro_may_use_global() -> None:
    text = (
        "macros:\n  dir: /m\n"
        "models:\n  a:\n    macros:\n      f: ${dir}/a.gguf\n    cmd: s ${PORT} ${f}\n"
    )
    assert load(text).models["a"].cmd == "s 5800 /m/a.gguf"


def test_macros_model_macro_invisible_to_other_models() -> None:
    text = (
        "models:\n"
        "  a:\n    macros:\n      LOCAL: 1\n    cmd: s ${PORT} ${LOCAL}\n"
        "  other:\n    cmd: s ${PORT} ${LOCAL}\n"
    )
    assert error_of(text) == "unknown macro '${LOCAL}' found in other.cmd"


def test_macros_global_macros_apply_to_top_level_keys() -> None:
    text = "macros:\n  lvl: debug\n  key: sk-1\nlogLevel: ${lvl}\napiKeys: ['${key}']\n"
    c = load(text)
    assert (c.log_level, c.api_keys) == ("debug", ["sk-1"])


def test_macros_unknown_in_top_level_key_names_the_path() -> None:
    assert error_of("healthCheckTimeout: ${x}\n") == (
        "healthCheckTimeout: unknown macro '${x}'"
    )


def test_macros_unknown_in_nested_top_level_key_names_the_path() -> None:
    assert error_of("peers:\n  p:\n    apiKey: ${nope}\n") == (
        "peers.p.apiKey: unknown macro '${nope}'"
    )


def test_macros_unknown_in_cmd() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT} ${nope}\n"
    assert error_of(text) == "unknown macro '${nope}' found in m.cmd"


@pytest.mark.parametrize(
    "field", ["cmdStop", "proxy", "checkEndpoint", "name", "description"]
)
def test_macros_unknown_in_checked_model_field(field: str) -> None:
    text = f"models:\n  m:\n    cmd: s ${{PORT}}\n    {field}: x${{nope}}\n"
    assert error_of(text) == f"unknown macro '${{nope}}' found in m.{field}"


def test_macros_unknown_in_other_model_field_names_the_path() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    env: [A=1, 'B=${nope}']\n"
    assert error_of(text) == "model m env[1]: unknown macro '${nope}'"


def test_macros_unknown_in_metadata_names_the_section_only() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    metadata:\n      a: [x, '${nope}']\n"
    assert error_of(text) == "model m metadata: unknown macro '${nope}'"


def test_macros_substituted_in_nested_values_not_keys() -> None:
    out = substitute({"${k}": ["${k}", {"x": "${k}!"}]}, {"k": "v"})
    assert out == {"${k}": ["v", {"x": "v!"}]}


def test_macros_substitute_leaves_non_strings() -> None:
    assert substitute([1, 2.5, None, True], {"a": "b"}) == [1, 2.5, None, True]


# -- declarations -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PORT", "MODEL_ID", "PID"])
def test_macros_reserved_global_name_is_an_error(name: str) -> None:
    assert error_of(f"macros:\n  {name}: 1\n") == f"macro name '{name}' is reserved"


def test_macros_reserved_model_name_is_an_error() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    macros:\n      PORT: 1\n"
    assert error_of(text) == "model m: macro name 'PORT' is reserved"


@pytest.mark.parametrize("name", ["a b", "a.b", "a$", "é"])
def test_macros_invalid_name_is_an_error(name: str) -> None:
    assert error_of(f"macros:\n  '{name}': 1\n") == (
        f"macro name '{name}' contains invalid characters, must match pattern "
        "^[a-zA-Z0-9_-]+$"
    )


def test_macros_name_of_63_chars_is_fine_64_is_not() -> None:
    assert validate_macros({"a" * 63: 1}) == {"a" * 63: 1}
    name = "a" * 64
    assert error_of(f"macros:\n  {name}: 1\n") == (
        f"macro name '{name}' exceeds maximum length of 63 characters"
    )


@pytest.mark.parametrize(
    ("value", "typ"), [("[1]", "list"), ("{x: 1}", "dict"), ("", "NoneType")]
)
def test_macros_non_scalar_value_is_an_error(value: str, typ: str) -> None:
    assert error_of(f"macros:\n  a: {value}\n") == (
        f"macro 'a' has invalid type {typ}, must be a scalar type "
        "(string, int, float, or bool)"
    )


def test_macros_self_reference_is_an_error() -> None:
    assert error_of("macros:\n  r: value-${r}\n") == "macro 'r' contains self-reference"


def test_macros_model_self_reference_is_prefixed() -> None:
    text = "models:\n  m:\n    cmd: s ${PORT}\n    macros:\n      r: ${r}\n"
    assert error_of(text) == "model m: macro 'r' contains self-reference"


def test_macros_not_a_mapping_is_an_error() -> None:
    assert error_of("macros: [a]\n") == "macros must be a mapping of name to value"


def test_macros_validate_keeps_declaration_order() -> None:
    assert list(validate_macros({"z": 1, "a": "x", "m": True})) == ["z", "a", "m"]


# -- helpers -----------------------------------------------------------------------------------


def test_leftover_macros_lists_every_reference() -> None:
    assert leftover_macros("a ${X} b ${y-1} ${}") == ["X", "y-1", ""]


def test_strip_cmd_comments_drops_whole_line_comments_only() -> None:
    assert strip_cmd_comments("a\n  # b ${X}\nc # d\n#e") == "a\nc # d"


def test_macros_in_cmd_comment_never_expand() -> None:
    text = "models:\n  m:\n    cmd: |\n      s ${PORT}\n      # ${undefined_macro}\n"
    assert load(text).models["m"].cmd == "s 5800"


def test_macros_yaml11_boolean_words_stay_strings() -> None:
    text = "macros:\n  fa: on\nmodels:\n  m:\n    cmd: s ${PORT} --flash-attn ${fa}\n"
    assert load(text).models["m"].cmd == "s 5800 --flash-attn on"
