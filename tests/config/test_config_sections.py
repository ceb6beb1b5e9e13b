"""controller.config.sections and controller.config.crosscheck: every
llama-swap config section below the top level, its defaults, and the exact
wording of each load-time error (llama-swap.md §1.2-§1.10). Errors go through
parse_config, so the text asserted is the text a user sees."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from controller.config.loader import parse_config
from controller.config.sections import DEFAULT_IGNORE_PATHS
from controller.errors import ConfigError
from tests.config.helpers import error_of, load, warnings_of

if TYPE_CHECKING:
    from controller.config.model import Config

# Two plain local models, a and b, for the sections to refer to.
AB = "models:\n  a:\n    cmd: srv ${PORT}\n  b:\n    cmd: srv ${PORT}\n"
PEER = "peers:\n  p:\n    proxy: http://127.0.0.1:9\n    models: [m]\n"


def model(mid: str, *lines: str) -> str:
    """A ``models:`` entry ``mid`` with the given (unindented) keys."""
    body = "".join(f"    {line}\n" for line in ("cmd: srv ${PORT}", *lines))
    return f"  {mid}:\n{body}"


def models(*entries: str) -> str:
    return "models:\n" + "".join(entries)


# -- capabilities --------------------------------------------------------------------


def test_capabilities_are_parsed() -> None:
    c = load(
        models(
            model(
                "a",
                "capabilities:",
                "  in: [text, image, audio]",
                "  out: [text]",
                "  tools: true",
                "  reranker: true",
                "  context: 32768",
            )
        )
    )
    cap = c.models["a"].capabilities
    assert (cap.in_, cap.out, cap.tools, cap.reranker, cap.context) == (
        ["text", "image", "audio"],
        ["text"],
        True,
        True,
        32768,
    )
    assert cap.configured


def test_capabilities_all_zero_is_not_configured() -> None:
    cap = load(AB).models["a"].capabilities
    assert (cap.in_, cap.out, cap.tools, cap.reranker, cap.context) == (
        [],
        [],
        False,
        False,
        0,
    )
    assert not cap.configured


@pytest.mark.parametrize("key", ["in", "out"])
def test_capabilities_invalid_modality(key: str) -> None:
    text = models(model("a", f"capabilities: {{{key}: [text, video]}}"))
    assert error_of(text) == (
        f'model a: capabilities.{key}: invalid modality "video", '
        "must be one of: text, audio, image"
    )


def test_capabilities_negative_context() -> None:
    text = models(model("a", "capabilities: {context: -1}"))
    assert error_of(text) == "model a: capabilities.context: must be >= 0"


def test_capabilities_context_from_a_macro_is_typed() -> None:
    text = "macros:\n  ctx: 8192\n" + models(
        model("a", "capabilities: {context: '${ctx}'}")
    )
    assert load(text).models["a"].capabilities.context == 8192


def test_capabilities_unknown_macro_names_the_section() -> None:
    text = models(model("a", "capabilities: {context: '${nope}'}"))
    assert error_of(text) == "model a capabilities: unknown macro '${nope}'"


# -- timeouts, compat, filters, metadata, sendLoadingState -------------------------------


def test_model_timeouts_defaults() -> None:
    t = load(AB).models["a"].timeouts
    assert (
        t.connect,
        t.keepalive,
        t.response_header,
        t.tls_handshake,
        t.expect_continue,
        t.idle_conn,
    ) == (30, 30, 0, 10, 1, 90)


def test_model_timeouts_are_kept() -> None:
    text = models(
        model(
            "a",
            "timeouts: {connect: 1, keepalive: 2, responseHeader: 3,"
            " tlsHandshake: 4, expectContinue: 5, idleConn: 6}",
        )
    )
    t = load(text).models["a"].timeouts
    assert (
        t.connect,
        t.keepalive,
        t.response_header,
        t.tls_handshake,
        t.expect_continue,
        t.idle_conn,
    ) == (1, 2, 3, 4, 5, 6)


def test_compat_ignore_websockets() -> None:
    assert load(AB).models["a"].compat.ignore_websockets is False
    text = models(model("a", "compat: {ignoreWebsockets: true}"))
    assert load(text).models["a"].compat.ignore_websockets is True


def test_filters_strip_params_are_normalised() -> None:
    text = models(
        model("a", "filters: {stripParams: ' top_p, model,,temperature, top_p'}")
    )
    assert load(text).models["a"].filters.strip() == ("temperature", "top_p")


def test_filters_legacy_strip_params_is_accepted() -> None:
    text = models(model("a", "filters: {strip_params: 'temperature'}"))
    c = load(text)
    assert c.models["a"].filters.strip() == ("temperature",)
    assert parse_config(text).warnings == ()


def test_filters_strip_params_wins_over_the_legacy_spelling() -> None:
    text = models(model("a", "filters: {stripParams: top_k, strip_params: top_p}"))
    assert load(text).models["a"].filters.strip() == ("top_k",)


def test_filters_legacy_strip_params_unknown_macro_names_strip_params() -> None:
    text = models(model("a", "filters: {strip_params: '${nope}'}"))
    assert error_of(text) == "unknown macro '${nope}' found in a.filters.stripParams"


def test_filters_strip_params_unknown_macro() -> None:
    text = models(model("a", "filters: {stripParams: 'x,${nope}'}"))
    assert error_of(text) == "unknown macro '${nope}' found in a.filters.stripParams"


def test_filters_set_params_keep_json_types() -> None:
    text = models(
        model("a", "filters:", "  setParams: {temperature: 0.5, n: 2, x: {y: [true]}}")
    )
    assert load(text).models["a"].filters.set_params == {
        "temperature": 0.5,
        "n": 2,
        "x": {"y": [True]},
    }


def test_metadata_is_macro_expanded_and_typed() -> None:
    text = "macros:\n  n: 7\n" + models(
        model("a", "metadata: {port: '${PORT}', n: '${n}', s: 'id ${MODEL_ID}'}")
    )
    assert load(text).models["a"].metadata == {"port": 5800, "n": 7, "s": "id a"}


def test_send_loading_state_per_model_overrides_the_global() -> None:
    text = "sendLoadingState: true\n" + models(
        model("a", "sendLoadingState: false"), model("b")
    )
    c = load(text)
    assert c.send_loading_state is True
    assert c.models["a"].send_loading_state is False
    assert c.models["b"].send_loading_state is None  # unset: the global applies


def test_include_aliases_in_list() -> None:
    assert load("").include_aliases_in_list is False
    assert load("includeAliasesInList: true\n").include_aliases_in_list is True


def test_leftover_env_macro_is_reported_as_an_unset_variable() -> None:
    # ${env.1X} is not a valid env macro name, so it survives env expansion.
    assert error_of("apiKeys: ['${env.1X}']\n") == (
        "apiKeys[0]: environment variable '1X' not set"
    )


@pytest.mark.parametrize(
    ("proxy", "detail"),
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://h:abc", "Port could not be cast to integer value as 'abc'"),
    ],
)
def test_model_invalid_proxy_url(proxy: str, detail: str) -> None:
    text = models(f"  a:\n    cmd: srv 1\n    proxy: '{proxy}'\n")
    assert error_of(text) == f"model a: invalid proxy URL: {detail}"


# -- comfyui_auto --------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "effective"), [(0, 50), (3, 50), (80, 80)])
def test_comfyui_auto_concurrency_is_at_least_50(limit: int, effective: int) -> None:
    c = load(models(model("comfyui_auto", f"concurrencyLimit: {limit}"), model("a")))
    assert c.concurrency_limit("comfyui_auto") == effective
    assert c.concurrency_limit("a") == 10


# -- groups ------------------------------------------------------------------------------


def test_group_defaults() -> None:
    g = load(AB + "groups:\n  g: {members: [a]}\n").groups["g"]
    assert (g.swap, g.exclusive, g.persistent, g.members) == (True, True, False, ["a"])


def test_group_duplicate_member() -> None:
    text = (
        AB
        + "routing:\n  router:\n    settings:\n      groups:\n        g: {members: [a, b, a]}\n"
    )
    assert error_of(text) == "duplicate model member a found in group: g"


def test_legacy_group_duplicate_member() -> None:
    assert error_of(AB + "groups:\n  g: {members: [a, a]}\n") == (
        "duplicate model member a found in group: g"
    )


def test_group_member_in_two_groups() -> None:
    text = AB + "groups:\n  g1: {members: [a]}\n  g2: {members: [b, a]}\n"
    assert error_of(text) == "model member a is used in multiple groups: g1 and g2"


def test_group_unknown_member() -> None:
    # llama-swap only fails later (creating group router: no model config for
    # "x"); swapvisor names it at load.
    assert error_of(AB + "groups:\n  g: {members: [a, x]}\n") == (
        "group g: member x is not a configured model "
        "(members must be model IDs, not aliases)"
    )


def test_group_member_may_not_be_an_alias() -> None:
    text = models(model("a", "aliases: [fast]")) + "groups:\n  g: {members: [fast]}\n"
    assert error_of(text).startswith("group g: member fast is not a configured model")


# -- routing normalisation ---------------------------------------------------------------

LEGACY_VS_ROUTER = (
    "config uses both the legacy top-level 'matrix'/'groups' keys and the new "
    "'routing.router' block; please migrate the top-level keys into "
    "'routing.router' and remove them"
)


@pytest.mark.parametrize(
    "text",
    [
        "groups:\n  g: {members: [a]}\nrouting:\n  router: {use: group}\n",
        (
            "groups:\n  g: {members: [a]}\n"
            "routing:\n  router: {settings: {groups: {h: {members: [b]}}}}\n"
        ),
        (
            "matrix:\n  sets: {s: a}\n"
            "routing:\n  router: {settings: {groups: {g: {members: [a]}}}}\n"
        ),
        (
            "matrix:\n  sets: {s: a}\n"
            "routing:\n  router: {settings: {matrix: {sets: {s: a}}}}\n"
        ),
        "matrix:\n  sets: {s: a}\nrouting:\n  router: {use: matrix}\n",
    ],
)
def test_legacy_keys_and_routing_router_together(text: str) -> None:
    assert error_of(AB + text) == LEGACY_VS_ROUTER


def test_legacy_keys_with_only_a_scheduler_block_are_fine() -> None:
    text = AB + "groups:\n  g: {members: [a]}\nrouting:\n  scheduler: {use: fifo}\n"
    assert load(text).routing_engine()[0] == "group"


def test_legacy_groups_and_matrix_together() -> None:
    text = AB + "groups:\n  g: {members: [a]}\nmatrix:\n  sets: {s: a}\n"
    assert error_of(text) == "config cannot use both 'groups' and 'matrix'"


def test_unknown_router() -> None:
    assert error_of(AB + "routing:\n  router: {use: swap}\n") == (
        'routing.router.use: unknown router "swap" (valid: group, matrix, resources)'
    )


def test_use_matrix_without_settings() -> None:
    assert error_of(AB + "routing:\n  router: {use: matrix}\n") == (
        "routing.router.use is 'matrix' but routing.router.settings.matrix is not set"
    )


def test_unknown_scheduler() -> None:
    assert error_of(AB + "routing:\n  scheduler: {use: lifo}\n") == (
        'routing.scheduler.use: unknown scheduler "lifo" (valid: fifo)'
    )


@pytest.mark.parametrize("use", ["fifo", "''"])
def test_scheduler_fifo_or_empty_is_fifo(use: str) -> None:
    assert load(
        AB + f"routing:\n  scheduler: {{use: {use}}}\n"
    ).routing.scheduler.use == ("fifo")


def test_matrix_errors_are_wrapped() -> None:
    text = (
        AB
        + "routing:\n  router: {use: matrix, settings: {matrix: {sets: {s: 'a & zz'}}}}\n"
    )
    assert error_of(text) == 'matrix: set "s": unknown var or model "zz"'


def test_matrix_must_define_a_set() -> None:
    assert error_of(AB + "matrix:\n  vars: {x: a}\n") == (
        "matrix: matrix must define at least one set"
    )


def test_routing_engine_default_is_one_default_group() -> None:
    assert load(AB).routing_engine() == ("group", {}, None)


def test_routing_engine_legacy_groups() -> None:
    engine, groups, matrix = load(
        AB + "groups:\n  g: {members: [a]}\n"
    ).routing_engine()
    assert (engine, list(groups), matrix) == ("group", ["g"], None)
    assert groups["g"].members == ["a"]


def test_routing_engine_router_groups() -> None:
    text = (
        AB + "routing:\n  router:\n    settings:\n      groups: {g: {members: [b]}}\n"
    )
    engine, groups, matrix = load(text).routing_engine()
    assert (engine, list(groups), matrix) == ("group", ["g"], None)


def test_routing_engine_legacy_matrix() -> None:
    engine, groups, matrix = load(AB + "matrix:\n  sets: {s: a & b}\n").routing_engine()
    assert (engine, groups) == ("matrix", {})
    assert matrix is not None and matrix.sets == {"s": "a & b"}


def test_routing_engine_use_selects_between_both_settings() -> None:
    settings = (
        "    settings:\n"
        "      groups: {g: {members: [a, a, nope]}}\n"  # inactive: not validated
        "      matrix: {sets: {s: a & b}}\n"
    )
    engine, _, matrix = load(
        AB + "routing:\n  router:\n    use: matrix\n" + settings
    ).routing_engine()
    assert engine == "matrix" and matrix is not None and matrix.sets == {"s": "a & b"}

    settings = (
        "    settings:\n"
        "      groups: {g: {members: [a]}}\n"
        "      matrix: {sets: {s: nope}}\n"  # inactive: not validated
    )
    engine, groups, matrix = load(
        AB + "routing:\n  router:\n    use: group\n" + settings
    ).routing_engine()
    assert (engine, list(groups), matrix) == ("group", ["g"], None)


# -- fifo priority ----------------------------------------------------------------------


def test_fifo_priority_unknown_model() -> None:
    text = (
        AB
        + "routing:\n  scheduler:\n    settings:\n      fifo:\n        priority: {x: 1}\n"
    )
    assert error_of(text) == (
        'routing.scheduler.settings.fifo.priority references unknown model "x"'
    )


def test_priority_of_models() -> None:
    text = (
        models(model("a", "aliases: [fast]"), model("b"), model("c"))
        + "routing:\n  scheduler:\n    settings:\n      fifo:\n"
        "        priority: {a: 5, b: -2}\n"
    )
    c = load(text)
    assert (c.priority("a"), c.priority("b"), c.priority("c")) == (5, -2, 0)


def test_priority_keyed_by_an_alias_applies_to_the_model() -> None:
    # llama-swap validates an alias key but never matches it at runtime;
    # swapvisor applies it to the model the alias names.
    text = (
        models(model("a", "aliases: [fast]"), model("b"))
        + "routing:\n  scheduler:\n    settings:\n      fifo:\n"
        "        priority: {fast: 3}\n"
    )
    assert load(text).priority("a") == 3


def test_priority_model_id_key_wins_over_an_alias_key() -> None:
    text = (
        models(model("a", "aliases: [fast]"))
        + "routing:\n  scheduler:\n    settings:\n      fifo:\n"
        "        priority: {fast: 3, a: 9}\n"
    )
    assert load(text).priority("a") == 9


# -- peers ---------------------------------------------------------------------------------


def test_peer_defaults() -> None:
    peer = load(PEER).peers["p"]
    assert peer.proxy == "http://127.0.0.1:9"
    assert peer.models == ["m"]
    assert peer.api_key == ""
    assert peer.timeouts.response_header == 60
    assert (peer.timeouts.connect, peer.timeouts.idle_conn) == (30, 90)
    assert not peer.filters.active


def test_peer_settings_are_kept() -> None:
    text = (
        "peers:\n  p:\n    proxy: https://peer.example.com/api\n    apiKey: sk-1\n"
        "    models: [m]\n    filters: {stripParams: top_p, setParams: {n: 1}}\n"
        "    timeouts: {responseHeader: 5}\n"
    )
    peer = load(text).peers["p"]
    assert (peer.api_key, peer.filters.strip(), peer.filters.set_params) == (
        "sk-1",
        ("top_p",),
        {"n": 1},
    )
    assert peer.timeouts.response_header == 5


@pytest.mark.parametrize("proxy", ["", "proxy: ''\n    ", "proxy: '  '\n    "])
def test_peer_proxy_is_required(proxy: str) -> None:
    assert error_of(f"peers:\n  p:\n    {proxy}models: [m]\n") == (
        "peers.p.proxy: proxy is required"
    )


@pytest.mark.parametrize("url", ["not a url", "ftp://h", "http://"])
def test_peer_invalid_proxy_url(url: str) -> None:
    assert error_of(f"peers:\n  p:\n    proxy: '{url}'\n    models: [m]\n") == (
        f"peers.p.proxy: invalid peer proxy URL ({url}): must be http(s)://host[:port]"
    )


@pytest.mark.parametrize("entry", ["", "models: []\n"])
def test_peer_models_can_not_be_empty(entry: str) -> None:
    text = f"peers:\n  p:\n    proxy: http://127.0.0.1:9\n    {entry}"
    assert error_of(text) == "peers.p.models: peer models can not be empty"


def test_peer_repeated_model_is_ignored() -> None:
    text = "peers:\n  p:\n    proxy: http://127.0.0.1:9\n    models: [m, m]\n"
    assert load(text).peer_of("p/m") == ("p", "m")


def test_peer_fqn_ambiguity() -> None:
    text = (
        "peers:\n"
        "  a:\n    proxy: http://127.0.0.1:9\n    models: [b/c]\n"
        "  a/b:\n    proxy: http://127.0.0.1:9\n    models: [c]\n"
    )
    assert error_of(text) == (
        'peer model name "a/b/c" is ambiguous between peers.a model "b/c" '
        'and peers.a/b model "c"'
    )


def test_model_id_conflicts_with_a_peer_fqn() -> None:
    assert error_of(models(model("p/m")) + PEER) == (
        'model ID "p/m" conflicts with fully qualified peer model name'
    )


def test_model_alias_conflicts_with_a_peer_fqn() -> None:
    assert error_of(models(model("a", "aliases: [p/m]")) + PEER) == (
        'model a alias "p/m" conflicts with fully qualified peer model name'
    )


def test_set_params_by_id_alias_conflicts_with_a_peer_fqn() -> None:
    text = models(model("a", "filters: {setParamsByID: {p/m: {x: 1}}}")) + PEER
    assert error_of(text) == (
        'model alias "p/m" conflicts with fully qualified peer model name'
    )


def test_selector_id_conflicts_with_a_peer_fqn() -> None:
    text = AB + PEER + "selectors:\n  p/m: {strategy: pin, targets: [a]}\n"
    assert error_of(text) == (
        'selector ID "p/m" conflicts with fully qualified peer model name'
    )


def test_profile_pin_conflicts_with_a_peer_fqn() -> None:
    text = AB + PEER + "profiles:\n  pr: {pins: {p/m: a}}\n"
    assert error_of(text) == (
        'profile pr pin "p/m" conflicts with fully qualified peer model name'
    )


def test_profile_pin_may_be_a_bare_peer_model_name_with_a_slash() -> None:
    text = (
        AB
        + "peers:\n  p:\n    proxy: http://127.0.0.1:9\n    models: [org/m]\n"
        + "profiles:\n  pr: {pins: {org/m: a}}\n"
    )
    assert load(text).profiles["pr"].pins == {"org/m": "a"}


# -- peer_of -------------------------------------------------------------------------------

PEERS = (
    "peers:\n"
    "  box1:\n    proxy: http://127.0.0.1:9\n    models: [qwen, shared, a, org/x]\n"
    "  box2:\n    proxy: http://127.0.0.1:9\n    models: [shared, llama]\n"
    "  gpu/rack:\n    proxy: http://127.0.0.1:9\n    models: [deep]\n"
)


@pytest.fixture
def peered() -> Config:
    return load(models(model("a", "aliases: [llama]")) + PEERS)


def test_peer_of_fqn(peered: Config) -> None:
    assert peered.peer_of("box1/qwen") == ("box1", "qwen")
    assert peered.peer_of("box2/shared") == ("box2", "shared")
    assert peered.peer_of("box1/org/x") == ("box1", "org/x")


def test_peer_of_fqn_with_a_slash_in_the_peer_id(peered: Config) -> None:
    assert peered.peer_of("gpu/rack/deep") == ("gpu/rack", "deep")


def test_peer_of_bare_unique(peered: Config) -> None:
    assert peered.peer_of("qwen") == ("box1", "qwen")
    assert peered.peer_of("deep") == ("gpu/rack", "deep")
    assert peered.peer_of("org/x") == ("box1", "org/x")


def test_peer_of_bare_ambiguous_is_none(peered: Config) -> None:
    assert peered.peer_of("shared") is None


def test_peer_of_unknown_is_none(peered: Config) -> None:
    assert peered.peer_of("nope") is None
    assert peered.peer_of("box1/nope") is None


def test_peer_of_local_wins(peered: Config) -> None:
    # a (a model id) and llama (an alias) are also listed by peers.
    assert peered.resolve("a") == "a" and peered.peer_of("a") is None
    assert peered.resolve("llama") == "a" and peered.peer_of("llama") is None
    assert peered.peer_of("box1/a") == ("box1", "a")
    assert peered.peer_of("box2/llama") == ("box2", "llama")


def test_peer_of_fqn_wins_over_a_bare_name() -> None:
    text = (
        "peers:\n"
        "  a:\n    proxy: http://127.0.0.1:9\n    models: [b]\n"
        "  x:\n    proxy: http://127.0.0.1:9\n    models: [a/b]\n"
    )
    assert load(text).peer_of("a/b") == ("a", "b")


# -- selectors -----------------------------------------------------------------------------


def test_selector_fields() -> None:
    text = (
        AB + "selectors:\n  s:\n    strategy: spillover\n    targets: [a]\n"
        "    settings: {spillover: 3}\n    name: S\n    description: D\n"
        "    unlisted: true\n    metadata: {k: v}\n"
    )
    s = load(text).selectors["s"]
    assert (s.strategy, s.targets, s.settings.spillover) == ("spillover", ["a"], 3)
    assert (s.name, s.description, s.unlisted, s.metadata) == (
        "S",
        "D",
        True,
        {"k": "v"},
    )


def test_selector_spillover_defaults_to_1() -> None:
    s = load(AB + "selectors:\n  s: {strategy: spillover, targets: [a]}\n").selectors[
        "s"
    ]
    assert s.settings.spillover == 1


@pytest.mark.parametrize("strategy", ["", "strategy: ''\n    ", "strategy: ' '\n    "])
def test_selector_strategy_is_required(strategy: str) -> None:
    text = AB + f"selectors:\n  s:\n    {strategy}targets: [a]\n"
    assert error_of(text) == "selectors.s.strategy is required"


def test_selector_unknown_strategy() -> None:
    text = AB + "selectors:\n  s: {strategy: balance, targets: [a]}\n"
    assert error_of(text) == (
        'selectors.s.strategy: unknown strategy "balance" (valid: warm, pin, spillover)'
    )


@pytest.mark.parametrize("targets", ["", "targets: []\n"])
def test_selector_targets_must_not_be_empty(targets: str) -> None:
    text = AB + f"selectors:\n  s:\n    strategy: pin\n    {targets}"
    assert error_of(text) == "selectors.s.targets must contain at least one entry"


def test_selector_unknown_target() -> None:
    text = AB + "selectors:\n  s: {strategy: pin, targets: [a, nope]}\n"
    assert error_of(text) == 'selectors.s.targets[1] references unknown model "nope"'


def test_selector_chaining() -> None:
    text = (
        AB + "selectors:\n  s1: {strategy: pin, targets: [a]}\n"
        "  s2: {strategy: pin, targets: [b, s1]}\n"
    )
    assert error_of(text) == (
        'selectors.s2.targets[1] references selector "s1"; '
        "selector chaining is not supported"
    )


@pytest.mark.parametrize("target", ["m", "p/m"])
def test_selector_warm_requires_local_targets(target: str) -> None:
    text = AB + PEER + f"selectors:\n  s: {{strategy: warm, targets: [a, {target}]}}\n"
    assert error_of(text) == (
        'selectors.s.targets[1] must resolve to a local model for strategy "warm"'
    )


def test_selector_targets_may_be_aliases_and_peers() -> None:
    text = (
        models(model("a", "aliases: [fast]"), model("b"))
        + PEER
        + "selectors:\n  w: {strategy: warm, targets: [fast, b]}\n"
        "  p1: {strategy: pin, targets: [m, p/m, a]}\n"
    )
    c = load(text)
    assert c.selectors["w"].targets == ["fast", "b"]
    assert c.selectors["p1"].targets == ["m", "p/m", "a"]


def test_selector_spillover_below_1() -> None:
    text = AB + "selectors:\n  s:\n    strategy: spillover\n    targets: [a]\n"
    text += "    settings: {spillover: 0}\n"
    assert error_of(text) == "selectors.s.settings.spillover must be >= 1"


SPILL = "selectors:\n  s: {strategy: spillover, targets: [a, b]}\n"


def test_selector_spillover_duplicate_resolved_target() -> None:
    text = (
        models(model("a", "aliases: [fast]"))
        + "selectors:\n  s: {strategy: spillover, targets: [a, fast]}\n"
    )
    assert error_of(text) == 'selectors.s.targets contains duplicate resolved model "a"'


def test_selector_spillover_duplicate_peer_target() -> None:
    text = AB + PEER + "selectors:\n  s: {strategy: spillover, targets: [m, p/m]}\n"
    assert error_of(text) == (
        'selectors.s.targets contains duplicate resolved model "p/m"'
    )


def test_selector_spillover_target_not_in_a_group() -> None:
    text = AB + "groups:\n  g: {swap: false, members: [b]}\n" + SPILL
    assert error_of(text) == 'selectors.s target "a" is not in a routing group'


def test_selector_spillover_targets_in_different_groups() -> None:
    text = (
        AB
        + "groups:\n  g: {swap: false, members: [a]}\n  h: {swap: false, members: [b]}\n"
        + SPILL
    )
    assert (
        error_of(text) == "selectors.s spillover targets must share one routing group"
    )


def test_selector_spillover_later_target_outside_the_group() -> None:
    text = AB + "groups:\n  g: {swap: false, members: [a]}\n" + SPILL
    assert (
        error_of(text) == "selectors.s spillover targets must share one routing group"
    )


def test_selector_spillover_swap_group() -> None:
    text = AB + "groups:\n  g: {members: [a, b]}\n" + SPILL
    assert error_of(text) == (
        "selectors.s spillover targets must share a group with swap: false"
    )


def test_selector_spillover_no_groups_at_all() -> None:
    # Every model is in the implicit (default) group, which swaps.
    assert error_of(AB + SPILL) == 'selectors.s target "a" is not in a routing group'


def test_selector_spillover_in_a_swap_false_group_is_fine() -> None:
    text = AB + "groups:\n  g: {swap: false, members: [a, b]}\n" + SPILL
    assert load(text).selectors["s"].targets == ["a", "b"]


def test_selector_spillover_one_local_target_and_a_peer_is_fine() -> None:
    text = AB + PEER + "selectors:\n  s: {strategy: spillover, targets: [a, p/m]}\n"
    assert load(text).selectors["s"].targets == ["a", "p/m"]


def test_selector_spillover_matrix_coexistence() -> None:
    text = AB + "matrix:\n  sets: {x: a, y: b}\n" + SPILL
    assert error_of(text) == (
        "selectors.s.targets must all appear together in one expanded matrix set"
    )


def test_selector_spillover_matrix_coexisting_targets_are_fine() -> None:
    text = (
        AB
        + "routing:\n  router:\n    use: matrix\n"
        + "    settings: {matrix: {sets: {x: 'a & b'}}}\n"
        + SPILL
    )
    assert load(text).selectors["s"].strategy == "spillover"


def test_selector_id_conflicts_with_a_model_id() -> None:
    text = AB + "selectors:\n  a: {strategy: pin, targets: [b]}\n"
    assert error_of(text) == 'selectors.a: name conflicts with model ID "a"'


def test_selector_id_conflicts_with_an_alias() -> None:
    text = models(model("a", "aliases: [fast]")) + (
        "selectors:\n  fast: {strategy: pin, targets: [a]}\n"
    )
    assert error_of(text) == 'selectors.fast: name conflicts with model alias "fast"'


def test_selector_id_conflicts_with_a_set_params_by_id_alias() -> None:
    text = models(model("a", "filters: {setParamsByID: {'a:x': {n: 1}}}")) + (
        "selectors:\n  'a:x': {strategy: pin, targets: [a]}\n"
    )
    assert error_of(text) == 'selectors.a:x: name conflicts with model alias "a:x"'


# -- profiles ------------------------------------------------------------------------------


def test_profile_fields() -> None:
    text = (
        AB
        + PEER
        + "selectors:\n  sel: {strategy: pin, targets: [a]}\n"
        + "profiles:\n  fast:\n    description: quick\n"
        "    pins: {a: b, gpt: p/m, other: m, x: sel, off: '', gone: ~}\n"
    )
    p = load(text).profiles["fast"]
    assert p.description == "quick"
    assert p.pins == {
        "a": "b",
        "gpt": "p/m",
        "other": "m",
        "x": "sel",
        "off": "",
        "gone": None,
    }


def test_profile_name_cannot_be_empty() -> None:
    assert error_of(AB + "profiles:\n  '': {pins: {x: a}}\n") == (
        "profiles: profile names cannot be empty"
    )


@pytest.mark.parametrize("pins", ["{description: d}", "{pins: {}}"])
def test_profile_pins_cannot_be_empty(pins: str) -> None:
    assert error_of(AB + f"profiles:\n  p: {pins}\n") == (
        "profiles.p.pins must contain at least one entry"
    )


def test_profile_pin_name_cannot_be_empty() -> None:
    assert error_of(AB + "profiles:\n  p: {pins: {'': a}}\n") == (
        "profiles.p.pins: pin names cannot be empty"
    )


def test_profile_pin_unknown_target() -> None:
    assert error_of(AB + "profiles:\n  p: {pins: {x: nope}}\n") == (
        'profiles.p.pins.x references unknown model "nope"'
    )


def test_profile_pins_do_not_chain() -> None:
    assert error_of(AB + "profiles:\n  p: {pins: {x: a, y: x}}\n") == (
        'profiles.p.pins.y references unknown model "x"'
    )


def test_profile_legacy_list_syntax() -> None:
    assert error_of(AB + "profiles:\n  coding: [a, b]\n") == (
        "profiles.coding: profile must be a mapping with description and pins; "
        "the legacy list syntax is no longer supported"
    )


def test_profile_description_is_at_most_1024_characters() -> None:
    text = AB + "profiles:\n  p: {description: '" + "x" * 1025 + "', pins: {x: a}}\n"
    assert error_of(text).startswith("profiles.p.description: ")


# -- setParamsByID -----------------------------------------------------------------------


def test_set_params_by_id_keys_are_aliases() -> None:
    text = models(
        model("chat", "filters:", "  setParamsByID:", "    'chat:think': {think: true}")
    )
    c = load(text)
    assert c.resolve("chat:think") == "chat"
    assert c.alias_owner("chat:think") == "chat"
    assert c.models["chat"].filters.set_params_by_id == {"chat:think": {"think": True}}


def test_set_params_by_id_own_id_is_not_an_alias() -> None:
    text = models(model("chat", "filters: {setParamsByID: {chat: {n: 1}}}"))
    c = load(text)
    assert c.resolve("chat") == "chat"
    assert c.alias_owner("chat") is None


def test_set_params_by_id_key_may_repeat_an_own_alias() -> None:
    text = models(
        model("chat", "aliases: [c]", "filters: {setParamsByID: {c: {n: 1}}}")
    )
    assert load(text).resolve("c") == "chat"


def test_set_params_by_id_conflicts_with_another_model_id() -> None:
    text = models(model("a"), model("b", "filters: {setParamsByID: {a: {n: 1}}}"))
    assert error_of(text) == (
        "model b filters.setParamsByID: key 'a' conflicts with an existing model ID"
    )


def test_set_params_by_id_conflicts_with_another_models_alias() -> None:
    text = models(
        model("a", "aliases: [fast]"),
        model("b", "filters: {setParamsByID: {fast: {n: 1}}}"),
    )
    assert error_of(text) == (
        "duplicate alias 'fast' in model b filters.setParamsByID, "
        "already used by model a"
    )


def test_set_params_by_id_conflicts_with_another_models_key() -> None:
    text = models(
        model("a", "filters: {setParamsByID: {k: {n: 1}}}"),
        model("b", "filters: {setParamsByID: {k: {n: 2}}}"),
    )
    assert error_of(text) == (
        "duplicate alias 'k' in model b filters.setParamsByID, already used by model a"
    )


def test_set_params_by_id_keys_expanding_to_the_same_value() -> None:
    text = models(
        model(
            "a", "filters:", "  setParamsByID: {'${MODEL_ID}:x': {n: 1}, 'a:x': {n: 2}}"
        )
    )
    assert error_of(text) == (
        'model a filters.setParamsByID: keys "${MODEL_ID}:x" and "a:x" '
        "resolve to the same value"
    )


def test_set_params_by_id_keys_expand_macros() -> None:
    text = "macros:\n  suffix: think\n" + models(
        model(
            "org/chat",
            "macros: {mode: fast}",
            "filters:",
            "  setParamsByID:",
            "    '${MODEL_ID}:${suffix}': {t: '${MODEL_ID}'}",
            "    '${MODEL_ID}-${mode}': {t: 1}",
            "    'port-${PORT}': {t: 2}",
        )
    )
    c = load(text)
    assert c.models["org/chat"].filters.set_params_by_id == {
        "org/chat:think": {"t": "org/chat"},
        "org/chat-fast": {"t": 1},
        "port-5800": {"t": 2},
    }
    for key in ("org/chat:think", "org/chat-fast", "port-5800"):
        assert c.resolve(key) == "org/chat"


def test_set_params_by_id_unknown_macro_in_a_key() -> None:
    text = models(model("a", "filters: {setParamsByID: {'${nope}:x': {n: 1}}}"))
    assert error_of(text) == (
        "unknown macro '${nope}' found in model a filters.setParamsByID key"
    )


def test_set_params_by_id_port_in_a_key_without_port_in_cmd() -> None:
    text = models(
        "  a:\n    cmd: srv 1\n    proxy: http://127.0.0.1:1\n"
        "    filters: {setParamsByID: {'a-${PORT}': {n: 1}}}\n"
    )
    assert error_of(text) == (
        "unknown macro '${PORT}' found in model a filters.setParamsByID key"
    )


# -- upstream.ignorePaths ------------------------------------------------------------------


def test_ignore_paths_default_when_absent_or_empty() -> None:
    for text in ("", "upstream: {}\n", "upstream: {ignorePaths: []}\n"):
        patterns = load(text).upstream.patterns()
        assert [p.pattern for p in patterns] == list(DEFAULT_IGNORE_PATHS)


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("/static/app.js", True),
        ("/favicon.ico", True),
        ("/props.json", True),
        ("/v1/chat/completions", False),
        ("/", False),
        ("/app.jsx", False),
    ],
)
def test_ignore_paths_default_matches_static_assets(path: str, ignored: bool) -> None:
    patterns = load("").upstream.patterns()
    assert any(p.search(path) for p in patterns) is ignored


def test_ignore_paths_custom_list_replaces_the_default() -> None:
    c = load("upstream:\n  ignorePaths: ['^/metrics$']\n")
    assert [p.pattern for p in c.upstream.patterns()] == ["^/metrics$"]


def test_ignore_paths_invalid_regex() -> None:
    assert error_of("upstream:\n  ignorePaths: ['ok', '(']\n") == (
        'upstream.ignorePaths: invalid regular expression "(": '
        "missing ), unterminated subpattern at position 0"
    )


# -- hooks ---------------------------------------------------------------------------------


def test_hooks_preload_of_an_unknown_name_warns_naming_it() -> None:
    text = AB + "hooks:\n  on_startup:\n    preload: [a, nope]\n"
    assert warnings_of(text) == (
        (
            "hooks.on_startup.preload[1]: 'nope' is not a local model; "
            "it will not be preloaded"
        ),
    )


def test_hooks_preload_of_a_peer_model_warns() -> None:
    text = AB + PEER + "hooks:\n  on_startup:\n    preload: [p/m]\n"
    assert warnings_of(text) == (
        (
            "hooks.on_startup.preload[0]: 'p/m' is not a local model; "
            "it will not be preloaded"
        ),
    )


def test_hooks_preload_of_aliases_padded_and_empty_entries_is_quiet() -> None:
    text = (
        models(model("a", "aliases: [fast]"))
        + "hooks:\n  on_startup:\n    preload: [' a ', fast, '', ' ']\n"
    )
    loaded = parse_config(text)
    assert loaded.warnings == ()
    assert loaded.config.hooks.on_startup.preload == [" a ", "fast", "", " "]


# -- YAML anchors, unknown top-level keys, alias lookup -----------------------------------

ANCHORS = """\
defs:
  base: &base
    cmd: srv --port ${PORT} --id ${MODEL_ID} --q ${q}
    ttl: 5
models:
  a:
    <<: *base
    macros: {q: A}
  b:
    <<: *base
    macros: {q: B}
    ttl: 7
"""


def test_a_shared_anchor_expands_per_model() -> None:
    loaded = parse_config(ANCHORS)
    a, b = loaded.config.models["a"], loaded.config.models["b"]
    assert (a.cmd, a.ttl) == ("srv --port 5800 --id a --q A", 5)
    assert (b.cmd, b.ttl) == ("srv --port 5801 --id b --q B", 7)
    # The anchor holder is an unknown key: named, and its ${...} never checked.
    assert [w.split(":")[0] for w in loaded.warnings] == ["defs"]


def test_unknown_macro_in_a_known_top_level_key_is_an_error() -> None:
    assert error_of("store:\n  path: '/tmp/${nope}.db'\n") == (
        "store.path: unknown macro '${nope}'"
    )


def test_an_alias_equal_to_another_model_id_is_shadowed_by_it() -> None:
    c = load(models(model("a", "aliases: [b]"), model("b")))
    assert c.resolve("b") == "b"


def test_unapplied_timeouts_warn_only_when_changed() -> None:
    base = 'models: {a: {cmd: x, proxy: "http://127.0.0.1:1", timeouts: {%s}}}\n'
    assert parse_config(base % "idleConn: 90, keepalive: 30").warnings == ()
    assert parse_config(base % "idleConn: 5").warnings == (
        (
            "models.a.timeouts.idleConn: a non-default value is not applied by "
            "swapvisor (connect and responseHeader are)"
        ),
    )


def test_podman_engine_over_ssh_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="ssh:// is not supported for Podman"):
        parse_config(
            "models: {a: {proxy: 'http://127.0.0.1:1', "
            "podman: {image: i, engine: 'ssh://h/run/p.sock'}}}\n"
        )
