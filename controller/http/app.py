"""The aiohttp application: the one route table, its middlewares, lifecycle.

Every route is a row of ``ROUTES``: method, path, handler, and whether it is
open (needs no API key). Handlers raise ``ControllerError``; the error
middleware renders it once, in the client's own shape. The app is the
composition root: it makes the runtime, the name-rewriting state, the proxy's
client and the observability pieces (``controller.http.wiring``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from controller.dispatch.endpoints import GET_ENDPOINTS, POST_ENDPOINTS
from controller.dispatch.names import Names
from controller.engine.runtime import Runtime
from controller.http import models, monitoring, ui, wiring
from controller.http.inference import inference
from controller.http.keys import NAMES, OPEN_ROUTES, PRELOAD, PROXY, RUNTIME
from controller.http.middleware import Handler, front_middleware
from controller.http.passthrough import comfyui, upstream_passthrough
from controller.http.proxy import Proxy
from controller.observability.logs import Logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp.web_urldispatcher import AbstractRoute

    from backends.base import Backend
    from backends.memory import MemoryProbe
    from controller.config.model import Config

# Requests carry audio files and base64 images; llama-swap sets no limit.
MAX_BODY_BYTES = 1 << 30
MIDDLEWARES = (front_middleware,)


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # "*" for any
    path: str
    handler: Handler
    open: bool = False  # served without an API key


async def _upstream_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/#/models")  # llama-swap: GET /upstream -> the UI


ROUTES: tuple[Route, ...] = (
    # Model-dispatched requests (llama-swap.md §2.4).
    *(Route(hdrs.METH_POST, path, inference) for path in POST_ENDPOINTS),
    *(Route(hdrs.METH_GET, path, inference) for path in GET_ENDPOINTS),
    Route(hdrs.METH_ANY, "/upstream/{tail:.*}", upstream_passthrough),
    Route(hdrs.METH_GET, "/upstream", _upstream_index, open=True),
    Route(hdrs.METH_ANY, "/comfyui", comfyui),
    Route(hdrs.METH_ANY, "/comfyui/{tail:.*}", comfyui),
    # Models and their management (§2.5).
    Route(hdrs.METH_GET, "/v1/models", models.list_models),
    Route(hdrs.METH_GET, "/models", models.list_models),
    Route(hdrs.METH_GET, "/running", models.running),
    Route(hdrs.METH_POST, "/api/models/unload", models.unload_all),
    Route(hdrs.METH_POST, "/api/models/unload/{model:.+}", models.unload_one),
    Route(hdrs.METH_GET, "/unload", models.unload_all_text),
    Route(hdrs.METH_GET, "/api/profiles", models.get_profiles),
    Route(hdrs.METH_PUT, "/api/profiles/active", models.put_active_profile),
    Route(hdrs.METH_GET, "/api/version", models.version),
    Route(hdrs.METH_GET, "/health", models.health, open=True),
    Route(hdrs.METH_GET, "/wol-health", models.health, open=True),
    # Watching it work (§5).
    Route(hdrs.METH_GET, "/logs", monitoring.logs_history),
    Route(hdrs.METH_GET, "/logs/stream", monitoring.logs_stream),
    Route(hdrs.METH_GET, "/logs/stream/{name:.+}", monitoring.logs_stream),
    Route(hdrs.METH_GET, "/api/events", monitoring.events),
    Route(hdrs.METH_GET, "/api/metrics/activity", monitoring.activity),
    Route(hdrs.METH_GET, "/api/metrics/stats", monitoring.activity_stats),
    Route(hdrs.METH_GET, "/api/captures/{id}", monitoring.capture),
    Route(hdrs.METH_POST, "/api/inflight/{id}/cancel", monitoring.cancel_inflight),
    Route(hdrs.METH_GET, "/metrics", monitoring.prometheus),
    Route(hdrs.METH_GET, "/metrics/upstreams", monitoring.upstream_metrics),
    Route(hdrs.METH_GET, "/api/performance", monitoring.performance),
    Route(hdrs.METH_GET, "/api/hardware", monitoring.hardware),
    Route(hdrs.METH_GET, "/api/explain", monitoring.explain),
    # The web UI (§9).
    Route(hdrs.METH_GET, "/", models.root, open=True),
    Route(hdrs.METH_GET, "/ui", ui.serve_ui),
    Route(hdrs.METH_GET, "/ui/{tail:.*}", ui.serve_ui),
    Route(hdrs.METH_GET, "/favicon.ico", ui.favicon, open=True),
)


def create_app(
    config: Config,
    backend: Backend,
    logs: Logs | None = None,
    instance: str | None = None,
    memory: MemoryProbe | None = None,
) -> web.Application:
    """The whole server on ``backend`` (native processes; container and mock
    backends are made as models need them). ``logs`` outlive reloads;
    ``instance`` labels the containers this server owns; ``memory`` is the
    machine's memory as ``use: resources`` sees it (default: /proc and NVML)."""
    logs = logs or Logs(log_to_stdout="none")
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=MIDDLEWARES)
    app[RUNTIME] = runtime = Runtime(config, backend, logs.model, instance, memory)
    app[NAMES] = Names(runtime)
    app[PROXY] = Proxy()
    wiring.setup(app, config, logs)
    app.on_startup.append(_start_preload)
    app.on_shutdown.append(_refuse_waiting)
    app.cleanup_ctx.append(_lifecycle)
    app[OPEN_ROUTES] = add_routes(app.router, ROUTES)
    return app


def add_routes(
    router: web.UrlDispatcher, routes: tuple[Route, ...]
) -> frozenset[AbstractRoute]:
    """Register ``routes``; returns the route objects that need no key."""
    open_routes: set[AbstractRoute] = set()
    for row in routes:
        resource = router.add_resource(row.path)
        added = [resource.add_route(row.method, row.handler)]
        if row.method == hdrs.METH_GET:
            added.append(resource.add_route(hdrs.METH_HEAD, row.handler))
        if row.open:
            open_routes.update(added)
    return frozenset(open_routes)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[RUNTIME].aclose()
    await app[PROXY].aclose()


async def _start_preload(app: web.Application) -> None:
    runtime = app[RUNTIME]
    # Not awaited: start-up never waits on an engine (the pool owns the task).
    runtime.backends.start_reaping(runtime.config)
    app[PRELOAD] = asyncio.create_task(runtime.preload())


async def _refuse_waiting(app: web.Application) -> None:
    # Requests still waiting for a model get a 503 now rather than hanging
    # until the shutdown timeout; requests being served may finish.
    app[PRELOAD].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[PRELOAD]
    app[RUNTIME].router.refuse_waiting()
