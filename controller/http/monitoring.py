"""Handlers that let an operator watch swapvisor: ``/logs``, ``/logs/stream*``
and ``/api/events`` (llama-swap.md §5.1, §5.3)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import hdrs, web

from controller.engine.states import UpstreamState
from controller.errors import BadRequest, NotFound
from controller.inference import NAMES, PROXY, RUNTIME
from controller.listing import render_capabilities
from controller.observability.activity import ActivityStore
from controller.observability.captures import CaptureBuffer
from controller.observability.events import EventBus, frame
from controller.observability.gpu import GpuProbe, NvmlProbe
from controller.observability.logs import Logs
from controller.observability.metrics import Metrics, merge_upstream_metrics
from controller.observability.perf import PerfMonitor, hardware_snapshot, parse_rfc3339
from controller.observability.recorder import OBSERVER, Observer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from controller.config.model import Config
    from controller.engine.runtime import Runtime
    from controller.engine.upstream import Upstream
    from controller.observability.logs import LogMonitor


@dataclass
class GpuHolder:
    """The GPU probe (None without NVML) and the cached hardware snapshot."""

    probe: GpuProbe | None
    snapshot: dict[str, Any] | None = None


LOGS = web.AppKey("logs", Logs)
EVENTS = web.AppKey("events", EventBus)

_STREAM_HEADERS = {
    "Content-Type": "text/plain; charset=utf-8",
    "X-Content-Type-Options": "nosniff",
    "X-Accel-Buffering": "no",
    "Cache-Control": "no-cache",
}


async def logs_history(request: web.Request) -> web.StreamResponse:
    if "text/html" in request.headers.get(hdrs.ACCEPT, ""):
        raise web.HTTPFound("/ui/")
    return web.Response(
        body=request.app[LOGS].mux.history(), content_type="text/plain", charset="utf-8"
    )


async def logs_stream(request: web.Request) -> web.StreamResponse:
    """Chunked live tail; history first unless ``?no-history``."""
    name = request.match_info.get("name", "")
    monitor = _monitor(request, name)
    response = web.StreamResponse(headers=_STREAM_HEADERS)
    response.enable_chunked_encoding()
    sub = monitor.subscribe()
    try:
        await response.prepare(request)
        if "no-history" not in request.query:
            await response.write(monitor.history())
        async for chunk in sub:
            await response.write(chunk)
    finally:
        monitor.unsubscribe(sub)
    return response


def _monitor(request: web.Request, name: str) -> LogMonitor:
    logs = request.app[LOGS]
    if not name:
        return logs.mux
    monitor = logs.find(name)
    if monitor is None:
        model_id = request.app[RUNTIME].config.resolve(name)
        monitor = logs.model(model_id) if model_id is not None else None
    if monitor is None:
        raise BadRequest("invalid logger. Use 'proxy', 'upstream' or a model's ID")
    return monitor


async def events(request: web.Request) -> web.StreamResponse:
    """The UI's one live feed: logs, model states, in-flight requests, activity."""
    bus = request.app[EVENTS]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "X-Accel-Buffering": "no",
        }
    )
    queue = bus.subscribe()
    try:
        await response.prepare(request)
        for first in initial_messages(request):
            await response.write(first)
        while (message := await queue.get()) is not None:
            await response.write(message)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        bus.unsubscribe(queue)
    return response


def initial_messages(request: web.Request) -> list[bytes]:
    rt = request.app[RUNTIME]
    logs = request.app[LOGS]
    out = [
        frame("logData", {"source": "proxy", "data": _text(logs.proxy.history())}),
        frame(
            "logData", {"source": "upstream", "data": _text(logs.upstream.history())}
        ),
        frame("modelStatus", model_status(rt)),
        frame(
            "uiConfig",
            {"activity": {"session_id": rt.config.ui.activity.session_id}},
        ),
        frame("profileChanged", {"active": request.app[NAMES].profiles.active}),
    ]
    out.extend(_extra_initial(request))
    return out


# Other subsystems (in-flight tracking) add their initial snapshot here.
INITIAL = web.AppKey("initial_events", list)


def _extra_initial(request: web.Request) -> list[bytes]:
    return [maker() for maker in request.app.get(INITIAL, [])]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def model_status(rt: Runtime) -> list[dict[str, Any]]:
    """Every local model with its state, then every peer model (llama-swap §5.3)."""
    out: list[dict[str, Any]] = []
    for mid, model in sorted(rt.config.models.items()):
        entry: dict[str, Any] = {
            "id": mid,
            "name": model.name,
            "description": model.description,
            "state": rt.router.state_of(mid).value,
            "unlisted": model.unlisted,
            "peerID": "",
        }
        if model.aliases:
            entry["aliases"] = list(model.aliases)
        if model.capabilities.configured:
            entry["capabilities"] = render_capabilities(model.capabilities).get(
                "capabilities", {}
            )
            if model.capabilities.context:
                entry["context_length"] = model.capabilities.context
        out.append(entry)
    for pid, peer in sorted(rt.config.peers.items()):
        out.extend(
            {
                "id": f"{pid}/{m}",
                "name": "",
                "description": "",
                "state": "",
                "unlisted": False,
                "peerID": pid,
            }
            for m in dict.fromkeys(peer.models)
        )
    return out


# -- activity, captures, metrics, performance -----------------------------------

PERF = web.AppKey("perf", PerfMonitor)
METRICS = web.AppKey("metrics", Metrics)
GPU = web.AppKey("gpu", GpuHolder)


async def activity(request: web.Request) -> web.Response:
    obs = request.app[OBSERVER]
    params = {k: request.query.getall(k) for k in request.query}
    data = obs.store.query(params, has_capture=lambda i: i in obs.captures)
    return web.json_response(data)


async def activity_stats(request: web.Request) -> web.Response:
    obs = request.app[OBSERVER]
    return web.json_response(obs.store.stats(request.query.get("model") or None))


async def capture(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise BadRequest("invalid capture ID")
    found = request.app[OBSERVER].captures.get(int(raw))
    if found is None:
        raise NotFound("capture not found")
    return web.json_response(found)


async def cancel_inflight(request: web.Request) -> web.Response:
    if not request.app[OBSERVER].cancel(request.match_info["id"]):
        raise NotFound("inflight request not found")
    return web.json_response({"msg": "ok"})


def _refresh_gauges(request: web.Request) -> Metrics:
    """Queue depth, in-flight counts and model states are read at scrape
    time, exact: a reload adds and removes models, and a changed model's old
    server, draining, reports states under the same id as its replacement."""
    metrics = request.app[METRICS]
    router = request.app[RUNTIME].router
    metrics.queue_depth(len(router.scheduler.queued()))
    for mid, upstream in router.upstreams.items():
        metrics.state_changed(mid, upstream.state)
        metrics.in_flight(mid, upstream.in_flight)
    for gone in metrics.models() - router.upstreams.keys():
        metrics.forget_model(gone)
    return metrics


async def prometheus(request: web.Request) -> web.Response:
    if request.app[RUNTIME].config.performance.disabled:
        return web.Response(status=503, text="# performance monitor not available\n")
    body, content_type = await asyncio.to_thread(_refresh_gauges(request).render)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def upstream_metrics(request: web.Request) -> web.Response:
    """Every ready upstream's own /metrics, each sample labelled with its model."""
    ready = request.app[RUNTIME].router.ready_urls()
    client = request.app[PROXY].client()
    texts = await asyncio.gather(*(_fetch_metrics(client, u) for u in ready.values()))
    merged = merge_upstream_metrics(
        {m: t for m, t in zip(ready, texts, strict=True) if t is not None}
    )
    return web.Response(text=merged, content_type="text/plain")


async def _fetch_metrics(client: aiohttp.ClientSession, base_url: str) -> str | None:
    url = base_url.rstrip("/") + "/metrics"
    try:
        async with client.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def performance(request: web.Request) -> web.Response:
    if request.app[RUNTIME].config.performance.disabled or PERF not in request.app:
        return web.json_response({"enabled": False}, status=503)
    after = request.query.get("after")
    try:
        since = parse_rfc3339(after) if after else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response(request.app[PERF].history(since))


async def hardware(request: web.Request) -> web.Response:
    holder = request.app[GPU]
    if holder.snapshot is None:
        holder.snapshot = await asyncio.to_thread(hardware_snapshot, holder.probe)
    return web.json_response(holder.snapshot)


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/logs", logs_history)
    r.add_get("/logs/stream", logs_stream)
    r.add_get("/logs/stream/{name:.+}", logs_stream)
    r.add_get("/api/events", events)
    r.add_get("/api/metrics/activity", activity)
    r.add_get("/api/metrics/stats", activity_stats)
    r.add_get("/api/captures/{id}", capture)
    r.add_post("/api/inflight/{id}/cancel", cancel_inflight)
    r.add_get("/metrics", prometheus)
    r.add_get("/metrics/upstreams", upstream_metrics)
    r.add_get("/api/performance", performance)
    r.add_get("/api/hardware", hardware)


# -- wiring ---------------------------------------------------------------------


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

    def on_change(up: Upstream, old: UpstreamState, new: UpstreamState) -> None:
        metrics.state_changed(up.id, new.value)
        _count(metrics, up, old, new)
        if not pending:  # one modelStatus per loop turn, however many changes
            pending.append(asyncio.get_running_loop().call_soon(publish_status))

    rt.router.state_listeners.append(on_change)
    rt.router.swap_listeners.append(metrics.swap_done)
    rt.router.grant_listeners.append(metrics.queue_wait)
    for mid, upstream in rt.router.upstreams.items():
        metrics.state_changed(mid, upstream.state.value)


def _count(
    metrics: Metrics, up: Upstream, old: UpstreamState, new: UpstreamState
) -> None:
    S = UpstreamState
    if old is S.STARTING and new in (S.READY, S.FAILED):
        metrics.load_done(up.id, up.last_start_s or 0.0, new is S.READY)
    if new is S.STOPPING and old in (S.READY, S.STARTING):
        if up.stop_reason == "crash":
            metrics.crashed(up.id)
        elif up.stop_reason in ("swap", "ttl", "unload", "reload", "shutdown"):
            metrics.evicted(up.id, up.stop_reason)


def _log_event(bus: EventBus, source: str) -> Callable[[bytes], None]:
    def publish(data: bytes) -> None:
        bus.publish("logData", {"source": source, "data": _text(data)})

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
