"""The data path: routing by model, rewrites, byte-exact pass-through, unbuffered
SSE, /upstream, and the model-list and housekeeping endpoints."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

import aiohttp

from tests.conftest import fake_cmd
from tests.harness import chat

if TYPE_CHECKING:
    from tests.harness import Apps

CFG = f"""
models:
  a:
    cmd: {fake_cmd("a")}
    aliases: [gpt-4o, "org/alpha"]
    name: " Model A "
    description: the first
  b:
    cmd: {fake_cmd("b")}
    useModelName: upstream-b
  hidden:
    cmd: {fake_cmd("hidden")}
    unlisted: true
"""


async def test_body_is_forwarded_byte_for_byte(apps: Apps) -> None:
    sv = await apps.start(CFG)
    raw = b'{"model":"a",  "input": "caf\\u00e9",\n "x": [1,2]}'
    r = await sv.client.post(
        "/v1/responses", data=raw, headers={"Content-Type": "application/json"}
    )
    echo = await r.json()
    assert echo["body"] == raw.decode()
    assert echo["path"] == "/v1/responses"
    assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"


async def test_alias_routes_and_use_model_name_rewrites(apps: Apps) -> None:
    sv = await apps.start(CFG)
    r = await sv.client.post("/v1/chat/completions", json=chat("gpt-4o"))
    assert (await r.json())["model"] == "gpt-4o"  # aliases are not rewritten
    r = await sv.client.post("/v1/chat/completions", json=chat("b"))
    assert (await r.json())["model"] == "upstream-b"


async def test_response_bytes_and_headers_pass_through(apps: Apps) -> None:
    sv = await apps.start(CFG)
    direct_port = sv.router.upstreams["a"].base_url
    r = await sv.client.post("/v1/embeddings", json={"model": "a", "input": "x"})
    through = await r.read()
    async with aiohttp.ClientSession() as s:
        d = await s.post(
            direct_port + "/v1/embeddings", json={"model": "a", "input": "x"}
        )
        direct = await d.read()
    assert through == direct
    assert r.headers["Content-Length"] == str(len(direct))
    assert r.headers["Server"].startswith("fake-upstream")


async def test_sse_streams_unbuffered(apps: Apps) -> None:
    sv = await apps.start(CFG)
    began = time.monotonic()
    r = await sv.client.post(
        "/v1/chat/completions",
        json=chat("a", stream=True, fake_chunks=5, fake_chunk_delay=0.3),
    )
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Accel-Buffering"] == "no"
    first = await r.content.readuntil(b"\n\n")
    first_at = time.monotonic() - began
    rest = await r.read()
    total = time.monotonic() - began
    assert first.startswith(b"data: ")
    assert total >= 1.2  # five chunks, 0.3 s apart
    assert first_at < total - 0.9  # the first chunk did not wait for the rest
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert rest.count(b'"content": "x"') == 5


async def test_model_from_multipart_and_rewritten_there(apps: Apps) -> None:
    sv = await apps.start(CFG)
    form = aiohttp.FormData()
    form.add_field(
        "file", b"\x00\x01RIFF-not-really", filename="a.wav", content_type="audio/wav"
    )
    form.add_field("model", "b")
    r = await sv.client.post("/v1/audio/transcriptions", data=form)
    assert r.status == 200
    assert (await r.json())["text"] == ("transcribed a.wav (17 bytes) by upstream-b")


async def test_get_endpoints_take_the_model_from_the_query(apps: Apps) -> None:
    sv = await apps.start(CFG)
    r = await sv.client.get("/props", params={"model": "org/alpha", "x": "1"})
    body = await r.json()
    assert body["model"] == "a"
    assert body["query"] == {"model": "org/alpha", "x": "1"}
    r = await sv.client.get("/v1/audio/voices", params={"model": "b"})
    assert (await r.json())["query"]["model"] == "upstream-b"


async def test_versionless_and_audioapi_prefixes_are_stripped(
    apps: Apps,
) -> None:
    sv = await apps.start(CFG)
    r = await sv.client.post("/v/rerank", json={"model": "a"})
    assert (await r.json())["path"] == "/rerank"
    r = await sv.client.post("/audioapi/v1/tasks/run", json={"model": "a"})
    assert (await r.json())["path"] == "/v1/tasks/run"
    r = await sv.client.post("/v/chat/completions", json=chat("a"))
    assert (await r.json())["path"] == "/chat/completions"


async def test_upstream_passthrough(apps: Apps) -> None:
    sv = await apps.start(CFG)
    r = await sv.client.get("/upstream/a", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (301, "/upstream/a/")
    r = await sv.client.post("/upstream/a?q=1", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (308, "/upstream/a/?q=1")
    r = await sv.client.get("/upstream/org/alpha/some%2Fpage?x=1")
    echo = await r.json()
    assert (echo["server_model"], echo["path"]) == ("a", "/some%2Fpage?x=1")
    r = await sv.client.post("/upstream/b/raw", data=b"untouched body")
    echo = await r.json()
    assert (echo["server_model"], echo["body"]) == ("b", "untouched body")
    r = await sv.client.get("/upstream/zzz/x")
    assert r.status == 404


async def test_models_list_has_llama_swap_shape(apps: Apps) -> None:
    sv = await apps.start(CFG)
    await sv.client.post("/v1/chat/completions", json=chat("a"))
    r = await sv.client.get("/v1/models", headers={"Origin": "http://ui.local"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://ui.local"
    body = await r.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert list(by_id) == ["a", "b"]  # sorted, unlisted omitted
    a = by_id["a"]
    assert (a["object"], a["owned_by"], a["name"]) == ("model", "swapvisor", "Model A")
    assert a["description"] == "the first"
    assert a["status"] == {"value": "loaded"}
    assert a["meta"]["llamaswap"] == {
        "type": "model",
        "aliases": ["gpt-4o", "org/alpha"],
    }
    assert by_id["b"]["status"] == {"value": "unloaded"}
    assert "name" not in by_id["b"]
    assert (await (await sv.client.get("/models")).json()) == body | {
        "data": (await (await sv.client.get("/models")).json())["data"]
    }


async def test_health_and_root(apps: Apps) -> None:
    sv = await apps.start(CFG)
    r = await sv.client.get("/health")
    assert (r.status, await r.text()) == (200, "OK")
    r = await sv.client.get("/", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, "/ui")


async def test_api_keys_guard_everything_but_health(apps: Apps) -> None:
    sv = await apps.start('apiKeys: ["s3cret"]\n' + CFG)
    assert (await sv.client.get("/health")).status == 200
    r = await sv.client.get("/v1/models")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="swapvisor"'
    assert "invalid or missing API key" in (await r.json())["error"]["message"]
    bearer = {"Authorization": "Bearer s3cret"}
    assert (await sv.client.get("/v1/models", headers=bearer)).status == 200
    assert (
        await sv.client.get("/v1/models", headers={"x-api-key": "s3cret"})
    ).status == 200
    basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    assert (
        await sv.client.get("/v1/models", headers={"Authorization": basic})
    ).status == 200
    wrong = {"Authorization": "Bearer nope"}
    assert (await sv.client.get("/v1/models", headers=wrong)).status == 401
    r = await sv.client.post("/v1/messages", json={"model": "a"}, headers={})
    assert (await r.json())["error"]["type"] == "authentication_error"
    r = await sv.client.post("/v1/responses", json={"model": "a"}, headers=bearer)
    echo = json.loads(await r.read())
    assert echo["server_model"] == "a"
    assert "authorization" not in echo["headers"]  # our key stays with us
    r = await sv.client.get("/upstream/a/x", headers={"x-api-key": "s3cret"})
    assert "x-api-key" not in (await r.json())["headers"]
