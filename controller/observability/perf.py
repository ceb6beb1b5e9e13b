"""System and GPU sampling: ``/api/performance`` history and ``/api/hardware``.

``SystemSampler`` reads CPU, memory, swap, load, network and swapvisor's own
RSS through psutil (``controller.metrics`` reads it at scrape time too).
``PerfMonitor`` keeps one hour of samples (a ring of ``3600 / every``
entries); whoever owns it calls ``sample()`` every ``every`` seconds (blocking
for about a millisecond: psutil and NVML; run it with ``asyncio.to_thread``)
and ``history(after)`` answers ``GET /api/performance`` (llama-swap.md §5.6).
``hardware_snapshot(probe)`` answers ``GET /api/hardware`` (§5.8).

``/api/performance`` payload, field names as llama-swap's::

    {"enabled": true,
     "sys_stats": [{"timestamp", "cpu_util_pct", "cpu_util_per_core": [...],
                    "mem_total_mb", "mem_used_mb", "mem_free_mb",
                    "swap_total_mb", "swap_used_mb",
                    "load_avg_1", "load_avg_5", "load_avg_15",
                    "net_io": [{"name", "bytes_recv", "bytes_sent"}]}],
     "gpu_stats": [{"timestamp", "id", "name", "uuid", "temp_c", "vram_temp_c",
                    "gpu_util_pct", "mem_util_pct", "mem_used_mb",
                    "mem_total_mb", "fan_speed_pct", "power_draw_w"}]}

``timestamp`` is RFC3339 in UTC with microseconds (``...T12:00:05.000000Z``);
``gpu_stats`` is flattened across samples (oldest first, GPUs by index within
one sample); ``*_mb`` are whole MiB; ``mem_free_mb`` is *available* memory;
``cpu_util_pct`` (all cores) is an addition; a GPU figure the driver cannot
give is ``null``; ``net_io`` counters are totals since boot, every interface.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from controller import __version__
from controller.config.rules import check_every

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from controller.observability.gpu import GpuInfo, GpuProbe, GpuSample

DEFAULT_EVERY_S = 5.0
HISTORY_S = 3600.0
AFTER_ERROR = "invalid 'after' timestamp, use RFC3339 format"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class NetIo:
    name: str
    bytes_recv: int
    bytes_sent: int


@dataclass(frozen=True, slots=True)
class SysSample:
    """One reading of the host; ``cpu_*`` cover the time since the last one."""

    cpu_util_pct: float
    cpu_util_per_core: tuple[float, ...]
    mem_total_bytes: int
    mem_used_bytes: int
    mem_available_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    load_avg: tuple[float, float, float]
    net_io: tuple[NetIo, ...]
    process_rss_bytes: int


def _busy_total(t: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds of one psutil ``scputimes``, as psutil counts."""
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _pct(busy: float, total: float) -> float:
    return 0.0 if total <= 0 else round(min(100.0, max(0.0, busy * 100 / total)), 2)


class CpuMeter:
    """CPU utilization since the previous call, with its own baseline.

    ``psutil.cpu_percent(interval=None)`` keeps one baseline per thread, which
    two readers (``/metrics`` and the perf sampler) would share; this keeps
    one per meter. The first reading covers the time since construction.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]

    def read(self) -> tuple[float, tuple[float, ...]]:
        now = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]
        with self._lock:
            last, self._last = self._last, now
        deltas = [
            (b1 - b0, t1 - t0) for (b0, t0), (b1, t1) in zip(last, now, strict=False)
        ]
        overall = _pct(sum(d[0] for d in deltas), sum(d[1] for d in deltas))
        return overall, tuple(_pct(b, t) for b, t in deltas)


class SystemSampler:
    """Reads a ``SysSample`` through psutil."""

    def __init__(self) -> None:
        self._cpu = CpuMeter()
        self._process = psutil.Process()

    def sample(self) -> SysSample:
        overall, per_core = self._cpu.read()
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        one, five, fifteen = psutil.getloadavg()
        return SysSample(
            cpu_util_pct=overall,
            cpu_util_per_core=per_core,
            mem_total_bytes=vm.total,
            mem_used_bytes=vm.used,
            mem_available_bytes=vm.available,
            swap_total_bytes=sw.total,
            swap_used_bytes=sw.used,
            load_avg=(one, five, fifteen),
            net_io=_net_io(),
            process_rss_bytes=self._process.memory_info().rss,
        )


def _net_io() -> tuple[NetIo, ...]:
    nics = psutil.net_io_counters(pernic=True)
    return tuple(
        NetIo(name, c.bytes_recv, c.bytes_sent) for name, c in sorted(nics.items())
    )


def rfc3339(at: datetime) -> str:
    """``2025-01-02T03:04:05.123456Z`` (UTC, microseconds)."""
    utc = at.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_rfc3339(text: str) -> datetime:
    """An RFC3339 timestamp (offset required); ValueError(``AFTER_ERROR``)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(AFTER_ERROR) from None
    if at.tzinfo is None:
        raise ValueError(AFTER_ERROR)
    return at


@dataclass(frozen=True, slots=True)
class _Entry:
    at: datetime
    system: SysSample
    gpus: tuple[GpuSample, ...]


class PerfMonitor:
    """One hour of system and GPU samples for ``/api/performance``.

    ``system`` is for tests (a callable returning fixed ``SysSample``s); it
    defaults to a ``SystemSampler``. Thread-safe.
    """

    def __init__(
        self,
        every_s: float,
        probe: GpuProbe | None,
        clock: Callable[[], float] = time.time,
        *,
        system: Callable[[], SysSample] | None = None,
    ) -> None:
        self._every = check_every(every_s)
        self._probe = probe
        self._clock = clock
        self._system = system or SystemSampler().sample
        self._lock = threading.Lock()
        self._ring: deque[_Entry] = deque(maxlen=self.capacity)

    @property
    def every_s(self) -> float:
        return self._every

    @property
    def capacity(self) -> int:
        """How many samples one hour holds: ``3600 / every``."""
        return max(1, int(HISTORY_S // self._every))

    def reconfigure(self, every_s: float) -> None:
        """New interval (config reload); keeps the newest samples that fit."""
        self._every = check_every(every_s)
        with self._lock:
            self._ring = deque(self._ring, maxlen=self.capacity)

    def sample(self) -> None:
        """Take one sample now (blocking: psutil and NVML)."""
        at = datetime.fromtimestamp(self._clock(), UTC)
        system = self._system()
        gpus = tuple(self._probe.devices()) if self._probe is not None else ()
        with self._lock:
            self._ring.append(_Entry(at, system, gpus))

    def history(self, after: datetime | None = None) -> dict[str, Any]:
        """The ``/api/performance`` payload: samples strictly after ``after``.

        A naive ``after`` is taken as UTC.
        """
        if after is not None and after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        with self._lock:
            entries = [e for e in self._ring if after is None or e.at > after]
        return {
            "enabled": True,
            "sys_stats": [_sys_json(e.at, e.system) for e in entries],
            "gpu_stats": [_gpu_json(e.at, g) for e in entries for g in e.gpus],
        }


def _mb(n: int | None) -> int | None:
    return None if n is None else n // MIB


def _sys_json(at: datetime, s: SysSample) -> dict[str, Any]:
    return {
        "timestamp": rfc3339(at),
        "cpu_util_pct": s.cpu_util_pct,
        "cpu_util_per_core": list(s.cpu_util_per_core),
        "mem_total_mb": _mb(s.mem_total_bytes),
        "mem_used_mb": _mb(s.mem_used_bytes),
        "mem_free_mb": _mb(s.mem_available_bytes),
        "swap_total_mb": _mb(s.swap_total_bytes),
        "swap_used_mb": _mb(s.swap_used_bytes),
        "load_avg_1": s.load_avg[0],
        "load_avg_5": s.load_avg[1],
        "load_avg_15": s.load_avg[2],
        "net_io": [
            {"name": n.name, "bytes_recv": n.bytes_recv, "bytes_sent": n.bytes_sent}
            for n in s.net_io
        ],
    }


def _gpu_json(at: datetime, g: GpuSample) -> dict[str, Any]:
    return {
        "timestamp": rfc3339(at),
        "id": g.index,
        "name": g.name,
        "uuid": g.uuid,
        "temp_c": g.temperature_c,
        "vram_temp_c": g.vram_temperature_c,
        "gpu_util_pct": g.utilization_pct,
        "mem_util_pct": g.memory_utilization_pct,
        "mem_used_mb": _mb(g.memory_used_bytes),
        "mem_total_mb": _mb(g.memory_total_bytes),
        "fan_speed_pct": g.fan_speed_pct,
        "power_draw_w": g.power_w,
    }


# --- /api/hardware -----------------------------------------------------------

_ARCHES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
    "s390x": "s390x",
}
_CPU_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}
_CONTAINER_MARKS = (
    ("kubepods", "kubernetes"),
    ("docker", "docker"),
    ("libpod", "podman"),
    ("containerd", "containerd"),
    ("lxc", "lxc"),
)
_VM_VENDORS = ("QEMU", "KVM", "VMware", "VirtualBox", "Xen", "Amazon EC2", "Google")


def hardware_snapshot(
    probe: GpuProbe | None,
    *,
    clock: Callable[[], float] = time.time,
    version: str = __version__,
) -> dict[str, Any]:
    """The ``/api/hardware`` document (§5.8); unknown values are ``None``.

    Blocking (reads /proc, /sys and NVML); take it once at startup.
    """
    return {
        "schema_version": 1,
        "captured_at": rfc3339(datetime.fromtimestamp(clock(), UTC)),
        "capture": {
            "scope": "inference_host",
            "method": "detected",
            "detector": {"name": "swapvisor", "version": version},
        },
        "architecture": architecture(platform.machine()),
        "operating_system": _operating_system(),
        "environment": _environment(),
        "cpu": _cpu(),
        "memory": {"capacity_bytes": psutil.virtual_memory().total},
        "accelerators": accelerators([] if probe is None else probe.inventory()),
    }


def architecture(raw: str) -> dict[str, Any]:
    return {"name": _ARCHES.get(raw.lower(), "other"), "raw_name": raw or None}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


_OS_FAMILIES = {
    "Linux": "linux",
    "Darwin": "macos",
    "Windows": "windows",
    "FreeBSD": "freebsd",
}  # platform.system() names


def _operating_system() -> dict[str, Any]:
    system = platform.system()
    family = _OS_FAMILIES.get(system, "other")
    name: str | None = system or None
    version: str | None = None
    if family == "linux":
        name, version = _os_release()
    elif family == "macos":
        name, version = "macOS", platform.mac_ver()[0] or None
    elif family == "windows":
        version = platform.version() or None
    kernel = platform.release() or None
    return {"family": family, "name": name, "version": version, "kernel": kernel}


def _os_release() -> tuple[str | None, str | None]:
    try:
        rel = platform.freedesktop_os_release()
    except OSError:
        return None, None
    return rel.get("NAME"), rel.get("VERSION_ID")


def _environment() -> dict[str, Any]:
    def env(kind: str, name: str | None = None) -> dict[str, Any]:
        return {"kind": kind, "name": name, "version": None}

    if "microsoft" in platform.release().lower():
        return env("wsl", "WSL")
    if container := _container():
        return env("container", container)
    if platform.system() != "Linux":
        return env("unknown")
    if "hypervisor" in _cpu_flags(_read("/proc/cpuinfo")):
        return env("virtual_machine", _vm_vendor())
    return env("native")


def _container() -> str | None:
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    cgroup = _read("/proc/1/cgroup")
    for mark, name in _CONTAINER_MARKS:
        if mark in cgroup:
            return name
    return None


def _vm_vendor() -> str | None:
    text = _read("/sys/class/dmi/id/sys_vendor") + _read(
        "/sys/class/dmi/id/product_name"
    )
    return next((v for v in _VM_VENDORS if v.lower() in text.lower()), None)


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """vendor, model and socket count from Linux ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    sockets: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key == "physical id":
            sockets.add(value)
        fields.setdefault(key, value)
    vendor = fields.get("vendor_id")
    return {
        "vendor": _CPU_VENDORS.get(vendor, vendor) if vendor else None,
        "model": fields.get("model name") or None,
        "socket_count": len(sockets) or None,
    }


def _cpu() -> dict[str, Any]:
    info = parse_cpuinfo(_read("/proc/cpuinfo"))
    if info["model"] is None:
        info["model"] = platform.processor() or None
    return {
        **info,
        "physical_core_count": psutil.cpu_count(logical=False),
        "logical_thread_count": psutil.cpu_count(logical=True),
    }


def accelerators(gpus: Sequence[GpuInfo]) -> list[dict[str, Any]]:
    """§5.8 ``accelerators`` entries for GPUs as a probe lists them."""
    return [
        {
            "index": g.index,
            "kind": "gpu",
            "vendor": g.vendor,
            "model": g.name or None,
            "architecture": g.architecture,
            "memory": {"kind": "dedicated", "capacity_bytes": g.memory_total_bytes},
            "driver": {"name": g.driver_name, "version": g.driver_version},
            "power_limit_watts": g.power_limit_w,
        }
        for g in gpus
    ]
