"""Model-dispatched requests: from the client's model name to a proxied answer.

The pipeline is llama-swap's (§2.1): profile pins, then selectors, then the
model (local id or alias, else a peer), then rewrites and filters, then either
a local Upstream (through the scheduler) or a peer. Nothing here decides a
start or a stop; the Router does.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from controller.dispatch.endpoints import is_anthropic, upstream_path
from controller.dispatch.filters import apply_filters
from controller.dispatch.request import ModelRequest, read_model, rewrite_model
from controller.errors import ControllerError, ModelNotFound
from controller.http.keys import NAMES, OBSERVER, PROXY, RUNTIME
from controller.http.loading import LoadingStream
from controller.http.proxy import (
    CLIENT_KEYS,
    DROP_REQUEST,
    Route,
    anthropic_sse_error,
    openai_sse_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from controller.config.model import Config, ModelConfig
    from controller.config.sections import Filters
    from controller.engine.router import Admission
    from controller.engine.runtime import Runtime
    from controller.engine.upstream import Upstream
    from controller.observability.recorder import Recording


async def inference(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    names = request.app[NAMES]
    body = await request.read()
    wanted = read_model(request.method, _ctype(request), dict(request.query), body)
    name = names.profiles.rewrite(wanted.model)
    choice = names.selectors.choose(name)
    meta = {"selector": choice.selector} if choice.selector else {}
    try:
        return await _dispatch(request, rt, wanted, choice.target, body, meta)
    finally:
        choice.release()


async def _dispatch(
    request: web.Request,
    rt: Runtime,
    wanted: ModelRequest,
    name: str,
    body: bytes,
    meta: dict[str, str],
) -> web.StreamResponse:
    config = rt.config
    model_id = config.resolve(name)
    peer = config.peer_of(name) if model_id is None else None
    if model_id is None and peer is None:
        raise model_not_found(config, name)
    label = model_id or "/".join(peer or ())
    if model_id is not None:
        meta["fifo_priority"] = str(config.priority(model_id))
    with observed(request, label, upstream_path(request.path), body, meta) as rec:
        if model_id is not None:
            return await _local(request, rt, wanted, name, model_id, body, rec)
        assert peer is not None
        return await _peer(request, rt, wanted, peer, body, rec)


@contextmanager
def observed(
    request: web.Request,
    model: str,
    path: str,
    body: bytes | None,
    meta: dict[str, str] | None = None,
) -> Iterator[Recording | None]:
    """Record a POST as in flight, then as activity (llama-swap records POSTs)."""
    observer = request.app.get(OBSERVER)
    if observer is None or request.method != hdrs.METH_POST or body is None:
        yield None
        return
    rec = observer.begin(request, model, path, body, meta)
    try:
        yield rec
    except ControllerError as exc:
        rec.failed(exc.status, exc.message)
        raise
    finally:
        rec.close()


def model_not_found(config: Config, name: str) -> ModelNotFound:
    listed = [m for m, c in sorted(config.models.items()) if not c.unlisted]
    listed += [
        f"{p}/{m}" for p, peer in sorted(config.peers.items()) for m in peer.models
    ]
    return ModelNotFound(
        f"model '{name}' not found; available models: {', '.join(listed) or 'none'}"
    )


# -- local models --------------------------------------------------------------------


async def _local(
    request: web.Request,
    rt: Runtime,
    wanted: ModelRequest,
    name: str,
    model_id: str,
    body: bytes,
    rec: Recording | None = None,
) -> web.StreamResponse:
    model = rt.config.models[model_id]
    body, query = _rename(request, wanted, body, model.use_model_name or name)
    body = _filtered(request, body, model.filters, model.filters.set_params_by_id, name)
    path = upstream_path(request.path) + (f"?{query}" if query else "")
    admission = rt.router.admit(model_id)
    try:
        if (
            _wants_loading_state(request, rt.config, model, wanted)
            and not admission.ready_now
        ):
            return await _with_loading_state(
                request, rt, admission, model_id, path, body, rec
            )
        upstream = await admission.granted()
        route = local_route(rt.config, model, upstream, path, request.path, rec)
        return await request.app[PROXY].forward(request, route, body or None)
    finally:
        admission.release()


def local_route(
    config: Config,
    model: ModelConfig,
    upstream: Upstream,
    path: str,
    client_path: str,
    tap: Recording | None = None,
) -> Route:
    timeouts = model.timeouts
    return Route(
        url=upstream.base_url.rstrip("/") + path,
        sse_error=anthropic_sse_error
        if is_anthropic(client_path)
        else openai_sse_error,
        on_dropped=lambda: upstream.exit_reason(1.0),
        drop_headers=DROP_REQUEST | CLIENT_KEYS if config.api_keys else DROP_REQUEST,
        connect_timeout_s=timeouts.connect or None,
        header_timeout_s=timeouts.response_header or None,
        tap=tap,
    )


def _wants_loading_state(
    request: web.Request, config: Config, model: ModelConfig, wanted: ModelRequest
) -> bool:
    enabled = model.send_loading_state
    if enabled is None:
        enabled = config.send_loading_state
    return (
        enabled
        and wanted.stream
        and request.path.startswith(("/v1/chat/completions", "/v/chat/completions"))
    )


async def _with_loading_state(
    request: web.Request,
    rt: Runtime,
    admission: Admission,
    model_id: str,
    path: str,
    body: bytes,
    rec: Recording | None,
) -> web.StreamResponse:
    stream = await LoadingStream.open(request, model_id, admission.position)
    try:
        upstream = await admission.granted()
        await stream.finish()
        route = local_route(
            rt.config, rt.config.models[model_id], upstream, path, request.path, rec
        )
        return await request.app[PROXY].forward(
            request, route, body or None, into=stream.response
        )
    except ControllerError as exc:
        # The 200 has been sent: a failed load, or one after it (no response
        # headers in time, a dropped connection), can only end the stream. The
        # error middleware would write a second response into this one.
        if rec is not None:
            rec.failed(exc.status, exc.message)
        return await stream.fail(openai_sse_error(exc.message, exc.code or "error"))
    finally:
        await stream.aclose()


# -- peers -----------------------------------------------------------------------------


async def _peer(
    request: web.Request,
    rt: Runtime,
    wanted: ModelRequest,
    peer: tuple[str, str],
    body: bytes,
    rec: Recording | None = None,
) -> web.StreamResponse:
    pid, peer_model = peer
    cfg = rt.config.peers[pid]
    body, query = _rename(request, wanted, body, peer_model)
    body = _filtered(request, body, cfg.filters, {}, peer_model)
    path = upstream_path(request.path) + (f"?{query}" if query else "")
    route = peer_route(rt.config, pid, path, request.path)
    return await request.app[PROXY].forward(
        request, replace(route, tap=rec), body or None
    )


def peer_route(config: Config, pid: str, path: str, client_path: str) -> Route:
    cfg = config.peers[pid]
    keys = {"Authorization": f"Bearer {cfg.api_key}", "x-api-key": cfg.api_key}
    drop = (
        DROP_REQUEST | CLIENT_KEYS if (config.api_keys or cfg.api_key) else DROP_REQUEST
    )
    return Route(
        url=cfg.proxy.rstrip("/") + path,
        sse_error=anthropic_sse_error
        if is_anthropic(client_path)
        else openai_sse_error,
        drop_headers=drop,
        set_headers=keys if cfg.api_key else {},
        forwarded_for=False,
        connect_timeout_s=cfg.timeouts.connect or None,
        header_timeout_s=cfg.timeouts.response_header or None,
        label=f"peer proxy error: peer {pid}",
    )


# -- rewriting --------------------------------------------------------------


def _ctype(request: web.Request) -> str:
    return request.headers.get(hdrs.CONTENT_TYPE, "")


def _is_json(request: web.Request) -> bool:
    return "application/json" in _ctype(request).lower()


def _filtered(
    request: web.Request,
    body: bytes,
    filters: Filters,
    by_id: Mapping[str, Mapping[str, Any]],
    requested: str,
) -> bytes:
    """A JSON body with a model's or peer's filters applied."""
    if not _is_json(request):
        return body
    return apply_filters(
        body,
        use_model_name="",
        strip=filters.strip(),
        set_params=filters.set_params,
        set_params_by_id=by_id,
        requested_id=requested,
    )


def _rename(
    request: web.Request, wanted: ModelRequest, body: bytes, sent: str
) -> tuple[bytes, str]:
    """The body and query string with the model the upstream should see."""
    if sent == wanted.model:
        return body, request.query_string
    body, query = rewrite_model(
        wanted, _ctype(request), dict(request.query), body, sent
    )
    return body, request.query_string if query is None else query
