"""Every error a client can meet, provoked for real, in the client's own shape."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.conftest import fake_cmd
from tests.harness import chat

if TYPE_CHECKING:
    from tests.harness import Apps

ONE = f"""
models:
  a:
    cmd: {fake_cmd("a")}
    aliases: [alpha]
  hidden:
    cmd: {fake_cmd("hidden")}
    unlisted: true
"""


async def test_invalid_json_is_400(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/chat/completions",
        data=b'{"model": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 400
    body = await r.json()
    assert body["src"] == "swapvisor"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("invalid JSON in request body")


async def test_missing_model_is_400(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post("/v1/chat/completions", json={"messages": []})
    assert r.status == 400
    assert "'model' field" in (await r.json())["error"]["message"]
    r = await sv.client.get("/props")
    assert r.status == 400
    assert "?model=" in (await r.json())["error"]["message"]


async def test_unknown_model_is_404_listing_the_listed_ids(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post("/v1/chat/completions", json=chat("nope"))
    assert r.status == 404
    error = (await r.json())["error"]
    assert error["message"] == "model 'nope' not found; available models: a"
    assert (error["code"], error["param"]) == ("model_not_found", "model")


async def test_anthropic_routes_get_anthropic_errors(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": []}
    )
    assert r.status == 404
    body = await r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "available models: a" in body["error"]["message"]


async def test_text_plain_accept_gets_a_text_error(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/chat/completions", json=chat("nope"), headers={"Accept": "text/plain"}
    )
    assert r.status == 404
    assert (await r.text()).startswith("swapvisor: model 'nope' not found")


async def test_exit_while_starting_is_503_with_code_and_logs(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--exit-on-start", "3")}
""")
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 503
    assert r.headers["Retry-After"] == "1"
    error = (await r.json())["error"]
    assert error["code"] == "upstream_start_failed"
    assert "model a exited while starting (exit code 3)" in error["message"]
    assert "fatal: simulated startup failure" in error["message"]
    assert sv.state("a") == "failed"


async def test_bad_command_is_503_naming_it(apps: Apps) -> None:
    sv = await apps.start("""
models:
  a:
    cmd: /no/such/llama-server --port ${PORT}
""")
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 503
    message = (await r.json())["error"]["message"]
    assert "/no/such/llama-server" in message
    assert "No such file or directory" in message


async def test_health_deadline_is_504_and_kills_the_server(apps: Apps) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--fail-health")}
    healthCheckTimeout: 0.5
""")
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 504
    error = (await r.json())["error"]
    assert error["code"] == "health_check_timeout"
    assert "did not become healthy within 0.5 s" in error["message"]
    assert "/health" in error["message"]
    assert sv.state("a") == "failed"
    assert sv.router.upstreams["a"].last_exit is not None


async def test_hanging_health_probe_is_bounded_by_the_probe_timeout(
    apps: Apps,
) -> None:
    sv = await apps.start(f"""
models:
  a:
    cmd: {fake_cmd("a", "--hang-health")}
    healthCheckTimeout: 0.5
""")
    async with asyncio.timeout(10):
        r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 504


async def test_crash_mid_request_is_502_then_the_model_restarts(
    apps: Apps,
) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/chat/completions", json=chat("a", fake_crash_midstream=True)
    )
    assert r.status == 502
    error = (await r.json())["error"]
    assert error["code"] == "upstream_error"
    assert "exit code 9" in error["message"]
    r = await sv.client.post("/v1/chat/completions", json=chat("a"))
    assert r.status == 200


async def test_crash_mid_stream_ends_with_an_sse_error_event(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/chat/completions", json=chat("a", stream=True, fake_crash_midstream=True)
    )
    assert r.status == 200
    text = await r.text()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert '"content": "x"' in events[1] or "delta" in events[1]
    assert events[-1].startswith('data: {"error"')
    assert "upstream connection lost mid-response" in events[-1]


async def test_crash_mid_anthropic_stream_ends_with_an_error_event(
    apps: Apps,
) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post(
        "/v1/messages",
        json={
            "model": "a",
            "max_tokens": 5,
            "stream": True,
            "fake_crash_midstream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    events = [e for e in (await r.text()).split("\n\n") if e.strip()]
    assert events[-1].startswith("event: error\ndata: ")
    assert '"type": "api_error"' in events[-1]


async def test_upstream_errors_pass_through_untouched(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.post("/v1/chat/completions", json=chat("a", fake_status=418))
    assert r.status == 418
    body = await r.json()
    assert "src" not in body  # the upstream's own error, not ours
    assert body["error"]["message"] == "fake error"


async def test_unknown_path_is_404_json(apps: Apps) -> None:
    sv = await apps.start(ONE)
    r = await sv.client.get("/v1/nothing-here")
    assert r.status == 404
    assert (await r.json())["src"] == "swapvisor"
