"""``/upstream/<model>/<path>``: straight to one model's own server
(llama-swap.md §2.6), websockets included.

Requests to the inference endpoints are recorded as activity, as when sent to
the endpoint directly; everything else streams straight through. A websocket
session holds a lease like any request, so its model is never evicted under
it; an ignored-websocket model's sessions attach only to a ready model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import unquote

from aiohttp import hdrs, web

from controller.config.model import COMFYUI_MODEL
from controller.dispatch.endpoints import POST_ENDPOINTS
from controller.engine.states import UpstreamState
from controller.errors import Conflict, NotFound
from controller.http.inference import local_route, observed, peer_route
from controller.http.keys import NAMES, PROXY, RUNTIME

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from controller.config.model import Config
    from controller.engine.runtime import Runtime


async def upstream_passthrough(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    raw = request.raw_path[len("/upstream/") :]
    raw_path, sep, raw_query = raw.partition("?")
    raw_path = request.app[NAMES].profiles.rewrite_path(raw_path)
    name, rest = _split_upstream_path(rt.config, raw_path)
    if not rest:
        _redirect(request, f"/upstream/{raw_path}/" + (f"?{raw_query}" if sep else ""))
    path = rest + (f"?{raw_query}" if sep else "")
    model_id = rt.config.resolve(name)
    peer = rt.config.peer_of(name) if model_id is None else None
    if model_id is not None:
        _refuse_ignored_path(rt, model_id, rest)
        if _is_websocket(request):
            return await _websocket(request, rt, model_id, path)
    # Requests to the inference endpoints are recorded as activity, as when
    # sent to the endpoint directly; everything else streams straight through.
    recorded = request.method == hdrs.METH_POST and rest in POST_ENDPOINTS
    body: bytes | AsyncIterable[bytes] | None
    kept: bytes | None = None
    if recorded:
        body = kept = await request.read()
    else:
        body = request.content.iter_any() if request.body_exists else None
    label = model_id or "/".join(peer or ())
    with observed(request, label, rest, kept) as rec:
        tap = rec if recorded else None
        if model_id is None:
            assert peer is not None
            route = peer_route(rt.config, peer[0], path, rest)
            return await request.app[PROXY].forward(
                request, replace(route, tap=tap), body
            )
        model = rt.config.models[model_id]
        async with rt.router.lease(model_id) as upstream:
            route = local_route(rt.config, model, upstream, path, rest, tap)
            return await request.app[PROXY].forward(request, route, body)


def _redirect(request: web.Request, location: str) -> NoReturn:
    """To the same path with a trailing slash: 301 for GET/HEAD, else 308."""
    if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise web.HTTPMovedPermanently(location)
    raise web.HTTPPermanentRedirect(location)


async def comfyui(request: web.Request) -> web.StreamResponse:
    """``/comfyui/...``: the fixed model ``comfyui_auto`` (llama-swap.md §2.7).

    Only ``/comfyui/`` itself may start it; any other path while it is not
    ready is 409, so a stale browser tab or websocket never reloads it. Its
    websockets never load, queue or count.
    """
    rt = request.app[RUNTIME]
    raw_path, sep, raw_query = request.raw_path[len("/comfyui") :].partition("?")
    query = f"?{raw_query}" if sep else ""
    if not raw_path:
        _redirect(request, "/comfyui/" + query)
    if COMFYUI_MODEL not in rt.config.models:
        raise NotFound(f"local model {COMFYUI_MODEL} not found")
    path = raw_path + query
    if _is_websocket(request):
        return await _websocket(request, rt, COMFYUI_MODEL, path)
    if raw_path != "/" and rt.router.state_of(COMFYUI_MODEL) is not UpstreamState.READY:
        raise Conflict(
            f"model {COMFYUI_MODEL} is not loaded; only /comfyui/ can start it"
        )
    body = request.content.iter_any() if request.body_exists else None
    model = rt.config.models[COMFYUI_MODEL]
    async with rt.router.lease(COMFYUI_MODEL) as upstream:
        route = local_route(rt.config, model, upstream, path, raw_path)
        return await request.app[PROXY].forward(request, route, body)


def _split_upstream_path(config: Config, raw_path: str) -> tuple[str, str]:
    """The longest leading run of segments naming a model or peer model."""
    segments = raw_path.split("/")
    for n in range(len(segments), 0, -1):
        name = unquote("/".join(segments[:n]))
        if config.resolve(name) is not None or config.peer_of(name) is not None:
            rest = "/".join(segments[n:])
            return name, ("/" + rest) if n < len(segments) else ""
    raise NotFound(f"model not found: no configured model matches /upstream/{raw_path}")


def _refuse_ignored_path(rt: Runtime, model_id: str, rest: str) -> None:
    if rt.router.state_of(model_id) is UpstreamState.READY:
        return
    if any(p.search(rest) for p in rt.config.upstream.patterns()):
        raise Conflict(
            f"model {model_id} is not loaded; path matches upstream.ignorePaths"
        )


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


async def _websocket(
    request: web.Request, rt: Runtime, model_id: str, path: str
) -> web.StreamResponse:
    model = rt.config.models[model_id]
    if model.compat.ignore_websockets or model_id == COMFYUI_MODEL:
        # Never loads, never queues, never counts (llama-swap compat); but
        # the model stays up while the session is open.
        admission = rt.router.attach(model_id)
        if admission is None:
            raise Conflict(
                f"model {model_id} is not loaded; ignored websocket "
                "requests cannot start it"
            )
    else:
        admission = rt.router.admit(model_id)
    try:
        upstream = await admission.granted()
        return await request.app[PROXY].websocket(
            request, local_route(rt.config, model, upstream, path, path)
        )
    finally:
        admission.release()
