"""Every aiohttp app key, in one place: what one running app holds.

The app is the composition root: it creates the runtime, the name rewriting
state, the proxy's client and the observability pieces, and every handler
reaches them through these keys. Only the HTTP layer and the command line
hold an app; the layers below are handed what they need.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.web_urldispatcher import AbstractRoute

    from controller.dispatch.names import Names
    from controller.engine.runtime import Runtime
    from controller.http.proxy import Proxy
    from controller.observability.events import EventBus
    from controller.observability.gpu import GpuHolder
    from controller.observability.logs import Logs
    from controller.observability.metrics import Metrics
    from controller.observability.perf import PerfMonitor
    from controller.observability.recorder import Observer


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
NAMES: web.AppKey[Names] = web.AppKey("names")
PROXY: web.AppKey[Proxy] = web.AppKey("proxy")
PRELOAD = web.AppKey("preload", asyncio.Task[None])
# Which routes need no API key, by the route object aiohttp matched.
OPEN_ROUTES: web.AppKey[frozenset[AbstractRoute]] = web.AppKey("open_routes")

LOGS: web.AppKey[Logs] = web.AppKey("logs")
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
OBSERVER: web.AppKey[Observer] = web.AppKey("observer")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PERF: web.AppKey[PerfMonitor] = web.AppKey("perf")
GPU: web.AppKey[GpuHolder] = web.AppKey("gpu")
# Other subsystems (in-flight tracking) add their initial /api/events snapshot.
INITIAL: web.AppKey[list[Callable[[], bytes]]] = web.AppKey("initial_events")
