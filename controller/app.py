"""The aiohttp application: routes, auth, error rendering, lifecycle.

Handlers parse requests and stream bytes; every lifecycle decision is the
Router's. Errors are raised as ``ControllerError`` and rendered once here, in
the client's own shape.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import hdrs, web

from controller import __version__
from controller.config import Config
from controller.errors import (
    SRC,
    ControllerError,
    ModelNotFound,
    NotFound,
    anthropic_body,
    openai_body,
)
from controller.proxy import (
    MidStreamError,
    Proxy,
    anthropic_sse_error,
    openai_sse_error,
)
from controller.requests import read_model, rewrite_model
from controller.router import Router
from controller.routes import GET_ENDPOINTS, POST_ENDPOINTS, is_anthropic, upstream_path

if TYPE_CHECKING:
    from backends.base import Backend

log = logging.getLogger("swapvisor.http")

ROUTER = web.AppKey("router", Router)
PROXY = web.AppKey("proxy", Proxy)
CONFIG = web.AppKey("config", Config)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Requests carry audio files and base64 images; llama-swap sets no limit.
MAX_BODY_BYTES = 1 << 30
_OPEN_PATHS = frozenset({"/health"})
_OPENAI_MID_STREAM = MidStreamError(openai_sse_error)
_ANTHROPIC_MID_STREAM = MidStreamError(anthropic_sse_error)


def create_app(config: Config, backend: Backend) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[error_middleware, auth_middleware],
    )
    app[CONFIG] = config
    app[ROUTER] = Router(config, backend)
    app[PROXY] = Proxy()
    app.on_shutdown.append(_refuse_waiting)
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app.router)
    return app


def _add_routes(r: web.UrlDispatcher) -> None:
    for path in POST_ENDPOINTS:
        r.add_post(path, inference)
    for path in GET_ENDPOINTS:
        r.add_get(path, inference)
    r.add_get("/v1/models", list_models)
    r.add_get("/models", list_models)
    r.add_get("/running", running)
    r.add_post("/api/models/unload", unload_all)
    r.add_post("/api/models/unload/{model:.+}", unload_one)
    r.add_get("/unload", unload_all_text)
    r.add_get("/health", health)
    r.add_get("/", root)
    r.add_get("/ui", ui)
    r.add_get("/ui/{tail:.*}", ui)
    r.add_route("*", "/upstream/{tail:.*}", upstream_passthrough)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[ROUTER].aclose()
    await app[PROXY].aclose()


async def _refuse_waiting(app: web.Application) -> None:
    # Requests still waiting for a model get a 503 now rather than hanging
    # until the shutdown timeout; requests being served may finish.
    app[ROUTER].scheduler.shutdown()


# -- middlewares ---------------------------------------------------------------------


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
    keys = request.app[CONFIG].api_keys
    if not keys or request.path in _OPEN_PATHS or request.method == hdrs.METH_OPTIONS:
        return await handler(request)
    if request.path == "/" and request.method == hdrs.METH_GET:
        return await handler(request)
    offered = _offered_key(request)
    if offered is None or not any(
        hmac.compare_digest(offered.encode(), key.encode()) for key in keys
    ):
        response = render_error(
            request, 401, "unauthorized: invalid or missing API key", None, None
        )
        response.headers["WWW-Authenticate"] = f'Basic realm="{SRC}"'
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


# -- inference -------------------------------------------------------------------------


async def inference(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    body = await request.read()
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
    query = dict(request.query)
    wanted = read_model(request.method, content_type, query, body)
    model_id = _resolve(config, wanted.model)
    query_string = request.query_string
    rename = config.models[model_id].use_model_name
    if rename:
        body, new_query = rewrite_model(wanted, content_type, query, body, rename)
        query_string = new_query if new_query is not None else query_string
    target = upstream_path(request.path)
    mid_stream = (
        _ANTHROPIC_MID_STREAM if is_anthropic(request.path) else _OPENAI_MID_STREAM
    )
    async with request.app[ROUTER].lease(model_id) as upstream:
        url = upstream.base_url.rstrip("/") + target
        if query_string:
            url += "?" + query_string
        return await request.app[PROXY].forward(
            request,
            url,
            body or None,
            mid_stream,
            lambda: upstream.exit_reason(1.0),
            strip_client_keys=bool(config.api_keys),
        )


def _resolve(config: Config, name: str) -> str:
    model_id = config.resolve(name)
    if model_id is None:
        listed = [m for m, c in sorted(config.models.items()) if not c.unlisted]
        raise ModelNotFound(
            f"model '{name}' not found; available models: {', '.join(listed) or 'none'}"
        )
    return model_id


async def upstream_passthrough(request: web.Request) -> web.StreamResponse:
    """``/upstream/<model>/<path>``: straight to that model's server (§2.6)."""
    config = request.app[CONFIG]
    raw = request.raw_path[len("/upstream/") :]
    raw_path, sep, raw_query = raw.partition("?")
    model_id, rest = _split_upstream_path(config, raw_path)
    if not rest:
        location = f"/upstream/{raw_path}/" + (f"?{raw_query}" if sep else "")
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPMovedPermanently(location)
        raise web.HTTPPermanentRedirect(location)
    body = request.content.iter_any() if request.body_exists else None
    async with request.app[ROUTER].lease(model_id) as upstream:
        url = upstream.base_url.rstrip("/") + rest + (f"?{raw_query}" if sep else "")
        return await request.app[PROXY].forward(
            request,
            url,
            body,
            _OPENAI_MID_STREAM,
            lambda: upstream.exit_reason(1.0),
            strip_client_keys=bool(config.api_keys),
        )


def _split_upstream_path(config: Config, raw_path: str) -> tuple[str, str]:
    """The longest leading run of segments naming a model, and the rest."""
    segments = raw_path.split("/")
    for n in range(len(segments), 0, -1):
        name = unquote("/".join(segments[:n]))
        model_id = config.resolve(name)
        if model_id is not None:
            rest = "/".join(segments[n:])
            return model_id, ("/" + rest) if n < len(segments) else ""
    raise NotFound(f"model not found: no configured model matches /upstream/{raw_path}")


# -- models and lifecycle endpoints ----------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    router = request.app[ROUTER]
    now = int(time.time())
    data = [
        _model_record(mid, config, router.upstreams[mid].running, now)
        for mid in sorted(config.models)
        if not config.models[mid].unlisted
    ]
    response = web.json_response({"object": "list", "data": data})
    origin = request.headers.get(hdrs.ORIGIN)
    if origin:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    return response


def _model_record(mid: str, config: Config, loaded: bool, now: int) -> dict[str, Any]:
    model = config.models[mid]
    llamaswap: dict[str, Any] = {"type": "model"}
    if model.aliases:
        llamaswap["aliases"] = list(model.aliases)
    record: dict[str, Any] = {
        "id": mid,
        "object": "model",
        "created": now,
        "owned_by": SRC,
    }
    if model.name.strip():
        record["name"] = model.name.strip()
    if model.description:
        record["description"] = model.description
    record["meta"] = {"llamaswap": llamaswap}
    record["status"] = {"value": "loaded" if loaded else "unloaded"}
    return record


async def running(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    out = []
    for mid, upstream in sorted(request.app[ROUTER].upstreams.items()):
        if not upstream.running:
            continue
        model = config.models[mid]
        out.append(
            {
                "model": mid,
                "state": upstream.state.value,
                "cmd": model.cmd,
                "proxy": model.proxy,
                "ttl": int(config.ttl_s(mid)),
                "name": model.name,
                "description": model.description,
                "in_flight": upstream.in_flight,
            }
        )
    return web.json_response({"running": out})


async def unload_all(request: web.Request) -> web.Response:
    await request.app[ROUTER].unload()
    return web.json_response({"msg": "ok"})


async def unload_all_text(request: web.Request) -> web.Response:
    await request.app[ROUTER].unload()
    return web.Response(text="OK")


async def unload_one(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    model_id = request.app[CONFIG].resolve(name)
    if model_id is None:
        raise NotFound(f"model not found: {name}")
    await request.app[ROUTER].unload({model_id})
    return web.Response(text="OK")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


async def ui(request: web.Request) -> web.Response:
    """A placeholder page until the web UI lands: what is loaded, and links."""
    router = request.app[ROUTER]
    rows = "".join(
        f"<li><code>{mid}</code>: {u.state.value}</li>"
        for mid, u in sorted(router.upstreams.items())
    )
    html = (
        f"<!doctype html><title>swapvisor</title><h1>swapvisor {__version__}</h1>"
        f"<ul>{rows}</ul><p><a href='/v1/models'>/v1/models</a> · "
        "<a href='/running'>/running</a></p>"
    )
    return web.Response(text=html, content_type="text/html")
