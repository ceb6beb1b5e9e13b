"""The memory engine's ``Ledger`` on its own: pure, synchronous, no I/O.

Placement over several GPUs (the tightest fit, a spread when no single GPU
fits, pins honoured with their split), the eviction order (least recently
used, idle before busy), protected models never evicted, unknown models
running alone, and the ``InsufficientMemory`` message naming what is needed
and what there is.
"""

from __future__ import annotations

import pytest

from controller.config.sections import Needs
from controller.engine.resources import (
    GIB,
    Budget,
    LearnedStore,
    Ledger,
    Measured,
    Plan,
)
from controller.engine.scheduler import MustWait
from controller.errors import InsufficientMemory

ModelSpec = tuple[Needs | None, tuple[int, ...] | None]


def ledger(
    models: dict[str, ModelSpec],
    *,
    gpus: dict[int, int] | None = None,
    ram: int = 16 * GIB,
    protected: frozenset[str] = frozenset(),
    busy: frozenset[str] = frozenset(),
    store: LearnedStore | None = None,
) -> Ledger:
    """A ledger over ``models`` (id -> (declared needs, pinned GPUs)); each
    model's launch fingerprint is ``fp-<id>``."""
    budget = Budget(ram=ram, gpus={0: 10 * GIB, 1: 10 * GIB} if gpus is None else gpus)
    led = Ledger(budget, store or LearnedStore(None), lambda m: m in busy)
    led.configure(
        {mid: (needs, pins, f"fp-{mid}") for mid, (needs, pins) in models.items()},
        protected,
    )
    return led


def load(led: Ledger, *models: str) -> None:
    """Start each model in turn, as the router does: plan, commit, use."""
    for mid in models:
        plan = led.plan(mid)
        assert not plan.evict, f"{mid} should fit beside the others: {plan}"
        led.commit(mid, plan.evict)
        led.used(mid)


def vram(gib: float, ram_gib: float = 0) -> Needs:
    return Needs(vram=int(gib * GIB), ram=int(ram_gib * GIB))


# -- placement ------------------------------------------------------------------


def test_the_tightest_fitting_gpu_is_chosen() -> None:
    led = ledger(
        {"big": (vram(6), None), "x": (vram(3), None)}, gpus={0: 10 * GIB, 1: 8 * GIB}
    )
    # GPU 1 (8 GiB) fits 6 GiB more tightly than GPU 0 (10 GiB).
    assert led.plan("big").placement == {1: 6 * GIB}
    load(led, "big")
    # Now GPU 1 has 2 GiB left, GPU 0 10: only GPU 0 fits 3 GiB.
    assert led.plan("x").placement == {0: 3 * GIB}
    load(led, "x")
    assert led.room(led.holders(""))[1] == {0: 7 * GIB, 1: 2 * GIB}


def test_a_model_no_single_gpu_fits_is_spread_by_room() -> None:
    led = ledger(
        {"small": (vram(4), None), "huge": (vram(12), None)},
        gpus={0: 10 * GIB, 1: 10 * GIB},
    )
    load(led, "small")  # GPU 0 (ties go to the lower index): 6 GiB left there
    assert led.allocations["small"].devices == {0: 4 * GIB}
    plan = led.plan("huge")
    assert not plan.evict
    # 12 GiB over rooms of 10 (GPU 1) and 6 (GPU 0), in proportion to them.
    assert sum(plan.placement.values()) == 12 * GIB
    assert plan.placement == {1: 15 * GIB // 2, 0: 9 * GIB // 2}
    assert all(plan.placement[i] <= r for i, r in ((0, 6 * GIB), (1, 10 * GIB)))


def test_spread_evicts_when_even_all_gpus_together_are_too_small() -> None:
    led = ledger({"a": (vram(8), None), "b": (vram(8), None), "huge": (vram(12), None)})
    load(led, "a", "b")  # one per GPU: 2 GiB left on each
    plan = led.plan("huge")
    assert plan.evict == {"a"}  # least recently used; then 10 + 2 is enough
    assert sum(plan.placement.values()) == 12 * GIB
    assert plan.placement[0] <= 10 * GIB and plan.placement[1] <= 2 * GIB


def test_pins_are_honoured_and_split_evenly() -> None:
    led = ledger(
        {
            "one": (vram(6), (1,)),
            "both": (vram(9), (0, 1)),
            "other": (vram(2), None),
        }
    )
    assert led.plan("one").placement == {1: 6 * GIB}  # not the tighter-or-lower 0
    plan = led.plan("both")
    assert plan.placement == {0: 9 * GIB // 2, 1: 9 * GIB // 2}
    load(led, "one")
    # 4.5 GiB does not fit in what GPU 1 has left (4): "one" must go, though
    # GPU 0 alone would have room for all of it.
    assert led.plan("both").evict == {"one"}


def test_a_pinned_model_is_split_as_it_was_measured() -> None:
    store = LearnedStore(None)
    store.record("fp-m", "m", 1, Measured(1 * GIB, {0: 6 * GIB, 1: 2 * GIB}))
    led = ledger({"m": (vram(4), (0, 1))}, store=store)
    # The learned 8 GiB is above the declared 4: it is the estimate, split 3:1.
    assert led.estimate("m") is not None
    plan = led.plan("m")
    assert plan.placement == {0: 6 * GIB, 1: 2 * GIB}
    assert plan.ram == 1 * GIB


def test_ram_must_fit_too() -> None:
    led = ledger({"a": (vram(1, 10), None), "b": (vram(1, 10), None)})
    load(led, "a")
    assert led.plan("b").evict == {"a"}  # GPUs have room, RAM does not


def test_a_model_without_vram_needs_no_gpu() -> None:
    led = ledger({"cpu": (Needs(ram=2 * GIB), None)})
    plan = led.plan("cpu")
    assert plan.placement == {} and plan.ram == 2 * GIB
    led.commit("cpu", plan.evict)
    assert led.devices_for("cpu") is None  # no CUDA_VISIBLE_DEVICES


# -- eviction order ----------------------------------------------------------------


def three_on_gpu0(busy: frozenset[str] = frozenset()) -> Ledger:
    models: dict[str, ModelSpec] = {m: (vram(3), (0,)) for m in ("a", "b", "c")}
    models["t"] = (vram(6), (0,))
    models["t2"] = (vram(9), (0,))
    return ledger(models, busy=busy)


def test_least_recently_used_is_evicted_first() -> None:
    led = three_on_gpu0()
    load(led, "a", "b", "c")  # 9 of GPU 0's 10 GiB
    led.used("a")  # a is now the most recent: b is the oldest
    assert led.plan("t").evict == {"b", "c"}
    assert led.plan("t2").evict == {"a", "b", "c"}


def test_idle_models_are_evicted_before_busy_ones() -> None:
    led = three_on_gpu0(busy=frozenset({"a"}))
    load(led, "a", "b", "c")  # a is the least recently used, but busy
    assert led.plan("t").evict == {"b", "c"}
    # When only a busy one can make room, it is chosen (the scheduler waits).
    assert led.plan("t2").evict == {"a", "b", "c"}


def test_only_models_holding_what_is_short_are_evicted() -> None:
    led = ledger(
        {
            "g0": (vram(4), (0,)),
            "g1": (vram(8), (1,)),
            "t": (vram(8), (1,)),
        }
    )
    load(led, "g0", "g1")  # g0 is older, but it holds nothing on GPU 1
    assert led.plan("t").evict == {"g1"}


# -- protected models ----------------------------------------------------------------


def test_a_protected_model_is_never_in_an_eviction_set() -> None:
    led = ledger(
        {"p": (vram(6), (0,)), "x": (vram(3), (0,)), "t": (vram(4), (0,))},
        protected=frozenset({"p"}),
    )
    load(led, "p", "x")  # p is the least recently used
    assert led.plan("t").evict == {"x"}
    led.commit("t", frozenset({"x"}))
    led.stopped("x")
    assert "p" in led.holders("") and "p" not in led.leaving


def test_what_fits_only_without_a_protected_model_is_refused() -> None:
    led = ledger(
        {"p": (vram(6), (0,)), "x": (vram(2), (0,)), "t": (vram(5), (0,))},
        protected=frozenset({"p"}),
    )
    load(led, "p", "x")
    with pytest.raises(InsufficientMemory) as caught:
        led.plan("t")
    message = caught.value.message
    assert message.startswith("model t needs 5.0 GiB VRAM on GPU 0, but only ")
    assert "GPU 0: 4.0 GiB" in message
    assert "beside the models that stay loaded (p)" in message
    assert caught.value.code == "insufficient_memory"


# -- unknown models ------------------------------------------------------------------


def test_an_unknown_model_runs_alone_beside_protected_ones() -> None:
    led = ledger(
        {
            "p": (vram(2, 1), (0,)),
            "a": (vram(3, 2), (1,)),
            "b": (vram(1), None),
            "new": (None, None),
        },
        protected=frozenset({"p"}),
    )
    load(led, "p", "a", "b")
    assert led.estimate("new") is None
    plan = led.plan("new")
    assert plan.unknown
    assert plan.evict == {"a", "b"}
    # Everything the protected model leaves is its own until it is measured.
    assert plan.placement == {0: 8 * GIB, 1: 10 * GIB}
    assert plan.ram == 15 * GIB
    led.commit("new", plan.evict)
    assert led.leaving == {"a", "b"}
    # Measured: it holds what it uses, no more, and is known from now on.
    led.measured("new", Measured(3 * GIB, {1: 5 * GIB}), load_id=1)
    assert led.allocations["new"].devices == {1: 5 * GIB}
    assert led.allocations["new"].ram == 3 * GIB
    estimate = led.estimate("new")
    assert estimate is not None and (estimate.vram, estimate.ram) == (5 * GIB, 3 * GIB)


def test_an_unknown_model_evicts_busy_ones_too() -> None:
    led = ledger({"a": (vram(1), None), "new": (None, None)}, busy=frozenset({"a"}))
    load(led, "a")
    assert led.plan("new").evict == {"a"}


# -- never fits ---------------------------------------------------------------------


def test_the_message_says_what_is_needed_and_what_there_is() -> None:
    led = ledger({"big": (vram(12, 20), (0,)), "x": (vram(1), None)})
    load(led, "x")
    with pytest.raises(InsufficientMemory) as caught:
        led.plan("big")
    assert caught.value.message == (
        "model big needs 12.0 GiB VRAM on GPU 0 and 20.0 GiB RAM, but the "
        "budget has RAM 16.0 GiB, GPU 0: 10.0 GiB, GPU 1: 10.0 GiB"
    )
    assert "x" in led.holders("")  # nothing was stopped or reserved for it
    assert "big" not in led.allocations


def test_more_than_all_gpus_together_never_fits() -> None:
    led = ledger({"big": (vram(21), None)})
    with pytest.raises(InsufficientMemory, match=r"21\.0 GiB VRAM on GPU 0, 1"):
        led.plan("big")


def test_a_learned_figure_above_the_budget_never_fits() -> None:
    store = LearnedStore(None)
    store.record("fp-m", "m", 1, Measured(17 * GIB, {}))
    led = ledger({"m": (Needs(ram=1 * GIB), None)}, store=store)
    with pytest.raises(InsufficientMemory, match=r"needs 17\.0 GiB RAM"):
        led.plan("m")


def test_a_plan_for_a_model_already_holding_memory_evicts_nothing() -> None:
    led = ledger({"a": (vram(9), (0,)), "b": (vram(9), (0,))})
    load(led, "a")
    plan = led.plan("a")
    assert plan == Plan(frozenset(), {0: 9 * GIB}, 0, False)


def test_an_unmeasured_protected_model_makes_others_wait_not_fail() -> None:
    led = ledger(
        {"keep": (None, None), "x": (vram(4), None)}, protected=frozenset({"keep"})
    )
    load(led, "keep")  # never measured: it holds all that was left
    with pytest.raises(MustWait, match="keep not measured yet"):
        led.plan("x")
    led.measured("keep", Measured(1 * GIB, {0: 2 * GIB}), load_id=1)
    assert led.plan("x").evict == frozenset()  # measured: x fits beside it


def test_empty_needs_declare_nothing() -> None:
    led = ledger({"a": (Needs(), None)})
    assert led.estimate("a") is None
    assert led.plan("a").unknown
