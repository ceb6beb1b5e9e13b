"""controller.config.matrix: llama-swap's matrix DSL (llama-swap.md §1.7, §4):
tokenizing, parsing, the families a set expands to, validation with
llama-swap's exact error texts, the raw config block, and pruning to maximal
combinations. Driven through ``MatrixPolicy`` where a whole block is needed;
the solver itself is tests/engine/test_matrix_solver.py."""

from __future__ import annotations

import random
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
    MatrixPolicy,
    policy_from_config,
)
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.config.matrix import Expr

MODELS = ["a", "b", "c", "d", "e", "t"]
VOICE_MODELS = ["gemma-model", "qwen-model", "voxtral-model", "llama-70B"]


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


# -- evaluation: only maximal combinations are kept -------------------------------


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
