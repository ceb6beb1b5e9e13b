"""Request features through the real app: filters, peers, API keys, profiles,
selectors, the loading-state stream, the model list's extra records,
/upstream ignorePaths and websockets, response-header timeouts and preload."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import fake_cmd, port_block, wait_until
from tests.harness import (
    App,
    Apps,
    StateLog,
    chat,
    sse_events,
    ws_cmd,
)


async def echo(
    app: App,
    model: str,
    body: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST to /v1/responses, which the fake echoes: what the upstream got."""
    r = await app.client.post(
        "/v1/responses", json={"model": model, **(body or {})}, headers=headers
    )
    assert r.status == 200, await r.text()
    result: dict[str, Any] = await r.json()
    result["json_body"] = json.loads(result["body"])
    return result


async def error_of(r: aiohttp.ClientResponse) -> tuple[int, str]:
    return r.status, (await r.json())["error"]["message"]


# -- filters ---------------------------------------------------------------------------


async def test_filters_strip_set_and_set_by_id(apps: Apps) -> None:
    app = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
    filters:
      stripParams: "temperature, top_p, model"
      setParams:
        max_tokens: 64
        seed: 7
      setParamsByID:
        "${{MODEL_ID}}:think":
          chat_template_kwargs: {{enable_thinking: true}}
          seed: 8
""")
    sent = {"input": "x", "temperature": 0.5, "top_p": 0.9, "max_tokens": 5}
    got = await echo(app, "a", sent)
    assert got["server_model"] == "a"
    assert got["json_body"] == {"model": "a", "input": "x", "max_tokens": 64, "seed": 7}
    # The setParamsByID key is an alias of the model that adds its params.
    got = await echo(app, "a:think", sent)
    assert got["server_model"] == "a"
    body = got["json_body"]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["seed"] == 8  # by-ID params override setParams
    assert (body["max_tokens"], "temperature" in body) == (64, False)
    assert app.running() == ["a"]
    # Chat completions get the same treatment.
    assert await app.reply("a:think") == "hello from a"


# -- peers -----------------------------------------------------------------------------


async def test_peer_models_are_forwarded_with_the_peer_key(apps: Apps) -> None:
    peer_url, _ = await apps.fake_server("peer-box")
    app = await apps.start(f"""
apiKeys: [client-key]
models:
  loc:
    cmd: {fake_cmd("loc")}
peers:
  box:
    proxy: "{peer_url}"
    apiKey: k
    models: [remote-m]
    filters:
      setParams: {{provider: box}}
""")
    log = StateLog.attach(app.router)
    client_auth = {"Authorization": "Bearer client-key", "x-api-key": "client-key"}
    for name in ("box/remote-m", "remote-m"):
        got = await echo(app, name, {"input": "x"}, client_auth)
        assert got["server_model"] == "peer-box"
        assert got["json_body"] == {
            "model": "remote-m",
            "input": "x",
            "provider": "box",
        }
        headers = got["headers"]
        # The client's keys are replaced by the peer's.
        assert (headers["authorization"], headers["x-api-key"]) == ("Bearer k", "k")
        assert "x-forwarded-for" not in headers
        assert headers["host"] == peer_url.removeprefix("http://")
    r = await app.client.post(
        "/v1/chat/completions", json=chat("box/remote-m"), headers=client_auth
    )
    body = await r.json()
    assert body["model"] == "remote-m"
    assert body["choices"][0]["message"]["content"] == "hello from peer-box"
    r = await app.client.post(
        "/v1/chat/completions",
        json=chat("remote-m", stream=True),
        headers=client_auth,
    )
    assert r.headers["X-Accel-Buffering"] == "no"
    assert sse_events(await r.read())[-1] == "[DONE]"
    r = await app.client.get(
        "/upstream/box/remote-m/some/path?q=1", headers=client_auth
    )
    got = await r.json()
    assert (got["server_model"], got["path"]) == ("peer-box", "/some/path?q=1")
    assert got["headers"]["authorization"] == "Bearer k"
    # Peers are never blocked by upstream.ignorePaths.
    r = await app.client.get("/upstream/box/remote-m/app.js", headers=client_auth)
    assert (await r.json())["path"] == "/app.js"
    r = await app.client.get("/v1/models", headers={"x-api-key": "client-key"})
    records = {m["id"]: m for m in (await r.json())["data"]}
    peer = records["box/remote-m"]
    assert peer["name"] == "box: remote-m"
    assert peer["meta"] == {"llamaswap": {"type": "peer", "peerID": "box"}}
    assert peer["status"] == {"value": "unloaded"}
    # Nothing local was ever started.
    assert log.events == []
    assert app.running() == []


async def test_unreachable_peer_is_a_502_naming_it(apps: Apps) -> None:
    closed = port_block(1)  # nothing listens there
    app = await apps.start(f"""
models:
  loc:
    cmd: {fake_cmd("loc")}
peers:
  box:
    proxy: "http://127.0.0.1:{closed}"
    models: [remote-m]
""")
    r = await app.client.post("/v1/chat/completions", json=chat("box/remote-m"))
    status, message = await error_of(r)
    assert status == 502
    assert message.startswith("peer proxy error: peer box")
    assert app.running() == []


# -- API keys --------------------------------------------------------------------------


async def test_api_keys(apps: Apps) -> None:
    app = await apps.start(f"""
apiKeys: [s3cret, other]
models:
  a:
    cmd: {fake_cmd("a")}
""")
    c = app.client
    assert (await c.get("/health")).status == 200  # open
    assert (await c.get("/", allow_redirects=False)).status == 302  # open
    for headers in ({}, {"Authorization": "Bearer nope"}, {"x-api-key": "s3cre"}):
        r = await c.get("/v1/models", headers=headers)
        assert await error_of(r) == (401, "unauthorized: invalid or missing API key")
        assert r.headers["WWW-Authenticate"] == 'Basic realm="swapvisor"'
    assert (await c.get("/api/profiles")).status == 401
    assert (await c.get("/upstream/a/x")).status == 401
    r = await c.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 401
    assert app.running() == []  # an unauthorised request starts nothing

    def basic(user: str, key: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    good = [
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Bearer other"},
        {"x-api-key": "s3cret"},
        basic("anyone", "s3cret"),
    ]
    for headers in good:
        assert (await c.get("/v1/models", headers=headers)).status == 200
        got = await echo(app, "a", headers=headers)
        assert "authorization" not in got["headers"]  # not the upstream's business
        assert "x-api-key" not in got["headers"]
        r = await c.get("/upstream/a/x", headers=headers)
        forwarded = (await r.json())["headers"]
        assert "authorization" not in forwarded and "x-api-key" not in forwarded
    assert (await c.get("/v1/models", headers=basic("u", "wrong"))).status == 401


# -- profiles --------------------------------------------------------------------------

PROFILES = f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
profiles:
  fast:
    description: quick ones
    pins: {{chat: b, a: ""}}
  slow:
    pins: {{chat: a}}
"""


async def test_profiles_api(apps: Apps) -> None:
    app = await apps.start(PROFILES)
    c = app.client
    r = await c.get("/api/profiles")
    assert await r.json() == {
        "active": None,
        "profiles": [
            {"id": "fast", "description": "quick ones", "pins": {"chat": "b", "a": ""}},
            {"id": "slow", "description": "", "pins": {"chat": "a"}},
        ],
    }
    put = "/api/profiles/active"
    r = await c.put(put, data=b"{nope", headers={"Content-Type": "application/json"})
    assert await error_of(r) == (400, "invalid profile request")
    assert await error_of(await c.put(put, json={})) == (
        400,
        "profile name is required",
    )
    assert await error_of(await c.put(put, json={"name": 5})) == (
        400,
        "profile name must be a string or null",
    )
    assert await error_of(await c.put(put, json={"name": "nope"})) == (
        404,
        'profile "nope" not found',
    )
    r = await c.put(put, json={"name": "fast"})
    assert (r.status, await r.json()) == (200, {"active": "fast"})
    assert (await (await c.get("/api/profiles")).json())["active"] == "fast"
    r = await c.put(put, json={"name": None})
    assert (r.status, await r.json()) == (200, {"active": None})


async def test_profile_pins_rewrite_requests(apps: Apps) -> None:
    app = await apps.start(PROFILES)
    c = app.client
    r = await c.post("/v1/chat/completions", json=chat("chat"))
    assert r.status == 404  # no profile active: "chat" is no model
    ids = [m["id"] for m in (await (await c.get("/v1/models")).json())["data"]]
    assert ids == ["a", "b"]

    await c.put("/api/profiles/active", json={"name": "fast"})
    assert await app.reply("chat") == "hello from b"
    got = await echo(app, "chat")
    assert (got["server_model"], got["json_model"]) == ("b", "b")  # rewritten
    # An empty pin disables the name, even a real model's id.
    r = await c.post("/v1/chat/completions", json=chat("a"))
    status, message = await error_of(r)
    assert status == 400 and "disabled by the active profile" in message
    assert app.state("a") == "stopped"
    # /upstream/<pin>/... rewrites the path.
    r = await c.get("/upstream/chat/x?y=1")
    got = await r.json()
    assert (got["server_model"], got["path"]) == ("b", "/x?y=1")
    records = {m["id"]: m for m in (await (await c.get("/v1/models")).json())["data"]}
    assert list(records) == ["a", "b", "chat"]
    pin = records["chat"]
    assert pin["meta"] == {"llamaswap": {"type": "profile"}}
    assert pin["status"] == {"value": "unloaded"} and "name" not in pin

    await c.put("/api/profiles/active", json={"name": "slow"})
    assert await app.reply("chat") == "hello from a"
    assert await app.reply("a") == "hello from a"


async def test_profile_pins_may_target_selectors_peers_and_by_id_aliases(
    apps: Apps,
) -> None:
    peer_url, _ = await apps.fake_server("peer-box")
    app = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
    filters:
      setParamsByID:
        "a:think": {{think: true}}
peers:
  box:
    proxy: "{peer_url}"
    models: [remote-m]
selectors:
  sel: {{strategy: pin, targets: ["a:think"]}}
profiles:
  p:
    pins: {{via-selector: sel, remote: box/remote-m, thinking: "a:think"}}
""")
    await app.client.put("/api/profiles/active", json={"name": "p"})
    for name in ("via-selector", "thinking"):
        got = await echo(app, name)
        assert got["server_model"] == "a"
        # The requested id after the rewrite picks the setParamsByID entry.
        assert got["json_body"] == {"model": "a:think", "think": True}
    got = await echo(app, "remote")
    assert (got["server_model"], got["json_model"]) == ("peer-box", "remote-m")


# -- selectors -------------------------------------------------------------------------


async def test_selectors_pin_warm_and_spillover(apps: Apps) -> None:
    app = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
  s1:
    cmd: {fake_cmd("s1")}
  s2:
    cmd: {fake_cmd("s2")}
routing:
  router:
    settings:
      groups:
        pool: {{swap: false, exclusive: false, members: [s1, s2]}}
selectors:
  pinned: {{strategy: pin, targets: [b, a]}}
  warmest: {{strategy: warm, targets: [a, b], name: Warmest}}
  spread: {{strategy: spillover, targets: [s1, s2], settings: {{spillover: 1}}}}
""")
    assert await app.reply("warmest") == "hello from a"  # all cold: the first
    assert await app.reply("pinned") == "hello from b"  # always the first target
    assert app.running() == ["b"]
    assert await app.reply("warmest") == "hello from b"  # the ready one
    assert app.running() == ["b"]
    # spillover: a second request while the first holds s1 goes to s2.
    first = asyncio.create_task(app.reply("spread", fake_delay=1))
    await wait_until(lambda: app.state("s1") != "stopped")
    assert await app.reply("spread") == "hello from s2"
    assert await first == "hello from s1"
    assert app.running() == ["b", "s1", "s2"]
    records = {
        m["id"]: m for m in (await (await app.client.get("/v1/models")).json())["data"]
    }
    assert records["pinned"]["meta"]["llamaswap"] == {
        "type": "selector",
        "strategy": "pin",
        "targets": ["b", "a"],
    }
    assert records["pinned"]["status"] == {"value": "loaded"}
    assert records["warmest"]["name"] == "Warmest"
    assert records["spread"]["meta"]["llamaswap"]["spillover"] == 1
    r = await app.client.get("/upstream/pinned/x")
    assert r.status == 404  # selectors are not supported on /upstream


async def test_warm_selector_joins_a_starting_target(apps: Apps) -> None:
    app = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b", "--health-delay", "0.5")}
selectors:
  warmest: {{strategy: warm, targets: [a, b]}}
""")
    log = StateLog.attach(app.router)
    loading = asyncio.create_task(app.reply("b"))
    await wait_until(lambda: app.state("b") == "starting")
    assert await app.reply("warmest") == "hello from b"  # not the cold a
    assert await loading == "hello from b"
    assert log.entered("starting") == ["b"]


# -- sendLoadingState ------------------------------------------------------------------

LOADING = f"""
sendLoadingState: true
models:
  slow:
    cmd: {fake_cmd("slow", "--health-delay", "1")}
  broken:
    cmd: {fake_cmd("broken", "--exit-on-start", "3")}
  quiet:
    cmd: {fake_cmd("quiet", "--health-delay", "0.3")}
    sendLoadingState: false
  fast:
    cmd: {fake_cmd("fast")}
"""


def reasoning(event: str) -> str | None:
    if event == "[DONE]":
        return None
    choices = json.loads(event).get("choices") or [{}]
    delta = choices[0].get("delta", {})
    value = delta.get("reasoning_content")
    return value if isinstance(value, str) else None


async def stream_events(app: App, model: str) -> list[str]:
    r = await app.client.post("/v1/chat/completions", json=chat(model, stream=True))
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    return sse_events(await r.read())


async def test_loading_state_streams_progress_then_the_answer(apps: Apps) -> None:
    app = await apps.start(LOADING)
    events = await stream_events(app, "slow")
    texts = [reasoning(e) for e in events]
    done = next(i for i, t in enumerate(texts) if t and "Done!" in t)
    block = texts[: done + 1]
    assert all(t is not None for t in block)
    assert block[0] is not None and block[0].startswith("━━━━━\n")
    assert "loading model: slow" in block[0]
    assert re.fullmatch(r"\nDone! \(\d+\.\d\ds\)\n━━━━━\n ", block[-1] or "")
    rest = events[done + 1 :]
    assert rest[-1] == "[DONE]"
    answer = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or ""
        for e in rest[:-1]
        if json.loads(e)["choices"]
    )
    assert answer == "hello from slow"
    # Ready now: no loading block, the upstream's own stream only.
    events = await stream_events(app, "slow")
    assert all(reasoning(e) is None for e in events)
    assert events[-1] == "[DONE]"
    # A per-model sendLoadingState: false wins over the global true.
    events = await stream_events(app, "quiet")
    assert all(reasoning(e) is None for e in events)


async def test_loading_state_shows_the_queue_position(apps: Apps) -> None:
    app = await apps.start(LOADING)
    await app.reply("quiet")

    async def hold_quiet() -> None:
        long = chat("quiet", stream=True, fake_chunks=200, fake_chunk_delay=0.05)
        async with app.client.post("/v1/chat/completions", json=long) as r:
            await r.read()

    busy = asyncio.create_task(hold_quiet())
    await wait_until(lambda: app.upstream("quiet").in_flight == 1)
    r = await app.client.post("/v1/chat/completions", json=chat("fast", stream=True))
    seen: list[str | None] = []
    async with asyncio.timeout(10):
        while "\nQueue position: #1 " not in seen:  # fast waits behind quiet
            event = await r.content.readuntil(b"\n\n")
            seen.append(reasoning(event.decode().removeprefix("data: ").rstrip()))
    assert app.state("fast") == "stopped"
    busy.cancel()  # quiet's client leaves: quiet drains and fast loads
    with contextlib.suppress(asyncio.CancelledError):
        await busy
    events = sse_events(await r.read())
    assert any("Done!" in (reasoning(e) or "") for e in events)
    assert events[-1] == "[DONE]"
    assert app.running() == ["fast"]


async def test_loading_state_carries_an_upstream_error_as_an_sse_event(
    apps: Apps,
) -> None:
    app = await apps.start(LOADING)
    r = await app.client.post(
        "/v1/chat/completions", json=chat("fast", stream=True, fake_status=400)
    )
    assert r.status == 200  # the loading stream had begun
    events = sse_events(await r.read())
    assert "Done!" in (reasoning(events[-2]) or "")
    error = json.loads(events[-1])["error"]
    assert error["message"].startswith("upstream answered 400: ")
    assert "fake error" in error["message"]


async def test_concurrency_limit_is_decided_before_the_loading_stream(
    apps: Apps,
) -> None:
    app = await apps.start(
        LOADING
        + f"  limited:\n    cmd: {fake_cmd('limited', '--health-delay', '0.5')}\n"
        + "    concurrencyLimit: 1\n"
    )
    first = await app.client.post(
        "/v1/chat/completions", json=chat("limited", stream=True)
    )
    assert reasoning((await first.content.readuntil(b"\n\n")).decode()[6:-2])
    r = await app.client.post("/v1/chat/completions", json=chat("limited", stream=True))
    assert r.status == 429  # a plain JSON error, not a loading stream
    assert r.headers["Content-Type"].startswith("application/json")
    assert (await r.json())["error"]["code"] == "concurrency_limit"
    assert sse_events(await first.read())[-1] == "[DONE]"


async def test_loading_state_start_failure_ends_with_an_sse_error(apps: Apps) -> None:
    app = await apps.start(LOADING)
    events = await stream_events(app, "broken")  # every event well-formed
    assert "loading model: broken" in (reasoning(events[0]) or "")
    assert "Failed." in (reasoning(events[-2]) or "")
    error = json.loads(events[-1])["error"]
    assert "broken" in error["message"] and "exited" in error["message"]
    assert "[DONE]" not in events


# -- /v1/models records ----------------------------------------------------------------


async def test_model_list_aliases_capabilities_and_metadata(apps: Apps) -> None:
    app = await apps.start(f"""
includeAliasesInList: true
models:
  qwen:
    cmd: {fake_cmd("qwen")}
    name: Qwen
    aliases: [q]
    metadata: {{family: qwen, type: overridden, architecture: dropped}}
    capabilities: {{in: [text, image], out: [text], tools: true, context: 32768}}
  plain:
    cmd: {fake_cmd("plain")}
    metadata: {{architecture: kept, nested: {{list: [1, 2]}}}}
  ears:
    cmd: {fake_cmd("ears")}
    capabilities: {{in: [audio], out: [text], reranker: true}}
""")
    await app.reply("q")

    async def records() -> dict[str, dict[str, Any]]:
        data = (await (await app.client.get("/v1/models")).json())["data"]
        for record in data:
            assert isinstance(record.pop("created"), int)
        return {m["id"]: m for m in data}

    got = await records()
    assert list(got) == ["ears", "plain", "q", "qwen"]
    qwen = {
        "id": "qwen",
        "object": "model",
        "owned_by": "swapvisor",
        "name": "Qwen",
        "architecture": {
            "input_modalities": ["text", "image"],
            "output_modalities": ["text"],
            "modality": "text+image->text",
        },
        "capabilities": {"vision": True, "function_calling": True},
        "supported_parameters": ["tools", "tool_choice"],
        "context_length": 32768,
        "meta": {
            "llamaswap": {"family": "qwen", "type": "model", "aliases": ["q"]},
            "n_ctx": 32768,
        },
        "status": {"value": "loaded"},
    }
    assert got["qwen"] == qwen
    alias_meta = {"llamaswap": {"type": "alias", "modelID": "qwen"}, "n_ctx": 32768}
    assert got["q"] == qwen | {"id": "q", "meta": alias_meta}
    assert got["plain"]["meta"] == {
        "llamaswap": {
            "architecture": "kept",
            "nested": {"list": [1, 2]},
            "type": "model",
        }
    }
    assert "architecture" not in got["plain"] and "capabilities" not in got["plain"]
    assert got["ears"]["architecture"]["modality"] == "audio->text"
    assert got["ears"]["capabilities"] == {
        "audio_transcriptions": True,
        "reranker": True,
    }
    assert "supported_parameters" not in got["ears"]
    assert "context_length" not in got["ears"]


# -- /upstream: ignorePaths and websockets ----------------------------------------------


async def test_ignore_paths_never_load_a_model(apps: Apps) -> None:
    app = await apps.start(f"models:\n  a:\n    cmd: {fake_cmd('a')}\n")
    log = StateLog.attach(app.router)
    for path in ("/upstream/a/app.js", "/upstream/a/static/site.css?v=2"):
        r = await app.client.get(path)
        assert await error_of(r) == (
            409,
            "model a is not loaded; path matches upstream.ignorePaths",
        )
    assert log.events == [] and app.state("a") == "stopped"
    r = await app.client.get("/upstream/a/")  # the UI's "load" button
    assert (await r.json())["path"] == "/"
    assert app.state("a") == "ready"
    r = await app.client.get("/upstream/a/app.js")  # served once loaded
    assert (await r.json())["path"] == "/app.js"


async def test_custom_ignore_paths_replace_the_default(apps: Apps) -> None:
    app = await apps.start(
        f"upstream:\n  ignorePaths: ['^/static/']\nmodels:\n  a:\n    cmd: {fake_cmd('a')}\n"
    )
    r = await app.client.get("/upstream/a/static/x")
    assert r.status == 409 and app.state("a") == "stopped"
    r = await app.client.get("/upstream/a/app.js")
    assert (await r.json())["path"] == "/app.js"
    assert app.state("a") == "ready"


async def test_websocket_relay_through_upstream(apps: Apps) -> None:
    app = await apps.start(f"models:\n  echo:\n    cmd: {ws_cmd()}\n")
    async with app.client.ws_connect("/upstream/echo/ws?room=1") as ws:
        assert app.state("echo") == "ready"  # the upgrade loaded the model
        assert app.upstream("echo").in_flight == 1  # held for the session
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01\xff")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01\xff"
        await ws.send_str("path?")
        assert await ws.receive_str(timeout=5) == "/ws?room=1"
    await wait_until(lambda: app.upstream("echo").in_flight == 0)


async def test_ignored_websockets_never_load_and_never_count(apps: Apps) -> None:
    app = await apps.start(f"""
models:
  echo:
    cmd: {ws_cmd()}
    compat: {{ignoreWebsockets: true}}
""")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await app.client.ws_connect("/upstream/echo/ws")
    assert info.value.status == 409
    assert app.state("echo") == "stopped"
    r = await app.client.get("/upstream/echo/health")  # plain HTTP loads it
    assert (r.status, await r.text()) == (200, "ok")
    async with app.client.ws_connect("/upstream/echo/ws") as ws:
        await ws.send_str("still here")
        assert await ws.receive_str(timeout=5) == "still here"
        assert app.upstream("echo").in_flight == 0  # not counted


# -- timeouts and hooks ----------------------------------------------------------------


async def test_response_header_timeout_is_a_502(apps: Apps) -> None:
    app = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a")}
    timeouts: {{responseHeader: 1}}
""")
    assert await app.reply("a") == "hello from a"
    began = time.monotonic()
    r = await app.client.post("/v1/chat/completions", json=chat("a", fake_delay=3))
    elapsed = time.monotonic() - began
    status, message = await error_of(r)
    assert status == 502
    assert "sent no response headers within 1 s" in message
    assert elapsed < 2.9  # did not wait for the upstream's 3 s
    assert await app.reply("a") == "hello from a"  # the model still serves


async def test_preload_starts_models_at_startup(apps: Apps) -> None:
    app = await apps.start(f"""
hooks:
  on_startup:
    preload: [" a ", bee]
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
    aliases: [bee]
  c:
    cmd: {fake_cmd("c")}
routing:
  router:
    settings:
      groups:
        pair: {{swap: false, members: [a, b]}}
""")
    await wait_until(lambda: app.ready() == ["a", "b"])
    assert app.state("c") == "stopped"
