"""Scheduling through the real app: swaps, collation, draining before a swap,
concurrency limits, disconnects, TTL, unload, and shutdown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.conftest import fake_cmd, pids_of, wait_until
from tests.harness import chat

if TYPE_CHECKING:
    from tests.harness import Apps

TWO = f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
"""


async def test_swap_stops_the_old_model_before_serving_the_new(
    apps: Apps,
) -> None:
    sv = await apps.start(TWO)
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert (await r.json())["choices"][0]["message"]["content"] == "hello from a"
    assert (sv.state("a"), sv.state("b")) == ("ready", "stopped")
    r = await sv.client.post("/v1/chat/completions", json=chat("b"))
    assert (await r.json())["choices"][0]["message"]["content"] == "hello from b"
    assert (sv.state("a"), sv.state("b")) == ("stopped", "ready")


async def test_concurrent_requests_share_one_start(apps: Apps) -> None:
    sv = await apps.start(TWO)
    starts: list[str] = []
    upstream = sv.router.upstreams["a"]
    original = upstream._begin_start

    def counting() -> None:
        starts.append("a")
        original()

    upstream._begin_start = counting  # type: ignore[method-assign]
    rs = await asyncio.gather(
        *(sv.client.post("/v1/chat/completions", json=chat("a")) for _ in range(5))
    )
    assert [r.status for r in rs] == [200] * 5
    assert starts == ["a"]


async def test_requests_are_collated_a_a_b_b(apps: Apps) -> None:
    """A B A B arriving together is served A A B B: one swap, not three."""
    sv = await apps.start(TWO)
    order: list[str] = []

    async def ask(model: str) -> None:
        r = await sv.client.post("/v1/chat/completions", json=chat(model))
        order.append((await r.json())["model"])

    tasks = []
    for model in ("a", "b", "a", "b"):
        tasks.append(asyncio.create_task(ask(model)))
        await asyncio.sleep(0)  # keep arrival order deterministic
    await asyncio.gather(*tasks)
    assert order == ["a", "a", "b", "b"]


async def test_swap_waits_for_in_flight_requests_to_drain(apps: Apps) -> None:
    sv = await apps.start(TWO)
    slow = asyncio.create_task(
        sv.client.post("/v1/chat/completions", json=chat("a", fake_delay=1.5))
    )
    await wait_until(lambda: sv.router.upstreams["a"].in_flight == 1)
    other = asyncio.create_task(sv.client.post("/v1/chat/completions", json=chat("b")))
    await wait_until(lambda: len(sv.router.scheduler.queued()) == 1)
    assert sv.state("a") == "ready"  # not evicted mid-request
    r = await slow
    body = await r.json()
    assert (
        r.status == 200 and body["choices"][0]["message"]["content"] == "hello from a"
    )
    assert (await other).status == 200
    assert (sv.state("a"), sv.state("b")) == ("stopped", "ready")


async def test_concurrency_limit_answers_429(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
    concurrencyLimit: 1
""")
    slow = asyncio.create_task(
        sv.client.post("/v1/chat/completions", json=chat("a", fake_delay=1.0))
    )
    await wait_until(lambda: sv.router.upstreams["a"].in_flight == 1)
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 429
    assert r.headers["Retry-After"] == "1"
    body = await r.json()
    assert body["error"]["code"] == "concurrency_limit"
    assert body["error"]["type"] == "rate_limit_error"
    assert "concurrencyLimit 1" in body["error"]["message"]
    assert (await slow).status == 200
    assert (await sv.client.post("/v1/chat/completions", json=chat("a"))).status == 200


async def test_client_that_leaves_while_queued_leaves_the_queue(
    apps: Apps,
) -> None:
    sv = await apps.start(TWO)
    slow = asyncio.create_task(
        sv.client.post("/v1/chat/completions", json=chat("a", fake_delay=1.0))
    )
    await wait_until(lambda: sv.router.upstreams["a"].in_flight == 1)
    waiting = asyncio.create_task(
        sv.client.post("/v1/chat/completions", json=chat("b"))
    )
    await wait_until(lambda: len(sv.router.scheduler.queued()) == 1)
    waiting.cancel()  # the client disconnects
    await wait_until(lambda: not sv.router.scheduler.queued())
    assert (await slow).status == 200
    # Nobody wants b any more: no swap happened.
    assert (sv.state("a"), sv.state("b")) == ("ready", "stopped")


async def test_ttl_unloads_after_the_last_response(apps: Apps) -> None:
    sv = await apps.start(f"""
globalTTL: 1
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
    ttl: 0
""")
    await sv.client.post("/v1/chat/completions", json=chat("a", fake_delay=0.3))
    assert sv.state("a") == "ready"
    await wait_until(lambda: sv.state("a") == "stopped", timeout=5)
    assert sv.router.config.ttl_s("b") == 0


async def test_ttl_is_held_off_by_a_request_in_flight(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
    ttl: 1
""")
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    r = await sv.client.post("/v1/chat/completions", json=chat("a", fake_delay=1.5))
    assert r.status == 200  # the TTL did not cut it off
    assert sv.state("a") == "ready"


async def test_request_during_ttl_unload_restarts_the_model(apps: Apps) -> None:
    """llama-swap #946: a request arriving while the model stops must not hang."""
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--ignore-sigterm")}
    unloadTimeout: 1
""")
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    unload = asyncio.create_task(sv.client.post("/api/models/unload/a"))
    await wait_until(lambda: sv.state("a") == "stopping")
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 200
    assert (await unload).status == 200
    assert sv.state("a") == "ready"


async def test_unload_endpoints(apps: Apps) -> None:
    sv = await apps.start(TWO)
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    r = await sv.client.get("/running")
    assert [m["model"] for m in (await r.json())["running"]] == ["a"]
    r = await sv.client.post("/api/models/unload/a")
    assert (r.status, await r.text()) == (200, "OK")
    assert sv.state("a") == "stopped"
    r = await sv.client.post("/api/models/unload/nope")
    assert r.status == 404
    await sv.client.post("/v1/chat/completions", json=chat("b"))
    r = await sv.client.post("/api/models/unload")
    assert await r.json() == {"msg": "ok"}
    assert sv.state("b") == "stopped"
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    r = await sv.client.get("/unload")
    assert (await r.text(), sv.state("a")) == ("OK", "stopped")
    assert (await (await sv.client.get("/running")).json()) == {"running": []}


async def test_unload_fails_requests_waiting_for_that_model(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--health-delay", "5")}
""")
    waiting = asyncio.create_task(
        sv.client.post("/v1/chat/completions", json=chat("a"))
    )
    await wait_until(lambda: sv.state("a") == "starting")
    await sv.client.post("/api/models/unload/a")
    r = await waiting
    assert r.status == 503
    assert "unloaded" in (await r.json())["error"]["message"]


async def test_shutdown_stops_every_upstream(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--ignore-sigterm")}
    unloadTimeout: 1
""")
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    pid = sv.router.upstreams["a"]._handle.ref  # type: ignore[union-attr]
    assert pids_of("--model a --ignore-sigterm") != []
    await sv.client.close()
    assert sv.state("a") == "stopped"
    assert not any(str(p) == pid for p in pids_of("--model a --ignore-sigterm"))
