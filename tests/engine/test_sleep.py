"""The sleep ladder (ready → sleeping → stopped) through the router, over the
scripted backend and an in-process server speaking vLLM's sleep endpoints
(``POST /sleep?level=N``, ``POST /wake_up``, ``GET /is_sleeping``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.config.loader import parse_config
from controller.engine.pool import BackendPool
from controller.engine.router import Router
from controller.engine.states import UpstreamState
from tests.conftest import wait_until
from tests.fakes.scripted_backend import ScriptedBackend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

S = UpstreamState


@dataclass
class SleepServer:
    """What a vLLM server's sleep endpoints do, scripted by the test."""

    asleep: bool = False
    fail_sleep: bool = False
    fail_wake: bool = False
    calls: list[str] = field(default_factory=list)
    sleep_gate: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sleep", self.sleep)
        app.router.add_post("/wake_up", self.wake)
        app.router.add_get("/is_sleeping", self.is_sleeping)
        return app

    async def sleep(self, request: web.Request) -> web.Response:
        self.calls.append(f"sleep level={request.query.get('level')}")
        if self.sleep_gate is not None:
            await self.sleep_gate.wait()
        if self.fail_sleep:
            return web.Response(status=500, text="cannot sleep")
        self.asleep = True
        return web.Response(text="")

    async def wake(self, request: web.Request) -> web.Response:
        self.calls.append("wake")
        if self.fail_wake:
            return web.Response(status=500, text="cannot wake")
        self.asleep = False
        return web.Response(text="")

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.asleep})


@dataclass
class World:
    router: Router
    backend: ScriptedBackend
    server: SleepServer

    def starts(self, model: str) -> int:
        return self.backend.calls.count(("start", model))

    def stops(self, model: str) -> int:
        return self.backend.calls.count(("stop", model))


@pytest.fixture
async def sleeper() -> AsyncIterator[tuple[SleepServer, str]]:
    server = SleepServer()
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server()
    yield server, str(test_server.make_url("")).rstrip("/")
    await test_server.close()


@pytest.fixture
async def worlds() -> AsyncIterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        if not world.router._closing:
            await world.router.aclose()


def config(url: str, extra: str = "", a_extra: str = "") -> str:
    return f"""
livenessInterval: 0
models:
  v:
    cmd: srv v
    proxy: {url}
    sleep: vllm
{a_extra}
  b: {{cmd: "srv b", proxy: "http://127.0.0.1:9"}}
{extra}"""


async def world(
    worlds: list[World], sleeper: tuple[SleepServer, str], **kw: str
) -> World:
    server, url = sleeper
    router = Router(
        parse_config(config(url, **kw)).config, BackendPool(ScriptedBackend(), "t")
    )
    made = World(router, router.backends.get("native"), server)  # type: ignore[arg-type]
    worlds.append(made)
    return made


async def serve(router: Router, model: str) -> None:
    async with router.lease(model):
        pass


async def asleep(w: World) -> None:
    await serve(w.router, "v")
    await serve(w.router, "b")  # the swap puts v to sleep
    assert w.router.state_of("v") is S.SLEEPING
    assert w.server.asleep


async def test_a_swap_puts_a_sleep_capable_model_to_sleep(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    assert w.server.calls == ["sleep level=1"]
    assert w.stops("v") == 0  # the process stays
    assert [x.model for x in w.backend.held()] == ["v", "b"] or {
        x.model for x in w.backend.held()
    } == {"v", "b"}
    assert "v" not in w.router.running()  # holds no accelerator memory
    assert w.router.status()["v"].asleep_since is not None


async def test_a_request_wakes_a_sleeping_model_without_a_start(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    await serve(w.router, "v")
    assert w.router.state_of("v") is S.READY
    assert w.server.calls[-1] == "wake"
    assert w.starts("v") == 1  # woken, not started again
    assert w.router.status()["v"].asleep_since is None


async def test_level_two_is_passed_on(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    server, url = sleeper
    w = await world(worlds, sleeper)
    w.router.reconfigure(
        parse_config(
            config(url).replace("sleep: vllm", "sleep: {mode: vllm, level: 2}")
        ).config
    )
    await settle_all(w.router)
    await asleep(w)
    assert w.server.calls == ["sleep level=2"]


async def settle_all(router: Router) -> None:
    await asyncio.gather(*router._retiring, return_exceptions=True)


async def test_a_failing_sleep_stops_the_model_instead(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    w.server.fail_sleep = True
    await serve(w.router, "v")
    await serve(w.router, "b")
    assert w.router.state_of("v") is S.STOPPED
    assert w.stops("v") == 1
    assert {x.model for x in w.backend.held()} == {"b"}


async def test_a_failing_wake_restarts_the_model(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    w.server.fail_wake = True
    await serve(w.router, "v")
    assert w.router.state_of("v") is S.READY
    assert w.starts("v") == 2  # restarted after the wake failed
    assert w.stops("v") == 1


async def test_a_request_while_it_falls_asleep_waits_then_wakes_it(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await serve(w.router, "v")
    w.server.sleep_gate = asyncio.Event()
    to_b = asyncio.create_task(serve(w.router, "b"))
    await wait_until(lambda: w.server.calls == ["sleep level=1"], 5)
    back = asyncio.create_task(serve(w.router, "v"))
    await asyncio.sleep(0)
    assert not back.done() and w.router.state_of("v") is S.SLEEPING
    w.server.sleep_gate.set()  # it falls asleep; the request then wakes it
    await asyncio.wait_for(asyncio.gather(to_b, back), 5)
    assert w.server.calls == ["sleep level=1", "wake"]
    assert w.router.state_of("v") is S.READY and w.starts("v") == 1


async def test_unload_stops_a_sleeping_model(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    await w.router.unload({"v"})
    assert w.router.state_of("v") is S.STOPPED
    assert {x.model for x in w.backend.held()} == {"b"}


async def test_sleep_ttl_stops_a_model_asleep_too_long(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper, a_extra="    sleepTTL: 0.1")
    await asleep(w)
    await wait_until(lambda: w.router.state_of("v") is S.STOPPED, 5)
    assert {x.model for x in w.backend.held()} == {"b"}


async def test_a_reload_that_changes_a_sleeping_model_stops_it(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    server, url = sleeper
    w = await world(worlds, sleeper)
    await asleep(w)
    old = w.router.upstreams["v"]
    w.router.reconfigure(parse_config(config(url).replace("srv v", "srv v2")).config)
    await settle_all(w.router)
    assert old.state is S.STOPPED
    assert {x.model for x in w.backend.held()} == {"b"}


async def test_shutdown_while_asleep_stops_it(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    await w.router.aclose()
    assert w.backend.held() == []
    assert w.router.state_of("v") is S.STOPPED


async def test_a_model_that_dies_asleep_is_failed(
    worlds: list[World], sleeper: tuple[SleepServer, str]
) -> None:
    w = await world(worlds, sleeper)
    await asleep(w)
    w.backend.die("v", 9)
    await wait_until(lambda: w.router.state_of("v") is S.FAILED, 5)
    await serve(w.router, "v")  # started afresh
    assert w.starts("v") == 2
