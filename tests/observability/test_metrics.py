"""controller.observability.metrics and .gpu: recorded events, host and GPU
series (parsed back from ``render()``), NVML absent for real, a fake NVML, and
the relabelling of a real llama.cpp ``/metrics`` text."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.engine.states import UpstreamState
from controller.observability.gpu import GpuInfo, GpuSample, NvmlProbe
from controller.observability.metrics import (
    CONTENT_TYPE,
    Metrics,
    merge_upstream_metrics,
    relabel_upstream_metrics,
)
from controller.observability.perf import NetIo, SysSample
from tests.fakes.fake_nvml import GIB, FakeNvml

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from controller.observability.gpu import GpuProbe

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "llamacpp_metrics.txt"
H100 = "GPU-00000000-1111-2222-3333-444444444444"
A100 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

SYS = SysSample(
    cpu_util_pct=12.5,
    cpu_util_per_core=(10.0, 15.0),
    mem_total_bytes=32 * GIB,
    mem_used_bytes=8 * GIB,
    mem_available_bytes=20 * GIB,
    swap_total_bytes=4 * GIB,
    swap_used_bytes=GIB,
    load_avg=(0.5, 0.25, 0.125),
    net_io=(NetIo("eth0", 1000, 2000), NetIo("lo", 7, 7)),
    process_rss_bytes=123_456_789,
)


def fixed_metrics(probe: GpuProbe | None = None, *, per_core: bool = True) -> Metrics:
    return Metrics(probe, system=lambda: SYS, per_core=per_core)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(text: str) -> tuple[dict[str, Metric], Samples]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for f in families.values()
        for s in f.samples
    }
    return families, samples


def scrape(m: Metrics) -> Samples:
    body, _ = m.render()
    return scrape_text(body.decode())[1]


def val(samples: Samples, name: str, /, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# --- events -----------------------------------------------------------------


def test_metrics_render_content_type_and_no_created_series() -> None:
    m = fixed_metrics()
    m.request_done("a", 200, 1.0)
    body, ctype = m.render()
    assert ctype == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert b"_created" not in body


def test_metrics_request_done_counts_tokens_and_histograms() -> None:
    m = fixed_metrics()
    m.request_done("a", 200, 1.5, 0.2, 10, 5, 3)
    m.request_done("a", 200, 0.3, 0.04, 1, 2, 0)
    m.request_done("a", 502, 7.0, None)
    m.request_done("b", "429", 0.01)
    s = scrape(m)
    assert val(s, "swapvisor_requests_total", model="a", status="200") == 2
    assert val(s, "swapvisor_requests_total", model="a", status="502") == 1
    assert val(s, "swapvisor_requests_total", model="b", status="429") == 1
    assert val(s, "swapvisor_tokens_total", model="a", kind="input") == 11
    assert val(s, "swapvisor_tokens_total", model="a", kind="output") == 7
    assert val(s, "swapvisor_tokens_total", model="a", kind="cached") == 3
    assert val(s, "swapvisor_tokens_total", model="b", kind="input") == 0
    dur = "swapvisor_request_duration_seconds"
    assert val(s, f"{dur}_count", model="a") == 3
    assert val(s, f"{dur}_sum", model="a") == pytest.approx(8.8)
    assert val(s, f"{dur}_bucket", model="a", le="0.5") == 1
    assert val(s, f"{dur}_bucket", model="a", le="2.5") == 2
    assert val(s, f"{dur}_bucket", model="a", le="10.0") == 3
    assert val(s, f"{dur}_bucket", model="a", le="+Inf") == 3
    ttfb = "swapvisor_time_to_first_byte_seconds"
    assert val(s, f"{ttfb}_count", model="a") == 2  # the 502 sent no byte
    assert val(s, f"{ttfb}_sum", model="a") == pytest.approx(0.24)
    assert val(s, f"{ttfb}_bucket", model="a", le="0.05") == 1
    assert (f"{ttfb}_count", frozenset({("model", "b")})) not in s


def test_metrics_negative_token_counts_count_as_zero() -> None:
    m = fixed_metrics()
    m.request_done("a", 200, 1.0, None, -1, 4, -3)
    s = scrape(m)
    assert val(s, "swapvisor_tokens_total", model="a", kind="input") == 0
    assert val(s, "swapvisor_tokens_total", model="a", kind="output") == 4


def test_metrics_swap_and_load_durations_starts_and_failures() -> None:
    m = fixed_metrics()
    m.swap_done("a", 3.0)
    m.swap_done("a", 12.0)
    m.load_done("a", 2.0, ok=True)
    m.load_done("a", 60.0, ok=False)
    m.load_done("b", 0.4, ok=True)
    s = scrape(m)
    assert val(s, "swapvisor_swap_duration_seconds_count", target="a") == 2
    assert val(s, "swapvisor_swap_duration_seconds_sum", target="a") == 15
    assert val(s, "swapvisor_swap_duration_seconds_bucket", target="a", le="5.0") == 1
    assert val(s, "swapvisor_load_duration_seconds_count", model="a") == 1
    assert val(s, "swapvisor_load_duration_seconds_sum", model="a") == 2
    assert val(s, "swapvisor_load_duration_seconds_sum", model="b") == 0.4
    assert val(s, "swapvisor_upstream_starts_total", model="a") == 2
    assert val(s, "swapvisor_upstream_starts_total", model="b") == 1
    assert val(s, "swapvisor_upstream_start_failures_total", model="a") == 1
    assert (
        "swapvisor_upstream_start_failures_total",
        frozenset({("model", "b")}),
    ) not in s


def test_metrics_evictions_by_reason() -> None:
    m = fixed_metrics()
    for reason in ("swap", "swap", "ttl", "unload", "reload", "shutdown"):
        m.evicted("a", reason)
    s = scrape(m)
    assert val(s, "swapvisor_evictions_total", model="a", reason="swap") == 2
    for reason in ("ttl", "unload", "reload", "shutdown"):
        assert val(s, "swapvisor_evictions_total", model="a", reason=reason) == 1


def test_metrics_unknown_eviction_reason_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown eviction reason 'oom'"):
        fixed_metrics().evicted("a", "oom")


def test_metrics_model_state_is_one_hot() -> None:
    m = fixed_metrics()
    m.state_changed("a", "starting")
    m.state_changed("a", UpstreamState.READY)
    m.state_changed("b", UpstreamState.FAILED)
    s = scrape(m)
    states = ("stopped", "starting", "ready", "stopping", "failed")
    a = {st: val(s, "swapvisor_model_state", model="a", state=st) for st in states}
    b = {st: val(s, "swapvisor_model_state", model="b", state=st) for st in states}
    assert a == {"stopped": 0, "starting": 0, "ready": 1, "stopping": 0, "failed": 0}
    assert b == {"stopped": 0, "starting": 0, "ready": 0, "stopping": 0, "failed": 1}


def test_metrics_unknown_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown model state 'loaded'"):
        fixed_metrics().state_changed("a", "loaded")


def test_metrics_crashes_queue_and_in_flight() -> None:
    m = fixed_metrics()
    m.crashed("a")
    m.crashed("a")
    m.queue_depth(3)
    m.queue_wait("a", 0.5)
    m.queue_wait("a", 20.0)
    m.in_flight("a", 2)
    m.in_flight("b", 0)
    s = scrape(m)
    assert val(s, "swapvisor_upstream_crashes_total", model="a") == 2
    assert val(s, "swapvisor_queue_depth") == 3
    assert val(s, "swapvisor_queue_wait_seconds_count", model="a") == 2
    assert val(s, "swapvisor_queue_wait_seconds_sum", model="a") == 20.5
    assert val(s, "swapvisor_queue_wait_seconds_bucket", model="a", le="0.5") == 1
    assert val(s, "swapvisor_in_flight_requests", model="a") == 2
    assert val(s, "swapvisor_in_flight_requests", model="b") == 0
    m.queue_depth(0)
    assert val(scrape(m), "swapvisor_queue_depth") == 0


def test_metrics_forget_model_drops_its_gauges_keeps_counters() -> None:
    m = fixed_metrics()
    m.state_changed("a", "ready")
    m.state_changed("b", "ready")
    m.in_flight("a", 1)
    m.crashed("a")
    m.forget_model("a")
    m.forget_model("never-seen")  # nothing to drop: no error
    s = scrape(m)
    assert not any(
        n in ("swapvisor_model_state", "swapvisor_in_flight_requests")
        and ("model", "a") in labels
        for n, labels in s
    )
    assert val(s, "swapvisor_model_state", model="b", state="ready") == 1
    assert val(s, "swapvisor_upstream_crashes_total", model="a") == 1


def test_metrics_registries_are_separate() -> None:
    one, two = fixed_metrics(), fixed_metrics()
    one.crashed("a")
    assert (
        "swapvisor_upstream_crashes_total",
        frozenset({("model", "a")}),
    ) not in scrape(two)


# --- host series ------------------------------------------------------------


def test_metrics_system_series_from_the_sample() -> None:
    s = scrape(fixed_metrics())
    assert val(s, "swapvisor_cpu_util_percent") == 12.5
    assert val(s, "swapvisor_cpu_core_util_percent", core="0") == 10
    assert val(s, "swapvisor_cpu_core_util_percent", core="1") == 15
    assert val(s, "swapvisor_memory_total_bytes") == 32 * GIB
    assert val(s, "swapvisor_memory_used_bytes") == 8 * GIB
    assert val(s, "swapvisor_memory_available_bytes") == 20 * GIB
    assert val(s, "swapvisor_swap_total_bytes") == 4 * GIB
    assert val(s, "swapvisor_swap_used_bytes") == GIB
    assert val(s, "swapvisor_load_average", interval="1m") == 0.5
    assert val(s, "swapvisor_load_average", interval="5m") == 0.25
    assert val(s, "swapvisor_load_average", interval="15m") == 0.125
    net = "swapvisor_network_bytes_total"
    assert val(s, net, interface="eth0", direction="recv") == 1000
    assert val(s, net, interface="eth0", direction="sent") == 2000
    assert val(s, net, interface="lo", direction="recv") == 7
    assert val(s, "swapvisor_process_resident_memory_bytes") == 123_456_789


def test_metrics_per_core_can_be_off() -> None:
    s = scrape(fixed_metrics(per_core=False))
    assert "swapvisor_cpu_core_util_percent" not in names(s)
    assert val(s, "swapvisor_cpu_util_percent") == 12.5


def test_metrics_real_psutil_figures() -> None:
    s = scrape(Metrics())
    assert val(s, "swapvisor_memory_total_bytes") == psutil.virtual_memory().total
    assert val(s, "swapvisor_process_resident_memory_bytes") > 0
    cores = [n for n, _ in s if n == "swapvisor_cpu_core_util_percent"]
    assert len(cores) == psutil.cpu_count()
    assert 0 <= val(s, "swapvisor_cpu_util_percent") <= 100
    assert {"1m", "5m", "15m"} == {
        dict(labels)["interval"] for n, labels in s if n == "swapvisor_load_average"
    }


def test_metrics_failing_system_reading_does_not_fail_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> SysSample:
        raise OSError("no /proc")

    m = Metrics(system=broken)
    m.crashed("a")
    s = scrape(m)
    assert val(s, "swapvisor_upstream_crashes_total", model="a") == 1
    assert "swapvisor_memory_total_bytes" not in names(s)
    assert "system metrics unavailable: no /proc" in caplog.text


# --- GPUs ---------------------------------------------------------------------


def test_gpu_real_nvml_absent_gives_none_and_no_gpu_series(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="swapvisor.gpu")
    probe = NvmlProbe.open()
    if probe is not None:
        probe.close()
        pytest.skip("this machine has an NVIDIA driver")
    assert "GPU metrics off" in caplog.text
    s = scrape(Metrics(probe))
    assert not any(n.startswith("swapvisor_gpu_") for n in names(s))
    assert val(s, "swapvisor_memory_total_bytes") > 0


def test_gpu_fake_nvml_init_failure_gives_none() -> None:
    assert NvmlProbe.open(FakeNvml(init_error=True)) is None


def test_gpu_fake_nvml_open_and_close() -> None:
    nvml = FakeNvml()
    probe = NvmlProbe.open(nvml)
    assert probe is not None and nvml.initialised
    probe.close()
    probe.close()
    assert nvml.shutdowns == 1


def test_gpu_fake_nvml_devices() -> None:
    probe = NvmlProbe(FakeNvml())
    assert probe.devices() == [
        GpuSample(
            index=0,
            uuid=H100,
            name="NVIDIA H100 80GB HBM3",
            utilization_pct=42.0,
            memory_used_bytes=20 * GIB,
            memory_total_bytes=80 * GIB,
            memory_utilization_pct=25.0,
            temperature_c=55.0,
            vram_temperature_c=61.0,
            fan_speed_pct=30.0,
            power_w=215.5,
        ),
        GpuSample(
            index=1,
            uuid=A100,
            name="NVIDIA A100-SXM4-40GB",
            utilization_pct=7.0,
            memory_used_bytes=GIB,
            memory_total_bytes=40 * GIB,
            memory_utilization_pct=2.5,
            temperature_c=33.0,
            vram_temperature_c=None,
            fan_speed_pct=None,
            power_w=61.25,
        ),
    ]


def test_gpu_fake_nvml_inventory() -> None:
    info = NvmlProbe(FakeNvml()).inventory()
    assert info[0] == GpuInfo(
        index=0,
        uuid=H100,
        name="NVIDIA H100 80GB HBM3",
        vendor="NVIDIA",
        architecture="Hopper",
        memory_total_bytes=80 * GIB,
        driver_name="nvidia",
        driver_version="550.54.15",
        power_limit_w=700.0,
    )
    assert [(g.index, g.architecture, g.power_limit_w) for g in info] == [
        (0, "Hopper", 700.0),
        (1, "Ampere", 400.0),
    ]


def test_gpu_unsupported_calls_leave_fields_none_and_log_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="swapvisor.gpu")
    unsupported = frozenset(
        {(0, "nvmlDeviceGetPowerUsage"), (0, "nvmlDeviceGetMemoryInfo")}
    )
    probe = NvmlProbe(FakeNvml(unsupported=unsupported))
    first = probe.devices()[0]
    probe.devices()
    assert first.power_w is None
    assert first.memory_used_bytes is None
    assert first.memory_total_bytes is None
    assert first.memory_utilization_pct is None
    assert first.utilization_pct == 42.0
    assert caplog.text.count("nvmlDeviceGetPowerUsage failed: Not Supported") == 1


def test_gpu_device_without_handle_is_left_out() -> None:
    nvml = FakeNvml(unsupported=frozenset({(0, "nvmlDeviceGetHandleByIndex")}))
    assert [g.index for g in NvmlProbe(nvml).devices()] == [1]


def test_metrics_fake_nvml_gpu_series() -> None:
    s = scrape(fixed_metrics(probe=NvmlProbe(FakeNvml())))
    g0 = {"gpu": "0", "uuid": H100, "name": "NVIDIA H100 80GB HBM3"}
    g1 = {"gpu": "1", "uuid": A100, "name": "NVIDIA A100-SXM4-40GB"}
    assert val(s, "swapvisor_gpu_utilization_percent", **g0) == 42
    assert val(s, "swapvisor_gpu_utilization_percent", **g1) == 7
    assert val(s, "swapvisor_gpu_memory_used_bytes", **g0) == 20 * GIB
    assert val(s, "swapvisor_gpu_memory_total_bytes", **g0) == 80 * GIB
    assert val(s, "swapvisor_gpu_memory_total_bytes", **g1) == 40 * GIB
    assert val(s, "swapvisor_gpu_memory_utilization_percent", **g0) == 25
    assert val(s, "swapvisor_gpu_memory_utilization_percent", **g1) == 2.5
    assert val(s, "swapvisor_gpu_temperature_celsius", **g0) == 55
    assert val(s, "swapvisor_gpu_temperature_celsius", **g1) == 33
    assert val(s, "swapvisor_gpu_vram_temperature_celsius", **g0) == 61
    assert val(s, "swapvisor_gpu_fan_speed_percent", **g0) == 30
    assert val(s, "swapvisor_gpu_power_draw_watts", **g0) == 215.5
    assert val(s, "swapvisor_gpu_power_draw_watts", **g1) == 61.25
    # GPU 1 has no fan and no memory sensor: those series are absent for it.
    gpu1 = [
        n
        for n, labels in s
        if n.startswith("swapvisor_gpu_") and ("gpu", "1") in labels
    ]
    assert "swapvisor_gpu_fan_speed_percent" not in gpu1
    assert "swapvisor_gpu_vram_temperature_celsius" not in gpu1
    assert len(gpu1) == 6


def test_metrics_gpu_probe_error_does_not_fail_the_scrape() -> None:
    class Broken:
        def devices(self) -> list[GpuSample]:
            raise RuntimeError("GPU is lost")

        def inventory(self) -> list[GpuInfo]:
            return []

    s = scrape(fixed_metrics(probe=Broken()))
    assert not any(n.startswith("swapvisor_gpu_") for n in names(s))
    assert val(s, "swapvisor_cpu_util_percent") == 12.5


# --- upstream /metrics --------------------------------------------------------


def test_relabel_real_llamacpp_text() -> None:
    text = FIXTURE.read_text()
    _, before = scrape_text(text)
    out = relabel_upstream_metrics(text, "smollm2")
    families, after = scrape_text(out)
    assert len(after) == len(before) == 15
    for (name, labels), value in before.items():
        key = (name, labels | {("model", "smollm2")})
        assert after[key] == value
    assert val(after, "llamacpp:prompt_tokens_total", model="smollm2") == 32
    assert val(after, "llamacpp:tokens_predicted_total", model="smollm2") == 16
    assert val(after, "llamacpp:prompt_tokens_seconds", model="smollm2") == 350.366
    assert families["llamacpp:prompt_tokens"].type == "counter"
    assert families["llamacpp:requests_processing"].type == "gauge"
    assert families["llamacpp:prompt_tokens"].documentation == (
        "Number of prompt tokens processed, excluding cached tokens"
    )
    # HELP and TYPE once per family, with the names llama.cpp gave them.
    lines = out.splitlines()
    assert lines.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    assert lines.count("# TYPE llamacpp:requests_processing gauge") == 1
    assert sum(line.startswith("# HELP ") for line in lines) == 15
    assert sum(line.startswith("# TYPE ") for line in lines) == 15
    assert 'llamacpp:prompt_tokens_total{model="smollm2"} 32.0' in lines


def test_relabel_counter_without_total_suffix_is_normalised() -> None:
    out = relabel_upstream_metrics(FIXTURE.read_text(), "m")
    assert "# TYPE llamacpp:n_tokens_max_total counter" in out.splitlines()
    assert 'llamacpp:n_tokens_max_total{model="m"} 47.0' in out.splitlines()


def test_relabel_existing_model_label_becomes_exported_model() -> None:
    text = (
        "# HELP vllm:num_requests_running Running requests\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="q",model="Qwen/Q"} 2\n'
        "# TYPE h histogram\n"
        'h_bucket{le="1.0"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3.5\nh_count 2\n'
    )
    _, s = scrape_text(relabel_upstream_metrics(text, 'q"1'))
    assert (
        val(
            s,
            "vllm:num_requests_running",
            engine="0",
            model_name="q",
            exported_model="Qwen/Q",
            model='q"1',
        )
        == 2
    )
    assert val(s, "h_bucket", le="+Inf", model='q"1') == 2
    assert val(s, "h_sum", model='q"1') == 3.5


def test_relabel_bad_text_raises() -> None:
    with pytest.raises(ValueError):
        relabel_upstream_metrics("this is not {prometheus", "m")


def test_merge_upstream_metrics_one_help_type_per_family(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = FIXTURE.read_text()
    out = merge_upstream_metrics({"a": text, "b": text, "bad": "nope {"})
    lines = out.splitlines()
    assert lines.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    assert sum(line.startswith("# TYPE ") for line in lines) == 15
    _, s = scrape_text(out)
    assert val(s, "llamacpp:prompt_tokens_total", model="a") == 32
    assert val(s, "llamacpp:prompt_tokens_total", model="b") == 32
    assert len(s) == 30
    assert "bad: unreadable /metrics text" in caplog.text


def test_merge_upstream_metrics_nothing_gives_empty_text() -> None:
    assert merge_upstream_metrics({}) == ""
