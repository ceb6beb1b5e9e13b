"""Failures once a response has started: the status is gone, so the stream
ends well-formed (an SSE error event, never a second HTTP response inside the
body), and a client that has left costs one log line, not a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from backends.native import NativeBackend
from controller.config.loader import parse_config
from controller.http.app import create_app
from controller.http.keys import OBSERVER
from tests.conftest import fake_cmd, wait_until
from tests.harness import chat, sse_events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.harness import Apps

# Both models load for a moment, so a streaming chat gets the loading block.
LOADING = f"""
sendLoadingState: true
models:
  late:
    cmd: {fake_cmd("late", "--health-delay", "0.3")}
    timeouts: {{responseHeader: 1}}
  dies:
    cmd: {fake_cmd("dies", "--health-delay", "0.3", "--crash-after", "1")}
"""


def reasoning(event: str) -> str:
    delta = json.loads(event)["choices"][0]["delta"]
    return str(delta["reasoning_content"])


async def loading_then_error(apps: Apps, model: str, **extra: object) -> str:
    """Stream a chat that fails after the load; the error event's message."""
    app = await apps.start(LOADING)
    async with asyncio.timeout(15):
        r = await app.client.post(
            "/v1/chat/completions", json=chat(model, stream=True, **extra)
        )
        raw = await r.read()
    assert r.status == 200  # the loading stream had begun
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert b"HTTP/1.1" not in raw, raw
    events = sse_events(raw)  # every event well-formed, the body ends cleanly
    assert f"loading model: {model}" in reasoning(events[0])
    assert "Done!" in reasoning(events[-2])
    assert "[DONE]" not in events
    error = json.loads(events[-1])
    assert (error["src"], error["error"]["code"]) == ("swapvisor", "upstream_error")
    return str(error["error"]["message"])


async def test_started_header_timeout_ends_the_loading_stream(apps: Apps) -> None:
    message = await loading_then_error(apps, "late", fake_delay=3)
    assert message.endswith("sent no response headers within 1 s")


async def test_started_connection_dropped_before_headers_ends_the_loading_stream(
    apps: Apps,
) -> None:
    message = await loading_then_error(apps, "dies")
    assert "did not answer" in message
    assert "exit code 7" in message


# -- a client that hangs up after data: [DONE] -------------------------------------


@pytest.fixture
async def held_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An SSE chat server that sends its last event, ``data: [DONE]``, then
    keeps the stream open until the event is set: (its URL, the event)."""
    release = asyncio.Event()

    async def chat_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
        await release.wait()
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat_stream)
    server = TestServer(upstream, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")), release
    release.set()
    await server.close()


@pytest.mark.parametrize("cancel", [False, True], ids=["no-cancel", "cancel"])
async def test_started_client_leaving_after_done_is_one_log_line(
    held_upstream: tuple[str, asyncio.Event],
    caplog: pytest.LogCaptureFixture,
    cancel: bool,
) -> None:
    url, release = held_upstream
    caplog.set_level(logging.DEBUG)
    config = parse_config(f"peers:\n  box:\n    proxy: {url}\n    models: [m]\n")
    app = create_app(config.config, NativeBackend())
    # aiohttp's default keeps the handler running after the client has gone
    # (swapvisor's command line cancels it): the proxy then ends a stream
    # whose client has left.
    runner = web.AppRunner(app, handler_cancellation=cancel)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        body = json.dumps(chat("m", stream=True)).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        async with asyncio.timeout(10):
            await reader.readuntil(b"data: [DONE]\n\n")
        assert app[OBSERVER].in_flight  # the stream is still open
        writer.close()
        await writer.wait_closed()
        server = runner.server
        assert server is not None
        # The server has seen the client go (its handler may still run).
        await wait_until(lambda: all(c.transport is None for c in server.connections))
        release.set()  # the upstream ends: swapvisor ends a stream nobody reads
        await wait_until(lambda: not app[OBSERVER].in_flight)
    finally:
        await runner.cleanup()
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "swapvisor"))]
    failures = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert failures == [], [r.getMessage() for r in failures]
    left = [r.getMessage() for r in records if "client left" in r.getMessage()]
    line = "POST /v1/chat/completions: the client left before the response ended"
    assert left == ([] if cancel else [line])
