"""Model management endpoints: the model list, what is running, unloading,
profiles, version, health. Everything here reads state or asks the router;
nothing proxies."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import hdrs, web

from controller import __version__
from controller.engine.states import UpstreamState
from controller.errors import BadRequest, NotFound
from controller.http.keys import EVENTS, NAMES, RUNTIME
from controller.http.model_list import model_records, model_status, quarantine_json


async def list_models(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    status = rt.router.status()
    records = model_records(
        rt.config,
        lambda m: status[m].listed_state,
        int(time.time()),
        request.app[NAMES].profiles.pins(),
        {m: s.quarantine for m, s in status.items() if s.quarantine is not None},
    )
    response = web.json_response({"object": "list", "data": records})
    origin = request.headers.get(hdrs.ORIGIN)
    if origin:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    return response


async def running(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    out = []
    saved = rt.router.saved_slots()
    for mid, upstream in sorted(rt.router.status().items()):
        # Sleeping and quarantined models are listed too: they hold no
        # accelerator memory, but an operator needs to see them.
        asleep = upstream.state is UpstreamState.SLEEPING
        if not upstream.running and upstream.quarantine is None and not asleep:
            continue
        model = rt.config.models[mid]
        entry: dict[str, Any] = {
            "model": mid,
            "state": upstream.state.value,
            "cmd": model.cmd,
            "proxy": model.proxy,
            "ttl": int(rt.config.ttl_s(mid)),
            "name": model.name,
            "description": model.description,
            "in_flight": upstream.in_flight,
        }
        if upstream.quarantine is not None:
            entry["quarantine"] = quarantine_json(upstream.quarantine)
        if (slots := saved.get(mid)) is not None:
            entry["slots"] = {
                "count": slots.count,
                "tokens": slots.tokens,
                "bytes": slots.bytes,
            }
        out.append(entry)
    return web.json_response({"running": out})


async def unload_all(request: web.Request) -> web.Response:
    await request.app[RUNTIME].router.unload()
    return web.json_response({"msg": "ok"})


async def unload_all_text(request: web.Request) -> web.Response:
    await request.app[RUNTIME].router.unload()
    return web.Response(text="OK")


async def unload_one(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    name = request.match_info["model"]
    model_id = rt.config.resolve(name)
    if model_id is None:
        raise NotFound(f"model not found: {name}")
    await rt.router.unload({model_id})
    return web.Response(text="OK")


async def get_profiles(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    profiles = [
        {
            "id": pid,
            "description": p.description,
            "pins": {k: v or "" for k, v in p.pins.items()},
        }
        for pid, p in sorted(rt.config.profiles.items())
    ]
    return web.json_response(
        {"active": request.app[NAMES].profiles.active, "profiles": profiles}
    )


async def put_active_profile(request: web.Request) -> web.Response:
    try:
        data = json.loads(await request.read())
    except ValueError as exc:
        raise BadRequest("invalid profile request") from exc
    if not isinstance(data, dict) or "name" not in data:
        raise BadRequest("profile name is required")
    name = data["name"]
    if name is not None and not isinstance(name, str):
        raise BadRequest("profile name must be a string or null")
    rt = request.app[RUNTIME]
    if name is not None and name not in rt.config.profiles:
        raise NotFound(f'profile "{name}" not found')
    if request.app[NAMES].profiles.set_active(name):
        bus = request.app[EVENTS]
        bus.publish("profileChanged", {"active": request.app[NAMES].profiles.active})
        bus.publish("modelStatus", model_status(rt))
    return web.json_response({"active": request.app[NAMES].profiles.active})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__, "commit": "", "build_date": ""})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")
