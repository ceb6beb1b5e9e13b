"""The machine's memory figures, behind a protocol so tests can fake them.

Owns reading what memory there is and who holds accelerator memory:
``HostMemory`` from ``/proc/meminfo``, one ``DeviceMemory`` per NVIDIA GPU and
the per-process device figures from NVML. It decides nothing: the engine
compares these figures with what each model was measured to need
(``Backend.footprint``), and attributes device memory to a model through the
host pids its footprint names.

``SystemMemory`` implements ``MemoryProbe`` over an NVML module (``pynvml``,
PyPI ``nvidia-ml-py``, optional) injected as in
``controller.observability.gpu.NvmlProbe``: tests pass
``tests/fakes/fake_nvml.FakeNvml``. Without the package, or when ``nvmlInit``
fails (no driver), it is a probe with no devices; a figure NVML cannot give
(``NVMLError``) is left out, never raised. Every call blocks (a file read,
NVML calls of microseconds to milliseconds): callers use
``asyncio.to_thread``. Device indices are NVML's, which are PCI bus order:
the order the native backend asks CUDA for (``CUDA_DEVICE_ORDER``) and that
Docker's and CDI's device ids use. pynvml is untyped, so ``Any`` stays here.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

log = logging.getLogger("swapvisor.memory")

MEMINFO = "/proc/meminfo"
# pynvml's process-list functions: compute (CUDA) and graphics contexts.
_PROCESS_LISTS = (
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses",
)

# The driver's library, by the name pynvml itself loads on Linux.
NVML_LIBRARY = "libnvidia-ml.so.1"

_logged_off = False  # "NVML unavailable" is said once per process, not per open
_logged_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class HostMemory:
    """Host RAM in bytes: ``MemTotal`` and ``MemAvailable`` (what can be
    allocated without swapping, page cache that can be dropped included)."""

    total: int
    available: int


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """One GPU's memory in bytes, by NVML index."""

    index: int
    total: int
    used: int

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)


class MemoryProbe(Protocol):
    """What memory the machine has and who holds device memory; blocking."""

    def host(self) -> HostMemory: ...

    def devices(self) -> list[DeviceMemory]: ...

    def processes(self) -> dict[int, dict[int, int]]:
        """Host pid → {device index: bytes it holds there}, for every process
        NVML reports with a known figure."""
        ...


def read_meminfo(path: str = MEMINFO) -> HostMemory:
    """``MemTotal`` and ``MemAvailable`` from a meminfo file (kB → bytes).

    Kernels before 3.14 have no ``MemAvailable``: ``MemFree`` + ``Cached``
    stands in, as ``free(1)`` computed it then.
    """
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024
    total = fields.get("MemTotal", 0)
    available = fields.get("MemAvailable")
    if available is None:
        available = fields.get("MemFree", 0) + fields.get("Cached", 0)
    return HostMemory(total=total, available=min(available, total))


class SystemMemory:
    """``MemoryProbe`` over ``/proc/meminfo`` and an NVML module (or none).

    NVML functions used: nvmlInit, nvmlShutdown, nvmlDeviceGetCount,
    nvmlDeviceGetHandleByIndex, nvmlDeviceGetMemoryInfo,
    nvmlDeviceGetComputeRunningProcesses,
    nvmlDeviceGetGraphicsRunningProcesses; NVMLError. ``nvml`` None: host
    figures only, no devices.
    """

    def __init__(self, nvml: Any | None, *, meminfo: str = MEMINFO) -> None:
        self._nvml = nvml
        self._meminfo = meminfo
        self._closed = False
        self._failed: set[str] = set()  # functions whose failure was logged

    @classmethod
    def open(cls, nvml: Any | None = None, *, meminfo: str = MEMINFO) -> SystemMemory:
        """Initialise NVML (``nvml`` defaults to the real ``pynvml``); without
        it, a probe with no devices (logged at debug, once)."""
        if nvml is None:
            nvml, why = load_nvml()
            if nvml is None:
                _log_off(why)
                return cls(None, meminfo=meminfo)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            _log_off(f"NVML unavailable ({e})")
            return cls(None, meminfo=meminfo)
        return cls(nvml, meminfo=meminfo)

    @property
    def has_nvml(self) -> bool:
        return self._nvml is not None

    def close(self) -> None:
        """``nvmlShutdown`` once (when NVML was opened); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._nvml is not None:
            self._call("nvmlShutdown")

    def host(self) -> HostMemory:
        return read_meminfo(self._meminfo)

    def devices(self) -> list[DeviceMemory]:
        out: list[DeviceMemory] = []
        for index, handle in self._handles():
            mem = self._call("nvmlDeviceGetMemoryInfo", handle)
            if mem is not None:
                out.append(
                    DeviceMemory(index, total=int(mem.total), used=int(mem.used))
                )
        return out

    def processes(self) -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        for index, handle in self._handles():
            for name in _PROCESS_LISTS:
                for proc in self._call(name, handle) or ():
                    used = getattr(proc, "usedGpuMemory", None)
                    if used is None:
                        # pynvml's NVML_VALUE_NOT_AVAILABLE (no permission, some
                        # vGPU and Windows WDDM setups): unknown is not zero.
                        continue
                    per_device = out.setdefault(int(proc.pid), {})
                    # A process with both a compute and a graphics context is
                    # listed in both with the same total: count it once.
                    per_device[index] = max(per_device.get(index, 0), int(used))
        return out

    def _call(self, name: str, *args: Any) -> Any:
        """``nvml.<name>(*args)``, or ``None`` on NVMLError or if it is missing."""
        nvml = self._nvml
        fn = getattr(nvml, name, None)
        if nvml is None or fn is None:
            return None
        try:
            return fn(*args)
        except nvml.NVMLError as e:
            if name not in self._failed:  # once: the same fails every reading
                self._failed.add(name)
                log.debug("%s failed: %s", name, e)
            return None

    def _handles(self) -> list[tuple[int, Any]]:
        if self._nvml is None or self._closed:
            return []
        count = self._call("nvmlDeviceGetCount") or 0
        found = ((i, self._call("nvmlDeviceGetHandleByIndex", i)) for i in range(count))
        return [(i, h) for i, h in found if h is not None]


def load_nvml() -> tuple[Any | None, str]:
    """The real ``pynvml`` module, or None and why not.

    On Linux the driver's library is looked for first, and pynvml is only
    imported where it loads: on a machine without an NVIDIA driver (a
    CPU-only box, CI) importing it would only cost memory (~2 MiB of idle
    RSS, bench/) to find no library.
    """
    if sys.platform == "linux":
        try:
            ctypes.CDLL(NVML_LIBRARY)
        except OSError as exc:
            return None, f"NVML unavailable ({exc})"
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    return pynvml, ""


def _log_off(why: str) -> None:
    global _logged_off
    with _logged_lock:
        if _logged_off:
            return
        _logged_off = True
    log.debug("device memory figures off: %s", why)


if TYPE_CHECKING:
    _check: type[MemoryProbe] = SystemMemory
