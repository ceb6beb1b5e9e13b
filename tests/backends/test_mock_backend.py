"""``mock:`` models through the whole controller, with no container engine:
the container scenarios where they apply (start, serve, swap, stop; a crash
while serving; a failed start; a start that never becomes healthy; a slow
start), in-process with ``apps`` and once as a real subprocess."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import openai
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from tests.conftest import port_block

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Swapvisor
    from tests.harness import App, Apps


def sdk(app: App) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=str(app.client.make_url("/v1")),
        api_key="x",
        max_retries=0,
        timeout=30,
    )


async def say(c: AsyncOpenAI, model: str) -> str:
    reply = await c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content or ""


async def refused(c: AsyncOpenAI, model: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await say(c, model)
    return caught.value


def port_of(app: App, model: str) -> int:
    port = int(app.router.upstreams[model].spec.base_url.rsplit(":", 1)[1])
    return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


TWO = """
models:
  one:
    mock: {reply: "one speaking"}
  two:
    mock: {reply: "two speaking"}
"""


async def test_start_serve_swap_back_and_stop(apps: Apps) -> None:
    app = await apps.start(TWO)
    one, two = port_of(app, "one"), port_of(app, "two")
    assert (app.state("one"), app.state("two")) == ("stopped", "stopped")
    async with sdk(app) as c:
        assert await say(c, "one") == "one speaking"
        assert (app.state("one"), app.state("two")) == ("ready", "stopped")
        assert listening(one)

        assert await say(c, "two") == "two speaking"
        # Swapped: one's simulated server is gone, not just idle.
        assert (app.state("one"), app.state("two")) == ("stopped", "ready")
        assert not listening(one) and listening(two)

        assert await say(c, "one") == "one speaking"
        assert (app.state("one"), app.state("two")) == ("ready", "stopped")
    resp = await app.client.post("/api/models/unload")
    assert resp.status == 200
    assert (app.state("one"), app.state("two")) == ("stopped", "stopped")
    assert not listening(one) and not listening(two)


def test_as_a_subprocess_serve_swap_and_sigterm_exits_0(
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
) -> None:
    start = port_block(2)
    doc: dict[str, Any] = yaml.safe_load(TWO)
    sv = swapvisor(write_config(yaml.safe_dump({"startPort": start, **doc})))
    with OpenAI(base_url=f"{sv.url}/v1", api_key="x", max_retries=0) as c:
        for model in ("one", "two", "one"):
            reply = c.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == f"{model} speaking"
        assert listening(start) and not listening(start + 1)
    assert sv.stop(signal.SIGTERM) == 0, sv.output()
    assert not listening(start)


async def test_crash_after_requests_is_a_502_then_a_restart(apps: Apps) -> None:
    app = await apps.start(
        "models:\n  m:\n    mock: {crashAfterRequests: 1, exitCode: 7}\n"
    )
    async with sdk(app) as c:
        assert await say(c, "m") == "Hello from the swapvisor mock."
        # Answered in full, then it died: the next request finds it gone.
        err = await refused(c, "m")
        assert err.status_code == 502
        assert "exit code 7" in err.message, err.message
        # Reaped on the 502; the third request starts it again.
        assert await say(c, "m") == "Hello from the swapvisor mock."
        assert app.state("m") == "ready"


async def test_startup_exit_is_a_503_with_the_code_and_others_serve(
    apps: Apps,
) -> None:
    app = await apps.start(
        "models:\n"
        "  bad:\n    mock: {startupExit: true, exitCode: 3}\n"
        "  good:\n    mock: {}\n"
    )
    async with sdk(app) as c:
        err = await refused(c, "bad")
        assert err.status_code == 503
        assert "exited while starting (exit code 3)" in err.message, err.message
        assert "simulated startup failure" in err.message
        assert app.state("bad") == "failed"
        assert await say(c, "good") == "Hello from the swapvisor mock."


async def test_never_healthy_is_a_504_after_the_model_deadline(
    apps: Apps,
) -> None:
    app = await apps.start(
        "models:\n  m:\n    healthCheckTimeout: 1\n    mock: {healthFailures: -1}\n"
    )
    began = time.monotonic()
    async with sdk(app) as c:
        err = await refused(c, "m")
    took = time.monotonic() - began
    assert err.status_code == 504
    assert "did not become healthy within 1 s" in err.message, err.message
    assert 1.0 <= took < 3.0
    assert app.state("m") == "failed"
    assert not listening(port_of(app, "m"))  # the start was abandoned


async def test_start_delay_is_the_load_time(apps: Apps) -> None:
    app = await apps.start("models:\n  m:\n    mock: {startDelay: 0.4}\n")
    async with sdk(app) as c:
        began = time.monotonic()
        await say(c, "m")
        cold = time.monotonic() - began
        began = time.monotonic()
        await say(c, "m")
        warm = time.monotonic() - began
    load = app.router.upstreams["m"].last_start_s
    assert load is not None and 0.4 <= load < 1.5
    assert 0.4 <= cold < 2.0
    assert warm < 0.3


async def test_a_crash_is_noticed_without_a_request(apps: Apps) -> None:
    """The exit watch reaps a server that dies while idle: it is failed (it
    died on its own), and the next request restarts it straight away rather
    than meeting a dead port."""
    app = await apps.start("models:\n  m:\n    mock: {crashAfterRequests: 1}\n")
    async with sdk(app) as c:
        await say(c, "m")
        async with asyncio.timeout(5):
            while app.state("m") != "failed":
                await asyncio.sleep(0.01)
        assert await say(c, "m") == "Hello from the swapvisor mock."
