"""``Backend.footprint`` and GPU placement, against real processes and real
engines: what a workload holds (its host pids and host memory) as the
memory-aware scheduler learns it, and how a placement reaches the server.

The fake upstream's ``--hold-mib`` and ``--grow-mib`` make it hold real,
touched memory, so the figures are measured, not scripted. Containers run
the checkout's fake (bind-mounted over the image's copy), so the flags are
there whether or not the image was rebuilt since they were added.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import docker.types
import pytest

from backends.base import Footprint, Handle, Health, LaunchSpec
from backends.docker import create_args, memory_in_use
from backends.mock import MockBackend
from backends.native import NativeBackend
from backends.podman import create_body
from backends.specs import ContainerSpec, MockSpec
from tests.conftest import FAKE, PY, alive, free_port, wait_until
from tests.fakes.scripted_backend import ScriptedBackend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.base import Backend
    from tests.backends.conftest import Target

MIB = 1 << 20
HOLD_MIB = 200
# What a Python fake server holds besides its ballast: interpreter, stdlib,
# threads (about 15 MiB of PSS here; a container adds its init).
OVERHEAD = 60 * MIB


def native_spec(port: int, *flags: str, **kw: object) -> LaunchSpec:
    return LaunchSpec(
        argv=(PY, str(FAKE), "--port", str(port), "--model", "m", *flags),
        base_url=f"http://127.0.0.1:{port}",
        probe_timeout_s=1.0,
        **kw,  # type: ignore[arg-type]
    )


async def until_ready(backend: Backend, handle: Handle, spec: LaunchSpec) -> None:
    async with asyncio.timeout(30):
        while await backend.health(handle, spec) is not Health.READY:
            await asyncio.sleep(0.01)


async def post(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base_url}/v1/chat/completions", json={"messages": []}) as r,
    ):
        assert r.status == 200
        await r.read()


async def lines_until(lines: AsyncIterator[bytes], pattern: str) -> re.Match[str]:
    """Read output lines until one matches ``pattern``."""
    async with asyncio.timeout(30):
        async for line in lines:
            found = re.search(pattern, line.decode(errors="replace"))
            if found:
                return found
    raise AssertionError(f"no line matched {pattern!r}")


# -- native ---------------------------------------------------------------------


async def test_native_footprint_measures_held_memory_and_its_growth() -> None:
    backend = NativeBackend()
    spec = native_spec(free_port(), "--hold-mib", str(HOLD_MIB), "--grow-mib", "100")
    handle = await backend.start("m", spec)
    try:
        await until_ready(backend, handle, spec)
        before = await backend.footprint(handle)
        assert before.pids == {int(handle.ref)}
        assert before.host_bytes is not None
        assert HOLD_MIB * MIB <= before.host_bytes < HOLD_MIB * MIB + OVERHEAD
        await post(spec.base_url)  # the first POST grows it before answering
        after = await backend.footprint(handle)
        assert after.host_bytes is not None
        # PSS splits shared pages (libraries) among the processes sharing
        # them, so the rest moves a little as other processes come and go.
        assert after.host_bytes >= before.host_bytes + 100 * MIB - 2 * MIB
    finally:
        await backend.stop(handle, spec, grace=5)
        await backend.aclose()
    assert await backend.footprint(handle) == Footprint()


async def test_native_footprint_covers_the_whole_process_tree() -> None:
    """A child in the server's group and a grandchild that left it with
    setsid are both the server's; their memory counts."""
    script = (
        "import os, subprocess, sys, time\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "far = subprocess.Popen([sys.executable, '-c',\n"
        '    \'b = bytearray(64 << 20); b[::4096] = b"x" * (16384); '
        'print("ready", flush=True); import time; time.sleep(60)\'],\n'
        "    start_new_session=True, stdout=subprocess.PIPE,\n"
        "    stderr=subprocess.DEVNULL)\n"
        "far.stdout.readline()\n"
        "print('kids', kid.pid, far.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    backend = NativeBackend()
    spec = LaunchSpec(argv=(PY, "-c", script), base_url="http://127.0.0.1:9")
    handle = await backend.start("m", spec)
    far = 0
    try:
        found = await lines_until(backend.logs(handle), r"kids (\d+) (\d+)")
        kid, far = int(found[1]), int(found[2])
        assert os.getpgid(far) != int(handle.ref)  # really outside the group
        fp = await backend.footprint(handle)
        assert fp.pids == {int(handle.ref), kid, far}
        assert fp.host_bytes is not None and fp.host_bytes >= 64 * MIB
    finally:
        # A stop ends the group only: the setsid grandchild is the test's.
        if far and alive(far):
            os.kill(far, 9)
        await backend.stop(handle, spec, grace=5)
        await backend.aclose()


async def test_native_footprint_of_an_exited_server_is_empty() -> None:
    backend = NativeBackend()
    spec = native_spec(free_port(), "--exit-on-start", "3")
    handle = await backend.start("m", spec)
    try:
        await backend.wait(handle)
        # Exited, not yet stopped: nothing of it is left to measure.
        await wait_until(lambda: not alive(int(handle.ref)))
        assert await backend.footprint(handle) == Footprint()
    finally:
        await backend.stop(handle, spec, grace=1)
        await backend.aclose()


def _env_printer() -> LaunchSpec:
    code = (
        "import os; print('env', os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "os.environ.get('CUDA_DEVICE_ORDER'), flush=True)"
    )
    return LaunchSpec(
        argv=(PY, "-c", code),
        base_url="http://127.0.0.1:9",
        check_endpoint=None,
        env={"CUDA_VISIBLE_DEVICES": "7"},  # the config's own: a placement wins
    )


@pytest.mark.parametrize(
    ("devices", "seen"),
    [((2, 0), "env 2,0 PCI_BUS_ID"), ((), "env  PCI_BUS_ID"), (None, "env 7 None")],
)
async def test_native_placement_sets_visible_devices(
    devices: tuple[int, ...] | None, seen: str
) -> None:
    backend = NativeBackend()
    spec = dataclasses.replace(_env_printer(), devices=devices)
    handle = await backend.start("m", spec)
    try:
        found = await lines_until(backend.logs(handle), r"^env .*")
        assert found[0].rstrip("\n") == seen
    finally:
        await backend.stop(handle, spec, grace=1)
        await backend.aclose()


# -- mock and scripted --------------------------------------------------------------


async def test_mock_footprint_reports_the_declared_memory() -> None:
    backend = MockBackend()
    port = free_port()
    spec = LaunchSpec(
        argv=(),
        base_url=f"http://127.0.0.1:{port}",
        mock=MockSpec(memory="2GiB"),
    )
    handle = await backend.start("m", spec)
    try:
        assert await backend.footprint(handle) == Footprint(host_bytes=2 << 30)
    finally:
        await backend.stop(handle, spec, grace=1)
    assert await backend.footprint(handle) == Footprint()
    plain = dataclasses.replace(spec, mock=MockSpec())
    handle = await backend.start("m", plain)
    try:
        assert await backend.footprint(handle) == Footprint()  # memory unknown
    finally:
        await backend.stop(handle, plain, grace=1)
        await backend.aclose()


@pytest.mark.parametrize("bad", ["lots", -1, True])
def test_mock_memory_must_be_a_size(bad: object) -> None:
    with pytest.raises(ValueError):
        MockSpec(memory=bad)  # type: ignore[arg-type]


async def test_scripted_footprint_is_what_the_test_says() -> None:
    backend = ScriptedBackend()
    spec = LaunchSpec(argv=("srv", "a"), base_url="http://127.0.0.1:9")
    handle = await backend.start("a", spec)
    assert await backend.footprint(handle) == Footprint()
    backend.footprints["a"] = Footprint(frozenset({41}), 5 * MIB)
    assert await backend.footprint(handle) == Footprint(frozenset({41}), 5 * MIB)
    backend.die("a")
    assert await backend.footprint(handle) == Footprint()
    assert backend.footprint_calls == ["a", "a", "a"]
    assert ("footprint", "a") not in backend.calls


# -- containers: the requests they build (no GPU here) -----------------------------


def _cspec(**kw: object) -> ContainerSpec:
    return ContainerSpec(image="img", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("gpus", [None, "all", 2, ("0", "1")])
def test_docker_placement_replaces_the_containers_gpus(gpus: object) -> None:
    cspec = _cspec(gpus=gpus)
    spec = LaunchSpec(argv=("srv",), base_url="http://x:1", container=cspec)
    placed = create_args(dataclasses.replace(spec, devices=(3, 1)), cspec, "n", {})
    assert placed["device_requests"] == [
        docker.types.DeviceRequest(device_ids=["3", "1"], capabilities=[["gpu"]])
    ]
    none = create_args(dataclasses.replace(spec, devices=()), cspec, "n", {})
    assert "device_requests" not in none  # placed on no GPU: none at all
    own = create_args(spec, cspec, "n", {})
    assert ("device_requests" in own) == (gpus is not None)


@pytest.mark.parametrize("gpus", [None, "all", 2, ("0", "1")])
def test_podman_placement_replaces_the_containers_gpus(gpus: object) -> None:
    cspec = _cspec(gpus=gpus)
    spec = LaunchSpec(argv=("srv",), base_url="http://x:1", container=cspec)
    placed = create_body(dataclasses.replace(spec, devices=(3, 1)), cspec, "n", {})
    assert placed["devices"] == [
        {"path": "nvidia.com/gpu=3"},
        {"path": "nvidia.com/gpu=1"},
    ]
    none = create_body(dataclasses.replace(spec, devices=()), cspec, "n", {})
    assert "devices" not in none
    own = create_body(spec, cspec, "n", {})
    assert ("devices" in own) == (gpus is not None)


def test_docker_memory_leaves_out_reclaimable_cache_as_docker_stats_does() -> None:
    v1 = {"usage": 100, "stats": {"total_inactive_file": 30, "cache": 50}}
    assert memory_in_use(v1) == 70
    assert memory_in_use({"usage": 100, "stats": {"inactive_file": 40}}) == 60
    assert memory_in_use({"usage": 100, "stats": {"cache": 10}}) == 90
    assert memory_in_use({"usage": 100}) == 100  # Podman's compatible API
    assert memory_in_use({"usage": 10, "stats": {"inactive_file": 40}}) == 10
    assert memory_in_use({}) is None  # a stopped container's stats


async def test_container_footprint_raises_when_the_engine_is_gone(
    tmp_path: Path,
) -> None:
    """The one error footprint() raises: the engine cannot be reached."""
    from backends.base import BackendUnavailable
    from backends.container import _Container
    from backends.podman import LibpodEngine, PodmanBackend

    backend = PodmanBackend("tgone")
    engine = LibpodEngine(f"unix://{tmp_path / 'gone.sock'}", 5.0)
    backend._containers["c1"] = _Container("c1", "n", engine, None)
    handle = Handle(model="m", kind="podman", ref="c1", base_url="http://x:1")
    with pytest.raises(BackendUnavailable):
        await backend.footprint(handle)
    await engine.aclose()
    await backend.aclose()


# -- containers: real engines ---------------------------------------------------------


def _held_container_spec(target: Target, port: int, *flags: str) -> LaunchSpec:
    spec = target.spec(port, volumes=(f"{FAKE}:/srv/fake_upstream.py:ro",))
    return dataclasses.replace(spec, argv=(*spec.argv, *flags))


def _cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.container
async def test_container_footprint_gives_host_pids_and_cgroup_memory(
    engine_target: Target,
) -> None:
    """Every engine, Podman through the Docker SDK too (its top names host
    pids differently)."""
    real_target = engine_target
    assert real_target.engine is not None
    backend = real_target.backend()
    port = free_port()
    spec = _held_container_spec(
        real_target, port, "--hold-mib", str(HOLD_MIB), "--grow-mib", "100"
    )
    handle = await backend.start("m", spec)
    try:
        await until_ready(backend, handle, spec)
        fp = await backend.footprint(handle)
        info = real_target.engine.client.api.inspect_container(handle.ref)
        main_pid = int(info["State"]["Pid"])
        # Host pids: the container's main process as the engine reports it,
        # and every pid is a process of this host in the container's cgroup.
        assert main_pid in fp.pids
        for pid in fp.pids:
            assert handle.ref in _cgroup_of(pid)
        # The fake server itself is among them (behind the container's init).
        assert any(b"fake_upstream.py" in _cmdline(p) for p in fp.pids)
        # Read from the container's memory cgroup on this host...
        assert fp.host_bytes is not None
        assert HOLD_MIB * MIB <= fp.host_bytes < HOLD_MIB * MIB + OVERHEAD
        # ...and what the engine's stats say, for an engine on another host.
        engine = await backend._engine(real_target.url)  # type: ignore[attr-defined]
        stats = await engine.memory_usage(handle.ref)
        assert HOLD_MIB * MIB <= stats < HOLD_MIB * MIB + OVERHEAD
        await post(spec.base_url)
        grown = await backend.footprint(handle)
        assert grown.host_bytes is not None
        # The 100 MiB the server grew by, less a little: the cgroup's other
        # charges (page cache, kernel memory) may shrink meanwhile (a CI run
        # saw +100 MiB - 8 KiB).
        assert grown.host_bytes >= fp.host_bytes + 100 * MIB - 2 * MIB
    finally:
        await backend.stop(handle, spec, grace=5)
    assert await backend.footprint(handle) == Footprint()


@pytest.mark.container
async def test_container_footprint_of_an_exited_container_is_empty(
    real_target: Target,
) -> None:
    backend = real_target.backend()
    spec = real_target.spec(free_port(), "exit3")
    handle = await backend.start("m", spec)
    try:
        async with asyncio.timeout(30):
            while await backend.health(handle, spec) is not Health.EXITED:
                await asyncio.sleep(0.01)
        assert await backend.footprint(handle) == Footprint()
    finally:
        await backend.stop(handle, spec, grace=1)


@pytest.mark.container
async def test_container_footprint_while_it_exits_unseen_is_empty(
    engine_target: Target,
) -> None:
    """The engine's answers for a container that stopped behind the backend's
    back (top and stats of a stopped container) read as nothing left."""
    real_target = engine_target
    assert real_target.engine is not None
    backend = real_target.backend()
    spec = real_target.spec(free_port())
    handle = await backend.start("m", spec)
    try:
        await until_ready(backend, handle, spec)
        real_target.engine.client.api.kill(handle.ref, signal="SIGKILL")
        real_target.engine.client.api.wait(handle.ref, timeout=30)
        assert await backend.footprint(handle) == Footprint()
        # The adapter reads the engine's answers as "no process", not refusals.
        engine = await backend._engine(real_target.url)  # type: ignore[attr-defined]
        assert await engine.processes(handle.ref) == frozenset()
        assert not await engine.memory_usage(handle.ref)  # None, or libpod's 0
    finally:
        await backend.stop(handle, spec, grace=1)


@pytest.mark.container
async def test_docker_placement_reaches_the_engine(docker_engine: object) -> None:
    """dockerd turns the placement's device request into the container's
    NVIDIA_VISIBLE_DEVICES (scripts/setup-docker registers a stand-in for the
    NVIDIA hook, so the request is accepted on this GPU-less machine)."""
    from backends.docker import DockerBackend
    from tests.backends.conftest import DOCKER_URL, FAKE_IMAGE, new_instance

    backend = DockerBackend(new_instance(), engine_url=DOCKER_URL)
    code = "import os; print('env', os.environ.get('NVIDIA_VISIBLE_DEVICES'))"
    spec = LaunchSpec(
        argv=("python3", "-c", code),
        base_url="http://127.0.0.1:9",
        check_endpoint=None,
        container=ContainerSpec(image=FAKE_IMAGE, gpus="all"),
        devices=(1, 0),
    )
    handle = await backend.start("m", spec)
    try:
        found = await lines_until(backend.logs(handle), r"^env .*")
        assert found[0].strip() == "env 1,0"
    finally:
        await backend.stop(handle, spec, grace=1)
        await backend.aclose()
