"""GPU figures through NVML, behind a small protocol so tests can fake them.

``GpuProbe`` is what ``controller.metrics`` and ``controller.perf`` read:
``devices()`` gives one live ``GpuSample`` per GPU (utilization, memory,
temperatures, fan, power; llama-swap.md §5.6), ``inventory()`` one static
``GpuInfo`` per GPU for ``/api/hardware`` (§5.8).

``NvmlProbe`` implements it over ``pynvml`` (PyPI ``nvidia-ml-py``, the ``gpu``
extra). ``NvmlProbe.open()`` returns ``None`` when the package or the NVML
library is missing (no NVIDIA driver), so GPU series are simply absent. The
NVML module is injected (``NvmlProbe(module)``): tests pass
``tests/fakes/fake_nvml.FakeNvml``, which has the same function names. A field
NVML cannot give (``NVMLError``, e.g. "Not Supported" for the fan of a
passively cooled card) is ``None``; a device whose handle cannot be had is
left out. pynvml is untyped, so ``Any`` stays inside this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from backends.memory import load_nvml

log = logging.getLogger("swapvisor.gpu")

# nvmlDeviceGetArchitecture values (pynvml NVML_DEVICE_ARCH_*).
ARCHITECTURES = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada",
    9: "Hopper",
    10: "Blackwell",
    13: "Rubin",
}


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment. ``None``: the driver cannot tell.

    ``memory_utilization_pct`` is VRAM in use as a percentage of VRAM total
    (what llama-swap reports as ``mem_util_pct``), not NVML's memory-controller
    busy figure.
    """

    index: int
    uuid: str
    name: str
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    memory_utilization_pct: float | None
    temperature_c: float | None
    vram_temperature_c: float | None
    fan_speed_pct: float | None
    power_w: float | None


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What does not change while the process runs, for ``/api/hardware``."""

    index: int
    uuid: str
    name: str
    vendor: str
    architecture: str | None
    memory_total_bytes: int | None
    driver_name: str | None
    driver_version: str | None
    power_limit_w: float | None


class GpuProbe(Protocol):
    """Anything that can list GPUs: ``NvmlProbe``, or a fake in tests."""

    def devices(self) -> list[GpuSample]: ...

    def inventory(self) -> list[GpuInfo]: ...


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class NvmlProbe:
    """``GpuProbe`` over an NVML module (``pynvml`` or a fake with its names).

    Functions used: nvmlInit, nvmlShutdown, nvmlSystemGetDriverVersion,
    nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
    nvmlDeviceGetUUID, nvmlDeviceGetUtilizationRates, nvmlDeviceGetMemoryInfo,
    nvmlDeviceGetTemperature, nvmlDeviceGetFieldValues, nvmlDeviceGetFanSpeed,
    nvmlDeviceGetPowerUsage, nvmlDeviceGetEnforcedPowerLimit,
    nvmlDeviceGetArchitecture; constants NVMLError, NVML_TEMPERATURE_GPU,
    NVML_FI_DEV_MEMORY_TEMP. NVML calls are blocking (microseconds to a few
    milliseconds); they are thread-safe.
    """

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._closed = False
        self._failed: set[str] = set()  # functions whose failure was logged

    @classmethod
    def open(cls, nvml: Any = None) -> NvmlProbe | None:
        """Initialise NVML; ``None`` (logged at debug) when it is unavailable.

        ``nvml`` defaults to the real ``pynvml`` module.
        """
        if nvml is None:
            nvml, why = load_nvml()
            if nvml is None:
                log.debug("GPU metrics off: %s", why)
                return None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            log.debug("GPU metrics off: NVML unavailable (%s)", e)
            return None
        return cls(nvml)

    def close(self) -> None:
        """``nvmlShutdown`` once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._call("nvmlShutdown")

    def _call(self, name: str, *args: Any) -> Any:
        """``nvml.<name>(*args)``, or ``None`` on NVMLError or if it is missing."""
        fn = getattr(self._nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self._nvml.NVMLError as e:
            if name not in self._failed:  # once: the same fails every sample
                self._failed.add(name)
                log.debug("%s failed: %s", name, e)
            return None

    def _handles(self) -> list[tuple[int, Any]]:
        count = self._call("nvmlDeviceGetCount") or 0
        found = ((i, self._call("nvmlDeviceGetHandleByIndex", i)) for i in range(count))
        return [(i, h) for i, h in found if h is not None]

    def devices(self) -> list[GpuSample]:
        return [self._sample(i, h) for i, h in self._handles()]

    def inventory(self) -> list[GpuInfo]:
        driver = self._call("nvmlSystemGetDriverVersion")
        driver_version = None if driver is None else _text(driver)
        return [self._info(i, h, driver_version) for i, h in self._handles()]

    def _sample(self, index: int, handle: Any) -> GpuSample:
        used, total = self._memory(handle)
        util = self._call("nvmlDeviceGetUtilizationRates", handle)
        return GpuSample(
            index=index,
            uuid=self._string(handle, "nvmlDeviceGetUUID"),
            name=self._string(handle, "nvmlDeviceGetName"),
            utilization_pct=None if util is None else float(util.gpu),
            memory_used_bytes=used,
            memory_total_bytes=total,
            memory_utilization_pct=_percent(used, total),
            temperature_c=self._temperature(handle),
            vram_temperature_c=self._vram_temperature(handle),
            fan_speed_pct=_float(self._call("nvmlDeviceGetFanSpeed", handle)),
            power_w=_milli(self._call("nvmlDeviceGetPowerUsage", handle)),
        )

    def _info(self, index: int, handle: Any, driver: str | None) -> GpuInfo:
        arch = self._call("nvmlDeviceGetArchitecture", handle)
        limit = self._call("nvmlDeviceGetEnforcedPowerLimit", handle)
        return GpuInfo(
            index=index,
            uuid=self._string(handle, "nvmlDeviceGetUUID"),
            name=self._string(handle, "nvmlDeviceGetName"),
            vendor="NVIDIA",
            architecture=None if arch is None else ARCHITECTURES.get(int(arch)),
            memory_total_bytes=self._memory(handle)[1],
            driver_name="nvidia",
            driver_version=driver,
            power_limit_w=_milli(limit),
        )

    def _string(self, handle: Any, name: str) -> str:
        value = self._call(name, handle)
        return "" if value is None else _text(value)

    def _memory(self, handle: Any) -> tuple[int | None, int | None]:
        mem = self._call("nvmlDeviceGetMemoryInfo", handle)
        if mem is None:
            return None, None
        return int(mem.used), int(mem.total)

    def _temperature(self, handle: Any) -> float | None:
        sensor = self._nvml.NVML_TEMPERATURE_GPU
        return _float(self._call("nvmlDeviceGetTemperature", handle, sensor))

    def _vram_temperature(self, handle: Any) -> float | None:
        field = getattr(self._nvml, "NVML_FI_DEV_MEMORY_TEMP", None)
        if field is None:
            return None
        values = self._call("nvmlDeviceGetFieldValues", handle, [field])
        if not values or values[0].nvmlReturn != 0:
            return None
        # The union member depends on valueType; a temperature is an unsigned
        # int (NVML_VALUE_TYPE_UNSIGNED_INT = 1), a double when it is 0.
        value = values[0].value
        return float(value.dVal if values[0].valueType == 0 else value.uiVal)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _milli(value: Any) -> float | None:
    """NVML milliwatts to watts."""
    return None if value is None else float(value) / 1000.0


def _percent(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return part * 100.0 / whole


@dataclass
class GpuHolder:
    """The GPU probe (None without NVML) and the cached hardware snapshot."""

    probe: GpuProbe | None
    snapshot: dict[str, Any] | None = None
