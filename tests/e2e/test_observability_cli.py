"""Observability of swapvisor run as ``python -m controller``: what reaches its
stdout for each ``logToStdout``, ``logTimeFormat`` on its own lines, the log
and event streams over real HTTP (and that they end when it shuts down), and
``/metrics`` after real traffic (llama-swap.md §5.1, §5.3, §5.6)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from tests.conftest import Swapvisor

pytestmark = pytest.mark.e2e

REQ = "request POST /v1/chat/completions"
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def post_chat(http: aiohttp.ClientSession, sv: Swapvisor, model: str) -> None:
    async with http.post(f"{sv.url}/v1/chat/completions", json=chat(model)) as r:
        assert r.status == 200, await r.text()


async def test_cli_proxy_lines_on_stdout_with_rfc3339(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes({"a": {}}, logTimeFormat="rfc3339")  # logToStdout: proxy
    await post_chat(http, sv, "a")
    wait_until_sync(lambda: "a ready in " in sv.output(), 5)
    out = sv.output()
    listening = re.search(
        rf"^({RFC3339}) \[INFO\] swapvisor listening on http://127\.0\.0\.1:{sv.port}$",
        out,
        re.MULTILINE,
    )
    assert listening, out
    assert re.search(rf"^{RFC3339} \[INFO\] a ready in ", out, re.MULTILINE), out
    assert REQ not in out and "fake-upstream listening" not in out
    # GET /logs is what went to stdout; the upstream's lines are in its own log.
    async with http.get(f"{sv.url}/logs") as r:
        logs = await r.text()
    assert "swapvisor listening on" in logs and REQ not in logs
    async with http.get(f"{sv.url}/logs/stream/a") as r:
        tail = await r.content.readuntil(REQ.encode())
    assert b"fake-upstream listening" in tail


async def test_cli_upstream_lines_only_on_stdout(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes({"a": {}}, logToStdout="upstream")
    await post_chat(http, sv, "a")
    wait_until_sync(lambda: REQ in sv.output(), 5)
    out = sv.output()
    assert "fake-upstream listening on" in out
    assert "[INFO]" not in out
    async with http.get(f"{sv.url}/logs/stream/proxy") as r:
        proxy = await r.content.readuntil(b"a ready in ")
    assert b"[INFO] swapvisor listening on" in proxy


async def test_cli_log_to_stdout_none(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes({"a": {}}, logToStdout="none")
    await post_chat(http, sv, "a")
    async with http.get(f"{sv.url}/logs") as r:
        assert await r.text() == ""
    async with http.get(f"{sv.url}/logs/stream/upstream") as r:
        assert REQ.encode() in await r.content.readuntil(REQ.encode())
    assert sv.output() == ""


async def test_cli_metrics_after_real_traffic(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes({"a": {}, "b": {}})
    for model in ("a", "a", "b"):
        await post_chat(http, sv, model)
    async with http.get(f"{sv.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    requests = "swapvisor_requests_total"
    assert samples[(requests, (("model", "a"), ("status", "200")))] == 2
    assert samples[(requests, (("model", "b"), ("status", "200")))] == 1
    evicted = (("model", "a"), ("reason", "swap"))
    assert samples[("swapvisor_evictions_total", evicted)] == 1
    assert samples[("swapvisor_model_state", (("model", "b"), ("state", "ready")))] == 1


async def test_cli_streams_end_promptly_on_shutdown(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    """An open UI (events) and a log tail must not hold up SIGTERM: llama-swap
    closes its streams on shutdown and the clients reconnect."""
    sv = start_fakes({"a": {}})
    await post_chat(http, sv, "a")
    events = await http.get(f"{sv.url}/api/events")
    logs = await http.get(f"{sv.url}/logs/stream")
    first = await events.content.readuntil(b"\n\n")
    assert first.startswith(b"event:message\ndata:")
    assert json.loads(first.split(b"data:", 1)[1])["type"] == "logData"
    await logs.content.readany()

    began = time.monotonic()
    sv.proc.terminate()
    async with asyncio.timeout(8):
        rest_events = await events.read()
        await logs.read()
    await wait_until(lambda: sv.proc.poll() is not None, 8)
    took = time.monotonic() - began
    assert sv.proc.returncode == 0
    assert took < 5, f"shutdown took {took:.1f} s with streams open"
    assert rest_events.endswith(b"\n\n") or rest_events == b""
    assert "shutdown complete" in sv.output()
