"""The memory engine where things go wrong: a model woken from sleep, a swap
that fails before it stops anything, two sleepers evicted together, a reload
that replaces a model still holding memory, a reload that switches engines
while models run, and a model whose memory cannot be measured. Each test
reproduces a defect a review found, over the pure ``Ledger`` or a real
``Router`` with the property test's memory-holding backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from backends.base import BackendError
from controller.config.loader import parse_config
from controller.engine import router as router_module
from controller.engine.pool import BackendPool
from controller.engine.resources import GIB, Measured, retired_key
from controller.engine.router import Router
from controller.engine.scheduler import MustWait
from controller.errors import InsufficientMemory
from tests.engine.test_resources_ledger import ledger, load, vram

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

from tests.engine.test_resources_properties import (
    FakeMemory,
    MemoryBackend,
    ModelSpec,
    config_text,
)


def held_on(led_allocations: dict[str, object], index: int) -> int:
    return sum(a.devices.get(index, 0) for a in led_allocations.values())  # type: ignore[attr-defined]


def test_a_wake_takes_its_gpu_memory_back_and_evicts_for_it() -> None:
    led = ledger({"a": (vram(8, 1), (0,)), "b": (vram(8, 1), (0,))})
    load(led, "a")
    led.asleep("a")  # its 8 GiB on GPU 0 are free while it sleeps
    load(led, "b")  # so b fits there
    plan = led.plan("a")  # a request wakes a
    assert plan.evict == {"b"} and plan.placement == {0: 8 * GIB}
    led.commit("a", plan.evict)
    assert led.devices_for("a") == (0,)


def test_sleepers_evicted_together_do_not_both_keep_their_ram() -> None:
    led = ledger(
        {
            "a": (vram(10, 4), (0,)),
            "b": (vram(10, 4), (1,)),
            "t": (vram(20, 5), None),
        },
        ram=10 * GIB,
    )
    load(led, "a", "b")
    plan = led.plan("t")
    led.commit("t", plan.evict)
    # One may sleep keeping its 4 GiB beside t's 5; not both.
    assert led.eviction_stops(plan.evict, "t") == {"a": False, "b": True}


def test_a_swap_that_failed_before_stopping_anything_gives_everything_back() -> None:
    led = ledger({"a": (vram(8), (0,)), "b": (vram(8), (0,)), "c": (vram(8), (0,))})
    load(led, "a")
    plan = led.plan("b")
    led.commit("b", plan.evict)  # evicts a ... then the engine check fails
    led.abandon("b", plan.evict, still_held={"a"})
    assert "b" not in led.allocations and led.leaving == set()
    assert led.plan("c").evict == {"a"}  # a counts again: c must evict it


def test_a_replaced_server_still_holding_memory_makes_the_new_one_wait() -> None:
    led = ledger({"a": (vram(4), (0,)), "b": (vram(4), (0,))})
    load(led, "a", "b")
    led.retire("a")  # a reload changed a; its old server still drains
    led.configure(
        {"a": (vram(9), (0,), "fp-a2"), "b": (vram(4), (0,), "fp-b")}, frozenset()
    )
    assert retired_key("a") in led.allocations
    # 9 GiB do not fit even without b while the old server holds 4: wait.
    with pytest.raises(MustWait, match="replaced server of a"):
        led.plan("a")
    led.stopped(retired_key("a"))  # the old server stopped
    assert led.plan("a").evict == {"b"}


def test_gpu_memory_that_cannot_be_attributed_is_unknown_not_zero() -> None:
    led = ledger({"a": (None, (0,)), "b": (vram(8), (0,))})
    load(led, "a")
    led.measured("a", Measured(GIB, {}, 1.0, vram_known=False), load_id=1)
    assert led.allocations["a"].devices == {0: 10 * GIB}  # kept what it had
    assert led.estimate("a") is None  # next time it runs alone again
    assert led.plan("b").evict == {"a"}


def test_adopting_a_running_model_never_raises() -> None:
    led = ledger({"big": (vram(30), None)})
    led.adopt("big")  # more than the budget, but it already runs
    assert (
        held_on(dict(led.allocations), 0) + held_on(dict(led.allocations), 1)
        == 30 * GIB
    )


GROUP = """livenessInterval: 0
crashLoop: {failures: 0}
models:
  m0: {cmd: "srv m0", proxy: "http://127.0.0.1:9"}
  big: {cmd: "srv big", proxy: "http://127.0.0.1:9"}
  b: {cmd: "srv b", proxy: "http://127.0.0.1:9"}
"""


@pytest.fixture
def routers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., tuple[Router, MemoryBackend, str]]]:
    """A Router over the memory-holding backend, short memory waits and
    retries; returns it, its backend and the memory-engine config text (the
    router starts on ``GROUP`` unless ``resources``). The test closes it."""
    monkeypatch.setattr(router_module, "MEMORY_WAIT_S", 0.05)
    monkeypatch.setattr(router_module, "MEMORY_POLL_S", 0.002)
    monkeypatch.setattr(router_module, "MEASURE_RETRY_S", 0.01)

    def make(
        *, resources: bool = False, **models: ModelSpec
    ) -> tuple[Router, MemoryBackend, str]:
        backend = MemoryBackend(models)
        text = config_text(models, tmp_path / "learned.json")
        router = Router(
            parse_config(text if resources else GROUP).config,
            BackendPool(backend, "p"),
            memory=FakeMemory(backend),
        )
        return router, backend, text

    yield make


async def test_switching_to_the_memory_engine_measures_what_runs(
    routers: Callable[..., tuple[Router, MemoryBackend, str]],
) -> None:
    router, backend, text = routers(
        m0=ModelSpec(2 * GIB, GIB, None, None, False, None),  # persistent, no needs
        big=ModelSpec(GIB, GIB, GIB, GIB, True, None),
        b=ModelSpec(2 * GIB, GIB, 2 * GIB, GIB, True, None),
    )
    try:
        async with router.lease("m0"):
            pass
        router.reconfigure(parse_config(text).config)
        async with asyncio.timeout(5):  # m0 is measured, so b fits beside it
            async with router.lease("b"):
                pass
        assert "m0" in backend.footprint_calls
    finally:
        await router.aclose()


async def test_a_reload_to_the_memory_engine_with_a_model_too_big_refuses_only_it(
    routers: Callable[..., tuple[Router, MemoryBackend, str]],
) -> None:
    router, _, text = routers(
        m0=ModelSpec(0, 0, 0, 0, True, None),
        big=ModelSpec(4 * GIB, GIB, 30 * GIB, GIB, True, None),
        b=ModelSpec(4 * GIB, GIB, 4 * GIB, GIB, True, None),
    )
    try:
        async with router.lease("big"):
            pass
        router.reconfigure(parse_config(text).config)
        assert router.ledger is not None
        async with router.lease("b"):
            pass
        for _ in range(2):  # refused each time, and no swap is left behind
            with pytest.raises(InsufficientMemory):
                async with asyncio.timeout(5), router.lease("big"):
                    pass
            assert router.scheduler.swapping() == {}
    finally:
        await router.aclose()


async def test_a_persistent_model_that_cannot_be_measured_does_not_hang_others(
    routers: Callable[..., tuple[Router, MemoryBackend, str]],
) -> None:
    router, backend, _ = routers(
        resources=True,
        m0=ModelSpec(2 * GIB, GIB, None, None, False, None),
        big=ModelSpec(GIB, GIB, GIB, GIB, True, None),
        b=ModelSpec(2 * GIB, GIB, 2 * GIB, GIB, True, None),
    )
    backend.script("m0").fail["footprint"] = BackendError("no cgroup stats")
    try:
        async with router.lease("m0"):
            pass
        # It holds all that was left and cannot be measured: b is refused
        # with a reason once the retries end, never left waiting.
        with pytest.raises(InsufficientMemory, match="stay loaded"):
            async with asyncio.timeout(5), router.lease("b"):
                pass
    finally:
        await router.aclose()
