"""The backend contract, one suite for every kind: native (a process), mock
(in-process), docker (Docker SDK) and podman (libpod API).

Each test drives a real server over HTTP on 127.0.0.1 and checks what the
controller relies on: start returns at once, health goes READY, a dead
workload is EXITED (seen from the engine's state for containers), stop
reports the real exit and escalates to a kill after the grace, logs run
from launch to exit, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from backends.base import Backend, Handle, Health, LaunchSpec
from controller.engine.upstream import Upstream
from controller.errors import UpstreamStartError
from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.backends.conftest import Target

pytestmark = pytest.mark.container


async def until(
    backend: Backend,
    handle: Handle,
    spec: LaunchSpec,
    want: Health,
    timeout: float = 20,
) -> float:
    """Poll health until ``want``; seconds it took."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        while (health := await backend.health(handle, spec)) is not want:
            assert want is Health.EXITED or health is not Health.EXITED, "exited early"
            await asyncio.sleep(0.01)
    return time.monotonic() - began


class Logs:
    """The one consumer of ``backend.logs``, collecting lines in a task."""

    def __init__(self, backend: Backend, handle: Handle) -> None:
        self.lines: list[bytes] = []

        async def read() -> None:
            async for line in backend.logs(handle):
                self.lines.append(line)

        self.task = asyncio.create_task(read())

    async def ended(self, timeout: float = 5) -> bytes:
        await asyncio.wait_for(self.task, timeout)
        return b"".join(self.lines)


async def test_start_ready_serve_stop_and_nothing_left(target: Target) -> None:
    backend = target.backend()
    port = free_port()
    spec = target.spec(port)
    began = time.monotonic()
    handle = await backend.start("m", spec)
    assert time.monotonic() - began < 10
    assert handle.kind == target.kind and handle.base_url == spec.base_url
    logs = Logs(backend, handle)
    await until(backend, handle, spec, Health.READY)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{spec.base_url}/v1/models") as resp:
            assert resp.status == 200
            assert (await resp.json())["data"][0]["id"] == "m"
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{spec.base_url}/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["choices"][0]["message"]["content"]

    info = await backend.stop(handle, spec, grace=5)
    assert (info.code, info.forced) == (0, False)
    assert await backend.health(handle, spec) is Health.EXITED
    assert target.leftovers() == []
    output = await logs.ended()
    assert f"listening on http://127.0.0.1:{port}".encode() in output
    # Stopping again is harmless.
    again = await backend.stop(handle, spec, grace=5)
    assert again.forced is False


async def test_exit_while_starting_is_exited_with_its_code(target: Target) -> None:
    backend = target.backend()
    spec = target.spec(free_port(), "exit3")
    handle = await backend.start("m", spec)
    logs = Logs(backend, handle)
    await until(backend, handle, spec, Health.EXITED)
    info = await backend.stop(handle, spec, grace=1)
    assert (info.code, info.forced) == (3, False)
    assert info.describe() == "exit code 3"
    assert b"simulated startup failure" in await logs.ended()
    assert target.leftovers() == []


async def test_crash_while_serving_is_seen_and_reported(target: Target) -> None:
    backend = target.backend()
    spec = target.spec(free_port(), "crash9")
    handle = await backend.start("m", spec)
    logs = Logs(backend, handle)
    await until(backend, handle, spec, Health.READY)
    crash = {"model": "m", "messages": [], "fake_crash_midstream": True}
    async with aiohttp.ClientSession() as http:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(f"{spec.base_url}/v1/chat/completions", json=crash):
                pass
    await until(backend, handle, spec, Health.EXITED, timeout=10)
    info = await backend.stop(handle, spec, grace=1)
    assert (info.code, info.forced) == (9, False)
    await logs.ended()
    assert target.leftovers() == []


async def test_ignoring_sigterm_is_killed_after_the_grace(target: Target) -> None:
    backend = target.backend()
    spec = target.spec(free_port(), "ignore_term")
    handle = await backend.start("m", spec)
    logs = Logs(backend, handle)
    await until(backend, handle, spec, Health.READY)
    began = time.monotonic()
    info = await backend.stop(handle, spec, grace=0.5)
    took = time.monotonic() - began
    assert info.forced is True
    assert info.code == -signal.SIGKILL
    assert info.describe() == "killed by signal 9"
    assert 0.5 <= took < 5
    assert b"ignoring SIGTERM" in await logs.ended()
    assert target.leftovers() == []


async def test_upstream_reports_the_exit_and_last_log_lines(target: Target) -> None:
    """Through the controller's Upstream: the logs reach its error message."""
    backend = target.backend()
    upstream = Upstream(
        "m",
        target.spec(free_port(), "exit3"),
        backend,
        start_deadline_s=20,
        unload_grace_s=1,
        ttl_s=0,
    )
    with pytest.raises(UpstreamStartError) as failed:
        await upstream.ensure_ready()
    assert "exit code 3" in str(failed.value)
    assert "simulated startup failure" in str(failed.value)
    assert target.leftovers() == []


async def test_upstream_serves_then_stops(target: Target) -> None:
    backend = target.backend()
    spec = target.spec(free_port())
    upstream = Upstream(
        "m", spec, backend, start_deadline_s=20, unload_grace_s=5, ttl_s=0
    )
    await upstream.ensure_ready()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{spec.base_url}/health") as resp:
            assert resp.status == 200
    await upstream.stop()
    assert upstream.last_exit is not None and upstream.last_exit.code == 0
    assert target.leftovers() == []
