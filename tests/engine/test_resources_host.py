"""The memory engine (``use: resources``) for real, with host RAM: fake model
servers that allocate and touch memory, a RAM budget, learning from a first
load, co-residence, LRU eviction of idle models only, waiting for a busy one,
the never-fits 503, learned figures surviving a restart, and the maxWait
bound."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tests.conftest import fake_cmd, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness import App, Apps

MIB = 1 << 20


def config(
    tmp_path: Path,
    budget: str,
    models: dict[str, str],
    *,
    extra: str = "",
    fifo: str = "",
) -> str:
    """``models``: id -> extra YAML lines for it (indented by 4)."""
    lines = [
        "routing:",
        "  router:",
        "    use: resources",
        "    settings:",
        "      resources:",
        "        gpus: []",
        f"        ram: {budget}",
        f"        learnedFile: {tmp_path / 'learned.json'}",
    ]
    if fifo:
        lines += ["  scheduler:", "    settings:", "      fifo:", fifo]
    lines.append("models:")
    for mid, body in models.items():
        lines += [f"  {mid}:", body]
    return "\n".join(lines) + "\n" + extra


def hold(mid: str, mib: int, *flags: str, needs: str = "") -> str:
    body = f"    cmd: {fake_cmd(mid, '--hold-mib', str(mib), *flags)}"
    if needs:
        body += f"\n    needs: {needs}"
    return body


async def explained(app: App) -> dict[str, Any]:
    data = await app.json("/api/explain")
    return {m["id"]: m for m in data["models"]} | {"": data}


async def measured(app: App, mid: str) -> int:
    """Wait until ``mid``'s current load was measured (explain keeps the
    figures of an earlier load meanwhile); its host memory in bytes."""
    figures: dict[str, Any] = {}
    ledger = app.router.ledger
    assert ledger is not None

    async def poll() -> bool:
        figures.update(await explained(app))
        fresh = mid not in ledger.unmeasured
        return fresh and figures[mid]["measured"] is not None

    async with asyncio.timeout(10):
        while not await poll():
            await asyncio.sleep(0.02)
    return int(figures[mid]["measured"]["ram"])


async def learn(app: App, *mids: str) -> None:
    """Load each model in turn until it is measured (it runs alone first)."""
    for mid in mids:
        assert await app.reply(mid) == f"hello from {mid}"
        await measured(app, mid)


THREE = {"a": hold("a", 200), "b": hold("b", 200), "c": hold("c", 200)}


async def test_a_first_load_is_learned_and_runs_alone(
    apps: Apps, tmp_path: Path
) -> None:
    app = await apps.start(config(tmp_path, "600MiB", THREE))
    await learn(app, "a")
    info = await explained(app)
    assert 200 * MIB <= info["a"]["measured"]["ram"] < 280 * MIB
    assert info["a"]["needs"]["declared"] is None
    assert info["a"]["needs"]["learned"]["ram"] == info["a"]["measured"]["ram"]
    # b was never measured: it runs alone, so idle a makes way.
    assert await app.reply("b") == "hello from b"
    assert app.running() == ["b"]
    assert "never measured" in (await explained(app))["b"]["decision"]["text"]


async def test_learned_models_share_the_budget_and_lru_idle_one_is_evicted(
    apps: Apps, tmp_path: Path
) -> None:
    app = await apps.start(config(tmp_path, "600MiB", THREE))
    await learn(app, "a", "b", "c")
    # Two of three fit in 600 MiB.
    assert await app.reply("a") == "hello from a"
    pid_c = app.pid("c")
    assert app.running() == ["a", "c"]  # c was loaded last: a joined it
    assert await app.reply("c") == "hello from c"  # c is now the most recent
    assert app.pid("c") == pid_c
    assert await app.reply("b") == "hello from b"
    assert app.running() == ["b", "c"]  # a, least recently used, made way
    info = await explained(app)
    text = info["a"]["decision"]["text"]
    assert text.startswith("evicted at ") and "to fit b" in text and "RAM" in text
    budget = info[""]["budget"]
    assert budget["ram"]["capacity"] == 600 * MIB
    assert budget["ram"]["planned"] <= 600 * MIB
    await measured(app, "b")  # this load's measurement, not the earlier one
    metrics = await (await app.client.get("/metrics")).text()
    # Once while b and c were learned (each ran alone), once now.
    assert 'swapvisor_evictions_total{model="a",reason="memory"} 2.0' in metrics
    assert 'swapvisor_memory_budget_bytes{device="ram"}' in metrics
    assert 'swapvisor_model_memory_bytes{device="ram",model="b"}' in metrics


async def test_a_busy_model_is_never_evicted_the_start_waits_for_it(
    apps: Apps, tmp_path: Path
) -> None:
    app = await apps.start(config(tmp_path, "600MiB", THREE))
    await learn(app, "a", "b", "c")
    assert await app.reply("a") == "hello from a"
    assert app.running() == ["a", "c"]
    assert await app.reply("a") == "hello from a"  # c is least recently used
    slow = asyncio.create_task(app.reply("c", fake_delay=1.0))
    await wait_until(lambda: app.router.scheduler.in_flight("c") == 1)
    # b needs one of them out: a is idle, so a goes, not the busy c.
    assert await app.reply("b") == "hello from b"
    assert app.running() == ["b", "c"]
    assert not slow.done()
    # Now both are busy: a waits for the least recently used, c, to drain.
    also = asyncio.create_task(app.reply("b", fake_delay=1.0))
    await wait_until(lambda: app.router.scheduler.in_flight("b") == 1)
    waiting = asyncio.create_task(app.reply("a"))
    await wait_until(lambda: app.router.queue_depth() == 1)
    assert "c draining 1 request" in (await explained(app))["a"]["waiting"]
    assert not slow.done()
    assert await slow == "hello from c"  # c finished its request whole
    assert await waiting == "hello from a"
    assert await also == "hello from b"
    assert app.running() == ["a", "b"]


async def test_a_model_that_can_never_fit_is_refused_at_once(
    apps: Apps, tmp_path: Path
) -> None:
    models = {"a": hold("a", 100), "big": hold("big", 10, needs="{ram: 2GiB}")}
    app = await apps.start(config(tmp_path, "600MiB", models))
    assert await app.reply("a") == "hello from a"
    status, body = await app.chat("big")
    assert status == 503
    assert body["error"]["code"] == "insufficient_memory"
    message = body["error"]["message"]
    assert "big needs 2.0 GiB RAM" in message and "600 MiB" in message
    assert app.running() == ["a"]  # nothing was stopped for it


async def test_declared_needs_are_the_first_estimate(
    apps: Apps, tmp_path: Path
) -> None:
    models = {
        "a": hold("a", 100, needs="{ram: 250MiB}"),
        "b": hold("b", 100, needs="{ram: 250MiB}"),
        "c": hold("c", 100, needs="{ram: 250MiB}"),
    }
    app = await apps.start(config(tmp_path, "600MiB", models))
    assert await app.reply("a") == "hello from a"
    assert await app.reply("b") == "hello from b"
    assert app.running() == ["a", "b"]  # declared: no lone first load
    assert await app.reply("c") == "hello from c"
    assert app.running() == ["b", "c"]


async def test_a_learned_figure_above_the_declared_one_wins(
    apps: Apps, tmp_path: Path
) -> None:
    models = {
        "a": hold("a", 250, needs="{ram: 50MiB}"),
        "b": hold("b", 250, needs="{ram: 50MiB}"),
    }
    app = await apps.start(config(tmp_path, "400MiB", models))
    await learn(app, "a", "b")  # declared small: they loaded side by side
    info = await explained(app)
    assert info["a"]["needs"]["estimate"]["ram"] >= 250 * MIB
    assert info["b"]["needs"]["estimate"]["ram"] >= 250 * MIB
    r = await app.client.post("/api/models/unload")
    assert r.status == 200
    assert await app.reply("a") == "hello from a"
    assert await app.reply("b") == "hello from b"
    assert app.running() == ["b"]  # 50 MiB each would fit; measured, they do not


async def test_learned_figures_survive_a_restart(apps: Apps, tmp_path: Path) -> None:
    first = await apps.start(config(tmp_path, "600MiB", THREE))
    await learn(first, "a", "b")
    r = await first.client.post("/api/models/unload")
    assert r.status == 200
    second = await apps.start(config(tmp_path, "600MiB", THREE))
    info = await explained(second)
    assert info["a"]["needs"]["learned"]["ram"] >= 200 * MIB
    assert info["c"]["needs"]["learned"] is None
    assert await second.reply("a") == "hello from a"
    assert await second.reply("b") == "hello from b"
    assert second.running() == ["a", "b"]  # known at once: they share


async def test_a_model_that_grows_after_its_first_request_is_measured_again(
    apps: Apps, tmp_path: Path
) -> None:
    models = {"a": hold("a", 50, "--grow-mib", "200"), "b": hold("b", 50)}
    app = await apps.start(config(tmp_path, "600MiB", models))
    assert await app.reply("a") == "hello from a"

    async def grown() -> bool:
        m = (await explained(app))["a"]["measured"]
        return m is not None and m["ram"] >= 250 * MIB

    async with asyncio.timeout(10):
        while not await grown():
            await asyncio.sleep(0.02)


async def test_min_residency_keeps_a_model_just_loaded(
    apps: Apps, tmp_path: Path
) -> None:
    models = {
        "a": hold("a", 10, needs="{ram: 400MiB}"),
        "b": hold("b", 10, needs="{ram: 400MiB}"),
    }
    app = await apps.start(
        config(tmp_path, "600MiB", models, fifo="        minResidency: 0.5")
    )
    assert await app.reply("a") == "hello from a"
    loaded = time.monotonic()
    assert await app.reply("b") == "hello from b"  # waits out a's residency
    assert time.monotonic() - loaded >= 0.5
    assert app.running() == ["b"]
    # b is resident now too: a request for a right away waits again.
    began = time.monotonic()
    assert await app.reply("a") == "hello from a"
    assert time.monotonic() - began >= 0.4
