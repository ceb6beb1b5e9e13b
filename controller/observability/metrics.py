"""Prometheus metrics for ``GET /metrics``: what swapvisor does, and the host.

``Metrics`` owns its own ``CollectorRegistry`` (never the global one) and
records events (requests, swaps, loads, evictions, state changes, crashes,
queueing) that llama-swap does not export; llama-swap.md §5.6 says it has
"no per-model/request metrics in Prometheus". Host figures (CPU, memory, swap,
load, network, swapvisor's RSS through psutil; GPUs through a ``GpuProbe``
when one is given) are read by a custom collector at scrape time, so no
background thread is needed. ``render()`` returns the text exposition format
0.0.4 with the ``_created`` series left out.

Series (all prefixed ``swapvisor_``):

* ``requests_total{model,status}``, ``tokens_total{model,kind}`` (kind:
  input, output, cached), ``request_duration_seconds{model}`` and
  ``time_to_first_byte_seconds{model}`` (histograms), ``in_flight_requests
  {model}``;
* ``swap_duration_seconds{target}`` (a whole swap: evictions and the load),
  ``load_duration_seconds{model}`` (one upstream start until ready, successful
  starts only), ``upstream_starts_total{model}`` (every start attempt),
  ``upstream_start_failures_total{model}``, ``upstream_crashes_total{model}``;
* ``queue_depth``, ``queue_wait_seconds{model}``;
* ``use: resources``: ``model_memory_bytes{model,device}`` (measured; device
  ``ram`` or ``gpuN``), ``memory_budget_bytes{device}``,
  ``memory_wait_seconds{model}`` (a start waiting for freed memory);
* ``evictions_total{model,reason}`` (reason: swap, memory, ttl, unload,
  reload, shutdown), ``model_state{model,state}`` (1 for the current state, 0 for the
  other four of stopped, starting, ready, stopping, failed),
  ``model_quarantined_seconds{model}`` (time left in a crash-loop quarantine),
  ``model_asleep_seconds{model}`` (time asleep);
* ``slot_operations_total{model,action,outcome}``, ``slot_bytes_total{model,
  action}``, ``slot_restore_seconds{model}`` (keepSlots saves and restores);
* host: ``cpu_util_percent``, ``cpu_core_util_percent{core}``,
  ``memory_{total,used,available}_bytes``, ``swap_{total,used}_bytes``,
  ``load_average{interval="1m"|"5m"|"15m"}``,
  ``network_bytes_total{interface,direction="recv"|"sent"}``,
  ``process_resident_memory_bytes``;
* per GPU, labels ``gpu`` (index), ``uuid``, ``name``:
  ``gpu_utilization_percent``, ``gpu_memory_{used,total}_bytes``,
  ``gpu_memory_utilization_percent``, ``gpu_temperature_celsius``,
  ``gpu_vram_temperature_celsius``, ``gpu_fan_speed_percent``,
  ``gpu_power_draw_watts`` (a figure the driver cannot give is left out).

``relabel_upstream_metrics`` / ``merge_upstream_metrics`` turn the upstreams'
own ``/metrics`` text into series with a ``model`` label, for aggregation.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import math
import threading
from collections import Counter as Tally
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from controller.engine.states import UpstreamState
from controller.observability.perf import SystemSampler

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from controller.engine.resources import Measured
    from controller.engine.slots import SlotReport
    from controller.observability.gpu import GpuProbe, GpuSample
    from controller.observability.perf import SysSample

log = logging.getLogger("swapvisor.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # as llama-swap's
MODEL_STATES = tuple(s.value for s in UpstreamState)
EVICTION_REASONS = ("swap", "memory", "ttl", "unload", "reload", "shutdown")
TOKEN_KINDS = ("input", "output", "cached")

# Inference takes from milliseconds (a cached embedding) to many minutes.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

GPU_GAUGES = (
    ("gpu_utilization_percent", "GPU utilization", "utilization_pct"),
    ("gpu_memory_used_bytes", "GPU memory in use", "memory_used_bytes"),
    ("gpu_memory_total_bytes", "GPU memory in all", "memory_total_bytes"),
    (
        "gpu_memory_utilization_percent",
        "GPU memory in use, percent of total",
        "memory_utilization_pct",
    ),
    ("gpu_temperature_celsius", "GPU temperature", "temperature_c"),
    ("gpu_vram_temperature_celsius", "GPU memory temperature", "vram_temperature_c"),
    ("gpu_fan_speed_percent", "GPU fan speed", "fan_speed_pct"),
    ("gpu_power_draw_watts", "GPU power draw", "power_w"),
)


class RequestDone(NamedTuple):
    """One finished request, as :meth:`Metrics.request_done` takes it."""

    model: str
    status: int | str
    duration_s: float
    ttfb_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


class Metrics:
    """swapvisor's metrics registry. Every method is thread-safe and cheap.

    ``probe``: GPUs to report (``NvmlProbe.open()``, may be ``None``).
    ``system``: for tests, a callable returning ``SysSample``s (defaults to a
    ``SystemSampler``). ``per_core``: also report CPU utilization per core.
    """

    def __init__(
        self,
        probe: GpuProbe | None = None,
        *,
        system: Callable[[], SysSample] | None = None,
        per_core: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self._requests_metrics()
        self._lifecycle_metrics()
        sampler = system or SystemSampler().sample
        self.registry.register(HostCollector(sampler, probe, per_core=per_core))

    def _requests_metrics(self) -> None:
        r = self.registry
        self._requests = Counter(
            "swapvisor_requests",
            "Requests served, by final HTTP status",
            ["model", "status"],
            registry=r,
        )
        self._tokens = Counter(
            "swapvisor_tokens",
            "Tokens the upstreams reported, by kind",
            ["model", "kind"],
            registry=r,
        )
        self._duration = PerRequestHistogram(
            "swapvisor_request_duration_seconds",
            "Request duration, end to end",
            ["model"],
            REQUEST_BUCKETS,
            r,
        )
        self._ttfb = PerRequestHistogram(
            "swapvisor_time_to_first_byte_seconds",
            "Time from request arrival to the first response byte",
            ["model"],
            TTFB_BUCKETS,
            r,
        )
        self._in_flight = Gauge(
            "swapvisor_in_flight_requests",
            "Requests being served now",
            ["model"],
            registry=r,
        )
        self._queue_depth = Gauge(
            "swapvisor_queue_depth", "Requests waiting for a swap", registry=r
        )
        self._queue_wait = PerRequestHistogram(
            "swapvisor_queue_wait_seconds",
            "Time a request waited in the queue",
            ["model"],
            QUEUE_BUCKETS,
            r,
        )

    def _lifecycle_metrics(self) -> None:
        r = self.registry
        self._swap = Histogram(
            "swapvisor_swap_duration_seconds",
            "A whole swap (evictions, then the target's load)",
            ["target"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self._load = Histogram(
            "swapvisor_load_duration_seconds",
            "Upstream start until ready (successful starts only)",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self._starts = Counter(
            "swapvisor_upstream_starts",
            "Upstream start attempts",
            ["model"],
            registry=r,
        )
        self._start_failures = Counter(
            "swapvisor_upstream_start_failures",
            "Upstream starts that failed",
            ["model"],
            registry=r,
        )
        self._crashes = Counter(
            "swapvisor_upstream_crashes",
            "Upstreams that exited on their own",
            ["model"],
            registry=r,
        )
        self._evictions = Counter(
            "swapvisor_evictions",
            "Models stopped, by reason",
            ["model", "reason"],
            registry=r,
        )
        self._memory = Gauge(
            "swapvisor_model_memory_bytes",
            "What a model holds, measured (use: resources): device ram or gpuN",
            ["model", "device"],
            registry=r,
        )
        self._budget = Gauge(
            "swapvisor_memory_budget_bytes",
            "Memory use: resources may plan with, after reserve: ram or gpuN",
            ["device"],
            registry=r,
        )
        self._memory_wait = Histogram(
            "swapvisor_memory_wait_seconds",
            "Time a start waited for freed memory to show up",
            ["model"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._state = Gauge(
            "swapvisor_model_state",
            "1 for the model's current state, else 0",
            ["model", "state"],
            registry=r,
        )
        self._quarantined = Gauge(
            "swapvisor_model_quarantined_seconds",
            "Seconds left in a crash-looping model's quarantine (0: none)",
            ["model"],
            registry=r,
        )
        self._asleep = Gauge(
            "swapvisor_model_asleep_seconds",
            "Seconds the model has been asleep (0: awake or stopped)",
            ["model"],
            registry=r,
        )
        self._slot_ops = Counter(
            "swapvisor_slot_operations",
            "KV slot saves and restores (keepSlots), by outcome",
            ["model", "action", "outcome"],
            registry=r,
        )
        self._slot_bytes = Counter(
            "swapvisor_slot_bytes",
            "Bytes of KV cache saved or restored",
            ["model", "action"],
            registry=r,
        )
        self._slot_seconds = Histogram(
            "swapvisor_slot_restore_seconds",
            "Time to restore a model's saved KV slots",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self._gauged: set[str] = set()  # models with state/in-flight gauges
        self._memory_devices: dict[str, tuple[str, ...]] = {}

    # --- events ---------------------------------------------------------

    def request_done(
        self,
        model: str,
        status: int | str,
        duration_s: float,
        ttfb_s: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        """One finished request. ``ttfb_s`` is ``None`` when no byte was sent.

        Token counts are recorded as the upstream's usage gives them (OpenAI's
        ``prompt_tokens`` includes the cached ones, Anthropic's
        ``input_tokens`` does not); negative counts count as 0.
        """
        self._requests.labels(model, str(status)).inc()
        self._duration.observe((model,), (duration_s,))
        if ttfb_s is not None:
            self._ttfb.observe((model,), (ttfb_s,))
        counts = (input_tokens, output_tokens, cached_tokens)
        for kind, n in zip(TOKEN_KINDS, counts, strict=True):
            self._tokens.labels(model, kind).inc(max(0, n))

    def requests_done(self, batch: Iterable[RequestDone]) -> None:
        """Finished requests, counted as :meth:`request_done` would count
        each, with one label lookup and one increment per label set (the
        recorder hands its finished requests over in batches)."""
        counts: Tally[tuple[str, str]] = Tally()
        tokens: Tally[tuple[str, str]] = Tally()
        durations: dict[str, list[float]] = {}
        ttfbs: dict[str, list[float]] = {}
        for r in batch:
            counts[(r.model, str(r.status))] += 1
            durations.setdefault(r.model, []).append(r.duration_s)
            if r.ttfb_s is not None:
                ttfbs.setdefault(r.model, []).append(r.ttfb_s)
            counted = (r.input_tokens, r.output_tokens, r.cached_tokens)
            for kind, n in zip(TOKEN_KINDS, counted, strict=True):
                tokens[(r.model, kind)] += max(0, n)
        for labels, n in counts.items():
            self._requests.labels(*labels).inc(n)
        for labels, n in tokens.items():
            self._tokens.labels(*labels).inc(n)
        for histogram, samples in ((self._duration, durations), (self._ttfb, ttfbs)):
            for model, values in samples.items():
                histogram.observe((model,), values)

    def swap_done(self, target: str, duration_s: float) -> None:
        self._swap.labels(target).observe(duration_s)

    def load_done(self, model: str, duration_s: float, ok: bool) -> None:
        """One upstream start attempt; ``duration_s`` only counts when ``ok``."""
        self._starts.labels(model).inc()
        if ok:
            self._load.labels(model).observe(duration_s)
        else:
            self._start_failures.labels(model).inc()

    def evicted(self, model: str, reason: str) -> None:
        """``reason``: one of ``EVICTION_REASONS`` (else ValueError)."""
        if reason not in EVICTION_REASONS:
            raise ValueError(f"unknown eviction reason {reason!r}")
        self._evictions.labels(model, reason).inc()

    def state_changed(self, model: str, state: UpstreamState | str) -> None:
        """``state``: an ``UpstreamState`` or its value (else ValueError)."""
        name = state.value if isinstance(state, UpstreamState) else state
        if name not in MODEL_STATES:
            raise ValueError(f"unknown model state {name!r}")
        self._gauged.add(model)
        for s in MODEL_STATES:
            self._state.labels(model, s).set(1 if s == name else 0)

    def crashed(self, model: str) -> None:
        self._crashes.labels(model).inc()

    def queue_depth(self, n: int) -> None:
        self._queue_depth.set(n)

    def queue_wait(self, model: str, s: float) -> None:
        self._queue_wait.observe((model,), (s,))

    def in_flight(self, model: str, n: int) -> None:
        self._gauged.add(model)
        self._in_flight.labels(model).set(n)

    def quarantined(self, model: str, seconds_left: float) -> None:
        self._gauged.add(model)
        self._quarantined.labels(model).set(max(0.0, seconds_left))

    def asleep(self, model: str, seconds: float) -> None:
        self._gauged.add(model)
        self._asleep.labels(model).set(max(0.0, seconds))

    def model_memory(self, model: str, measured: Measured | None) -> None:
        """A model's measured memory; None: it holds nothing (series removed)."""
        for device in self._memory_devices.pop(model, ()):
            with contextlib.suppress(KeyError):
                self._memory.remove(model, device)
        if measured is None:
            return
        figures = {f"gpu{i}": b for i, b in measured.vram.items()}
        if measured.ram is not None:
            figures["ram"] = measured.ram
        for device, value in figures.items():
            self._memory.labels(model, device).set(value)
        self._memory_devices[model] = tuple(figures)

    def memory_budget(self, ram: int | None, gpus: Mapping[int, int]) -> None:
        """The budget's capacity per device; ``ram`` None: no budget."""
        self._budget.clear()
        if ram is None:
            return
        self._budget.labels("ram").set(ram)
        for index, capacity in gpus.items():
            self._budget.labels(f"gpu{index}").set(capacity)

    def memory_wait(self, model: str, s: float) -> None:
        self._memory_wait.labels(model).observe(s)

    def slots(self, model: str, report: SlotReport) -> None:
        """One keepSlots save or restore (``controller.engine.slots``)."""
        outcome = "error" if report.error else "ok"
        self._slot_ops.labels(model, report.action, outcome).inc()
        self._slot_bytes.labels(model, report.action).inc(report.bytes)
        if report.action == "restore" and not report.error and report.count:
            self._slot_seconds.labels(model).observe(report.seconds)

    def models(self) -> set[str]:
        """The models that have state or in-flight gauges now."""
        return set(self._gauged)

    def forget_model(self, model: str) -> None:
        """Drop a model's gauges (state, in-flight), e.g. once a reload
        removed it from the config; its counters and histograms stay."""
        series: list[tuple[Gauge, tuple[str, ...]]] = [
            (self._state, (model, s)) for s in MODEL_STATES
        ]
        series.append((self._in_flight, (model,)))
        series.append((self._quarantined, (model,)))
        series.append((self._asleep, (model,)))
        self._gauged.discard(model)
        for gauge, labels in series:
            with contextlib.suppress(KeyError):  # older clients raise if absent
                gauge.remove(*labels)

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` for ``GET /metrics``. Blocking: reads
        psutil and NVML (about a millisecond)."""
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE


class _WithoutCreated(Collector):
    """A registry's families minus the ``<name>_created`` timestamp series."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


class PerRequestHistogram(Collector):
    """A labelled histogram observed on every request: plain counts per
    bucket (found by bisection), turned into a family when scraped.
    prometheus_client's ``labels().observe()`` costs a label lookup, a lock
    and a walk of the buckets per value; here a value costs a dict lookup
    and a bisection. The exposition is the same."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._bounds = [float(b) for b in buckets] + [math.inf]
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        # labels -> [count per bucket (not cumulative)..., sum]
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()  # scrapes may run in another thread
        registry.register(self)

    def observe(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        with self._lock:
            row = self._series.get(labels)
            if row is None:
                row = self._series[labels] = [0.0] * (len(self._bounds) + 1)
            bounds, total = self._bounds, row[-1]
            for value in values:
                row[bisect.bisect_left(bounds, value)] += 1
                total += value
            row[-1] = total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            series = [(labels, list(row)) for labels, row in self._series.items()]
        for labels, row in series:
            cumulative = list(itertools.accumulate(row[:-1]))
            family.add_metric(
                list(labels), list(zip(self._les, cumulative, strict=True)), row[-1]
            )
        yield family


class _Families(Collector):
    """Fixed families, so ``generate_latest`` can write them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class HostCollector(Collector):
    """System and GPU gauges, read when Prometheus scrapes."""

    def __init__(
        self,
        system: Callable[[], SysSample],
        probe: GpuProbe | None,
        *,
        per_core: bool = True,
    ) -> None:
        self._system = system
        self._probe = probe
        self._per_core = per_core

    def collect(self) -> Iterator[Metric]:
        try:
            sample = self._system()
        except Exception as e:  # a scrape must not fail on a host reading
            log.warning("system metrics unavailable: %s", e)
        else:
            yield from system_families(sample, per_core=self._per_core)
        if self._probe is None:
            return
        try:
            gpus = self._probe.devices()
        except Exception as e:
            log.warning("GPU metrics unavailable: %s", e)
        else:
            yield from gpu_families(gpus)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"swapvisor_{name}", doc, value=value)


def system_families(s: SysSample, *, per_core: bool = True) -> Iterator[Metric]:
    yield _gauge(
        "cpu_util_percent", "CPU utilization since the last scrape", s.cpu_util_pct
    )
    if per_core:
        cores = GaugeMetricFamily(
            "swapvisor_cpu_core_util_percent",
            "CPU utilization per core since the last scrape",
            labels=["core"],
        )
        for i, pct in enumerate(s.cpu_util_per_core):
            cores.add_metric([str(i)], pct)
        yield cores
    yield _gauge("memory_total_bytes", "Host memory in all", s.mem_total_bytes)
    yield _gauge("memory_used_bytes", "Host memory in use", s.mem_used_bytes)
    yield _gauge(
        "memory_available_bytes", "Host memory available", s.mem_available_bytes
    )
    yield _gauge("swap_total_bytes", "Swap space in all", s.swap_total_bytes)
    yield _gauge("swap_used_bytes", "Swap space in use", s.swap_used_bytes)
    yield _load_average(s.load_avg)
    yield _network(s)
    yield _gauge(
        "process_resident_memory_bytes",
        "swapvisor's resident memory",
        s.process_rss_bytes,
    )


def _load_average(load: tuple[float, float, float]) -> Metric:
    family = GaugeMetricFamily(
        "swapvisor_load_average", "Host load average", labels=["interval"]
    )
    for interval, value in zip(("1m", "5m", "15m"), load, strict=True):
        family.add_metric([interval], value)
    return family


def _network(s: SysSample) -> Metric:
    family = CounterMetricFamily(
        "swapvisor_network_bytes",
        "Bytes through each network interface since boot",
        labels=["interface", "direction"],
    )
    for nic in s.net_io:
        family.add_metric([nic.name, "recv"], nic.bytes_recv)
        family.add_metric([nic.name, "sent"], nic.bytes_sent)
    return family


def gpu_families(gpus: list[GpuSample]) -> Iterator[Metric]:
    """One family per GPU figure; a family no GPU has a value for is left out."""
    for name, doc, attr in GPU_GAUGES:
        family = GaugeMetricFamily(
            f"swapvisor_{name}", doc, labels=["gpu", "uuid", "name"]
        )
        for g in gpus:
            value = getattr(g, attr)
            if value is not None:
                family.add_metric([str(g.index), g.uuid, g.name], value)
        if family.samples:
            yield family


# --- upstream /metrics ------------------------------------------------------


def relabel_upstream_metrics(text: str, model: str) -> str:
    """An upstream's Prometheus text with ``model="<model>"`` on every sample.

    HELP/TYPE stay once per family. An existing ``model`` label is kept as
    ``exported_model`` (Prometheus's rule for clashing labels). Parsing uses
    prometheus_client's parser, which normalises counters: one whose name
    lacks ``_total`` comes out with it (llama.cpp's ``llamacpp:n_tokens_max``
    becomes ``llamacpp:n_tokens_max_total``). Bad text: ValueError.
    """
    return _write(_relabelled(text, model))


def merge_upstream_metrics(texts: Mapping[str, str]) -> str:
    """Several upstreams' texts (model → text) as one valid exposition.

    Families with the same name are merged, so HELP/TYPE appear once each (a
    family whose type differs from the first one seen is dropped). A text
    that does not parse is skipped with a warning.
    """
    merged: dict[str, Metric] = {}
    for model, text in texts.items():
        try:
            families = _relabelled(text, model)
        except ValueError as e:
            log.warning("%s: unreadable /metrics text: %s", model, e)
            continue
        for family in families:
            _merge(merged, family, model)
    return _write(merged.values())


def _merge(merged: dict[str, Metric], family: Metric, model: str) -> None:
    have = merged.setdefault(family.name, family)
    if have is family:
        return
    if have.type != family.type:
        log.debug("%s: %s is a %s here, dropped", model, family.name, family.type)
        return
    have.samples.extend(family.samples)


def _relabelled(text: str, model: str) -> list[Metric]:
    out = []
    for family in text_string_to_metric_families(text):
        new = Metric(family.name, family.documentation, family.type, family.unit)
        new.samples = [
            s._replace(labels=_with_model(s.labels, model)) for s in family.samples
        ]
        out.append(new)
    return out


def _with_model(labels: dict[str, str], model: str) -> dict[str, str]:
    out = dict(labels)
    if "model" in out:
        out["exported_model"] = out.pop("model")
    out["model"] = model
    return out


def _write(families: Iterable[Metric]) -> str:
    return generate_latest(_Families(families)).decode("utf-8")
