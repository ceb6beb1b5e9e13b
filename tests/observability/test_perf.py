"""controller.observability.perf: the /api/performance history (an injected
clock, no sleeps), interval checks, RFC3339 parsing, and the /api/hardware
snapshot with a fake NVML."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import psutil
import pytest

from controller import __version__
from controller.config.rules import check_every
from controller.observability.gpu import NvmlProbe
from controller.observability.perf import (
    AFTER_ERROR,
    NetIo,
    PerfMonitor,
    SysSample,
    SystemSampler,
    architecture,
    hardware_snapshot,
    parse_cpuinfo,
    parse_rfc3339,
)
from tests.fakes.fake_nvml import GIB, FakeNvml

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
T0_TEXT = "2025-06-15T15:06:40.000000Z"

SYS = SysSample(
    cpu_util_pct=12.5,
    cpu_util_per_core=(10.0, 15.0),
    mem_total_bytes=32 * GIB,
    mem_used_bytes=8 * GIB + 5,
    mem_available_bytes=20 * GIB,
    swap_total_bytes=0,
    swap_used_bytes=0,
    load_avg=(0.5, 0.25, 0.125),
    net_io=(NetIo("eth0", 1000, 2000),),
    process_rss_bytes=1,
)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def monitor(
    every_s: float = 5, clock: Clock | None = None, gpus: bool = False
) -> PerfMonitor:
    probe = NvmlProbe(FakeNvml()) if gpus else None
    return PerfMonitor(every_s, probe, clock or Clock(), system=lambda: SYS)


def take(m: PerfMonitor, clock: Clock, n: int, every_s: float = 5) -> None:
    for _ in range(n):
        m.sample()
        clock.t += every_s


def stamps(payload: dict[str, object], key: str = "sys_stats") -> list[str]:
    entries = payload[key]
    assert isinstance(entries, list)
    return [e["timestamp"] for e in entries]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


# --- interval ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "shown"), [(4, "4s"), (4.5, "4.5s"), (0.5, "500ms"), (0, "0s")]
)
def test_perf_every_below_five_seconds_is_refused(every: float, shown: str) -> None:
    message = f"performance: every must be at least 5s, got {shown}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_every(every)
    with pytest.raises(ValueError, match=re.escape(message)):
        PerfMonitor(every, None, system=lambda: SYS)


@pytest.mark.parametrize(("every", "capacity"), [(5, 720), (15, 240), (7, 514)])
def test_perf_history_holds_one_hour(every: float, capacity: int) -> None:
    assert check_every(every) == every
    assert monitor(every).capacity == capacity


# --- history ----------------------------------------------------------------


def test_perf_history_empty() -> None:
    assert monitor().history() == {"enabled": True, "sys_stats": [], "gpu_stats": []}


def test_perf_sys_stats_payload() -> None:
    m = monitor()
    m.sample()
    assert m.history() == {
        "enabled": True,
        "sys_stats": [
            {
                "timestamp": T0_TEXT,
                "cpu_util_pct": 12.5,
                "cpu_util_per_core": [10.0, 15.0],
                "mem_total_mb": 32768,
                "mem_used_mb": 8192,
                "mem_free_mb": 20480,
                "swap_total_mb": 0,
                "swap_used_mb": 0,
                "load_avg_1": 0.5,
                "load_avg_5": 0.25,
                "load_avg_15": 0.125,
                "net_io": [{"name": "eth0", "bytes_recv": 1000, "bytes_sent": 2000}],
            }
        ],
        "gpu_stats": [],
    }


def test_perf_gpu_stats_flattened_across_samples() -> None:
    clock = Clock()
    m = monitor(clock=clock, gpus=True)
    take(m, clock, 2)
    gpu = m.history()["gpu_stats"]
    assert [(g["timestamp"], g["id"]) for g in gpu] == [
        (T0_TEXT, 0),
        (T0_TEXT, 1),
        ("2025-06-15T15:06:45.000000Z", 0),
        ("2025-06-15T15:06:45.000000Z", 1),
    ]
    assert gpu[0] == {
        "timestamp": T0_TEXT,
        "id": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-00000000-1111-2222-3333-444444444444",
        "temp_c": 55.0,
        "vram_temp_c": 61.0,
        "gpu_util_pct": 42.0,
        "mem_util_pct": 25.0,
        "mem_used_mb": 20480,
        "mem_total_mb": 81920,
        "fan_speed_pct": 30.0,
        "power_draw_w": 215.5,
    }
    assert (gpu[1]["fan_speed_pct"], gpu[1]["vram_temp_c"]) == (None, None)
    assert gpu[1]["power_draw_w"] == 61.25


def test_perf_history_keeps_the_last_hour_only() -> None:
    clock = Clock()
    m = monitor(clock=clock)
    take(m, clock, 725)
    got = stamps(m.history())
    assert len(got) == 720
    assert got[0] == "2025-06-15T15:07:05.000000Z"  # T0 + 5 * 5 s
    assert got[-1] == "2025-06-15T16:07:00.000000Z"  # T0 + 5 * 724 s


def test_perf_after_is_strict() -> None:
    clock = Clock()
    m = monitor(clock=clock)
    take(m, clock, 4)  # T0, +5, +10, +15
    assert stamps(m.history(at(5))) == [
        "2025-06-15T15:06:50.000000Z",
        "2025-06-15T15:06:55.000000Z",
    ]
    assert len(stamps(m.history(at(4.999999)))) == 3
    assert stamps(m.history(at(15))) == []
    assert len(stamps(m.history(at(-1)))) == 4
    assert len(stamps(m.history(None))) == 4


def test_perf_after_filters_gpu_stats_too() -> None:
    clock = Clock()
    m = monitor(clock=clock, gpus=True)
    take(m, clock, 3)
    assert len(m.history(at(0))["gpu_stats"]) == 4


def test_perf_after_with_offset_and_naive_utc() -> None:
    clock = Clock()
    m = monitor(clock=clock)
    take(m, clock, 3)
    plus2 = at(0).astimezone(timezone(timedelta(hours=2)))
    assert len(stamps(m.history(plus2))) == 2
    naive = at(5).replace(tzinfo=None)
    assert len(stamps(m.history(naive))) == 1


def test_perf_after_round_trips_a_returned_timestamp() -> None:
    clock = Clock(T0 + 0.1234567)
    m = monitor(clock=clock)
    take(m, clock, 2)
    last = stamps(m.history())[0]
    assert stamps(m.history(parse_rfc3339(last))) == stamps(m.history())[1:]


def test_perf_reconfigure_keeps_newest_samples() -> None:
    clock = Clock()
    m = monitor(clock=clock)
    take(m, clock, 10)
    m.reconfigure(600)  # one hour / 600 s = 6 samples
    assert m.every_s == 600
    assert m.capacity == 6
    assert stamps(m.history())[0] == "2025-06-15T15:07:00.000000Z"  # T0 + 20
    with pytest.raises(ValueError, match="got 1s"):
        m.reconfigure(1)
    assert m.every_s == 600


def test_perf_default_system_sampler_is_psutil() -> None:
    clock = Clock()
    m = PerfMonitor(5, None, clock)
    m.sample()
    (entry,) = m.history()["sys_stats"]
    assert entry["mem_total_mb"] == psutil.virtual_memory().total // 2**20
    assert len(entry["cpu_util_per_core"]) == psutil.cpu_count()
    assert all(0 <= p <= 100 for p in entry["cpu_util_per_core"])


def test_perf_system_sampler_reads_psutil() -> None:
    s = SystemSampler().sample()
    assert 0 <= s.cpu_util_pct <= 100
    assert len(s.cpu_util_per_core) == psutil.cpu_count()
    assert s.mem_total_bytes == psutil.virtual_memory().total
    assert 0 < s.mem_used_bytes < s.mem_total_bytes
    assert s.process_rss_bytes > 0
    assert [n.name for n in s.net_io] == sorted(n.name for n in s.net_io)


# --- RFC3339 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-15T15:06:40Z", at(0)),
        ("2025-06-15T15:06:40.000000Z", at(0)),
        ("2025-06-15T17:06:40+02:00", at(0)),
        ("2025-06-15T15:06:40.5Z", at(0.5)),
        ("2025-06-15T15:06:40.123456789Z", at(0.123456)),
    ],
)
def test_perf_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2025-06-15T15:06:40", "2025-06-15"])
def test_perf_parse_rfc3339_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(AFTER_ERROR)}$"):
        parse_rfc3339(text)
    assert AFTER_ERROR == "invalid 'after' timestamp, use RFC3339 format"


# --- /api/hardware ------------------------------------------------------------


def test_hardware_snapshot_with_fake_nvml() -> None:
    probe = NvmlProbe(FakeNvml())
    snap = hardware_snapshot(probe, clock=Clock())
    assert snap["schema_version"] == 1
    assert snap["captured_at"] == T0_TEXT
    assert snap["capture"] == {
        "scope": "inference_host",
        "method": "detected",
        "detector": {"name": "swapvisor", "version": __version__},
    }
    assert snap["accelerators"] == [
        {
            "index": 0,
            "kind": "gpu",
            "vendor": "NVIDIA",
            "model": "NVIDIA H100 80GB HBM3",
            "architecture": "Hopper",
            "memory": {"kind": "dedicated", "capacity_bytes": 80 * GIB},
            "driver": {"name": "nvidia", "version": "550.54.15"},
            "power_limit_watts": 700.0,
        },
        {
            "index": 1,
            "kind": "gpu",
            "vendor": "NVIDIA",
            "model": "NVIDIA A100-SXM4-40GB",
            "architecture": "Ampere",
            "memory": {"kind": "dedicated", "capacity_bytes": 40 * GIB},
            "driver": {"name": "nvidia", "version": "550.54.15"},
            "power_limit_watts": 400.0,
        },
    ]


def test_hardware_snapshot_host_shape() -> None:
    snap = hardware_snapshot(None)
    assert list(snap) == [
        "schema_version",
        "captured_at",
        "capture",
        "architecture",
        "operating_system",
        "environment",
        "cpu",
        "memory",
        "accelerators",
    ]
    assert snap["accelerators"] == []
    assert snap["memory"] == {"capacity_bytes": psutil.virtual_memory().total}
    assert set(snap["architecture"]) == {"name", "raw_name"}
    assert snap["architecture"]["name"] in {
        "x86_64",
        "arm64",
        "armv7",
        "ppc64le",
        "riscv64",
        "s390x",
        "other",
    }
    os_ = snap["operating_system"]
    assert set(os_) == {"family", "name", "version", "kernel"}
    assert os_["family"] in {"linux", "macos", "windows", "freebsd", "other"}
    env = snap["environment"]
    assert set(env) == {"kind", "name", "version"}
    assert env["kind"] in {
        "native",
        "container",
        "virtual_machine",
        "wsl",
        "other",
        "unknown",
    }
    cpu = snap["cpu"]
    assert set(cpu) == {
        "vendor",
        "model",
        "socket_count",
        "physical_core_count",
        "logical_thread_count",
    }
    assert cpu["logical_thread_count"] == psutil.cpu_count()


def test_hardware_snapshot_nvml_absent_for_real() -> None:
    probe = NvmlProbe.open()
    if probe is not None:
        probe.close()
        pytest.skip("this machine has an NVIDIA driver")
    assert hardware_snapshot(probe)["accelerators"] == []


def test_parse_cpuinfo_two_sockets() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nphysical id\t: 0\n\n"
        "processor\t: 1\nvendor_id\t: GenuineIntel\n"
        "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nphysical id\t: 1\n"
    )
    assert parse_cpuinfo(text) == {
        "vendor": "Intel",
        "model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
        "socket_count": 2,
    }


def test_parse_cpuinfo_arm_without_model_name() -> None:
    text = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\n"
    assert parse_cpuinfo(text) == {"vendor": None, "model": None, "socket_count": None}


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("x86_64", "x86_64"),
        ("AMD64", "x86_64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("armv7l", "armv7"),
        ("mips", "other"),
    ],
)
def test_architecture_names(raw: str, name: str) -> None:
    assert architecture(raw) == {"name": name, "raw_name": raw}
