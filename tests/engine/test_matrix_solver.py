"""controller.engine.matrix: the matrix solver, llama-swap's cost-based
eviction (llama-swap.md §4.3, §4.4), cross-checked against a brute-force
expansion and fast on products it must never expand. The DSL it solves over is
tests/config/test_matrix_dsl.py."""

from __future__ import annotations

import itertools
import random
import time
from typing import TYPE_CHECKING

from controller.config.matrix import Ident, Ref, parse_dsl
from controller.engine.matrix import MatrixDecision, MatrixPolicy
from tests.config.test_matrix_dsl import VOICE_MODELS, policy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.config.matrix import Expr
    from controller.engine.scheduler import EvictionPolicy


# -- solver (§4.3, §4.4) ----------------------------------------------------------


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
