"""The aiohttp application: the route table, auth, error rendering, lifecycle.

Handlers live in ``controller.inference`` (model-dispatched requests) and
``controller.admin`` (operator endpoints). Errors are raised as
``ControllerError`` and rendered once here, in the client's own shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from controller import admin, monitor, ui_static
from controller.dispatch.endpoints import GET_ENDPOINTS, POST_ENDPOINTS, is_anthropic
from controller.dispatch.names import Names
from controller.engine.runtime import Runtime
from controller.errors import SRC, ControllerError, anthropic_body, openai_body
from controller.inference import NAMES, PROXY, RUNTIME, inference, upstream_passthrough
from controller.observability.logs import Logs
from controller.proxy import Proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.base import Backend
    from controller.config.model import Config

log = logging.getLogger("swapvisor.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Requests carry audio files and base64 images; llama-swap sets no limit.
MAX_BODY_BYTES = 1 << 30
_OPEN_PATHS = frozenset({"/health", "/wol-health", "/favicon.ico"})
_CORS_DEFAULT_HEADERS = "Content-Type, Authorization, Accept, X-Requested-With"


def create_app(
    config: Config,
    backend: Backend,
    logs: Logs | None = None,
    instance: str | None = None,
) -> web.Application:
    """The whole server on ``backend`` (native processes; container and mock
    backends are made as models need them). ``logs`` outlive reloads;
    ``instance`` labels the containers this server owns."""
    logs = logs or Logs(log_to_stdout="none")
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[cors_middleware, error_middleware, auth_middleware],
    )
    app[RUNTIME] = Runtime(config, backend, logs.model, instance)
    app[NAMES] = Names(app[RUNTIME])
    app[PROXY] = Proxy()
    monitor.setup(app, config, logs)
    app.on_startup.append(_start_preload)
    app.on_shutdown.append(_refuse_waiting)
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app.router)
    return app


def _add_routes(r: web.UrlDispatcher) -> None:
    for path in POST_ENDPOINTS:
        r.add_post(path, inference)
    for path in GET_ENDPOINTS:
        r.add_get(path, inference)
    r.add_get("/v1/models", admin.list_models)
    r.add_get("/models", admin.list_models)
    r.add_get("/running", admin.running)
    r.add_post("/api/models/unload", admin.unload_all)
    r.add_post("/api/models/unload/{model:.+}", admin.unload_one)
    r.add_get("/unload", admin.unload_all_text)
    r.add_get("/api/profiles", admin.get_profiles)
    r.add_put("/api/profiles/active", admin.put_active_profile)
    r.add_get("/api/version", admin.version)
    r.add_get("/health", admin.health)
    r.add_get("/wol-health", admin.health)
    r.add_get("/", admin.root)
    r.add_get("/ui", ui_static.serve_ui)
    r.add_get("/ui/{tail:.*}", ui_static.serve_ui)
    r.add_get("/favicon.ico", ui_static.favicon)
    r.add_route("*", "/upstream/{tail:.*}", upstream_passthrough)
    monitor.add_routes(r)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[RUNTIME].aclose()
    await app[PROXY].aclose()


PRELOAD = web.AppKey("preload", asyncio.Task[None])


async def _start_preload(app: web.Application) -> None:
    rt = app[RUNTIME]
    await rt.backends.reap_orphans(rt.config)
    app[PRELOAD] = asyncio.create_task(rt.preload())


async def _refuse_waiting(app: web.Application) -> None:
    # Requests still waiting for a model get a 503 now rather than hanging
    # until the shutdown timeout; requests being served may finish.
    app[PRELOAD].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[PRELOAD]
    app[RUNTIME].router.scheduler.shutdown()


# -- middlewares ---------------------------------------------------------------------


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflight answered for every path, before auth (as llama-swap)."""
    if request.method != hdrs.METH_OPTIONS:
        return await handler(request)
    wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    allowed = ", ".join(h.strip() for h in wanted.split(",") if _is_token(h.strip()))
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: allowed or _CORS_DEFAULT_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: "86400",
        },
    )


def _is_token(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControllerError as exc:
        return render_error(
            request, exc.status, exc.message, exc.code, exc.retry_after, exc.param
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render_error(request, exc.status, exc.reason or "error", None, None)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[RUNTIME].config.api_keys
    if not keys or request.path in _OPEN_PATHS:
        return await handler(request)
    if request.method == hdrs.METH_GET and request.path in ("/", "/upstream"):
        return await handler(request)
    offered = _offered_key(request)
    if offered is None or not any(
        hmac.compare_digest(offered.encode(), key.encode()) for key in keys
    ):
        response = render_error(
            request, 401, "unauthorized: invalid or missing API key", None, None
        )
        response.headers[hdrs.WWW_AUTHENTICATE] = f'Basic realm="{SRC}"'
        return response
    return await handler(request)


def _offered_key(request: web.Request) -> str | None:
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    if scheme.lower() == "bearer":
        return value.strip()
    return request.headers.get("x-api-key")


def render_error(
    request: web.Request,
    status: int,
    message: str,
    code: str | None,
    retry_after: int | None,
    param: str | None = None,
) -> web.Response:
    accept = request.headers.get(hdrs.ACCEPT, "")
    if "text/plain" in accept and not is_anthropic(request.path):
        response = web.Response(status=status, text=f"{SRC}: {message}")
    elif is_anthropic(request.path):
        response = web.Response(
            status=status,
            body=anthropic_body(status, message),
            content_type="application/json",
        )
    else:
        response = web.Response(
            status=status,
            body=openai_body(status, message, code, param),
            content_type="application/json",
        )
    if retry_after is not None:
        response.headers[hdrs.RETRY_AFTER] = str(retry_after)
    return response
