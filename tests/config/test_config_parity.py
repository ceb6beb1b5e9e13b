"""Where a config is read as llama-swap reads it: a YAML null is "not set", a
key repeated in one mapping is refused, and mistakes are worded in the
config's own terms (type errors, "did you mean" hints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from controller.config.loader import load_config
from controller.errors import ConfigError
from tests.config.helpers import error_of, load, warnings_of

if TYPE_CHECKING:
    from pathlib import Path


MODEL = "models:\n  m:\n    cmd: srv --port ${PORT}\n"


# -- a null is "not set" -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # every child of on_startup commented out: the report that started this
        MODEL + "hooks:\n  on_startup:\n    # preload: [m]\n",
        MODEL + "hooks:\n",
        MODEL + "hooks:\n  on_startup:\n    preload:\n",
        MODEL + "macros:\ngroups:\nprofiles:\npeers:\napiKeys:\nselectors:\n",
        MODEL + "routing:\nupstream:\nmatrix:\nstore:\nui:\nperformance:\n",
        MODEL + "routing:\n  router:\n  scheduler:\n",
        MODEL + "routing:\n  router:\n    use:\n    settings:\n      groups:\n",
        MODEL + "upstream:\n  ignorePaths:\n",
        MODEL + "groups:\n  g:\n    members:\n",
        MODEL + "groups:\n  g:\n",
        MODEL + "healthCheckTimeout:\nstartPort:\nlogLevel:\nglobalTTL:\n",
        MODEL + "ui:\n  activity:\n    session_id:\n",
        MODEL + "    aliases:\n    env:\n    filters:\n    metadata:\n"
        "    capabilities:\n    macros:\n    ttl:\n    proxy:\n    timeouts:\n"
        "    compat:\n    name:\n    unlisted:\n    checkEndpoint:\n",
        MODEL + "    filters:\n      setParams:\n      setParamsByID:\n        m:x:\n",
        MODEL + "    capabilities:\n      in:\n      context:\n",
        MODEL + "profiles:\n  p:\n    pins:\n      m: ~\n",
    ],
)
def test_null_means_not_set(text: str) -> None:
    config = load(text)
    m = config.models["m"]
    assert (m.ttl, m.check_endpoint, m.aliases, m.env) == (-1, "/health", [], [])
    assert m.proxy.startswith("http://127.0.0.1:")
    assert (config.health_check_timeout, config.start_port) == (120, 5800)
    assert config.hooks.on_startup.preload == []


def test_null_keeps_the_pin_that_disables_a_name() -> None:
    config = load(MODEL + "profiles:\n  p:\n    pins:\n      m: ~\n")
    assert config.profiles["p"].pins == {"m": None}


def test_null_section_in_a_map_is_an_empty_one() -> None:
    # llama-swap decodes these as zero structs and then validates them.
    assert error_of(MODEL + "profiles:\n  p:\n") == (
        "profiles.p.pins must contain at least one entry"
    )
    assert error_of(MODEL + "selectors:\n  s:\n").startswith(
        "selectors.s.strategy is required"
    )


def test_null_store_path_is_refused_as_llama_swap_does() -> None:
    assert error_of(MODEL + "store: {}\n") == "store.path must not be empty"
    assert error_of(MODEL + "store:\n  path:\n") == "store.path must not be empty"
    assert load(MODEL + "store:\n").store.path is None


def test_numbers_are_accepted_where_text_is_expected() -> None:
    m = load(MODEL + "    name: 2024\n    aliases: [7]\n").models["m"]
    assert (m.name, m.aliases) == ("2024", ["7"])


# -- duplicate keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "models:\n  a:\n    cmd: x\nmodels: {}\n",
            'mapping key "models" already defined at line 1 (again at line 4)',
        ),
        (
            "models:\n  a:\n    cmd: x\n  a:\n    cmd: y\n",
            'models: mapping key "a" already defined at line 2 (again at line 4)',
        ),
        (
            "models:\n  a:\n    cmd: x\n    env: []\n    cmd: y\n",
            'models.a: mapping key "cmd" already defined at line 3 (again at line 5)',
        ),
        (
            "groups:\n  g:\n    members: [a]\n  h:\n    - {swap: 1, swap: 2}\n",
            'groups.h[0]: mapping key "swap" already defined at line 5 (again at line 5)',
        ),
        (  # the outer mapping is checked before the ones inside it, as yaml.v3
            "models:\n  a:\n    cmd: x\n    cmd: y\nmodels: {}\n",
            'mapping key "models" already defined at line 1 (again at line 5)',
        ),
    ],
)
def test_duplicate_key_is_refused(text: str, message: str) -> None:
    assert error_of(text) == message


def test_duplicate_key_in_a_config_dir_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("models:\n  a:\n    cmd: x ${PORT}\n")
    bad = tmp_path / "b.yaml"
    bad.write_text("models:\n  b:\n    ttl: 1\n    ttl: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    assert info.value.message == (
        f'config {bad}: models.b: mapping key "ttl" already defined at line 3 '
        "(again at line 4)"
    )


def test_duplicate_via_merge_key_is_an_override_not_a_duplicate() -> None:
    text = "defs: &d {ttl: 5}\n" + MODEL + "    <<: *d\n    ttl: 6\n"
    assert load(text).models["m"].ttl == 6


# -- type errors in the config's words ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MODEL + "hooks:\n  on_startup:\n    - preload: [m]\n",
            "hooks.on_startup: expected a mapping, got a list",
        ),
        (MODEL + "groups: [m]\n", "groups: expected a mapping, got a list"),
        (
            MODEL + "    ttl: soon\n",
            'models.m.ttl: expected an integer, got the text "soon"',
        ),
        (
            MODEL + "    ttl: 1.5\n",
            "models.m.ttl: expected a whole number, got the number 1.5",
        ),
        (
            MODEL + "    aliases: [[a]]\n",
            "models.m.aliases[0]: expected a string, got a list",
        ),
        (
            MODEL + "    env: A=1\n",
            'models.m.env: expected a list, got the text "A=1"',
        ),
        (
            MODEL + "    unlisted: [x]\n",
            "models.m.unlisted: expected true or false, got a list",
        ),
        (MODEL + "    docker: {}\n", "models.m.docker.image is required"),
    ],
)
def test_type_error_is_worded_in_config_terms(text: str, message: str) -> None:
    assert error_of(text) == message


# -- "did you mean" ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("host", "that is the command-line flag --listen, not a config key"),
        ("listen", "that is the command-line flag --listen, not a config key"),
        ("timeout", "did you mean 'healthCheckTimeout'?"),
        ("ttl", "did you mean 'globalTTL'?"),
        ("preload", "did you mean 'hooks.on_startup.preload'?"),
        ("api_keys", "did you mean 'apiKeys'?"),
        ("start_port", "did you mean 'startPort'?"),
        ("healthCheckTimeot", "did you mean 'healthCheckTimeout'?"),
    ],
)
def test_hint_for_a_top_level_key(key: str, hint: str) -> None:
    assert warnings_of(f"{key}: 1\n" + MODEL) == (
        f"{key}: unknown key, ignored ({hint})",
    )


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("timeout", "did you mean 'healthCheckTimeout'?"),
        ("readyTimeout", "did you mean 'healthCheckTimeout'?"),
        ("stopTimeout", "did you mean 'unloadTimeout'?"),
        ("idleTimeout", "did you mean 'ttl'?"),
        ("alias", "did you mean 'aliases'?"),
        ("environment", "did you mean 'env'?"),
        ("stop", "did you mean 'cmdStop'?"),
        ("check_endpoint", "did you mean 'checkEndpoint'?"),
        ("alaises", "did you mean 'aliases'?"),
    ],
)
def test_hint_for_a_model_key(key: str, hint: str) -> None:
    assert warnings_of(MODEL + f"    {key}: 1\n") == (
        f"models.m.{key}: unknown key, ignored ({hint})",
    )


def test_hint_is_left_out_when_nothing_is_close() -> None:
    # "host" is not "hooks", "bogus" is nothing.
    assert warnings_of(MODEL + "    bogus: 1\n    hooks: 1\n") == (
        "models.m.bogus: unknown key, ignored",
        "models.m.hooks: unknown key, ignored",
    )
