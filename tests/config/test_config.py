"""controller.config.model: every models.<id> key and top-level key (llama-swap.md §1.2, §1.3)."""

from __future__ import annotations

import pytest

from controller.config.model import DEFAULT_PROXY, Config, split_command
from tests.config.helpers import error_of, load, warnings_of

ONE = "models:\n  m:\n    cmd: srv --port ${PORT}\n"


def model_with(extra: str) -> Config:
    """A config whose single model ``m`` has the given extra (indented) keys."""
    return load(ONE + "".join(f"    {line}\n" for line in extra.splitlines()))


# -- top level: defaults -----------------------------------------------------------


def test_config_empty_text_gives_defaults() -> None:
    c = load("")
    assert c.models == {}
    assert c.health_check_timeout == 120
    assert c.start_port == 5800
    assert c.global_ttl == 0
    assert c.unload_timeout == 10
    assert c.log_level == "info"
    assert c.macros == {}
    assert c.api_keys == []


def test_config_models_null_is_empty() -> None:
    assert load("models:\n").models == {}


def test_config_model_defaults() -> None:
    m = load("models:\n  m:\n    cmd: srv ${PORT}\n").models["m"]
    assert m.cmd == "srv 5800"
    assert m.cmd_stop == ""
    assert m.proxy == "http://127.0.0.1:5800"
    assert m.check_endpoint == "/health"
    assert m.ttl == -1
    assert m.unload_timeout == 0
    assert m.env == []
    assert m.aliases == []
    assert m.use_model_name == ""
    assert m.name == ""
    assert m.description == ""
    assert m.unlisted is False
    assert m.concurrency_limit == 0


def test_config_default_proxy_uses_port_macro() -> None:
    assert DEFAULT_PROXY == "http://127.0.0.1:${PORT}"


# -- top level keys ------------------------------------------------------------------


def test_config_health_check_timeout_floor_is_15() -> None:
    c = load("healthCheckTimeout: 3\n" + ONE)
    assert c.health_check_timeout == 3
    assert c.health_deadline_s == 15.0
    assert c.start_deadline_s("m") == 15.0


def test_config_health_check_timeout_above_floor_is_kept() -> None:
    c = load("healthCheckTimeout: 300\n" + ONE)
    assert c.health_deadline_s == 300.0
    assert c.start_deadline_s("m") == 300.0


def test_config_model_health_check_timeout_has_no_floor() -> None:
    c = model_with("healthCheckTimeout: 2.5")
    assert c.start_deadline_s("m") == 2.5


def test_config_model_health_check_timeout_must_be_positive() -> None:
    msg = error_of(ONE + "    healthCheckTimeout: 0\n")
    assert msg == "models.m.healthCheckTimeout: must be > 0, got 0.0"


def test_config_start_port_sets_first_port() -> None:
    c = load("startPort: 9000\n" + ONE)
    assert c.start_port == 9000
    assert c.models["m"].cmd == "srv --port 9000"


def test_config_start_port_below_1_is_an_error() -> None:
    assert error_of("startPort: 0\n") == "startPort must be greater than 1"


def test_config_start_port_not_an_int_is_an_error() -> None:
    assert error_of("startPort: abc\n") == "startPort: must be an integer, got 'abc'"


def test_config_global_ttl_is_kept() -> None:
    assert load("globalTTL: 600\n").global_ttl == 600


def test_config_global_ttl_negative_is_an_error() -> None:
    assert error_of("globalTTL: -1\n") == "globalTTL must be >= 0"


def test_config_unload_timeout_zero_means_10() -> None:
    assert load("unloadTimeout: 0\n").unload_timeout == 10


def test_config_unload_timeout_is_kept() -> None:
    assert load("unloadTimeout: 3\n").unload_timeout == 3


def test_config_unload_timeout_negative_is_an_error() -> None:
    assert error_of("unloadTimeout: -1\n") == "unloadTimeout must be >= 0"


@pytest.mark.parametrize(
    ("given", "level"),
    [("DEBUG", "debug"), (" Warn ", "warn"), ("error", "error"), ("verbose", "info")],
)
def test_config_log_level_is_normalised(given: str, level: str) -> None:
    assert load(f"logLevel: '{given}'\n").log_level == level


def test_config_global_macros_are_kept() -> None:
    assert load("macros:\n  a: 1\n  b: x\n").macros == {"a": 1, "b": "x"}


def test_config_api_keys_are_kept() -> None:
    assert load("apiKeys: [k1, k2]\n").api_keys == ["k1", "k2"]


def test_config_api_keys_empty_key_is_an_error() -> None:
    assert error_of("apiKeys: ['']\n") == "empty api key found in apiKeys"


def test_config_api_keys_with_space_is_an_error() -> None:
    msg = error_of("apiKeys: [ok, 'a b']\n")
    assert msg == "apiKeys[1]: api key cannot contain spaces"


def test_config_api_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SV_TEST_KEY", "sk-123")
    assert load("apiKeys: [${env.SV_TEST_KEY}]\n").api_keys == ["sk-123"]


def test_config_top_level_not_a_mapping_is_an_error() -> None:
    assert error_of("- 1\n") == "the config must be a mapping at the top level"


def test_config_invalid_yaml_is_an_error() -> None:
    assert error_of("a: [\n").startswith("invalid YAML: ")


def test_config_models_not_a_mapping_is_an_error() -> None:
    assert error_of("models: [a]\n") == (
        "models: must be a mapping of model id to settings"
    )


def test_config_model_not_a_mapping_is_an_error() -> None:
    assert error_of("models:\n  m: 3\n") == "models.m: must be a mapping of settings"


# -- models.<id> keys ------------------------------------------------------------------


def test_config_cmd_argv_is_split() -> None:
    c = load("models:\n  m:\n    cmd: srv --port ${PORT} --name 'a b'\n")
    assert c.models["m"].argv() == ("srv", "--port", "5800", "--name", "a b")


def test_config_cmd_unbalanced_quote_is_an_error() -> None:
    msg = error_of("models:\n  m:\n    cmd: srv ${PORT} 'open\n")
    assert msg == "models.m.cmd: cannot split command: No closing quotation"


def test_config_cmd_stop_keeps_pid_macro() -> None:
    c = model_with("cmdStop: kill -TERM ${PID}")
    assert c.models["m"].cmd_stop == "kill -TERM ${PID}"
    assert c.launch_spec("m").cmd_stop == ("kill", "-TERM", "${PID}")


def test_config_cmd_stop_unbalanced_quote_is_an_error() -> None:
    msg = error_of(ONE + '    cmdStop: kill "${PID}\n')
    assert msg == "models.m.cmdStop: cannot split command: No closing quotation"


def test_config_proxy_fixed_address() -> None:
    c = load("models:\n  m:\n    cmd: srv --port 8080\n    proxy: http://h:8080\n")
    assert c.models["m"].proxy == "http://h:8080"
    assert c.launch_spec("m").base_url == "http://h:8080"


def test_config_check_endpoint_default() -> None:
    assert load(ONE).launch_spec("m").check_endpoint == "/health"


def test_config_check_endpoint_custom() -> None:
    assert model_with("checkEndpoint: /v1/models").launch_spec("m").check_endpoint == (
        "/v1/models"
    )


@pytest.mark.parametrize("value", ["none", "' none '"])
def test_config_check_endpoint_none_skips_check(value: str) -> None:
    assert model_with(f"checkEndpoint: {value}").launch_spec("m").check_endpoint is None


def test_config_ttl_minus_1_uses_global_ttl() -> None:
    c = load("globalTTL: 600\n" + ONE + "    ttl: -1\n")
    assert c.ttl_s("m") == 600.0


def test_config_ttl_unset_uses_global_ttl() -> None:
    assert load("globalTTL: 42\n" + ONE).ttl_s("m") == 42.0


def test_config_ttl_zero_means_never_even_with_global_ttl() -> None:
    assert load("globalTTL: 600\n" + ONE + "    ttl: 0\n").ttl_s("m") == 0.0


def test_config_ttl_positive_is_kept() -> None:
    assert load("globalTTL: 600\n" + ONE + "    ttl: 30\n").ttl_s("m") == 30.0


def test_config_ttl_below_minus_1_is_an_error() -> None:
    msg = error_of(ONE + "    ttl: -2\n")
    assert msg == "model m: invalid TTL value -2"


def test_config_unload_timeout_zero_uses_global() -> None:
    c = load("unloadTimeout: 7\n" + ONE + "    unloadTimeout: 0\n")
    assert c.unload_grace_s("m") == 7.0


def test_config_unload_timeout_per_model() -> None:
    c = load("unloadTimeout: 7\n" + ONE + "    unloadTimeout: 3\n")
    assert c.unload_grace_s("m") == 3.0


def test_config_unload_timeout_per_model_negative_is_an_error() -> None:
    assert error_of(ONE + "    unloadTimeout: -2\n") == (
        "model m: invalid unloadTimeout value -2"
    )


def test_config_env_becomes_a_map() -> None:
    c = model_with("env: ['A=1', 'B=x=y', 'C=']")
    assert c.launch_spec("m").env == {"A": "1", "B": "x=y", "C": ""}


@pytest.mark.parametrize("item", ["NOEQ", "=v"])
def test_config_env_entry_without_name_is_an_error(item: str) -> None:
    msg = error_of(ONE + f"    env: ['{item}']\n")
    assert msg == f"models.m.env: env[0] '{item}' must look like NAME=value"


def test_config_aliases_resolve_to_model() -> None:
    c = model_with("aliases: [fast, quick]")
    assert c.models["m"].aliases == ["fast", "quick"]
    assert c.resolve("fast") == "m"
    assert c.resolve("m") == "m"
    assert c.resolve("nope") is None


def test_config_duplicate_alias_is_an_error() -> None:
    text = (
        "models:\n"
        "  a:\n    cmd: srv ${PORT}\n    aliases: [x]\n"
        "  b:\n    cmd: srv ${PORT}\n    aliases: [x]\n"
    )
    assert error_of(text) == "duplicate alias x found in model: b"


def test_config_use_model_name_name_description_unlisted() -> None:
    c = model_with(
        "useModelName: org/real\nname: Pretty\ndescription: A model\nunlisted: true"
    )
    m = c.models["m"]
    assert (m.use_model_name, m.name, m.description, m.unlisted) == (
        "org/real",
        "Pretty",
        "A model",
        True,
    )


def test_config_unlisted_not_a_bool_is_an_error() -> None:
    assert error_of(ONE + "    unlisted: maybe\n").startswith("models.m.unlisted: ")


def test_config_concurrency_limit_zero_means_10() -> None:
    assert model_with("concurrencyLimit: 0").concurrency_limit("m") == 10


def test_config_concurrency_limit_is_kept() -> None:
    assert model_with("concurrencyLimit: 3").concurrency_limit("m") == 3


def test_config_concurrency_limit_negative_is_an_error() -> None:
    assert error_of(ONE + "    concurrencyLimit: -1\n") == (
        "models.m.concurrencyLimit: must be >= 0, got -1"
    )


def test_config_model_macros_are_kept_raw() -> None:
    c = model_with("macros:\n  q: Q4_K_M\ndescription: ${q}")
    assert c.models["m"].macros == {"q": "Q4_K_M"}
    assert c.models["m"].description == "Q4_K_M"


def test_config_launch_spec() -> None:
    c = model_with("env: ['X=1']\ncmdStop: stop ${PID}")
    spec = c.launch_spec("m")
    assert spec.argv == ("srv", "--port", "5800")
    assert spec.base_url == "http://127.0.0.1:5800"
    assert spec.check_endpoint == "/health"
    assert spec.env == {"X": "1"}
    assert spec.cmd_stop == ("stop", "${PID}")


def test_config_launch_spec_without_cmd_stop_is_empty() -> None:
    assert load(ONE).launch_spec("m").cmd_stop == ()


def test_config_error_names_the_model_and_key() -> None:
    msg = error_of("models:\n  big:\n    cmd: srv ${PORT}\n    ttl: nope\n")
    assert msg.startswith("models.big.ttl: ")


# -- split_command --------------------------------------------------------------------


def test_split_command_drops_whole_line_comments() -> None:
    cmd = "srv\n# --old flag\n  # indented comment\n--new"
    assert split_command(cmd) == ("srv", "--new")


def test_split_command_keeps_mid_line_hash() -> None:
    assert split_command("srv --tag a#b --x '#y'") == (
        "srv",
        "--tag",
        "a#b",
        "--x",
        "#y",
    )


def test_split_command_joins_backslash_continuations() -> None:
    cmd = "srv \\\n  --port 1 \\\n  # a comment between\n  --ctx 2"
    assert split_command(cmd) == ("srv", "--port", "1", "--ctx", "2")


def test_split_command_crlf_continuation() -> None:
    assert split_command("srv \\\r\n--a") == ("srv", "--a")


def test_split_command_respects_quotes() -> None:
    assert split_command("srv --p \"a b\" --q 'c d'") == (
        "srv",
        "--p",
        "a b",
        "--q",
        "c d",
    )


def test_split_command_empty() -> None:
    assert split_command("") == ()


def test_config_cmd_block_scalar_with_comments_and_continuations() -> None:
    text = (
        "models:\n"
        "  m:\n"
        "    cmd: |\n"
        "      srv \\\n"
        "        # --disabled ${nope}\n"
        "        --port ${PORT} \\\n"
        "        --ctx 4096\n"
    )
    assert load(text).launch_spec("m").argv == (
        "srv",
        "--port",
        "5800",
        "--ctx",
        "4096",
    )


# -- unknown keys --------------------------------------------------------------------


def test_config_no_warnings_for_known_keys() -> None:
    assert warnings_of("healthCheckTimeout: 30\nglobalTTL: 5\n" + ONE) == ()


def test_config_unknown_top_level_key_warns_with_hint() -> None:
    assert warnings_of("healthCheckTimeot: 3\n") == (
        "healthCheckTimeot: unknown key, ignored (did you mean 'healthCheckTimeout'?)",
    )


def test_config_unknown_model_key_warns_with_hint() -> None:
    assert warnings_of(ONE + "    cmdd: x\n") == (
        "models.m.cmdd: unknown key, ignored (did you mean 'cmd'?)",
    )


def test_config_unknown_key_without_close_match_has_no_hint() -> None:
    assert warnings_of("zzzqqq: 1\n") == ("zzzqqq: unknown key, ignored",)


def test_config_each_unknown_key_is_named() -> None:
    w = warnings_of("foo1: 1\nbar2: 2\n" + ONE + "    baz3: 3\n")
    assert len(w) == 3
    assert [x.split(":")[0] for x in w] == ["foo1", "bar2", "models.m.baz3"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "logToStdout: loud\n",
            "logToStdout must be one of: proxy, upstream, both, none",
        ),
        (
            "performance: {every: 4s}\n",
            "performance: every must be at least 5s, got 4s",
        ),
        ("store: {path: /}\n", "store.path: / is a directory, not a file"),
    ],
)
def test_config_observability_keys_are_validated(text: str, message: str) -> None:
    assert error_of(text) == message


def test_config_observability_keys_have_llama_swap_defaults() -> None:
    cfg = load("")
    assert (cfg.log_to_stdout, cfg.capture_buffer, cfg.metrics_max_in_memory) == (
        "proxy",
        5,
        1000,
    )
    assert cfg.performance.every_s == 5.0 and not cfg.performance.disabled
    assert cfg.ui.activity.session_id == ["X-Session-ID", "X-Litellm-Session-Id"]
    assert cfg.store.path is None


def test_config_nested_unknown_keys_are_named() -> None:
    w = warnings_of(ONE + "    filters: {stripParms: x}\n")
    assert w == (
        (
            "models.m.filters.stripParms: unknown key, ignored (did you mean "
            "'stripParams'?)"
        ),
    )


def test_config_global_ttl_typo_hint_names_the_real_key() -> None:
    assert warnings_of("globalTL: 5\n") == (
        "globalTL: unknown key, ignored (did you mean 'globalTTL'?)",
    )
