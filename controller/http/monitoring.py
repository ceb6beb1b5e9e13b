"""The operator's watching endpoints: ``/logs`` and its streams,
``/api/events``, activity and captures, in-flight cancel, ``/metrics``,
``/metrics/upstreams``, ``/api/performance`` and ``/api/hardware``
(llama-swap.md §5). They read what ``controller.http.wiring`` set up."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import hdrs, web

from controller.errors import BadRequest, NotFound
from controller.http.keys import (
    EVENTS,
    GPU,
    INITIAL,
    LOGS,
    METRICS,
    NAMES,
    OBSERVER,
    PERF,
    PROXY,
    RUNTIME,
)
from controller.http.model_list import model_status
from controller.observability.events import frame
from controller.observability.metrics import Metrics, merge_upstream_metrics
from controller.observability.perf import hardware_snapshot, parse_rfc3339

if TYPE_CHECKING:
    from controller.observability.logs import LogMonitor


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
    if request.method == hdrs.METH_HEAD:  # the headers only: a stream has no end
        return web.Response(headers=_STREAM_HEADERS)
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


_EVENT_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Accel-Buffering": "no",
}


async def events(request: web.Request) -> web.StreamResponse:
    """The UI's one live feed: logs, model states, in-flight requests, activity."""
    bus = request.app[EVENTS]
    if request.method == hdrs.METH_HEAD:  # the headers only: a stream has no end
        return web.Response(headers=_EVENT_HEADERS)
    response = web.StreamResponse(headers=_EVENT_HEADERS)
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


def _extra_initial(request: web.Request) -> list[bytes]:
    return [maker() for maker in request.app.get(INITIAL, [])]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- activity, captures, metrics, performance -----------------------------------


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
    request.app[OBSERVER].flush()  # the counts of requests that just ended
    metrics = request.app[METRICS]
    router = request.app[RUNTIME].router
    metrics.queue_depth(router.queue_depth())
    status = router.status()
    wall = time.time()
    for mid, now in status.items():
        metrics.state_changed(mid, now.state)
        metrics.in_flight(mid, now.in_flight)
        q = now.quarantine
        metrics.quarantined(mid, q.until - wall if q is not None else 0.0)
        asleep = now.asleep_since
        metrics.asleep(mid, wall - asleep if asleep is not None else 0.0)
    for gone in metrics.models() - status.keys():
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


async def explain(request: web.Request) -> web.Response:
    """``GET /api/explain``: per model its state, declared and learned needs,
    placement and the last decision that touched it, in words; the memory
    budget under ``use: resources``."""
    return web.json_response(await request.app[RUNTIME].router.explain())
