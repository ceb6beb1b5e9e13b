"""How observability is put into an app and fed: the event bus, log
listeners, the activity recorder, metrics and the performance sampler, and
the router's state changes, swaps and grants turned into events and metrics,
and a reload's observability settings applied to them (:class:`Reapply`).
The engine knows none of them; it only calls its listeners.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from controller.engine.states import UpstreamState
from controller.http.keys import (
    EVENTS,
    GPU,
    INITIAL,
    LOGS,
    METRICS,
    OBSERVER,
    PERF,
    RUNTIME,
)
from controller.http.model_list import model_status
from controller.observability.activity import ActivityStore, StoreError
from controller.observability.captures import MB, CaptureBuffer
from controller.observability.events import EventBus, frame
from controller.observability.gpu import GpuHolder, NvmlProbe
from controller.observability.metrics import EVICTION_REASONS, Metrics
from controller.observability.perf import PerfMonitor
from controller.observability.recorder import Observer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from aiohttp import web

    from controller.config.model import Config
    from controller.config.sections import PerformanceSettings
    from controller.engine.router import Router
    from controller.engine.states import StateChange
    from controller.observability.logs import Logs

log = logging.getLogger("swapvisor.reload")


def setup(app: web.Application, config: Config, logs: Logs) -> None:
    """Create the observability pieces and connect them to the runtime."""
    bus = EventBus()
    holder = GpuHolder(NvmlProbe.open())
    metrics = Metrics(holder.probe)
    app[LOGS] = logs
    app[EVENTS] = bus
    app[GPU] = holder
    app[METRICS] = metrics
    app[OBSERVER] = Observer(
        ActivityStore(config.store.path, config.metrics_max_in_memory),
        CaptureBuffer.from_megabytes(config.capture_buffer),
        metrics,
        bus,
        config.ui.activity.session_id,
    )
    # Made even when disabled, so that a reload can turn sampling on: the app
    # is frozen by then. The handlers answer 503 while the config disables it.
    app[PERF] = PerfMonitor(config.performance.every_s, holder.probe)
    sampler = Sampler(app[PERF])
    app[INITIAL] = [lambda: frame("inflight", app[OBSERVER].snapshot())]
    for source, monitor in (("proxy", logs.proxy), ("upstream", logs.upstream)):
        monitor.add_listener(_log_event(bus, source))
    connect_runtime(app)
    app[RUNTIME].reload_listeners.append(Reapply(app, sampler))
    app.on_shutdown.append(_end_streams)
    app.cleanup_ctx.append(_close)  # after the sampler stops: it uses the probe
    app.cleanup_ctx.append(sampler.lifetime)


def connect_runtime(app: web.Application) -> None:
    """Hook the router's state changes and swaps to the events and metrics."""
    rt = app[RUNTIME]
    bus, metrics = app[EVENTS], app[METRICS]
    pending: list[asyncio.Handle] = []

    def publish_status() -> None:
        pending.clear()
        bus.publish("modelStatus", model_status(app[RUNTIME]))

    def on_change(change: StateChange) -> None:
        metrics.state_changed(change.model, change.new.value)
        _count(metrics, change)
        if not pending:  # one modelStatus per loop turn, however many changes
            pending.append(asyncio.get_running_loop().call_soon(publish_status))

    rt.router.state_listeners.append(on_change)
    rt.router.swap_listeners.append(metrics.swap_done)
    rt.router.slot_listeners.append(metrics.slots)
    rt.router.grant_listeners.append(metrics.queue_wait)
    rt.router.memory_listeners.append(metrics.model_memory)
    rt.router.memory_wait_listeners.append(metrics.memory_wait)
    rt.reload_listeners.append(lambda _config: _budget(rt.router, metrics))
    _budget(rt.router, metrics)
    for mid, now in rt.router.status().items():
        metrics.state_changed(mid, now.state.value)


def _budget(router: Router, metrics: Metrics) -> None:
    """The memory budget gauge, as the resources engine planned it."""
    ledger = router.ledger
    if ledger is None:
        metrics.memory_budget(None, {})
        return
    metrics.memory_budget(ledger.budget.ram, ledger.budget.gpus)


def _count(metrics: Metrics, change: StateChange) -> None:
    S = UpstreamState
    old, new, model = change.old, change.new, change.model
    if old is S.STARTING and new in (S.READY, S.FAILED):
        metrics.load_done(model, change.load_s or 0.0, new is S.READY)
    if new is S.STOPPING and old in (S.READY, S.STARTING):
        if change.reason == "crash":
            metrics.crashed(model)
        elif change.reason in EVICTION_REASONS:
            metrics.evicted(model, change.reason)


def _log_event(bus: EventBus, source: str) -> Callable[[bytes], None]:
    def publish(data: bytes) -> None:
        bus.publish(
            "logData", {"source": source, "data": data.decode("utf-8", "replace")}
        )

    return publish


async def _end_streams(app: web.Application) -> None:
    """End the event and log streams as shutdown begins: aiohttp waits for
    open requests before cleanup, so a connected UI would hold it up for the
    whole shutdown timeout. Clients reconnect to the next server."""
    app[EVENTS].close()
    app[LOGS].close_subscribers()


class Sampler:
    """Owns the task that samples performance every ``performance.every``:
    started with the app unless the config disables it; :meth:`apply` (a
    reload) restarts it on the new interval or stops it."""

    def __init__(self, perf: PerfMonitor) -> None:
        self.perf = perf
        self.task: asyncio.Task[None] | None = None
        self._running = False

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        self._running = True
        self.apply(app[RUNTIME].config.performance)
        yield
        self._running = False
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def apply(self, settings: PerformanceSettings) -> None:
        """Sample per ``settings`` from now on (the first sample at once).
        Before the app starts and after it stops this only keeps the
        interval. Never blocks."""
        if self.task is not None:
            self.task.cancel()  # it ends at its next await; nothing to join
            self.task = None
        self.perf.reconfigure(settings.every_s)
        if self._running and not settings.disabled:
            self.task = asyncio.create_task(_sample(self.perf), name="perf sampler")


class Reapply:
    """A runtime reload listener: applies the observability keys a reload
    changed, in place, for the command line and in-process apps alike.
    llama-swap rebuilds its server for this (and needs a restart for
    ``logToStdout``); here the pieces are resized or re-pointed:

    - ``store.path``: the activity store moves to the new database, as
      llama-swap reopens it; the captures, keyed by row id, are dropped. If
      the new one cannot be opened the old one stays, and the next reload
      tries again.
    - ``metricsMaxInMemory``, ``captureBuffer``: the row cap and the capture
      buffer take the new size at once (dropping the oldest).
    - ``performance``: the sampler restarts on the new interval, or stops.
    - ``logToStdout``: what stdout and ``GET /logs`` carry from now on.
    - ``ui.activity.session_id``: the headers in-flight entries show.
    """

    def __init__(self, app: web.Application, sampler: Sampler) -> None:
        self._app = app
        self._sampler = sampler
        self._config = app[RUNTIME].config

    def __call__(self, config: Config) -> None:
        old, self._config = self._config, config
        obs = self._app[OBSERVER]
        applied = []
        if config.store.path != obs.store.path and self._move_store(config):
            applied.append("store.path")
        if config.metrics_max_in_memory != old.metrics_max_in_memory:
            obs.store.set_max_rows(config.metrics_max_in_memory)
            applied.append("metricsMaxInMemory")
        if config.capture_buffer != old.capture_buffer:
            obs.captures.resize(config.capture_buffer * MB)
            applied.append("captureBuffer")
        if config.performance != old.performance:
            self._sampler.apply(config.performance)
            applied.append("performance")
        if config.log_to_stdout != old.log_to_stdout:
            self._app[LOGS].set_log_to_stdout(config.log_to_stdout)
            applied.append("logToStdout")
        obs.session_headers = tuple(config.ui.activity.session_id)
        if applied:
            log.info("config reload applied %s", ", ".join(applied))

    def _move_store(self, config: Config) -> bool:
        obs, path = self._app[OBSERVER], config.store.path
        try:
            obs.store.reopen(path)
        except StoreError as exc:
            log.error(
                "store.path: cannot open %s (%s); activity stays in %s",
                path or "memory",
                exc,
                obs.store.path or "memory",
            )
            return False
        obs.captures.clear()
        return True


async def _close(app: web.Application) -> AsyncIterator[None]:
    yield
    app[EVENTS].close()
    app[LOGS].close_subscribers()
    app[OBSERVER].store.close()
    probe = app[GPU].probe
    if isinstance(probe, NvmlProbe):
        probe.close()


async def _sample(perf: PerfMonitor) -> None:
    while True:
        try:
            await asyncio.to_thread(perf.sample)
        except Exception:  # a task's top level: log and keep sampling
            logging.getLogger("swapvisor.perf").exception("performance sample failed")
        await asyncio.sleep(perf.every_s)
