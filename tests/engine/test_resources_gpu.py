"""The memory engine's GPU paths, with real model processes and a fake NVML
behind ``SystemMemory`` (the same interface the real driver is read
through): placement over several GPUs (tightest fit, spread, pins) handed to
the servers as ``CUDA_VISIBLE_DEVICES``, per-process measurement, learning,
eviction to make room on the right GPU, the never-fits 503, and waiting for
memory the driver releases lazily.

``Driver`` plays the GPU driver: when a model becomes ready, its process
"allocates" its size on the GPUs its environment lets it see; when it stops,
the memory goes away (at once, or when the test releases it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.memory import SystemMemory
from controller.engine.states import StateChange, UpstreamState
from tests.conftest import PY, ROOT, fake_cmd, wait_until
from tests.fakes.fake_nvml import GPUS, FakeNvml

if TYPE_CHECKING:
    from tests.harness import App, Apps

GIB = 1 << 30


def visible_devices(pid: int) -> tuple[int, ...]:
    """The GPUs a process may use: its CUDA_VISIBLE_DEVICES (all when unset)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"CUDA_VISIBLE_DEVICES="):
            value = entry.split(b"=", 1)[1].decode()
            return tuple(int(i) for i in value.split(",") if i)
    return (0, 1)


class Driver:
    """Allocates each ready model's size over its visible GPUs in the fake
    NVML; frees it when the model stops (``lazy``: only on ``release``)."""

    def __init__(self, nvml: FakeNvml, sizes: dict[str, int]) -> None:
        self.nvml = nvml
        self.sizes = sizes
        self.lazy = False
        self.pids: dict[str, int] = {}
        self.devices: dict[str, tuple[int, ...]] = {}
        self.started_at: dict[str, float] = {}
        self.app: App | None = None

    def __call__(self, change: StateChange) -> None:
        assert self.app is not None
        model = change.model
        if change.new is UpstreamState.STARTING:
            self.started_at[model] = time.monotonic()
        elif change.new is UpstreamState.SLEEPING:
            for index in self.devices[model]:  # vLLM's sleep frees the GPU
                self.nvml.remove_process(index, self.pids[model])
        elif change.new is UpstreamState.READY:
            pid = self.app.pid(model)
            assert pid is not None
            devices = visible_devices(pid)
            self.pids[model], self.devices[model] = pid, devices
            for index in devices:
                self.nvml.add_process(index, pid, self.sizes[model] // len(devices))
        elif change.new in (UpstreamState.STOPPED, UpstreamState.FAILED):
            if model not in self.pids:
                return  # it never became ready
            pid = self.pids.pop(model)
            for index in self.devices[model]:
                self.nvml.remove_process(index, pid, linger=None if self.lazy else 0)


async def start(
    apps: Apps, tmp_path: Path, models: str, sizes: dict[str, int]
) -> tuple[App, Driver]:
    nvml = FakeNvml(GPUS)
    for index in (0, 1):
        nvml.set_memory(index, used=0, total=24 * GIB)
    driver = Driver(nvml, sizes)
    text = f"""
routing:
  router:
    use: resources
    settings:
      resources:
        gpus: auto
        ram: 100%
        learnedFile: {tmp_path / "learned.json"}
models:
{models}"""
    app = await apps.start(text, memory=SystemMemory.open(nvml))
    driver.app = app
    app.router.state_listeners.append(driver)
    return app, driver


def model(mid: str, *lines: str, cmd: str = "") -> str:
    body = "".join(f"\n    {line}" for line in lines)
    return f"  {mid}:\n    cmd: {cmd or fake_cmd(mid)}{body}\n"


VLLM = ROOT / "tests" / "fakes" / "fake_vllm.py"


async def explained(app: App) -> dict[str, Any]:
    data = await app.json("/api/explain")
    return {m["id"]: m for m in data["models"]} | {"": data}


async def test_placed_on_the_tightest_gpu_then_the_other_and_pins_evict_there(
    apps: Apps, tmp_path: Path
) -> None:
    models = (
        model("a", "needs: {vram: 16GiB}")
        + model("b", "needs: {vram: 16GiB}")
        + model("c", "needs: {vram: 16GiB}", "gpus: [1]")
    )
    sizes = {"a": 15 * GIB, "b": 15 * GIB, "c": 15 * GIB}
    app, driver = await start(apps, tmp_path, models, sizes)
    assert await app.reply("a") == "hello from a"
    assert driver.devices["a"] == (0,)
    assert await app.reply("b") == "hello from b"
    assert driver.devices["b"] == (1,)  # 8 GiB left on GPU 0: no room there
    assert app.running() == ["a", "b"]
    assert await app.reply("c") == "hello from c"
    # c is pinned to GPU 1: b, there, made way; a on GPU 0 stayed.
    assert app.running() == ["a", "c"]
    assert driver.devices["c"] == (1,)
    info = await explained(app)
    assert info["c"]["placement"] == [1]
    assert "to fit c" in info["b"]["decision"]["text"]
    assert "GPU 1" in info["b"]["decision"]["text"]

    async def measured() -> bool:
        m = (await explained(app))["c"]["measured"]
        return m is not None and m["vram"] == {"1": 15 * GIB}

    async with asyncio.timeout(10):
        while not await measured():
            await asyncio.sleep(0.02)
    budget = (await explained(app))[""]["budget"]
    assert [g["capacity"] for g in budget["gpus"]] == [24 * GIB, 24 * GIB]
    assert budget["gpus"][1]["free"] == 9 * GIB
    metrics = await (await app.client.get("/metrics")).text()
    series = 'swapvisor_model_memory_bytes{device="gpu1",model="c"} 1.610612736e+10'
    assert series in metrics
    assert 'swapvisor_model_memory_bytes{device="gpu1",model="b"}' not in metrics


async def test_a_model_too_big_for_one_gpu_is_spread_and_one_too_big_for_all_refused(
    apps: Apps, tmp_path: Path
) -> None:
    models = model("wide", "needs: {vram: 40GiB}") + model(
        "huge", "needs: {vram: 60GiB}"
    )
    app, driver = await start(apps, tmp_path, models, {"wide": 40 * GIB, "huge": 0})
    assert await app.reply("wide") == "hello from wide"
    assert driver.devices["wide"] == (0, 1)
    status, body = await app.chat("huge")
    assert status == 503
    assert body["error"]["code"] == "insufficient_memory"
    assert "60.0 GiB VRAM" in body["error"]["message"]
    assert "GPU 0: 24.0 GiB, GPU 1: 24.0 GiB" in body["error"]["message"]
    assert app.running() == ["wide"]


async def test_an_unmeasured_model_sees_every_gpu_then_is_learned(
    apps: Apps, tmp_path: Path
) -> None:
    models = model("e") + model("f", "needs: {vram: 20GiB}")
    app, driver = await start(apps, tmp_path, models, {"e": 10 * GIB, "f": 20 * GIB})
    assert await app.reply("e") == "hello from e"
    assert driver.devices["e"] == (0, 1)

    async def learned() -> bool:
        needs = (await explained(app))["e"]["needs"]
        return needs["learned"] is not None and needs["learned"]["vram"] == 10 * GIB

    async with asyncio.timeout(10):
        while not await learned():
            await asyncio.sleep(0.02)
    # Measured at 5 GiB on each GPU, e leaves 19 GiB on each: f (20 GiB) fits
    # on neither alone, so it is spread over both, beside e.
    assert await app.reply("f") == "hello from f"
    assert app.running() == ["e", "f"]
    assert driver.devices["f"] == (0, 1)


async def test_a_start_waits_for_memory_the_driver_releases_lazily(
    apps: Apps, tmp_path: Path
) -> None:
    models = model("a", "needs: {vram: 20GiB}", "gpus: [0]") + model(
        "b", "needs: {vram: 20GiB}", "gpus: [0]"
    )
    app, driver = await start(apps, tmp_path, models, {"a": 20 * GIB, "b": 20 * GIB})
    assert await app.reply("a") == "hello from a"
    driver.lazy = True
    reply = asyncio.create_task(app.reply("b"))
    await wait_until(lambda: app.state("a") == "stopped")
    # a's process is gone, its memory is not: b must not start yet.
    await wait_until(lambda: driver.nvml.state[0].lingering != {})
    polls = len(driver.nvml.calls)
    await wait_until(lambda: len(driver.nvml.calls) > polls + 4)  # still polling
    assert "b" not in driver.started_at
    released = time.monotonic()
    driver.nvml.release(0)
    assert await reply == "hello from b"
    assert driver.started_at["b"] >= released
    metrics = await (await app.client.get("/metrics")).text()
    assert 'swapvisor_memory_wait_seconds_count{model="b"} 1.0' in metrics


async def test_a_sleep_capable_model_sleeps_to_free_its_gpu_and_stops_for_ram(
    apps: Apps, tmp_path: Path
) -> None:
    vllm = f"{PY} {VLLM} --port ${{PORT}} --model v --load-seconds 0 --wake-seconds 0"
    models = (
        model(
            "v", "sleep: vllm", "needs: {vram: 20GiB, ram: 1GiB}", "gpus: [0]", cmd=vllm
        )
        + model("w", "needs: {vram: 20GiB, ram: 1GiB}", "gpus: [0]")
        + model("r", "needs: {ram: 2GiB}")
    )
    sizes = {"v": 20 * GIB, "w": 20 * GIB, "r": 0}
    app, driver = await start(apps, tmp_path, models, sizes)
    # A 2.5 GiB RAM budget: v and w (1 GiB each) fit, r (2 GiB) only alone.
    app.router.ledger.budget = replace(app.router.ledger.budget, ram=int(2.5 * GIB))  # type: ignore[union-attr]
    assert await app.reply("v") == "hello from v"
    pid = app.pid("v")
    assert await app.reply("w") == "hello from w"
    # Only v's GPU memory was needed: it sleeps, the same process stays.
    assert app.state("v") == "sleeping" and app.pid("v") == pid
    assert app.running() == ["w"]
    info = await explained(app)
    assert info["v"]["holds"]["vram"] == {}
    # r needs RAM that sleeping v still holds: v is stopped this time.
    assert await app.reply("r") == "hello from r"
    assert app.state("v") == "stopped"
