"""A fake ``pynvml`` for tests: two GPUs with fixed figures.

It has the function and constant names
``controller.observability.gpu.NvmlProbe`` uses, with pynvml's units (bytes,
milliwatts, degrees C, percent) and its error type.

GPU 0 (an H100) answers everything. GPU 1 (an A100 SXM, passively cooled)
raises "Not Supported" for the fan and the memory temperature, as real cards
do. ``unsupported`` adds more ``(index, function name)`` pairs that raise;
``init_error`` makes ``nvmlInit`` raise like a machine without the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        free = g.mem_total - g.mem_used
        return SimpleNamespace(total=g.mem_total, used=g.mem_used, free=free)

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
