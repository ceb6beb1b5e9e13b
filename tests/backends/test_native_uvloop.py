"""The native backend on uvloop's event loop (``SWAPVISOR_LOOP=uvloop``):
uvloop rejects ``process_group`` and hands protocols a transport that is not
an ``asyncio.SubprocessTransport``, so the backend spawns differently there."""

from __future__ import annotations

import asyncio
import os

import pytest

from backends.base import Health
from backends.native import NativeBackend
from controller.cli.main import loop_factory
from tests.backends.test_native import spec_for
from tests.conftest import alive, free_port

uvloop = pytest.importorskip("uvloop")


async def start_and_stop() -> tuple[int, int, int | None, bool]:
    backend = NativeBackend()
    spec = spec_for(free_port())
    handle = await backend.start("m", spec)
    async with asyncio.timeout(10):
        while await backend.health(handle, spec) is not Health.READY:
            await asyncio.sleep(0.01)
    pid = int(handle.ref)
    group = os.getpgid(pid)
    info = await backend.stop(handle, spec, grace=5)
    await backend.aclose()
    return pid, group, info.code, alive(pid)


def test_native_starts_and_stops_a_process_group_on_uvloop() -> None:
    pid, group, code, still_alive = uvloop.run(start_and_stop())
    assert group == pid  # the child leads its own group, as on asyncio
    assert code == 0
    assert not still_alive


def test_the_loop_is_asyncio_unless_uvloop_is_asked_for() -> None:
    assert loop_factory({}) is None
    assert loop_factory({"SWAPVISOR_LOOP": "asyncio"}) is None
    assert loop_factory({"SWAPVISOR_LOOP": " UVLOOP "}) is uvloop.new_event_loop
