"""controller.matrix: llama-swap's matrix DSL and solver (llama-swap.md §1.7, §4)."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import yaml

from controller.config.matrix import (
    DSLError,
    Ident,
    Op,
    Ref,
    State as _State,
    Token,
    go_quote,
    maximal as _maximal,
    parse_dsl,
    tokenize,
)
from controller.engine.matrix import (
    MatrixDecision,
    MatrixPolicy,
    policy_from_config,
)
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.config.matrix import Expr
    from controller.engine.scheduler import EvictionPolicy

MODELS = ["a", "b", "c", "d", "e", "t"]


def policy(
    sets: Mapping[str, str],
    models: list[str] | None = None,
    vars: Mapping[str, str] | None = None,
    costs: Mapping[str, int] | None = None,
) -> MatrixPolicy:
    return MatrixPolicy(
        vars or {}, costs or {}, sets, MODELS if models is None else models
    )


def family(*sets: str) -> list[frozenset[str]]:
    """family("ac", "bc") -> [{a, c}, {b, c}] (one-letter model names)."""
    return [frozenset(s) for s in sets]


def config_error(
    sets: Mapping[str, str],
    vars: Mapping[str, str] | None = None,
    costs: Mapping[str, int] | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        policy(sets, vars=vars, costs=costs)
    return info.value.message


# -- tokenizer --------------------------------------------------------------------


def test_tokenize_operators_refs_and_identifiers() -> None:
    assert tokenize("(a | +base) & b") == [
        Token("(", "("),
        Token("ident", "a"),
        Token("|", "|"),
        Token("ref", "base"),
        Token(")", ")"),
        Token("&", "&"),
        Token("ident", "b"),
        Token("eof", ""),
    ]


def test_tokenize_identifiers_take_unicode_letters_digits_underscore_dash_dot() -> None:
    assert tokenize("modèle_7B-v2.5&日本") == [
        Token("ident", "modèle_7B-v2.5"),
        Token("&", "&"),
        Token("ident", "日本"),
        Token("eof", ""),
    ]


def test_tokenize_whitespace_is_ignored() -> None:
    assert [t.kind for t in tokenize(" a\t&\n b ")] == ["ident", "&", "ident", "eof"]


def test_tokenize_unexpected_character_position_is_zero_based() -> None:
    with pytest.raises(
        DSLError, match="^tokenize: unexpected character '@' at position 2$"
    ):
        tokenize("a @ b")


def test_tokenize_characters_outside_the_identifier_set_need_a_var() -> None:
    with pytest.raises(DSLError) as info:
        tokenize("org/model")
    assert str(info.value) == "tokenize: unexpected character '/' at position 3"


def test_tokenize_quotes_characters_like_go() -> None:
    with pytest.raises(DSLError) as info:
        tokenize("a'")
    assert str(info.value) == "tokenize: unexpected character '\\'' at position 1"
    with pytest.raises(DSLError) as info:
        tokenize("a\x01")
    assert str(info.value) == "tokenize: unexpected character '\\x01' at position 1"


def test_tokenize_plus_without_a_name_reports_the_position_after_it() -> None:
    with pytest.raises(DSLError) as info:
        tokenize("a & +")
    assert str(info.value) == "tokenize: expected set name after '+' at position 5"
    with pytest.raises(DSLError) as info:
        tokenize("+ a")
    assert str(info.value) == "tokenize: expected set name after '+' at position 1"


def test_parse_positions_count_from_the_trimmed_expression() -> None:
    with pytest.raises(DSLError) as info:
        parse_dsl("   a@")
    assert str(info.value) == "tokenize: unexpected character '@' at position 1"


# -- parser -----------------------------------------------------------------------


def test_parse_and_binds_tighter_than_or() -> None:
    assert parse_dsl("a | b & c") == Op(
        "|", (Ident("a"), Op("&", (Ident("b"), Ident("c"))))
    )


def test_parse_chains_are_flat_and_parentheses_group() -> None:
    expected: Expr = Op("&", (Op("|", (Ident("a"), Ident("b"))), Ident("c"), Ref("r")))
    assert parse_dsl("(a|b) & c & +r") == expected
    assert parse_dsl("((a))") == Ident("a")


@pytest.mark.parametrize(
    ("dsl", "message"),
    [
        ("", "empty DSL expression"),
        ("  \t ", "empty DSL expression"),
        ("(a", "parse: missing closing parenthesis"),
        ("(a | b", "parse: missing closing parenthesis"),
        ("()", 'parse: unexpected token ")"'),
        (")", 'parse: unexpected token ")"'),
        ("a &", 'parse: unexpected token ""'),
        ("a | | b", 'parse: unexpected token "|"'),
        ("a)", 'parse: unexpected token ")" after expression'),
        ("a x", 'parse: unexpected token "x" after expression'),
        ("a +r", 'parse: unexpected token "r" after expression'),
        ("(a) (b)", 'parse: unexpected token "(" after expression'),
    ],
)
def test_parse_errors(dsl: str, message: str) -> None:
    with pytest.raises(DSLError) as info:
        parse_dsl(dsl)
    assert str(info.value) == message


# -- semantics: expanded families (§4.2) ------------------------------------------


@pytest.mark.parametrize(
    ("dsl", "expected"),
    [
        ("a", family("a")),
        ("a|b", family("a", "b")),
        ("(a|b) & c", family("ac", "bc")),
        ("(a|b)&(c|d)", family("ac", "ad", "bc", "bd")),
        ("a | b & c", family("a", "bc")),
        ("a & a", family("a")),
        ("a & (b | c) & d", family("abd", "acd")),
    ],
)
def test_expand_grammar_examples(dsl: str, expected: list[frozenset[str]]) -> None:
    assert policy({"s": dsl}).expand("s") == expected


def test_expand_reference_inlines_the_referenced_set() -> None:
    p = policy(
        {"llms": "g | q | m", "with_v": "+llms & v"},
        models=["g", "q", "m", "v"],
    )
    assert p.expand("with_v") == family("gv", "qv", "mv")


def test_expand_nested_references() -> None:
    p = policy(
        {"llms": "g | q | m", "with_v": "+llms & v", "mega": "+with_v & e"},
        models=["g", "q", "m", "v", "e"],
    )
    assert p.expand("mega") == family("gve", "qve", "mve")


def test_expand_var_and_model_naming_the_same_model_collapse() -> None:
    p = policy({"s": "g & gemma"}, models=["gemma"], vars={"g": "gemma"})
    assert p.expand("s") == [frozenset({"gemma"})]


def test_expand_projects_onto_relevant_models() -> None:
    p = policy({"s": "(a|b)&(c|d)"})
    assert p.expand("s", relevant={"a", "c"}) == family("ac")


def test_var_shadows_a_model_id_of_the_same_name() -> None:
    p = policy({"s": "a & c"}, vars={"a": "b"})
    assert p.expand("s") == family("bc")


# -- solver (§4.3, §4.4) ----------------------------------------------------------

VOICE_MODELS = ["gemma-model", "qwen-model", "voxtral-model", "llama-70B"]


def voice_policy() -> MatrixPolicy:
    return MatrixPolicy(
        {"g": "gemma-model", "q": "qwen-model", "v": "voxtral-model"},
        {"v": 50},
        {"standard": "(g | q) & v", "full": "llama-70B"},
        VOICE_MODELS,
    )


def test_example_swapping_the_llm_keeps_the_expensive_voice_model() -> None:
    p = voice_policy()
    running = {"voxtral-model", "gemma-model"}
    assert p.evict("qwen-model", running) == {"gemma-model"}
    assert p.decide("qwen-model", running) == MatrixDecision(
        set_name="standard",
        dsl="(g | q) & v",
        evict=frozenset({"gemma-model"}),
        cost=1,
        members=frozenset({"qwen-model", "voxtral-model"}),
    )


def test_example_the_big_model_evicts_everything() -> None:
    p = voice_policy()
    running = {"voxtral-model", "gemma-model"}
    assert p.evict("llama-70B", running) == {"voxtral-model", "gemma-model"}
    assert p.explain("llama-70B", running) == (
        "full",
        frozenset({"voxtral-model", "gemma-model"}),
        51,
    )


def test_matrix_policy_is_an_eviction_policy() -> None:
    scheduler_policy: EvictionPolicy = voice_policy()
    assert scheduler_policy.evict("gemma-model", set()) == frozenset()


def test_target_already_running_evicts_nothing() -> None:
    p = voice_policy()
    running = {"llama-70B", "gemma-model"}  # not a combination any set allows
    assert p.evict("gemma-model", running) == frozenset()
    assert p.explain("gemma-model", {"gemma-model", "voxtral-model"}) == (
        "standard",
        frozenset(),
        0,
    )


def test_nothing_running_evicts_nothing() -> None:
    assert voice_policy().explain("qwen-model", set()) == ("standard", frozenset(), 0)


def test_subset_semantics_a_set_only_allows_coexistence() -> None:
    p = policy({"s": "a & b & c"})
    assert p.evict("b", {"a"}) == frozenset()
    assert p.evict("c", {"a", "b"}) == frozenset()


def test_model_in_no_set_runs_alone() -> None:
    p = policy({"s": "a & b"})
    assert p.explain("e", {"a", "b"}) == (None, frozenset({"a", "b"}), 2)


def test_models_outside_the_matrix_are_evicted_at_default_cost() -> None:
    p = policy({"s": "a & b"})
    assert p.explain("a", {"b", "ghost"}) == ("s", frozenset({"ghost"}), 1)


def test_lowest_cost_set_wins_regardless_of_order() -> None:
    p = policy({"small": "t & a", "large": "t & b & c"})
    assert p.explain("t", {"a", "b", "c"}) == ("large", frozenset({"a"}), 1)


def test_ties_go_to_the_first_set_in_definition_order() -> None:
    p = policy({"first": "t & a", "second": "t & b"})
    assert p.explain("t", {"a", "b"}) == ("first", frozenset({"b"}), 1)
    p = policy({"first": "t & b", "second": "t & a"})
    assert p.explain("t", {"a", "b"}) == ("first", frozenset({"a"}), 1)


def test_ties_put_a_referenced_set_before_the_sets_referencing_it() -> None:
    p = policy({"uses": "t & a | +base", "base": "t & b"})
    assert p.evaluation_order == ("base", "uses")
    # In definition order "uses" would win with {t, a}; dependency-first
    # order tries "base" ({t, b}) first.
    assert p.explain("t", {"a", "b"}) == ("base", frozenset({"a"}), 1)


def test_ties_within_a_set_explore_alternatives_left_to_right() -> None:
    assert policy({"s": "t & (a | b)"}).evict("t", {"a", "b"}) == {"b"}
    assert policy({"s": "t & (b | a)"}).evict("t", {"a", "b"}) == {"a"}


def test_evict_costs_change_the_choice() -> None:
    sets = {"with_a": "t & a", "with_b_c": "t & b & c"}
    running = {"a", "b", "c"}
    assert policy(sets).explain("t", running) == ("with_b_c", frozenset({"a"}), 1)
    p = policy(sets, costs={"a": 5})
    assert p.explain("t", running) == ("with_a", frozenset({"b", "c"}), 2)


def test_evict_costs_accept_vars_and_model_ids() -> None:
    sets = {"with_a": "t & a", "with_b": "t & b"}
    running = {"a", "b"}
    assert policy(sets, vars={"x": "a"}, costs={"x": 3}).evict("t", running) == {"b"}
    assert policy(sets, costs={"a": 3}).evict("t", running) == {"b"}


def test_dominated_projection_keeps_the_larger_combination() -> None:
    p = policy({"s": "t & (a | (a & b))"})
    assert p.decide("t", {"a", "b"}).evict == frozenset()


def test_overlapping_references_allow_everything_they_name() -> None:
    p = policy({"base": "a & b", "extended": "t & +base & b"})
    assert p.decide("t", {"a", "b"}) == MatrixDecision(
        "extended", "t & +base & b", frozenset(), 0, frozenset({"a", "b", "t"})
    )


def test_the_target_is_never_evicted_even_if_running_lists_it() -> None:
    p = policy({"s": "a | b"})
    assert "a" not in p.evict("a", {"a", "b"})


# -- coexist (selector spillover validation) --------------------------------------


def test_coexist() -> None:
    p = policy({"llms": "a | b", "pair": "+llms & c", "solo": "d"})
    assert p.coexist({"a", "c"})
    assert p.coexist(["b", "c"])
    assert p.coexist({"d"})
    assert p.coexist(set())
    assert not p.coexist({"a", "b"})
    assert not p.coexist({"c", "d"})
    assert not p.coexist({"e"})


# -- load-time errors (exact llama-swap texts) ------------------------------------


@pytest.mark.parametrize(
    ("dsl", "message"),
    [
        (
            "a @ b",
            "matrix: set \"s\": tokenize: unexpected character '@' at position 2",
        ),
        (
            "a & +",
            "matrix: set \"s\": tokenize: expected set name after '+' at position 5",
        ),
        ("", 'matrix: set "s": empty DSL expression'),
        ("(a", 'matrix: set "s": parse: missing closing parenthesis'),
        ("()", 'matrix: set "s": parse: unexpected token ")"'),
        ("a b", 'matrix: set "s": parse: unexpected token "b" after expression'),
        ("a & x", 'matrix: set "s": unknown var or model "x"'),
        ("a & +nope", 'matrix: set "s" references undefined set "nope"'),
    ],
)
def test_set_errors_are_wrapped_with_the_set_name(dsl: str, message: str) -> None:
    assert config_error({"s": dsl}) == message


def test_first_bad_name_left_to_right_is_reported() -> None:
    assert (
        config_error({"s": "(x | +nope) & y"})
        == 'matrix: set "s": unknown var or model "x"'
    )
    assert (
        config_error({"s": "(+nope | x) & y"})
        == 'matrix: set "s" references undefined set "nope"'
    )


def test_sets_are_checked_in_definition_order() -> None:
    assert (
        config_error({"one": "x", "two": "("})
        == 'matrix: set "one": unknown var or model "x"'
    )
    assert (
        config_error({"one": "(a", "two": "x"})
        == 'matrix: set "one": parse: missing closing parenthesis'
    )


def test_aliases_are_not_model_ids() -> None:
    # MatrixPolicy is given real model ids only; an alias is just unknown.
    assert (
        config_error({"s": "alias-of-a"})
        == 'matrix: set "s": unknown var or model "alias-of-a"'
    )


def test_circular_references() -> None:
    assert (
        config_error({"a": "+b", "b": "+a"})
        == 'matrix: circular reference detected involving set "a"'
    )
    assert (
        config_error({"a": "t & +a"})
        == 'matrix: circular reference detected involving set "a"'
    )
    three = {"x": "t", "a": "+b | t", "b": "+c", "c": "a & +b"}
    assert (
        config_error(three) == 'matrix: circular reference detected involving set "b"'
    )


def test_at_least_one_set() -> None:
    assert config_error({}) == "matrix: matrix must define at least one set"


def test_var_must_name_a_real_model() -> None:
    message = config_error({"s": "a"}, vars={"x": "nope"})
    assert message == 'matrix: var key "x" references unknown model "nope"'


@pytest.mark.parametrize("key", ["a_b", "", "x" * 33, "a b", "a\n"])
def test_var_key_pattern(key: str) -> None:
    assert config_error({"s": "a"}, vars={key: "a"}) == (
        f"matrix: var key {go_quote(key)} must contain only alphanumeric, '-' or '.'"
        " characters and be 1-32 characters long"
    )


def test_var_key_pattern_accepts_dots_dashes_and_32_characters() -> None:
    p = policy({"s": "q-3.5 & " + "k" * 32}, vars={"q-3.5": "a", "k" * 32: "b"})
    assert p.expand("s") == family("ab")


@pytest.mark.parametrize(
    ("cost", "shown"),
    [(0, "0"), (-3, "-3"), ("5", "'5'"), (1.5, "1.5"), (True, "True")],
)
def test_evict_cost_must_be_a_positive_integer(cost: object, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        MatrixPolicy({}, {"a": cost}, {"s": "a"}, MODELS)  # type: ignore[dict-item]
    assert (
        info.value.message
        == f'matrix: evict_cost for "a" must be a positive integer, got {shown}'
    )


def test_evict_cost_key_must_be_a_var_or_model() -> None:
    assert (
        config_error({"s": "a"}, costs={"zz": 2})
        == 'matrix: evict_costs: unknown var or model "zz"'
    )


def test_names_are_quoted_like_go() -> None:
    assert (
        config_error({'we"ird': "x"})
        == 'matrix: set "we\\"ird": unknown var or model "x"'
    )


# -- the raw config block ---------------------------------------------------------


def test_from_config_yaml_block() -> None:
    raw = yaml.safe_load(
        """
        vars: {g: gemma-model, q: qwen-model, v: voxtral-model}
        evict_costs: {v: 50}
        sets:
          standard: "(g | q) & v"
          full: llama-70B
        """
    )
    p = policy_from_config(raw, VOICE_MODELS)
    assert p.evaluation_order == ("standard", "full")
    assert p.evict("qwen-model", {"voxtral-model", "gemma-model"}) == {"gemma-model"}


@dataclass
class TypedBlock:
    vars: dict[str, str] = field(default_factory=dict)
    evict_costs: dict[str, int] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)


def test_from_config_typed_block() -> None:
    block = TypedBlock(
        {"v": "voxtral-model"}, {"v": 50}, {"s": "v & (gemma-model | qwen-model)"}
    )
    p = policy_from_config(block, VOICE_MODELS)
    assert p.evict("qwen-model", {"voxtral-model", "gemma-model"}) == {"gemma-model"}
    with pytest.raises(ConfigError) as info:
        policy_from_config(TypedBlock(sets={"s": "v"}), VOICE_MODELS)
    assert info.value.message == 'matrix: set "s": unknown var or model "v"'


def test_from_config_missing_sets() -> None:
    with pytest.raises(ConfigError) as info:
        policy_from_config({"vars": {"g": "a"}}, MODELS)
    assert info.value.message == "matrix: matrix must define at least one set"


def test_from_config_null_dsl_is_empty() -> None:
    with pytest.raises(ConfigError) as info:
        policy_from_config(yaml.safe_load("sets: {s: }"), MODELS)
    assert info.value.message == 'matrix: set "s": empty DSL expression'


def test_from_config_shapes() -> None:
    with pytest.raises(ConfigError, match="^matrix: must be a mapping"):
        policy_from_config(["s"], MODELS)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^matrix: sets: must be a mapping"):
        policy_from_config({"sets": ["a"]}, MODELS)
    with pytest.raises(ConfigError, match="^matrix: vars: must be a mapping"):
        policy_from_config({"sets": {"s": "a"}, "vars": "a"}, MODELS)
    with pytest.raises(ConfigError, match="^matrix: sets.s must be a string"):
        policy_from_config({"sets": {"s": ["a"]}}, MODELS)


def test_from_config_non_integer_cost() -> None:
    with pytest.raises(ConfigError) as info:
        policy_from_config({"sets": {"s": "a"}, "evict_costs": {"a": "x"}}, MODELS)
    assert (
        info.value.message
        == "matrix: evict_cost for \"a\" must be a positive integer, got 'x'"
    )


# -- cross-check against brute-force expansion ------------------------------------


def brute_family(expr: Expr, sets: Mapping[str, Expr]) -> list[frozenset[str]]:
    """The Cartesian expansion, unprojected and unpruned (model ids = names)."""
    if isinstance(expr, Ident):
        return [frozenset({expr.name})]
    if isinstance(expr, Ref):
        return brute_family(sets[expr.name], sets)
    parts = [brute_family(child, sets) for child in expr.children]
    if expr.kind == "|":
        out = [s for part in parts for s in part]
    else:
        out = [frozenset().union(*combo) for combo in itertools.product(*parts)]
    return list(dict.fromkeys(out))  # duplicates collapse; keeps first-seen order


def random_expr(
    rng: random.Random, models: list[str], refs: list[str], depth: int
) -> str:
    if depth == 0 or rng.random() < 0.3:
        if refs and rng.random() < 0.2:
            return "+" + rng.choice(refs)
        return rng.choice(models)
    op = rng.choice(["&", "|"])
    parts = [
        random_expr(rng, models, refs, depth - 1) for _ in range(rng.randint(2, 3))
    ]
    return "(" + f" {op} ".join(parts) + ")"


def test_solver_matches_brute_force_on_random_matrices() -> None:
    rng = random.Random(20240611)
    models = ["a", "b", "c", "d", "e", "f"]
    for _ in range(300):
        names = [f"s{i}" for i in range(rng.randint(1, 4))]
        sets = {
            name: random_expr(rng, models, names[:i], 3) for i, name in enumerate(names)
        }
        costs = {m: rng.randint(1, 4) for m in rng.sample(models, 2)}
        p = MatrixPolicy({}, costs, sets, models)
        parsed = {name: parse_dsl(dsl) for name, dsl in sets.items()}
        expanded = {name: brute_family(parsed[name], parsed) for name in sets}
        target = rng.choice(models)
        running = set(rng.sample([m for m in models if m != target], rng.randint(0, 4)))
        decision = p.decide(target, running)

        options = [
            (sum(costs.get(m, 1) for m in running - s), name, s)
            for name in p.evaluation_order
            for s in expanded[name]
            if target in s
        ]
        if not options:
            assert decision.set_name is None
            assert decision.evict == running
            continue
        best_cost, best_name, _ = min(options, key=lambda o: o[0])  # first on ties
        assert (decision.set_name, decision.cost) == (best_name, best_cost), sets
        kept = (running - decision.evict) | {target}
        assert any(kept <= s for s in expanded[best_name])
        assert decision.members in expanded[best_name]
        assert p.coexist(kept)
        assert p.coexist(running) == any(
            running <= s for f in expanded.values() for s in f
        )


# -- performance: never expand the Cartesian product ------------------------------


def test_large_products_solve_fast() -> None:
    models = [f"m{i}" for i in range(1, 41)]
    left = " | ".join(models[:20])
    right = " | ".join(models[20:])
    sets = {
        "pair": f"({left}) & ({right})",
        "trio": "m1 & m21 & m40",
        "big": "+pair & (m2 | m3) & (m22 | m23)",
        "solo": "m39",
    }
    p = MatrixPolicy({}, {"m25": 10}, sets, models)
    start = time.perf_counter()
    for target, running in [
        ("m10", {"m3", "m25", "m7", "m30"}),
        ("m21", {"m1", "m40", "m2", "m22", "m39"}),
        ("m39", set(models[:30])),
        ("m5", set(models[10:30])),
    ]:
        decision = p.decide(target, running)
        assert target not in decision.evict
    # "big" keeps m3 and the costly m25 with m10: only m7 and m30 go.
    assert p.explain("m10", {"m3", "m25", "m7", "m30"}) == (
        "big",
        frozenset({"m7", "m30"}),
        2,
    )
    assert p.coexist({"m2", "m3", "m22", "m23"})
    assert time.perf_counter() - start < 1.0


def test_million_combination_product_is_not_expanded() -> None:
    groups = [[f"model-{d}-{c}" for c in range(10)] for d in range(6)]
    models = ["target", *itertools.chain.from_iterable(groups), "outside"]
    dsl = "target & " + " & ".join("(" + " | ".join(g) + ")" for g in groups)
    p = MatrixPolicy({}, {}, {"large": dsl}, models)
    running = {f"model-{d}-9" for d in range(6)} | {"outside"}
    start = time.perf_counter()
    decision = p.decide("target", running)
    assert time.perf_counter() - start < 1.0
    assert decision.set_name == "large"
    assert decision.evict == {"outside"}
    assert len(decision.members) == 7


def test_more_than_64_relevant_models() -> None:
    models = ["target", *(f"model-{i}" for i in range(70))]
    p = MatrixPolicy({}, {}, {"wide": " & ".join(models)}, models)
    decision = p.decide("target", {*models[1:], "outside"})
    assert decision.evict == {"outside"}
    assert len(decision.members) == 71


def sequential_frontier(candidates: list[_State]) -> list[_State]:
    """llama-swap's addToFrontier, one candidate at a time."""
    frontier: list[_State] = []
    for candidate in candidates:
        if any(candidate.mask & ~state.mask == 0 for state in frontier):
            continue
        frontier = [state for state in frontier if state.mask & ~candidate.mask]
        frontier.append(candidate)
    return frontier


def test_batch_pruning_equals_llama_swaps_sequential_frontier() -> None:
    rng = random.Random(7)
    for _ in range(500):
        candidates = [
            _State(rng.getrandbits(6), str(i)) for i in range(rng.randint(0, 30))
        ]
        assert _maximal(candidates) == sequential_frontier(candidates)
