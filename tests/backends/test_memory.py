"""The machine's memory figures (``backends.memory``) over the fake NVML, and
the /proc and cgroup readers (``backends.procfs``) over made-up trees: the
cases a live machine cannot be made to show (no PSS access, a reused pid,
cgroup v2, a device without process information, NVML missing)."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import backends.memory
from backends.containers import top_pids
from backends.memory import (
    NVML_LIBRARY,
    DeviceMemory,
    HostMemory,
    SystemMemory,
    load_nvml,
    read_meminfo,
)
from backends.procfs import container_memory, marked, process_tree, tree_memory
from tests.conftest import PY, ROOT
from tests.fakes.fake_nvml import GIB, FakeNvml

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- host memory ------------------------------------------------------------------


def test_host_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       24000000 kB\nMemFree:         1000000 kB\n"
        "MemAvailable:   20000000 kB\nCached:          3000000 kB\n"
    )
    assert read_meminfo(str(meminfo)) == HostMemory(24000000 * 1024, 20000000 * 1024)
    old = tmp_path / "old"  # a kernel before 3.14: no MemAvailable
    old.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nCached: 20 kB\n")
    assert SystemMemory(None, meminfo=str(old)).host() == HostMemory(102400, 30720)


def test_host_memory_of_this_machine() -> None:
    host = SystemMemory(None).host()
    assert 0 < host.available <= host.total


# -- devices and processes over the fake NVML -----------------------------------------


def test_devices_and_per_process_figures() -> None:
    nvml = FakeNvml()
    probe = SystemMemory.open(nvml)
    assert nvml.initialised and probe.has_nvml
    assert probe.devices() == [
        DeviceMemory(0, total=80 * GIB, used=20 * GIB),
        DeviceMemory(1, total=40 * GIB, used=1 * GIB),
    ]
    nvml.add_process(0, 100, 10 * GIB)
    nvml.add_process(1, 100, 2 * GIB)
    nvml.add_process(1, 200, 3 * GIB, graphics=True)
    nvml.add_process(0, 300, None)  # NVML cannot tell: left out, not zero
    # Compute and graphics both list a process with both contexts: once.
    nvml.add_process(0, 400, 1 * GIB)
    nvml.add_process(0, 400, 1 * GIB, graphics=True)
    assert probe.processes() == {
        100: {0: 10 * GIB, 1: 2 * GIB},
        200: {1: 3 * GIB},
        400: {0: 1 * GIB},
    }
    dev0, dev1 = probe.devices()
    assert dev0.used == 31 * GIB and dev0.free == 49 * GIB
    assert dev1.used == 6 * GIB
    nvml.set_memory(1, used=39 * GIB, total=40 * GIB)
    assert probe.devices()[1] == DeviceMemory(1, total=40 * GIB, used=44 * GIB)
    assert probe.devices()[1].free == 0  # never negative
    probe.close()
    probe.close()
    assert nvml.shutdowns == 1
    assert probe.devices() == [] and probe.processes() == {}


def test_a_device_without_process_information_still_reports_memory() -> None:
    nvml = FakeNvml(
        unsupported=frozenset(
            {
                (1, "nvmlDeviceGetComputeRunningProcesses"),
                (1, "nvmlDeviceGetGraphicsRunningProcesses"),
            }
        )
    )
    nvml.add_process(0, 100, 5 * GIB)
    nvml.add_process(1, 100, 7 * GIB)
    probe = SystemMemory.open(nvml)
    assert probe.processes() == {100: {0: 5 * GIB}}
    assert [d.used for d in probe.devices()] == [25 * GIB, 8 * GIB]


def test_a_device_whose_memory_cannot_be_read_is_left_out() -> None:
    nvml = FakeNvml(unsupported=frozenset({(0, "nvmlDeviceGetMemoryInfo")}))
    assert [d.index for d in SystemMemory.open(nvml).devices()] == [1]


def test_lazy_release_keeps_memory_used_after_the_process_is_gone() -> None:
    nvml = FakeNvml()
    probe = SystemMemory.open(nvml)
    nvml.add_process(0, 100, 10 * GIB)
    nvml.remove_process(0, 100, linger=2)
    assert probe.processes() == {}  # no longer listed at once...
    assert probe.devices()[0].used == 30 * GIB  # ...its memory lingers: 1
    assert probe.devices()[0].used == 30 * GIB  # 2
    assert probe.devices()[0].used == 20 * GIB  # released
    nvml.add_process(0, 200, 4 * GIB)
    nvml.remove_process(0, 200, linger=None)  # until the test says
    for _ in range(5):
        assert probe.devices()[0].used == 24 * GIB
    nvml.release(0, 200)
    assert probe.devices()[0].used == 20 * GIB
    nvml.add_process(0, 300, 1 * GIB)
    nvml.remove_process(0, 300)  # linger 0: freed at once
    assert probe.devices()[0].used == 20 * GIB


def test_nvml_init_failure_gives_a_probe_without_devices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import backends.memory

    backends.memory._logged_off = False
    with caplog.at_level(logging.DEBUG, logger="swapvisor.memory"):
        probe = SystemMemory.open(FakeNvml(init_error=True))
        again = SystemMemory.open(FakeNvml(init_error=True))
    assert not probe.has_nvml
    assert probe.devices() == [] and again.processes() == {}
    assert probe.host().total > 0
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "NVML unavailable" in said[0]  # once
    probe.close()


def test_the_real_nvml_opens_with_or_without_a_driver() -> None:
    """nvidia-ml-py is installed here; without a driver (this machine) the
    probe has no devices, with one it lists them. Either way no error."""
    probe = SystemMemory.open()
    try:
        devices = probe.devices()
        assert bool(devices) <= probe.has_nvml
        assert all(0 <= d.used <= d.total for d in devices)
        assert isinstance(probe.processes(), dict)
    finally:
        probe.close()


def test_without_nvidia_ml_py_there_are_no_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A driver library that loads (libc stands in), but no package.
    monkeypatch.setattr(backends.memory, "NVML_LIBRARY", "libc.so.6")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert load_nvml() == (None, "nvidia-ml-py is not installed")
    probe = SystemMemory.open()
    assert not probe.has_nvml
    assert probe.devices() == [] and probe.processes() == {}
    probe.close()


# Both probes opened the real way in a fresh interpreter, and what that imported.
OPEN_BOTH = """
import json, sys
from backends.memory import SystemMemory, load_nvml
from controller.observability.gpu import NvmlProbe
memory, gpu = SystemMemory.open(), NvmlProbe.open()
print(json.dumps({
    "has_nvml": memory.has_nvml,
    "gpu_probe": gpu is not None,
    "imported": "pynvml" in sys.modules,
    "why": load_nvml()[1],
}))
"""


def test_pynvml_is_imported_only_where_the_driver_library_loads() -> None:
    """Without NVIDIA's driver (CI, a CPU-only box) both probes find that out
    without importing pynvml, which cost ~2 MiB of idle RSS (bench/)."""
    try:
        ctypes.CDLL(NVML_LIBRARY)
        driver = True
    except OSError:
        driver = False
    out = subprocess.run(
        [PY, "-c", OPEN_BOTH], cwd=ROOT, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["imported"] == driver
    if not driver:
        assert not got["has_nvml"] and not got["gpu_probe"]
        assert (
            got["why"].startswith("NVML unavailable (") and NVML_LIBRARY in got["why"]
        )


# -- /proc: process trees and their memory ---------------------------------------------


def _proc(
    root: Path,
    pid: int,
    ppid: int,
    pgrp: int,
    *,
    state: str = "S",
    pss_kb: int | None = None,
    rss_pages: int | None = None,
) -> None:
    d = root / str(pid)
    d.mkdir()
    # A command name with spaces and a ")" must not shift the fields.
    (d / "stat").write_text(f"{pid} (a b) c) {state} {ppid} {pgrp} {pgrp} 0 -1\n")
    if pss_kb is not None:
        (d / "smaps_rollup").write_text(
            f"00400000-7fff [rollup]\nRss: {pss_kb * 2} kB\nPss: {pss_kb} kB\n"
        )
    if rss_pages is not None:
        (d / "statm").write_text(f"1000 {rss_pages} 10 1 0 5 0\n")


def test_process_tree_is_the_group_and_every_descendant(tmp_path: Path) -> None:
    _proc(tmp_path, 1, 0, 1)
    _proc(tmp_path, 10, 1, 10, pss_kb=1000)  # the server, leading group 10
    _proc(tmp_path, 11, 10, 10, pss_kb=500)  # a worker in its group
    _proc(tmp_path, 12, 10, 12, rss_pages=100)  # a worker that setsid'd
    _proc(tmp_path, 13, 12, 13, pss_kb=1)  # ...and its own child
    _proc(tmp_path, 14, 1, 10, pss_kb=7)  # orphaned, still in the group
    _proc(tmp_path, 15, 10, 10, state="Z")  # a zombie holds nothing
    _proc(tmp_path, 20, 1, 20, pss_kb=999)  # someone else
    (tmp_path / "self").mkdir()  # non-pid entries are skipped
    tree = process_tree(10, str(tmp_path))
    assert tree == {10, 11, 12, 13, 14}
    # PSS where smaps_rollup is readable, RSS (statm) where it is not.
    want = (1000 + 500 + 1 + 7) * 1024 + 100 * PAGE
    assert tree_memory(tree, str(tmp_path)) == want


def test_marked_finds_a_servers_processes_by_their_environment(tmp_path: Path) -> None:
    def env(pid: int, *pairs: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "environ").write_bytes(
            b"".join(p.encode() + b"\0" for p in pairs)
        )

    env(10, "PATH=/bin", "SWAPVISOR_SERVER=7.1")  # a server of swapvisor 7
    env(11, "SWAPVISOR_SERVER=7.1", "HOME=/")  # its daemon, first in its env
    env(12, "SWAPVISOR_SERVER=7.12")  # another start: not a prefix match
    env(13, "X=SWAPVISOR_SERVER=7.1")  # only a value that contains it
    env(14, "SWAPVISOR_SERVER=70.1")  # another swapvisor
    env(15)  # a zombie's environ reads empty
    (tmp_path / "16").mkdir()  # another user's: unreadable, skipped
    assert marked("7.1", str(tmp_path)) == {10, 11}
    assert marked("7.", str(tmp_path), prefix=True) == {10, 11, 12}
    assert marked("7.1", str(tmp_path / "absent")) == frozenset()


def test_a_reaped_leaders_pid_may_be_anothers(tmp_path: Path) -> None:
    _proc(tmp_path, 1, 0, 1)
    _proc(tmp_path, 10, 1, 30, pss_kb=5)  # pid 10 reused by an unrelated process
    _proc(tmp_path, 11, 1, 10, pss_kb=5)  # what is left of the server's group
    assert process_tree(10, str(tmp_path), leader_alive=False) == {11}
    assert process_tree(10, str(tmp_path), leader_alive=True) == {10, 11}


def test_memory_of_processes_that_are_gone_is_unknown(tmp_path: Path) -> None:
    assert process_tree(10, str(tmp_path)) == frozenset()
    assert tree_memory(frozenset({10, 11}), str(tmp_path)) is None


# -- cgroups: a container's memory read on this host ----------------------------------

CID = "b688c7b58b82fbe03016cb9e27f6f508359c849ed67dd058f2b27914ea72e905"


def _cgroup(proc: Path, pid: int, text: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)


def test_container_memory_cgroup_v1(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    _cgroup(proc, 7, f"4:memory:/docker/{CID}\n1:cpu:/docker/{CID}\n0::/docker/{CID}\n")
    mem = cg / "memory" / "docker" / CID
    mem.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text(f"{300 * MIB}\n")
    (mem / "memory.stat").write_text(
        f"cache {50 * MIB}\ninactive_file 1\ntotal_inactive_file {20 * MIB}\n"
    )
    assert container_memory({7}, CID, str(proc), str(cg)) == 280 * MIB
    # Another container's pid (a reused number, a remote engine): not read.
    assert container_memory({7}, "f" * 64, str(proc), str(cg)) is None
    assert container_memory({8}, CID, str(proc), str(cg)) is None


def test_container_memory_cgroup_v2(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    path = f"/system.slice/docker-{CID}.scope"
    _cgroup(proc, 7, f"0::{path}\n")
    mem = cg / path.lstrip("/")
    mem.mkdir(parents=True)
    (mem / "memory.current").write_text(f"{300 * MIB}\n")
    (mem / "memory.stat").write_text(f"anon 1\ninactive_file {30 * MIB}\n")
    assert container_memory([7], CID, str(proc), str(cg)) == 270 * MIB


def test_top_answers_name_host_pids() -> None:
    docker_top = {"Titles": ["PID"], "Processes": [["13539"], ["13552"]]}
    assert top_pids(docker_top) == {13539, 13552}
    podman = {"Titles": ["HPID", "PID"], "Processes": [["13721", "1"], ["0", "6"]]}
    assert top_pids(podman) == {13721}  # 0: a process Podman cannot map
    assert top_pids({"Titles": ["USER"], "Processes": [["root"]]}) == frozenset()
    assert top_pids({}) == frozenset()
    assert top_pids(None) == frozenset()
