"""controller.engine.eviction.GroupPolicy: llama-swap's group rules (llama-swap.md §1.6)."""

from __future__ import annotations

from controller.engine.eviction import DEFAULT_GROUP, Group, GroupPolicy


def group(name: str, *members: str, **flags: bool) -> Group:
    return Group(name, frozenset(members), **flags)


def test_eviction_default_group_evicts_every_other_running_model() -> None:
    p = GroupPolicy([], ["a", "b", "c"])
    assert p.evict("a", {"a", "b", "c"}) == frozenset({"b", "c"})


def test_eviction_default_group_nothing_running_evicts_nothing() -> None:
    assert GroupPolicy([], ["a", "b"]).evict("a", set()) == frozenset()


def test_eviction_target_itself_is_never_evicted() -> None:
    assert GroupPolicy([], ["a", "b"]).evict("a", {"a"}) == frozenset()


def test_eviction_unknown_running_model_is_ignored() -> None:
    assert GroupPolicy([], ["a"]).evict("a", {"ghost"}) == frozenset()


def test_eviction_default_group_name() -> None:
    assert DEFAULT_GROUP == "(default)"


def test_eviction_swap_true_group_evicts_its_own_members() -> None:
    p = GroupPolicy([group("g", "a", "b", swap=True)], ["a", "b"])
    assert p.evict("a", {"b"}) == frozenset({"b"})


def test_eviction_swap_false_group_members_coexist() -> None:
    p = GroupPolicy([group("g", "a", "b", swap=False)], ["a", "b"])
    assert p.evict("a", {"b"}) == frozenset()


def test_eviction_exclusive_group_evicts_other_groups() -> None:
    groups = [group("g1", "a", swap=False), group("g2", "b", "c", swap=False)]
    p = GroupPolicy(groups, ["a", "b", "c"])
    assert p.evict("a", {"b", "c"}) == frozenset({"b", "c"})


def test_eviction_exclusive_group_evicts_default_group_models() -> None:
    p = GroupPolicy([group("g", "a")], ["a", "x", "y"])
    assert p.evict("a", {"x", "y"}) == frozenset({"x", "y"})


def test_eviction_default_group_evicts_explicit_group_models() -> None:
    p = GroupPolicy([group("g", "a", "b", swap=False)], ["a", "b", "x"])
    assert p.evict("x", {"a", "b"}) == frozenset({"a", "b"})


def test_eviction_non_exclusive_group_leaves_other_groups_alone() -> None:
    groups = [group("side", "emb", exclusive=False), group("main", "a", "b")]
    p = GroupPolicy(groups, ["emb", "a", "b", "x"])
    assert p.evict("emb", {"a", "x"}) == frozenset()


def test_eviction_non_exclusive_gotcha_even_exclusive_groups_survive() -> None:
    # Loading from a non-exclusive group never unloads other groups, even
    # exclusive ones (compat gotcha kept on purpose).
    groups = [group("nx", "n", exclusive=False), group("ex", "e", exclusive=True)]
    p = GroupPolicy(groups, ["n", "e"])
    assert p.evict("n", {"e"}) == frozenset()
    assert p.evict("e", {"n"}) == frozenset({"n"})  # the other direction evicts


def test_eviction_non_exclusive_group_still_swaps_its_own_members() -> None:
    p = GroupPolicy([group("nx", "a", "b", exclusive=False)], ["a", "b", "x"])
    assert p.evict("a", {"b", "x"}) == frozenset({"b"})


def test_eviction_persistent_group_is_never_evicted_by_others() -> None:
    groups = [group("keep", "emb", persistent=True), group("main", "a")]
    p = GroupPolicy(groups, ["emb", "a", "x"])
    assert p.evict("a", {"emb", "x"}) == frozenset({"x"})
    assert p.evict("x", {"emb", "a"}) == frozenset({"a"})


def test_eviction_persistent_group_still_swaps_within_itself() -> None:
    p = GroupPolicy([group("keep", "e1", "e2", persistent=True)], ["e1", "e2"])
    assert p.evict("e1", {"e2"}) == frozenset({"e2"})


def test_eviction_persistent_exclusive_group_evicts_others() -> None:
    groups = [group("keep", "emb", persistent=True, swap=False)]
    p = GroupPolicy(groups, ["emb", "x"])
    assert p.evict("emb", {"x"}) == frozenset({"x"})


def test_eviction_group_defaults_match_llama_swap() -> None:
    g = Group("g", frozenset({"a"}))
    assert (g.swap, g.exclusive, g.persistent) == (True, True, False)


def test_eviction_mixed_running_set() -> None:
    groups = [
        group("pair", "a", "b", swap=False),
        group("keep", "k", persistent=True),
        group("side", "s", exclusive=False),
    ]
    p = GroupPolicy(groups, ["a", "b", "k", "s", "x"])
    assert p.evict("a", {"b", "k", "s", "x"}) == frozenset({"s", "x"})
    assert p.evict("s", {"a", "b", "k", "x"}) == frozenset()
