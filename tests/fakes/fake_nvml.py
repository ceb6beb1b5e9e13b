"""A fake ``pynvml`` for tests: two GPUs with fixed figures, whose memory a
test can change.

It has the function and constant names
``controller.observability.gpu.NvmlProbe`` and ``backends.memory.SystemMemory``
use, with pynvml's units (bytes, milliwatts, degrees C, percent) and its error
type.

GPU 0 (an H100) answers everything. GPU 1 (an A100 SXM, passively cooled)
raises "Not Supported" for the fan and the memory temperature, as real cards
do. ``unsupported`` adds more ``(index, function name)`` pairs that raise (a
device without process information: its
``nvmlDeviceGetComputeRunningProcesses``); ``init_error`` makes ``nvmlInit``
raise like a machine without the driver.

Memory, for the scheduling tests: ``set_memory`` changes a device's base
used/total; ``add_process`` puts a process's memory on a device (listed by
``nvmlDeviceGet{Compute,Graphics}RunningProcesses`` and counted in the
device's used memory; ``None`` bytes: NVML cannot tell, as pynvml reports
``NVML_VALUE_NOT_AVAILABLE``); ``remove_process(..., linger=N)`` plays the
driver's lazy release: the process is no longer listed, but its memory still
shows as used for N more ``nvmlDeviceGetMemoryInfo`` calls on that device
(``linger=None``: until ``release``). With none of these the figures are the
fixed ones above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_TEMPERATURE_GPU = 0
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_VALUE_TYPE_UNSIGNED_INT = 1

GIB = 1024**3


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code as ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        names = {3: "Not Supported", 12: "NVML Shared Library Not Found"}
        return names.get(self.value, f"NVML error {self.value}")


@dataclass(frozen=True)
class FakeGpu:
    name: str
    uuid: str
    util_gpu: int
    util_memory: int
    mem_used: int
    mem_total: int
    temp: int
    mem_temp: int | None
    fan: int | None
    power_mw: int
    power_limit_mw: int
    arch: int


GPUS = (
    FakeGpu(
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-00000000-1111-2222-3333-444444444444",
        util_gpu=42,
        util_memory=17,
        mem_used=20 * GIB,
        mem_total=80 * GIB,
        temp=55,
        mem_temp=61,
        fan=30,
        power_mw=215_500,
        power_limit_mw=700_000,
        arch=9,
    ),
    FakeGpu(
        name="NVIDIA A100-SXM4-40GB",
        uuid="GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        util_gpu=7,
        util_memory=1,
        mem_used=1 * GIB,
        mem_total=40 * GIB,
        temp=33,
        mem_temp=None,
        fan=None,
        power_mw=61_250,
        power_limit_mw=400_000,
        arch=7,
    ),
)
DRIVER_VERSION = "550.54.15"


@dataclass
class _Lingering:
    """Memory of a process that is gone but not yet released by the driver."""

    used: int
    reads_left: int | None  # None: until released


@dataclass
class DeviceState:
    """What a test changed on one device; the rest is its ``FakeGpu``."""

    used: int | None = None  # base used bytes; None: the FakeGpu's
    total: int | None = None
    compute: dict[int, int | None] = field(default_factory=dict)  # pid -> bytes
    graphics: dict[int, int | None] = field(default_factory=dict)
    lingering: dict[int, _Lingering] = field(default_factory=dict)


class FakeNvml:
    """Stands in for the ``pynvml`` module. Handles are the GPU indexes."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_FI_DEV_MEMORY_TEMP = NVML_FI_DEV_MEMORY_TEMP

    def __init__(
        self,
        gpus: tuple[FakeGpu, ...] = GPUS,
        *,
        init_error: bool = False,
        unsupported: frozenset[tuple[int, str]] = frozenset(),
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.unsupported = unsupported
        self.initialised = False
        self.shutdowns = 0
        self.calls: list[str] = []
        self.state = [DeviceState() for _ in gpus]

    # -- scripting memory ------------------------------------------------------

    def set_memory(
        self, index: int, *, used: int | None = None, total: int | None = None
    ) -> None:
        """The device's base used memory and/or its total, in bytes; processes
        added with ``add_process`` count on top of the base."""
        st = self.state[index]
        if used is not None:
            st.used = used
        if total is not None:
            st.total = total

    def add_process(
        self, index: int, pid: int, used: int | None, *, graphics: bool = False
    ) -> None:
        """``pid`` holds ``used`` bytes on the device (None: NVML cannot tell)."""
        st = self.state[index]
        (st.graphics if graphics else st.compute)[pid] = used
        st.lingering.pop(pid, None)

    def remove_process(self, index: int, pid: int, *, linger: int | None = 0) -> None:
        """``pid`` is gone from the device; its memory stays counted as used
        for ``linger`` more memory readings (None: until ``release``)."""
        st = self.state[index]
        held = [st.compute.pop(pid, None), st.graphics.pop(pid, None)]
        used = max((b for b in held if b is not None), default=0)
        if used and (linger is None or linger > 0):
            st.lingering[pid] = _Lingering(used, linger)

    def release(self, index: int, pid: int | None = None) -> None:
        """The driver frees what ``pid`` (None: every gone process) left."""
        st = self.state[index]
        if pid is None:
            st.lingering.clear()
        else:
            st.lingering.pop(pid, None)

    def device_used(self, index: int) -> int:
        """What ``nvmlDeviceGetMemoryInfo`` reports as used, without counting
        a reading."""
        st, g = self.state[index], self.gpus[index]
        base = g.mem_used if st.used is None else st.used
        # A process in both lists has one context's memory: count it once.
        per_pid: dict[int, int] = {}
        for procs in (st.compute, st.graphics):
            for pid, used in procs.items():
                per_pid[pid] = max(per_pid.get(pid, 0), used or 0)
        return (
            base
            + sum(per_pid.values())
            + sum(item.used for item in st.lingering.values())
        )

    def _gpu(self, handle: int, fn: str) -> FakeGpu:
        self.calls.append(fn)
        if (handle, fn) in self.unsupported:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return DRIVER_VERSION

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index, "nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._gpu(handle, "nvmlDeviceGetName").name.encode()  # old pynvml

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=g.util_gpu, memory=g.util_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        st = self.state[handle]
        total = g.mem_total if st.total is None else st.total
        used = self.device_used(handle)
        # This reading counted: lingering memory is one reading nearer release.
        for pid, item in list(st.lingering.items()):
            if item.reads_left is not None:
                item.reads_left -= 1
                if item.reads_left <= 0:
                    del st.lingering[pid]
        return SimpleNamespace(total=total, used=used, free=max(total - used, 0))

    def nvmlDeviceGetComputeRunningProcesses(
        self, handle: int
    ) -> list[SimpleNamespace]:
        self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return _process_infos(self.state[handle].compute)

    def nvmlDeviceGetGraphicsRunningProcesses(
        self, handle: int
    ) -> list[SimpleNamespace]:
        self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return _process_infos(self.state[handle].graphics)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temp

    def nvmlDeviceGetFieldValues(
        self, handle: int, fields: list[int]
    ) -> list[SimpleNamespace]:
        g = self._gpu(handle, "nvmlDeviceGetFieldValues")
        assert fields == [NVML_FI_DEV_MEMORY_TEMP]
        ret = 0 if g.mem_temp is not None else NVML_ERROR_NOT_SUPPORTED
        value = SimpleNamespace(uiVal=g.mem_temp or 0, dVal=0.0)
        return [
            SimpleNamespace(
                fieldId=fields[0],
                nvmlReturn=ret,
                valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                value=value,
            )
        ]

    def nvmlDeviceGetFanSpeed(self, handle: int) -> int:
        fan = self._gpu(handle, "nvmlDeviceGetFanSpeed").fan
        if fan is None:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return fan

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetArchitecture").arch


def _process_infos(procs: dict[int, int | None]) -> list[SimpleNamespace]:
    """As pynvml's ``c_nvmlProcessInfo_t`` list: ``usedGpuMemory`` None when
    NVML cannot tell."""
    return [
        SimpleNamespace(
            pid=pid, usedGpuMemory=used, gpuInstanceId=None, computeInstanceId=None
        )
        for pid, used in procs.items()
    ]
