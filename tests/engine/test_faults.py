"""The Upstream and the router under injected backend faults (issue: airtight
under faults), against ``tests.fakes.scripted_backend``: every operation of a
workload can be held at a gate, failed or made to die, so each interleaving
is reproduced exactly, with no real process and no sleep to wait."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from backends.base import BackendUnavailable, Health
from controller.config.loader import parse_config
from controller.engine.pool import BackendPool
from controller.engine.reload import Reloader
from controller.engine.router import Router
from controller.engine.runtime import Runtime
from controller.engine.states import UpstreamState
from controller.errors import (
    CrashLoop,
    ModelUnloaded,
    ShuttingDown,
    UpstreamStartError,
    UpstreamStartTimeout,
)
from tests.conftest import wait_until
from tests.fakes.scripted_backend import ScriptedBackend, start_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

S = UpstreamState
TWO = """
livenessInterval: 0
models:
  a: {cmd: "srv a", proxy: "http://127.0.0.1:9"}
  b: {cmd: "srv b", proxy: "http://127.0.0.1:9"}
"""


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def routers(backend: ScriptedBackend) -> AsyncIterator[list[Router]]:
    made: list[Router] = []
    yield made
    for router in made:
        if not router._closing:
            await router.aclose()


def make(routers: list[Router], backend: ScriptedBackend, text: str = TWO) -> Router:
    router = Router(parse_config(text).config, BackendPool(backend, "test"))
    routers.append(router)
    return router


def starts(backend: ScriptedBackend, model: str) -> int:
    return backend.calls.count(("start", model))


async def serve_once(router: Router, model: str) -> None:
    async with router.lease(model):
        pass


async def settled(router: Router) -> None:
    """Every swap, start and stop in progress has finished."""
    await wait_until(
        lambda: (
            not router._tasks
            and all(
                u.state not in (S.STARTING, S.STOPPING)
                for u in router.upstreams.values()
            )
        ),
        5,
    )


# -- 1, 2: unload or shutdown while a swap stops the old model -------------------


async def swap_stuck_in_eviction(
    router: Router, backend: ScriptedBackend
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    await serve_once(router, "a")
    gate = backend.hold("stop", "a")  # a is slow to stop
    waiting = asyncio.create_task(serve_once(router, "b"))
    await wait_until(lambda: router.state_of("a") is S.STOPPING, 5)
    return gate, waiting


async def test_unload_during_the_eviction_phase_never_starts_the_target(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    gate, waiting = await swap_stuck_in_eviction(router, backend)
    await router.unload({"b"})
    with pytest.raises(ModelUnloaded):
        await waiting
    gate.set()
    await settled(router)
    assert starts(backend, "b") == 0
    assert (router.state_of("a"), router.state_of("b")) == (S.STOPPED, S.STOPPED)


async def test_unload_all_during_the_eviction_phase_never_starts_the_target(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    gate, waiting = await swap_stuck_in_eviction(router, backend)
    unloading = asyncio.create_task(router.unload())
    with pytest.raises(ModelUnloaded):
        await waiting
    gate.set()
    await unloading
    await settled(router)
    assert starts(backend, "b") == 0
    assert backend.held() == []


async def test_shutdown_during_the_eviction_phase_starts_nothing_and_leaves_nothing(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    gate, waiting = await swap_stuck_in_eviction(router, backend)
    closing = asyncio.create_task(router.aclose())
    with pytest.raises(ShuttingDown):
        await waiting
    gate.set()
    await closing
    assert starts(backend, "b") == 0
    assert backend.held() == []
    with pytest.raises(ShuttingDown):
        await router.upstreams["a"].ensure_ready()


async def test_shutdown_during_a_start_waits_for_it_and_stops_it(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    gate = backend.hold("health", "a")  # a is starting
    waiting = asyncio.create_task(serve_once(router, "a"))
    await wait_until(lambda: ("health", "a") in backend.calls, 5)
    closing = asyncio.create_task(router.aclose())
    with pytest.raises((ShuttingDown, ModelUnloaded)):
        await waiting
    gate.set()
    await closing
    assert backend.held() == []
    assert router.state_of("a") is S.STOPPED


# -- 3, 4: engine errors never wedge an upstream -----------------------------------


async def test_engine_error_when_the_log_stream_ends_does_not_wedge_the_stop(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    backend.hold("wait", "a")  # only the log pump notices the exit
    await serve_once(router, "a")
    backend.script("a").fail["health"] = BackendUnavailable("engine gone")
    backend.die("a")  # the log stream ends; the pump's probe fails
    await wait_until(lambda: ("health", "a") in backend.calls[-1:], 5)
    await router.unload({"a"})
    assert router.state_of("a") is S.STOPPED
    await router.unload({"a"})  # a later reap does not re-raise either
    assert router.state_of("a") is S.STOPPED


async def test_engine_error_in_the_health_loop_reaps_what_it_launched(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    backend.script("a").fail["health"] = BackendUnavailable("engine gone")
    gate = backend.hold("stop", "a")
    waiting = asyncio.create_task(serve_once(router, "a"))
    await wait_until(lambda: ("stop", "a") in backend.calls, 5)
    # Still holding memory until the reap ends: counted as running.
    assert router.state_of("a") is S.STARTING
    assert "a" in router.running()
    gate.set()
    with pytest.raises(UpstreamStartError, match="engine gone"):
        await waiting
    assert router.state_of("a") is S.FAILED
    assert backend.held() == []


async def test_a_stop_that_raises_still_ends_stopped(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    await serve_once(router, "a")
    backend.script("a").fail["stop"] = RuntimeError("engine bug")
    await router.unload({"a"})
    assert router.state_of("a") is S.STOPPED


# -- 7: teardown and reload failures -------------------------------------------------


async def test_one_failing_stop_does_not_skip_the_rest_of_shutdown(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(
        routers,
        backend,
        TWO + "groups:\n  g: {swap: false, members: [a, b]}\n",
    )
    await serve_once(router, "a")
    await serve_once(router, "b")
    backend.script("a").fail["stop"] = RuntimeError("engine bug")
    await router.aclose()
    assert [w.model for w in backend.held()] == ["a"]  # b was stopped
    assert ("aclose", "") in backend.calls


async def test_a_reload_that_fails_inside_the_runtime_keeps_the_old_config(
    backend: ScriptedBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(TWO)
    runtime = Runtime(parse_config(TWO).config, backend)
    try:
        path.write_text(TWO + "  c: {cmd: srv c, proxy: 'http://127.0.0.1:9'}\n")

        def broken(kind: str, engine_url: str | None = None) -> object:
            raise RuntimeError("docker extra not installed")

        monkeypatch.setattr(runtime.backends, "get", broken)
        with caplog.at_level(logging.ERROR, "swapvisor.reload"):
            assert await Reloader(runtime, path, None).reload_now() is False
        assert "docker extra not installed" in caplog.text
        assert sorted(runtime.config.models) == ["a", "b"]
        assert sorted(runtime.router.upstreams) == ["a", "b"]
    finally:
        await runtime.aclose()


# -- 10: liveness while ready ----------------------------------------------------------

LIVE = TWO.replace("livenessInterval: 0", "livenessInterval: 0.02")


async def test_a_server_that_stops_answering_while_idle_becomes_failed(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LIVE)
    await serve_once(router, "a")
    backend.script("a").health_while_ready = Health.STARTING
    await wait_until(lambda: router.state_of("a") is S.FAILED, 5)
    failure = router.upstreams["a"].failure
    assert failure is not None and "stopped answering /health" in failure.message
    assert "a" not in router.running()
    assert backend.held() == []
    backend.script("a").health_while_ready = None
    await serve_once(router, "a")  # the next request starts it again
    assert router.state_of("a") is S.READY


async def test_a_server_that_dies_while_idle_becomes_failed_with_its_exit(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    backend.script("a").startup_lines = (b"loading weights\n",)
    await serve_once(router, "a")
    backend.die("a", 3)
    await wait_until(lambda: router.state_of("a") is S.FAILED, 5)
    failure = router.upstreams["a"].failure
    assert failure is not None
    assert "exit code 3" in failure.message
    assert "loading weights" in failure.message


async def test_a_server_that_dies_mid_request_ends_stopped(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    async with router.lease("a"):
        backend.die("a", 3)
        await wait_until(lambda: router.state_of("a") is S.STOPPED, 5)


async def test_a_preloaded_model_that_dies_is_started_again_at_once(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, TWO + "hooks: {on_startup: {preload: [a]}}\n")
    await serve_once(router, "a")
    backend.die("a", 1)
    await wait_until(lambda: starts(backend, "a") == 2, 5)
    await wait_until(lambda: router.state_of("a") is S.READY, 5)


async def test_liveness_probes_are_not_activity_for_the_ttl(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LIVE)
    router.upstreams["a"].ttl_s = 0.2
    await serve_once(router, "a")
    await wait_until(lambda: router.state_of("a") is S.STOPPED, 5)
    assert backend.calls.count(("health", "a")) >= 2  # probed meanwhile


# -- 11: crash-loop backoff ------------------------------------------------------------

LOOPING = TWO + "crashLoop: {failures: 2, backoff: 5}\n"


async def test_a_crash_looping_model_is_quarantined_then_refused_at_once(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LOOPING)
    backend.script("a").fail["start"] = start_error("no such binary")
    for _ in range(2):
        with pytest.raises(UpstreamStartError, match="no such binary"):
            await serve_once(router, "a")
    with pytest.raises(CrashLoop) as refused:
        await serve_once(router, "a")
    assert refused.value.code == "crash_loop" and refused.value.status == 503
    assert refused.value.retry_after == 5
    assert "no such binary" in refused.value.message
    assert starts(backend, "a") == 2  # no start was attempted
    quarantine = router.status()["a"].quarantine
    assert quarantine is not None and quarantine.failures == 2


async def test_quarantine_backoff_doubles(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LOOPING)
    backend.script("a").fail["start"] = start_error()
    for _ in range(2):
        with pytest.raises(UpstreamStartError):
            await serve_once(router, "a")
    upstream = router.upstreams["a"]
    first = upstream.quarantine
    assert first is not None and first.backoff_s == 5
    upstream.quarantine = None  # as if it had expired
    with pytest.raises(UpstreamStartError):
        await serve_once(router, "a")
    second = router.status()["a"].quarantine
    assert second is not None and second.backoff_s == 10


async def test_unload_clears_a_quarantine(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LOOPING)
    backend.script("a").fail["start"] = start_error()
    for _ in range(2):
        with pytest.raises(UpstreamStartError):
            await serve_once(router, "a")
    del backend.script("a").fail["start"]
    await router.unload({"a"})
    await serve_once(router, "a")
    assert router.state_of("a") is S.READY


async def test_a_config_change_clears_a_quarantine(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LOOPING)
    backend.script("a").fail["start"] = start_error()
    for _ in range(2):
        with pytest.raises(UpstreamStartError):
            await serve_once(router, "a")
    del backend.script("a").fail["start"]
    changed = LOOPING.replace(
        '"http://127.0.0.1:9"}', '"http://127.0.0.1:9", ttl: 60}', 1
    )
    router.reconfigure(parse_config(changed).config)
    await serve_once(router, "a")


# -- 12: slow is not stuck -----------------------------------------------------------

SLOW = """
livenessInterval: 0
models:
  a: {cmd: "srv a", proxy: "http://127.0.0.1:9", healthCheckTimeout: 0.3,
      maxStartTime: 3}
"""


async def test_a_start_that_keeps_logging_outlives_the_health_check_timeout(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, SLOW)
    backend.script("a").not_ready_probes = 10**9
    waiting = asyncio.create_task(serve_once(router, "a"))
    await wait_until(lambda: ("health", "a") in backend.calls, 5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < 0.8:  # the server prints as it loads
        backend.say("a", b"loading layer\n")
        await asyncio.sleep(0.1)
    backend.ready_now("a")
    await waiting
    assert router.state_of("a") is S.READY


async def test_a_silent_start_fails_at_the_health_check_timeout(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, SLOW)
    backend.script("a").not_ready_probes = 10**9
    with pytest.raises(UpstreamStartTimeout, match="healthCheckTimeout") as failed:
        await serve_once(router, "a")
    assert "within 0.3 s" in failed.value.message
    assert backend.held() == []


async def test_a_start_that_logs_forever_fails_at_max_start_time(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(
        routers, backend, SLOW.replace("maxStartTime: 3", "maxStartTime: 0.6")
    )
    backend.script("a").not_ready_probes = 10**9
    waiting = asyncio.create_task(serve_once(router, "a"))
    while not waiting.done():
        backend.say("a", b"still loading\n")
        await asyncio.wait([waiting], timeout=0.05)
    with pytest.raises(UpstreamStartTimeout, match="maxStartTime") as failed:
        await waiting
    assert "within 0.6 s" in failed.value.message


# -- engines that are away ---------------------------------------------------------


async def test_an_unreachable_engine_evicts_nothing_and_names_itself(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend)
    await serve_once(router, "a")
    backend.script("b").fail["check"] = BackendUnavailable("engine tcp://h:2375 down")
    with pytest.raises(UpstreamStartError, match="tcp://h:2375"):
        await serve_once(router, "b")
    assert router.state_of("a") is S.READY  # nothing was stopped for it
    assert starts(backend, "b") == 0


async def test_an_unreachable_engine_is_no_crash_loop(
    routers: list[Router], backend: ScriptedBackend
) -> None:
    router = make(routers, backend, LOOPING)
    backend.script("a").fail["start"] = BackendUnavailable("engine down")
    for _ in range(3):
        with pytest.raises(UpstreamStartError, match="engine down"):
            await serve_once(router, "a")
    assert router.status()["a"].quarantine is None
