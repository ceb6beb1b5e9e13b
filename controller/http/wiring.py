"""How observability is put into an app and fed: the event bus, log
listeners, the activity recorder, metrics and the performance sampler, and
the router's state changes, swaps and grants turned into events and metrics.
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
from controller.observability.activity import ActivityStore
from controller.observability.captures import CaptureBuffer
from controller.observability.events import EventBus, frame
from controller.observability.gpu import GpuHolder, NvmlProbe
from controller.observability.metrics import EVICTION_REASONS, Metrics
from controller.observability.perf import PerfMonitor
from controller.observability.recorder import Observer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from aiohttp import web

    from controller.config.model import Config
    from controller.engine.states import StateChange
    from controller.observability.logs import Logs


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
    app[INITIAL] = [lambda: frame("inflight", app[OBSERVER].snapshot())]
    for source, monitor in (("proxy", logs.proxy), ("upstream", logs.upstream)):
        monitor.add_listener(_log_event(bus, source))
    connect_runtime(app)
    app.on_shutdown.append(_end_streams)
    app.cleanup_ctx.append(_perf_sampler)


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
    rt.router.grant_listeners.append(metrics.queue_wait)
    for mid, now in rt.router.status().items():
        metrics.state_changed(mid, now.state.value)


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


async def _perf_sampler(app: web.Application) -> AsyncIterator[None]:
    config = app[RUNTIME].config
    task = None
    if not config.performance.disabled:
        app[PERF] = PerfMonitor(config.performance.every_s, app[GPU].probe)
        task = asyncio.create_task(_sample(app[PERF]))
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
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
