"""Observability through the real app with real upstream processes: Prometheus
``/metrics`` after real traffic, the log streams across a swap, the
``/api/events`` feed, the activity and capture APIs, cancelling an in-flight
request, and ``/api/version``, ``/api/performance``, ``/api/hardware``
(llama-swap.md §2.5, §5.1-§5.5, §5.8).

Every app here is started with ``log_to_stdout`` (``both`` unless a test says
otherwise), so swapvisor's own log handler is installed as the command line
does; some tests add a fake NVML.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.config.loader import parse_config
from controller.errors import SRC
from controller.http.keys import EVENTS, OBSERVER, PERF
from controller.observability.events import BACKLOG, EventBus, frame
from controller.observability.gpu import NvmlProbe
from tests.conftest import PY, ROOT, fake_cmd, wait_until
from tests.fakes.fake_nvml import GIB, GPUS, FakeNvml
from tests.harness import chat

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.harness import App, Apps


INVALID_LOGGER = "invalid logger. Use 'proxy', 'upstream' or a model's ID"
READ_TIMEOUT_S = 4.0
ONE = f"""
models:
  a:
    cmd: {fake_cmd("a")}
"""
TWO = f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
"""


# -- reading what the app says ---------------------------------------------------------


@dataclass
class Samples:
    """A parsed Prometheus exposition: (sample name, labels) -> value."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # family name -> type

    @classmethod
    def parse(cls, text: str) -> Samples:
        values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for s in family.samples:
                values[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(values, families)

    def get(self, sample: str, /, **labels: str) -> float | None:
        return self.values.get((sample, frozenset(labels.items())))

    def value(self, sample: str, /, **labels: str) -> float:
        found = self.get(sample, **labels)
        assert found is not None, f"no sample {sample}{labels}"
        return found

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {lab: v for (n, lab), v in self.values.items() if n == name}


async def metrics(app: App) -> Samples:
    """GET /metrics, checking its content type; the parsed samples."""
    r = await app.client.get("/metrics")
    text = await r.text()
    assert r.status == 200, text
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Samples.parse(text)


class Tail:
    """A chunked text response read incrementally."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.text = ""
        # A chunk may end inside a multi-byte character (the drop marker's —).
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    async def read_more(self) -> None:
        chunk = await self.resp.content.readany()
        assert chunk, f"stream ended: {self.text[-500:]!r}"
        self.text += self._decoder.decode(chunk)

    async def wait_for(self, needle: str, timeout: float = READ_TIMEOUT_S) -> str:
        """Read until ``needle`` has arrived; the text so far."""
        async with asyncio.timeout(timeout):
            while needle not in self.text:
                await self.read_more()
        return self.text

    def release(self) -> None:
        self.resp.close()


class Events:
    """``/api/events`` read frame by frame, asserting llama-swap's framing."""

    PREFIX = b"event:message\ndata:"

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self._buf = b""
        self.seen: list[tuple[str, Any]] = []

    async def next(self, timeout: float = READ_TIMEOUT_S) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            while b"\n\n" not in self._buf:
                chunk = await self.resp.content.readany()
                assert chunk, "event stream ended"
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\n\n", 1)
        assert raw.startswith(self.PREFIX), raw
        envelope = json.loads(raw[len(self.PREFIX) :])
        assert set(envelope) == {"type", "data"}, envelope
        assert isinstance(envelope["data"], str), "data must be a JSON string"
        message = (envelope["type"], json.loads(envelope["data"]))
        self.seen.append(message)
        return message

    async def next_state(self, timeout: float = READ_TIMEOUT_S) -> tuple[str, Any]:
        """The next message that is not a log chunk."""
        async with asyncio.timeout(timeout):
            while True:
                kind, data = await self.next(timeout)
                if kind != "logData":
                    return kind, data

    async def until(
        self, match: Callable[[str, Any], bool], timeout: float = READ_TIMEOUT_S
    ) -> Any:
        """Read until a message matches; its data."""
        async with asyncio.timeout(timeout):
            while True:
                kind, data = await self.next(timeout)
                if match(kind, data):
                    return data

    async def logged(self, text: str) -> None:
        """Read until the log chunks seen so far contain ``text``."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            while text not in "".join(d["data"] for d in self.of("logData")):
                await self.next()

    def of(self, kind: str) -> list[Any]:
        return [d for k, d in self.seen if k == kind]


async def open_events(obs: App) -> Events:
    resp = await obs.client.get("/api/events")
    assert resp.status == 200
    return Events(resp)


def states_of(status: list[dict[str, Any]]) -> dict[str, str]:
    return {m["id"]: m["state"] for m in status}


@dataclass
class Held:
    """A streaming request kept in flight (5 s of slow pieces) until the
    client hangs up: a window that does not depend on the machine's speed."""

    obs: App
    resp: aiohttp.ClientResponse
    rid: str

    async def hang_up(self) -> None:
        self.resp.close()
        await wait_until(lambda: self.rid not in self.obs.app[OBSERVER].in_flight, 4)


async def hold(obs: App, model: str) -> Held:
    before = set(obs.app[OBSERVER].in_flight)
    resp = await obs.client.post(
        "/v1/chat/completions",
        json=chat(model, stream=True, fake_chunks=50, fake_chunk_delay=0.1),
    )
    assert resp.status == 200
    assert await resp.content.readany()
    (rid,) = set(obs.app[OBSERVER].in_flight) - before
    return Held(obs, resp, rid)


# -- /metrics --------------------------------------------------------------------------


def usage_of(body: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a chat answer, JSON or SSE text."""
    if isinstance(body, dict):
        return body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]
    for line in reversed(body.splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            usage = json.loads(line[len("data: ") :])["usage"]
            return usage["prompt_tokens"], usage["completion_tokens"]
    raise AssertionError(f"no usage in {body!r}")


async def test_metrics_count_real_traffic(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
models:
  a:
    cmd: {fake_cmd("a")}
    concurrencyLimit: 1
  b:
    cmd: {fake_cmd("b")}
  bad:
    cmd: {fake_cmd("bad", "--exit-on-start 3")}
""",
        log_to_stdout="both",
    )
    # A failed start first (nothing is running, so nothing is evicted).
    bad_status, body = await obs.chat("bad")
    assert bad_status >= 500 and "exited while starting" in body["error"]["message"]
    # Model a: two plain answers, a stream, then one held open ...
    tokens = {"a": [0, 0], "b": [0, 0]}

    def add(model: str, body: Any) -> None:
        prompt, completion = usage_of(body)
        tokens[model][0] += prompt
        tokens[model][1] += completion

    extras: list[dict[str, Any]] = [
        {},
        {"messages": [{"role": "user", "content": "one two three"}]},
        {"stream": True, "fake_chunks": 3},
    ]
    for extra in extras:
        status, body = await obs.chat("a", **extra)
        assert status == 200
        add("a", body)
    slow = await hold(obs, "a")
    # ... while that one streams: a second request to a is over its limit,
    # and one for b has to wait (a is busy, so it cannot be swapped out yet).
    status, body = await obs.chat("a")
    assert status == 429, body
    to_b = asyncio.create_task(obs.chat("b"))
    await wait_until(lambda: len(obs.runtime.router.scheduler.queued()) == 1, 3)
    during = await metrics(obs)
    assert during.value("swapvisor_queue_depth") == 1
    assert during.value("swapvisor_in_flight_requests", model="a") == 1
    await slow.hang_up()  # before its usage arrived: no tokens counted
    status, body = await to_b
    assert status == 200
    add("b", body)

    m = await metrics(obs)
    requests = {
        (dict(lab)["model"], dict(lab)["status"]): v
        for lab, v in m.labelled("swapvisor_requests_total").items()
    }
    assert requests == {
        ("a", "200"): 4,
        ("a", "429"): 1,
        ("b", "200"): 1,
        ("bad", str(bad_status)): 1,
    }
    for model, (prompt, completion) in tokens.items():
        assert m.value("swapvisor_tokens_total", model=model, kind="input") == prompt
        assert (
            m.value("swapvisor_tokens_total", model=model, kind="output") == completion
        )
        assert m.value("swapvisor_tokens_total", model=model, kind="cached") == 0
    duration = "swapvisor_request_duration_seconds_count"
    assert m.value(duration, model="a") == 5
    assert m.value(duration, model="b") == 1
    assert m.value(duration, model="bad") == 1
    ttfb = "swapvisor_time_to_first_byte_seconds_count"
    assert m.value(ttfb, model="a") == 4  # the 429 sent no upstream byte
    assert m.value(ttfb, model="b") == 1
    assert m.get(ttfb, model="bad") is None
    assert m.value("swapvisor_swap_duration_seconds_count", target="a") == 1
    assert m.value("swapvisor_swap_duration_seconds_count", target="b") == 1
    assert m.get("swapvisor_swap_duration_seconds_count", target="bad") is None
    for model in ("a", "b"):
        assert m.value("swapvisor_load_duration_seconds_count", model=model) == 1
        assert m.value("swapvisor_upstream_starts_total", model=model) == 1
    assert m.value("swapvisor_upstream_starts_total", model="bad") == 1
    assert m.value("swapvisor_upstream_start_failures_total", model="bad") == 1
    assert m.get("swapvisor_upstream_start_failures_total", model="a") is None
    assert m.get("swapvisor_load_duration_seconds_count", model="bad") is None
    evictions = m.labelled("swapvisor_evictions_total")
    assert evictions == {frozenset({("model", "a"), ("reason", "swap")}): 1}
    expected_states = {"a": "stopped", "b": "ready", "bad": "failed"}
    for model, state in expected_states.items():
        hot = {
            dict(lab)["state"]
            for lab, v in m.labelled("swapvisor_model_state").items()
            if dict(lab)["model"] == model and v == 1
        }
        assert hot == {state}, model
    assert m.value("swapvisor_queue_depth") == 0
    assert m.value("swapvisor_in_flight_requests", model="a") == 0
    assert not m.labelled("swapvisor_upstream_crashes_total")
    assert m.families["swapvisor_request_duration_seconds"] == "histogram"
    assert m.families["swapvisor_requests"] == "counter"


async def test_metrics_evictions_by_reason_and_crashes(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
models:
  u:
    cmd: {fake_cmd("u")}
  t:
    cmd: {fake_cmd("t")}
    ttl: 1
  c:
    cmd: {fake_cmd("c")}
""",
        log_to_stdout="both",
    )
    assert (await obs.chat("u"))[0] == 200
    r = await obs.client.post("/api/models/unload")
    assert r.status == 200 and await r.json() == {"msg": "ok"}
    assert obs.state("u") == "stopped"

    assert (await obs.chat("t"))[0] == 200
    await wait_until(lambda: obs.state("t") == "stopped", 4)

    status, text = await obs.chat("c", stream=True, fake_crash_midstream=True)
    assert status == 200
    assert "connection lost mid-response" in text  # said inside the stream
    await wait_until(lambda: obs.state("c") == "stopped", 4)

    m = await metrics(obs)
    evictions = {
        (dict(lab)["model"], dict(lab)["reason"]): v
        for lab, v in m.labelled("swapvisor_evictions_total").items()
    }
    assert evictions == {("u", "unload"): 1, ("t", "ttl"): 1}
    crashes = m.labelled("swapvisor_upstream_crashes_total")
    assert crashes == {frozenset({("model", "c")}): 1}
    assert m.value("swapvisor_model_state", model="c", state="stopped") == 1


async def test_metrics_model_gauges_follow_a_reload(
    apps: Apps,
) -> None:
    """After a reload the state gauges list exactly the configured models, and
    a changed model's draining old server does not overwrite its new state."""
    text = f"""
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
"""
    obs = await apps.start(text, log_to_stdout="both")
    assert (await obs.chat("a"))[0] == 200
    changed = f"""
startPort: {obs.start_port}
models:
  a:
    cmd: {fake_cmd("a", "--health-delay 0")}
  c:
    cmd: {fake_cmd("c")}
"""
    obs.runtime.reload(parse_config(changed).config)
    await wait_until(lambda: obs.state("a") == "stopped", 4)
    await wait_until(lambda: not obs.runtime.router._retiring, 4)
    m = await metrics(obs)
    states = {
        (dict(lab)["model"], dict(lab)["state"])
        for lab, v in m.labelled("swapvisor_model_state").items()
        if v == 1
    }
    assert states == {("a", "stopped"), ("c", "stopped")}
    evictions = m.labelled("swapvisor_evictions_total")
    assert evictions == {frozenset({("model", "a"), ("reason", "reload")}): 1}
    assert (await obs.chat("a"))[0] == 200
    m = await metrics(obs)
    assert m.value("swapvisor_model_state", model="a", state="ready") == 1


async def test_metrics_and_performance_disabled(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
performance:
  disabled: true
models:
  a:
    cmd: {fake_cmd("a")}
""",
        log_to_stdout="both",
    )
    r = await obs.client.get("/metrics")
    assert r.status == 503
    assert await r.text() == "# performance monitor not available\n"
    r = await obs.client.get("/api/performance")
    assert r.status == 503
    assert await r.json() == {"enabled": False}
    assert "perf sampler" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_metrics_without_nvml_have_no_gpu_series(
    apps: Apps,
) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    m = await metrics(obs)
    assert not any(n.startswith("swapvisor_gpu_") for n in m.names())
    assert m.value("swapvisor_memory_total_bytes") > 0  # host series are there
    assert m.value("swapvisor_model_state", model="a", state="stopped") == 1
    hw = await obs.json("/api/hardware")
    assert hw["accelerators"] == []
    assert "GPU metrics unavailable" not in obs.logs.proxy.history().decode()


async def test_metrics_hardware_and_performance_with_fake_nvml(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = FakeNvml()
    monkeypatch.setattr(
        NvmlProbe, "open", classmethod(lambda cls, module=None: cls(nvml))
    )
    obs = await apps.start(ONE, log_to_stdout="both")
    m = await metrics(obs)
    h100, a100 = GPUS
    labels0 = {"gpu": "0", "uuid": h100.uuid, "name": h100.name}
    labels1 = {"gpu": "1", "uuid": a100.uuid, "name": a100.name}
    assert m.value("swapvisor_gpu_utilization_percent", **labels0) == 42
    assert m.value("swapvisor_gpu_utilization_percent", **labels1) == 7
    assert m.value("swapvisor_gpu_memory_used_bytes", **labels0) == 20 * GIB
    assert m.value("swapvisor_gpu_memory_total_bytes", **labels1) == 40 * GIB
    assert m.value("swapvisor_gpu_memory_utilization_percent", **labels0) == 25
    assert m.value("swapvisor_gpu_temperature_celsius", **labels0) == 55
    assert m.value("swapvisor_gpu_vram_temperature_celsius", **labels0) == 61
    assert m.value("swapvisor_gpu_power_draw_watts", **labels1) == 61.25
    assert m.value("swapvisor_gpu_fan_speed_percent", **labels0) == 30
    # The A100 has no fan and no memory sensor: those series are left out.
    assert m.get("swapvisor_gpu_fan_speed_percent", **labels1) is None
    assert m.get("swapvisor_gpu_vram_temperature_celsius", **labels1) is None

    hw = await obs.json("/api/hardware")
    assert [
        (g["index"], g["model"], g["architecture"]) for g in hw["accelerators"]
    ] == [
        (0, h100.name, "Hopper"),
        (1, a100.name, "Ampere"),
    ]
    assert hw["accelerators"][0]["memory"] == {
        "kind": "dedicated",
        "capacity_bytes": 80 * GIB,
    }
    assert hw["accelerators"][0]["power_limit_watts"] == 700
    assert hw["accelerators"][0]["driver"] == {"name": "nvidia", "version": "550.54.15"}

    await wait_until(lambda: bool(obs.app[PERF].history()["gpu_stats"]), 4)
    perf = await obs.json("/api/performance")
    gpu = perf["gpu_stats"][0]
    assert (gpu["id"], gpu["name"], gpu["gpu_util_pct"]) == (0, h100.name, 42)
    assert gpu["mem_used_mb"] == 20 * 1024 and gpu["power_draw_w"] == 215.5
    assert perf["gpu_stats"][1]["fan_speed_pct"] is None


async def test_metrics_upstreams_relabelled(apps: Apps, tmp_path: Path) -> None:
    """A real process serving llama-server's /metrics text (python's
    http.server over a directory), and a fake whose /metrics is not
    Prometheus text: the first is relabelled, the second skipped."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "health").write_text("ok")
    shutil.copy(ROOT / "tests" / "fixtures" / "llamacpp_metrics.txt", site / "metrics")
    obs = await apps.start(
        f"""
models:
  m:
    cmd: {PY} -m http.server ${{PORT}} --bind 127.0.0.1 --directory {site}
    checkEndpoint: /health
  f:
    cmd: {fake_cmd("f")}
groups:
  both:
    swap: false
    members: [m, f]
""",
        log_to_stdout="both",
    )
    r = await obs.client.get("/metrics/upstreams")
    assert r.status == 200 and await r.text() == ""  # nothing ready yet
    r = await obs.client.get("/upstream/m/health")
    assert r.status == 200
    assert (await obs.chat("f"))[0] == 200
    assert obs.state("m") == obs.state("f") == "ready"

    r = await obs.client.get("/metrics/upstreams")
    assert r.status == 200
    got = Samples.parse(await r.text())
    own = Samples.parse((site / "metrics").read_text())
    assert got.values, "no upstream series"
    expected = {
        (name, labels | {("model", "m")}): v for (name, labels), v in own.values.items()
    }
    assert got.values == expected
    assert got.value("llamacpp:prompt_tokens_total", model="m") == 32


async def test_metrics_queue_wait_is_observed(
    apps: Apps,
) -> None:
    obs = await apps.start(TWO, log_to_stdout="both")
    slow = await hold(obs, "a")
    to_b = asyncio.create_task(obs.chat("b"))
    await wait_until(lambda: len(obs.runtime.router.scheduler.queued()) == 1, 3)
    await slow.hang_up()
    assert (await to_b)[0] == 200
    m = await metrics(obs)
    assert m.value("swapvisor_queue_wait_seconds_count", model="a") == 1
    assert m.value("swapvisor_queue_wait_seconds_count", model="b") == 1
    # b waited for a's answer to end, and then for its own start.
    assert m.value("swapvisor_queue_wait_seconds_sum", model="b") > 0


# -- logs ------------------------------------------------------------------------------


async def open_tail(obs: App, path: str) -> Tail:
    resp = await obs.client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Accel-Buffering"] == "no"
    return Tail(resp)


def in_order(text: str, *needles: str) -> bool:
    at = 0
    for needle in needles:
        found = text.find(needle, at)
        if found < 0:
            return False
        at = found + len(needle)
    return True


REQ = "request POST /v1/chat/completions"


async def test_logs_follow_upstreams_live_across_a_swap(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
models:
  a:
    cmd: {fake_cmd("a")}
    aliases: [alias-a]
  b:
    cmd: {fake_cmd("b")}
""",
        log_to_stdout="both",
    )
    upstream = await open_tail(obs, "/logs/stream/upstream")
    only_a = await open_tail(obs, "/logs/stream/a")
    only_b = await open_tail(obs, "/logs/stream/b?no-history")

    assert (await obs.chat("a"))[0] == 200
    banner_a = "fake-upstream listening on http://127.0.0.1:"
    await upstream.wait_for(REQ)
    await only_a.wait_for(REQ)
    assert in_order(upstream.text, banner_a, "model=a", REQ)
    # The alias names the same monitor; its history has what a printed.
    by_alias = await open_tail(obs, "/logs/stream/alias-a")
    await by_alias.wait_for(REQ)
    assert in_order(by_alias.text, "model=a", REQ)
    # Opened now, without history: a's earlier lines are not repeated.
    fresh_a = await open_tail(obs, "/logs/stream/a?no-history")

    assert (await obs.chat("b"))[0] == 200
    await only_b.wait_for(REQ)
    text = await _wait_count(upstream, REQ, 2)
    assert in_order(text, "model=a", REQ, "model=b", REQ)
    assert "got SIGTERM, exiting" in text
    assert in_order(only_b.text, "model=b", REQ)
    assert "model=a" not in only_b.text
    await fresh_a.wait_for("got SIGTERM, exiting")  # a stopped for the swap
    assert "model=a" not in fresh_a.text and REQ not in fresh_a.text
    await only_a.wait_for("got SIGTERM, exiting")
    assert "model=b" not in only_a.text
    for tail in (upstream, only_a, only_b, by_alias, fresh_a):
        tail.release()


async def _wait_count(tail: Tail, needle: str, n: int) -> str:
    async with asyncio.timeout(READ_TIMEOUT_S):
        while tail.text.count(needle) < n:
            await tail.read_more()
    return tail.text


async def test_logs_proxy_stream_shows_swapvisor_lines(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
logTimeFormat: rfc3339
models:
  a:
    cmd: {fake_cmd("a")}
  b:
    cmd: {fake_cmd("b")}
""",
        log_to_stdout="both",
    )
    proxy = await open_tail(obs, "/logs/stream/proxy")
    assert (await obs.chat("a"))[0] == 200
    assert (await obs.chat("b"))[0] == 200
    text = await proxy.wait_for("swap: stopping a to start b\n")
    await proxy.wait_for("b ready in ")
    line = next(ln for ln in text.splitlines() if "swap: stopping a" in ln)
    stamp, _, rest = line.partition(" ")
    assert rest == "[INFO] swap: stopping a to start b"
    # Go's time.RFC3339: 2006-01-02T15:04:05Z07:00
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", stamp), (
        stamp
    )
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None
    # The upstreams' own output is not in the proxy log.
    assert "fake-upstream listening" not in proxy.text
    proxy.release()


async def test_logs_history_html_redirect_and_unknown_logger(
    apps: Apps,
) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    assert (await obs.chat("a"))[0] == 200
    await wait_until(lambda: REQ in obs.logs.upstream.history().decode(), 4)
    r = await obs.client.get("/logs")
    assert r.status == 200 and r.content_type == "text/plain"
    history = await r.text()
    # logToStdout both: swapvisor's lines and the upstream's, in one history.
    assert "[INFO] a ready in " in history and REQ in history
    assert history == obs.stdout.getvalue()

    r = await obs.client.get(
        "/logs", headers={"Accept": "text/html"}, allow_redirects=False
    )
    assert r.status == 302 and r.headers["Location"] == "/ui/"

    for path in ("/logs/stream/nope", "/logs/stream/a/b", "/logs/stream/mux"):
        r = await obs.client.get(path)
        assert r.status == 400, path
        assert (await r.json())["error"]["message"] == INVALID_LOGGER
    r = await obs.client.get("/logs/stream/nope", headers={"Accept": "text/plain"})
    assert await r.text() == f"{SRC}: {INVALID_LOGGER}"

    combined = await open_tail(obs, "/logs/stream")
    await combined.wait_for(REQ)
    assert "[INFO] a ready in " in combined.text
    combined.release()


@pytest.mark.parametrize(
    ("mode", "proxy", "upstream"),
    [("proxy", True, False), ("upstream", False, True), ("none", False, False)],
)
async def test_logs_to_stdout_modes(
    apps: Apps, mode: str, proxy: bool, upstream: bool
) -> None:
    obs = await apps.start(ONE, log_to_stdout=mode)
    assert (await obs.chat("a"))[0] == 200
    await wait_until(lambda: REQ in obs.logs.upstream.history().decode(), 4)
    out = obs.stdout.getvalue()
    assert ("[INFO] a ready in " in out) is proxy
    assert (REQ in out) is upstream
    assert (await (await obs.client.get("/logs")).text()) == out
    # The per-source histories are kept whatever goes to stdout.
    assert "[INFO] a ready in " in obs.logs.proxy.history().decode()
    assert REQ in obs.logs.model("a").history().decode()


async def test_logs_slow_http_reader_gets_a_drop_marker(
    apps: Apps,
) -> None:
    """A tail that does not keep up loses bytes, is told how many, and the
    writer (swapvisor's logging, the upstreams' pumps) never waits for it."""
    obs = await apps.start(ONE, log_to_stdout="both")
    tail = await open_tail(obs, "/logs/stream/a?no-history")
    monitor = obs.logs.model("a")
    line = b"y" * 1023 + b"\n"
    began = time.monotonic()
    for _ in range(1024):  # 1 MiB with no await: the stream cannot keep up
        monitor.write(line)
    assert time.monotonic() - began < 1
    text = await tail.wait_for(" bytes dropped —\n")
    found = re.search(r"\n— (\d+) bytes dropped —\n", text)
    assert found and text.endswith(found.group(0)), text[-200:]
    kept = text.count("y" * 1023 + "\n")
    assert 0 < kept < 1024
    assert int(found.group(1)) == (1024 - kept) * len(line)
    # Caught up: delivery resumes, nothing more is lost.
    monitor.write(b"the end\n")
    text = await tail.wait_for("the end\n")
    assert text.endswith(found.group(0) + "the end\n")
    # The history has every line; only the live feed lost some.
    history = monitor.history()
    assert history.endswith(line * 99 + b"the end\n") and len(history) <= 100 * 1024
    tail.release()


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [("warn", "[WARN]", "[INFO]"), ("debug", "[DEBUG] a: stopped -> starting", "")],
)
async def test_logs_level(apps: Apps, level: str, shown: str, hidden: str) -> None:
    obs = await apps.start(
        f"""
logLevel: {level}
models:
  a:
    cmd: {fake_cmd("a")}
  bad:
    cmd: {fake_cmd("bad", "--exit-on-start 3")}
""",
        log_to_stdout="both",
    )
    assert (await obs.chat("a"))[0] == 200
    assert (await obs.chat("bad"))[0] >= 500  # logged as a warning
    text = obs.logs.proxy.history().decode()
    assert shown in text
    if hidden:
        assert hidden not in text
    # Upstream output is raw, whatever the level.
    assert REQ in obs.logs.model("a").history().decode()


async def test_streams_forget_clients_that_leave(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    bus = obs.app[EVENTS]
    events = await open_events(obs)
    await events.next()
    tails = [
        await open_tail(obs, path)
        for path in ("/logs/stream", "/logs/stream/proxy", "/logs/stream/a")
    ]
    monitors = [obs.logs.mux, obs.logs.proxy, obs.logs.model("a")]
    assert bus.subscribers == 1
    assert all(len(m._subscribers) == 1 for m in monitors)
    events.resp.close()
    for tail in tails:
        tail.release()
    await wait_until(lambda: bus.subscribers == 0, 4)
    await wait_until(lambda: not any(m._subscribers for m in monitors), 4)
    # Nothing left to feed: writes and publishes still work.
    assert (await obs.chat("a"))[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# -- /api/events -----------------------------------------------------------------------


EVENTS_CONFIG = """
models:
  a:
    cmd: {a}
    name: Model A
    description: the first
    aliases: [first]
    capabilities:
      in: [text, image]
      out: [text]
      tools: true
      context: 4096
  b:
    cmd: {b}
    unlisted: true
peers:
  box:
    proxy: http://127.0.0.1:9
    models: [remote-1]
ui:
  activity:
    session_id: [X-Trace]
profiles:
  quick:
    pins: {{fast: b}}
"""


async def test_events_initial_messages_in_order(
    apps: Apps,
) -> None:
    obs = await apps.start(
        EVENTS_CONFIG.format(a=fake_cmd("a"), b=fake_cmd("b")), log_to_stdout="both"
    )
    r = await obs.client.get("/api/events")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Accel-Buffering"] == "no"
    events = Events(r)
    first = [await events.next() for _ in range(6)]
    assert [k for k, _ in first] == [
        "logData",
        "logData",
        "modelStatus",
        "uiConfig",
        "profileChanged",
        "inflight",
    ]
    assert first[0][1]["source"] == "proxy" and isinstance(first[0][1]["data"], str)
    assert first[1][1]["source"] == "upstream"
    assert first[1][1]["data"] == obs.logs.upstream.history().decode()
    status = first[2][1]
    assert [m["id"] for m in status] == ["a", "b", "box/remote-1"]
    a, b, peer = status
    assert a["name"] == "Model A" and a["description"] == "the first"
    assert a["state"] == "stopped" and a["unlisted"] is False and a["peerID"] == ""
    assert a["aliases"] == ["first"]
    assert a["context_length"] == 4096
    assert a["capabilities"]["vision"] is True
    assert a["capabilities"]["function_calling"] is True
    assert b["unlisted"] is True and "aliases" not in b
    assert peer == {
        "id": "box/remote-1",
        "name": "",
        "description": "",
        "state": "",
        "unlisted": False,
        "peerID": "box",
    }
    assert first[3][1] == {"activity": {"session_id": ["X-Trace"]}}
    assert first[4][1] == {"active": None}
    assert first[5][1] == {"operation": "snapshot", "requests": []}
    events.resp.close()


async def test_events_swap_inflight_and_activity(
    apps: Apps,
) -> None:
    obs = await apps.start(
        EVENTS_CONFIG.format(a=fake_cmd("a"), b=fake_cmd("b")), log_to_stdout="both"
    )
    events = await open_events(obs)
    for _ in range(6):
        await events.next()
    events.seen.clear()

    headers = {"Authorization": "Bearer sk-secret", "X-Trace": "t-1"}
    status, body = await obs.chat("first", headers=headers)  # by alias
    assert status == 200
    activity = await events.until(lambda k, _: k == "activity")
    inflight = events.of("inflight")
    assert inflight[0]["operation"] == "upsert"
    entry = inflight[0]["request"]
    assert set(entry) >= {
        "id",
        "timestamp",
        "model",
        "req_path",
        "method",
        "req_headers",
        "remote_ip",
        "resp_headers",
        "resp_bytes",
        "elapsed_ms",
    }
    assert entry["model"] == "a" and entry["req_path"] == "/v1/chat/completions"
    assert entry["method"] == "POST" and entry["remote_ip"] == "127.0.0.1"
    assert entry["req_headers"]["Authorization"] == "[REDACTED]"
    assert entry["req_headers"]["X-Trace"] == "t-1"
    assert entry["resp_bytes"] == 0 and isinstance(entry["elapsed_ms"], int)
    last_upsert = [i["request"] for i in inflight if i["operation"] == "upsert"][-1]
    assert last_upsert["id"] == entry["id"]
    assert last_upsert["resp_headers"]["Content-Type"] == "application/json"
    assert inflight[-1] == {"operation": "remove", "id": entry["id"]}
    a_states = [states_of(s)["a"] for s in events.of("modelStatus")]
    assert a_states[-1] == "ready" and "starting" in a_states

    rows = (await obs.json("/api/metrics/activity"))["data"]
    assert activity == {"id": rows[0]["id"]}
    row = rows[0]
    assert row["model"] == "a" and row["req_path"] == "/v1/chat/completions"
    assert row["resp_status_code"] == 200
    assert row["resp_content_type"] == "application/json"
    prompt, completion = usage_of(body)
    timings = body["timings"]
    assert row["tokens"] == {
        "cache_tokens": 0,
        "draft_tokens": -1,
        "draft_acc_tokens": -1,
        "input_tokens": prompt,
        "output_tokens": completion,
        "prompt_per_second": timings["prompt_per_second"],
        "tokens_per_second": timings["predicted_per_second"],
    }
    assert row["duration_ms"] >= int(timings["prompt_ms"] + timings["predicted_ms"])
    assert row["has_capture"] is True
    assert row["metadata"] == {"fifo_priority": "0"}

    # A swap: a goes ready -> stopping -> stopped, b starting -> ready.
    events.seen.clear()
    assert (await obs.chat("b"))[0] == 200
    await events.until(lambda k, _: k == "activity")
    seen = [states_of(s) for s in events.of("modelStatus")]
    assert seen[-1]["a"] == "stopped" and seen[-1]["b"] == "ready"
    assert "stopping" in [s["a"] for s in seen]
    assert "starting" in [s["b"] for s in seen]
    a_order = [s["a"] for s in seen]
    assert a_order.index("stopping") < a_order.index("stopped")
    # The log lines of the swap arrive as logData too (the upstream's own
    # output may trail its HTTP answer: it comes through a pipe).
    await events.logged("swap: stopping a to start b\n")
    await events.logged("fake-upstream listening on")
    await events.logged("model=b")

    events.seen.clear()
    r = await obs.client.put("/api/profiles/active", json={"name": "quick"})
    assert r.status == 200 and await r.json() == {"active": "quick"}
    assert await events.next_state() == ("profileChanged", {"active": "quick"})
    kind, status = await events.next_state()
    assert kind == "modelStatus" and states_of(status)["b"] == "ready"
    # Setting the active profile again changes nothing and says nothing.
    r = await obs.client.put("/api/profiles/active", json={"name": "quick"})
    assert r.status == 200
    r = await obs.client.put("/api/profiles/active", json={"name": None})
    assert r.status == 200 and await r.json() == {"active": None}
    assert await events.next_state() == ("profileChanged", {"active": None})
    events.resp.close()


async def test_event_bus_never_blocks_a_publisher() -> None:
    """A subscriber that stops reading misses messages past its backlog (1024);
    the publisher never waits, and closing still ends that subscriber."""
    bus = EventBus()
    stuck = bus.subscribe()
    for i in range(BACKLOG + 10):
        bus.publish("activity", {"id": i})
    assert stuck.qsize() == BACKLOG
    first = stuck.get_nowait()
    assert first == frame("activity", {"id": 0})
    # Byte for byte what llama-swap sends (Go's json.Marshal is compact).
    assert first == b'event:message\ndata:{"type":"activity","data":"{\\"id\\":0}"}\n\n'
    stuck.put_nowait(first)  # full again
    bus.close()
    items = [stuck.get_nowait() for _ in range(stuck.qsize())]
    assert items[-1] is None and bus.subscribers == 0


# -- activity API ----------------------------------------------------------------------


async def test_activity_records_posts_via_upstream_path(
    apps: Apps,
) -> None:
    """llama-swap.md §5.2: POSTs to model-dispatched endpoints through
    /upstream/<model>/ are recorded too (path after the prefix); other
    paths are not."""
    obs = await apps.start(ONE, log_to_stdout="both")
    r = await obs.client.post("/upstream/a/v1/chat/completions", json=chat("a"))
    assert r.status == 200
    body = await r.json()
    for method, path in (
        ("POST", "/upstream/a/not/inference"),
        ("GET", "/upstream/a/health"),
    ):
        r = await obs.client.request(method, path, json={"model": "a"})
        assert r.status == 200
        await r.read()
    rows = (await obs.json("/api/metrics/activity"))["data"]
    assert [(x["model"], x["req_path"]) for x in rows] == [
        ("a", "/v1/chat/completions")
    ]
    assert rows[0]["tokens"]["output_tokens"] == usage_of(body)[1]


async def test_activity_filters_stats_and_errors(
    apps: Apps,
) -> None:
    obs = await apps.start(TWO, log_to_stdout="both")
    sent = []
    requests: list[tuple[str, dict[str, Any]]] = [
        ("a", {}),
        ("a", {"fake_chunks": 5}),
        ("b", {}),
        ("b", {"fake_status": 503}),
        ("a", {"stream": True, "fake_chunks": 3}),
    ]
    for model, extra in requests:
        status, body = await obs.chat(model, **extra)
        sent.append((model, status, body))
    assert [s for _, s, _ in sent] == [200, 200, 200, 503, 200]

    page = await obs.json("/api/metrics/activity")
    assert page["total"] == 5 and page["page"] == 1 and page["limit"] == 25
    assert page["total_pages"] == 1
    rows = page["data"]
    assert [r["id"] for r in rows] == [5, 4, 3, 2, 1]  # newest first
    assert [r["model"] for r in rows] == ["a", "b", "b", "a", "a"]
    failed = rows[1]
    assert failed["resp_status_code"] == 503 and failed["error_msg"] == "fake error"
    assert failed["tokens"]["input_tokens"] == 0
    streamed = rows[0]
    assert streamed["resp_content_type"].startswith("text/event-stream")
    assert streamed["tokens"]["output_tokens"] == 3

    async def ids(query: str) -> list[int]:
        got = await obs.json(f"/api/metrics/activity?{query}")
        return [r["id"] for r in got["data"]]

    assert await ids("model=b") == [4, 3]
    assert await ids("model=a&model=b&order=asc") == [1, 2, 3, 4, 5]
    assert await ids("min_id=2&max_id=4") == [4, 3, 2]
    assert await ids("limit=2") == [5, 4]
    assert await ids("limit=2&page=3") == [1]
    assert await ids("sort=generated&order=desc&model=a") == [2, 5, 1]
    assert await ids("sort=model&order=asc") == [1, 2, 5, 3, 4]
    assert await ids("start=2000-01-01T00:00:00Z&min_id=5") == [5]
    assert await ids("end=2000-01-01T00:00:00Z") == []
    now = rows[0]["timestamp"]  # second resolution, inclusive
    assert await ids(f"start={now}&end={now}&max_id=1") == (
        [1] if rows[-1]["timestamp"] == now else []
    )
    paged = await obs.json("/api/metrics/activity?limit=2")
    assert paged["total"] == 5 and paged["total_pages"] == 3

    for query, message in (
        ("limit=x", "invalid limit"),
        ("limit=1000", "limit must be between 1 and 999"),
        ("limit=0", "limit must be between 1 and 999"),
        ("start=yesterday", "invalid 'start' timestamp, use RFC3339 format"),
        (
            "start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z",
            "start must be before end",
        ),
        ("min_id=0", "min_id must be >= 1"),
        ("min_id=4&max_id=2", "min_id must be <= max_id"),
        ("page=0", "page must be >= 1"),
        ("sort=color", "invalid sort column"),
        ("order=up", "order must be asc or desc"),
    ):
        got = await obs.json(f"/api/metrics/activity?{query}", status=400)
        assert got["error"]["message"] == message, query

    stats = await obs.json("/api/metrics/stats")
    ok = [(m, b) for m, s, b in sent if s == 200]
    assert stats["total_requests"] == 5
    assert stats["total_input_tokens"] == sum(usage_of(b)[0] for _, b in ok)
    assert stats["total_output_tokens"] == sum(usage_of(b)[1] for _, b in ok)
    assert stats["total_cache_tokens"] == 0
    gen = stats["gen_histogram"]
    assert set(gen) == {"bins", "min", "max", "binSize", "p50", "p95", "p99"}
    # Every answer's timings say 100 tokens/s: one bin, no width.
    assert (gen["min"], gen["max"], gen["binSize"], gen["p50"]) == (100, 100, 0, 100)
    assert sum(gen["bins"]) == 4
    only_b = await obs.json("/api/metrics/stats?model=b")
    assert only_b["total_requests"] == 2


async def test_activity_paths_rejections_and_failed_starts(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
models:
  a:
    cmd: {fake_cmd("a")}
    concurrencyLimit: 1
  bad:
    cmd: {fake_cmd("bad", "--exit-on-start 3")}
""",
        log_to_stdout="both",
    )
    events = await open_events(obs)
    for _ in range(6):
        await events.next()
    events.seen.clear()
    # Versionless: in flight under the client's path, stored under the
    # upstream's (llama-swap.md §5.2).
    r = await obs.client.post("/v/chat/completions", json=chat("a"))
    assert r.status == 200
    await events.until(lambda k, _: k == "activity")
    upsert = next(d["request"] for d in events.of("inflight") if "request" in d)
    assert upsert["req_path"] == "/v/chat/completions"
    slow = await hold(obs, "a")
    assert (await obs.chat("a"))[0] == 429
    await slow.hang_up()
    bad_status, _ = await obs.chat("bad")
    rows = (await obs.json("/api/metrics/activity?order=asc"))["data"]
    got = [(x["model"], x["req_path"], x["resp_status_code"]) for x in rows]
    assert got == [
        ("a", "/chat/completions", 200),
        ("a", "/v1/chat/completions", 429),
        ("a", "/v1/chat/completions", 200),
        ("bad", "/v1/chat/completions", bad_status),
    ]
    assert "concurrencyLimit 1" in rows[1]["error_msg"]
    assert "exited while starting" in rows[3]["error_msg"]
    assert rows[1]["has_capture"] is True  # request side only
    rejected = await obs.json(f"/api/captures/{rows[1]['id']}")
    assert not rejected.get("resp_body")
    events.resp.close()


async def test_captures_follow_the_path_masks_and_the_buffer_size(
    apps: Apps,
) -> None:
    obs = await apps.start(
        f"""
captureBuffer: 1
models:
  a:
    cmd: {fake_cmd("a")}
""",
        log_to_stdout="both",
    )
    r = await obs.client.post("/v1/audio/speech", json={"model": "a", "input": "hi"})
    assert r.status == 200
    await r.read()
    speech = await obs.json("/api/captures/1")
    assert json.loads(base64.b64decode(speech["req_body"]))["input"] == "hi"
    assert speech["resp_headers"] and not speech.get("resp_body")
    # 1 MB holds one of these (incompressible) bodies, not two: oldest goes.
    blob = base64.b64encode(os.urandom(450_000)).decode()
    for _ in range(2):
        assert (await obs.chat("a", blob=blob))[0] == 200
    rows = {x["id"]: x for x in (await obs.json("/api/metrics/activity"))["data"]}
    assert (rows[2]["has_capture"], rows[3]["has_capture"]) == (False, True)
    await obs.json("/api/captures/2", status=404)
    kept = await obs.json("/api/captures/3")
    assert json.loads(base64.b64decode(kept["req_body"]))["blob"] == blob


async def test_activity_row_and_capture_exist_once_the_client_has_the_answer(
    apps: Apps,
) -> None:
    """No race between a client reading its answer and asking for its row."""
    obs = await apps.start(ONE, log_to_stdout="both")
    bodies: list[dict[str, Any]] = [
        {"model": "a", "input": "x"},  # /v1/audio/speech: echoed JSON
        chat("a"),
        chat("a", stream=True, fake_chunks=2),
    ]
    paths = ["/v1/audio/speech", "/v1/chat/completions", "/v1/chat/completions"]
    for n in range(1, 10):
        r = await obs.client.post(paths[n % 3], json=bodies[n % 3])
        assert r.status == 200
        await r.read()
        page = await obs.json("/api/metrics/activity?limit=1")
        assert page["total"] == n
        assert page["data"][0]["has_capture"] is True
        await obs.json(f"/api/captures/{n}")
        assert obs.app[OBSERVER].in_flight == {}


async def test_activity_persists_in_store_path(apps: Apps, tmp_path: Path) -> None:
    db = tmp_path / "activity.db"
    yaml_text = f"""
store:
  path: {db}
models:
  a:
    cmd: {fake_cmd("a")}
"""
    first = await apps.start(yaml_text, log_to_stdout="both")
    assert (await first.chat("a"))[0] == 200
    assert (await first.json("/api/metrics/activity"))["total"] == 1
    await first.client.close()
    assert db.exists()

    second = await apps.start(yaml_text, log_to_stdout="both")
    rows = (await second.json("/api/metrics/activity"))["data"]
    assert [(r["id"], r["model"], r["resp_status_code"]) for r in rows] == [
        (1, "a", 200)
    ]
    assert rows[0]["has_capture"] is False  # captures live in memory only
    assert (await second.chat("a"))[0] == 200
    assert [r["id"] for r in (await second.json("/api/metrics/activity"))["data"]] == [
        2,
        1,
    ]


async def test_captures_redacted_bodies_and_errors(
    apps: Apps,
) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    headers = {"Authorization": "Bearer sk-secret", "X-Api-Key": "k", "X-Other": "1"}
    status, body = await obs.chat("a", headers=headers)
    assert status == 200
    status, _ = await obs.chat("a", fake_status=418)
    assert status == 418
    rows = {r["id"]: r for r in (await obs.json("/api/metrics/activity"))["data"]}
    assert rows[1]["has_capture"] is True

    cap = await obs.json("/api/captures/1")
    assert cap["id"] == 1 and cap["req_path"] == "/v1/chat/completions"
    assert cap["req_headers"]["Authorization"] == "[REDACTED]"
    assert cap["req_headers"]["X-Api-Key"] == "[REDACTED]"
    assert cap["req_headers"]["X-Other"] == "1"
    assert json.loads(base64.b64decode(cap["req_body"])) == chat("a")
    assert json.loads(base64.b64decode(cap["resp_body"])) == body
    assert "application/json" in json.dumps(cap["resp_headers"])

    failed = await obs.json("/api/captures/2")
    assert json.loads(base64.b64decode(failed["req_body"]))["fake_status"] == 418
    assert not failed.get("resp_body")  # a failed request keeps no response body

    assert (await obs.json("/api/captures/99", status=404))["error"][
        "message"
    ] == "capture not found"
    assert (await obs.json("/api/captures/x", status=400))["error"][
        "message"
    ] == "invalid capture ID"


async def test_captures_disabled(apps: Apps) -> None:
    obs = await apps.start(
        f"""
captureBuffer: 0
models:
  a:
    cmd: {fake_cmd("a")}
""",
        log_to_stdout="both",
    )
    assert (await obs.chat("a"))[0] == 200
    rows = (await obs.json("/api/metrics/activity"))["data"]
    assert rows[0]["has_capture"] is False
    await obs.json("/api/captures/1", status=404)


# -- cancelling an in-flight request ---------------------------------------------------


async def test_cancel_inflight_stream(apps: Apps) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    events = await open_events(obs)
    for _ in range(6):
        await events.next()
    resp = await obs.client.post(
        "/v1/chat/completions",
        json=chat("a", stream=True, fake_chunks=50, fake_chunk_delay=0.1),
    )
    assert resp.status == 200
    assert await resp.content.readany()
    # While it streams, its entry is re-sent with the bytes relayed so far.
    upsert = await events.until(
        lambda k, d: (
            k == "inflight"
            and d["operation"] == "upsert"
            and d["request"]["resp_bytes"] > 0
        )
    )
    rid = upsert["request"]["id"]
    assert upsert["request"]["resp_headers"]["Content-Type"] == "text/event-stream"
    assert list(obs.app[OBSERVER].in_flight) == [rid]
    r = await obs.client.post(f"/api/inflight/{rid}/cancel")
    assert r.status == 200 and await r.json() == {"msg": "ok"}
    # The client's stream ends early: far fewer than 50 pieces arrive.
    rest = b""
    async with asyncio.timeout(READ_TIMEOUT_S):
        with contextlib.suppress(aiohttp.ClientPayloadError):
            while chunk := await resp.content.readany():
                rest += chunk
    assert rest.count(b'"content"') < 40 and b"[DONE]" not in rest
    await events.until(
        lambda k, d: k == "inflight" and d == {"operation": "remove", "id": rid}
    )
    assert obs.app[OBSERVER].in_flight == {}
    # Cancelled, not evicted: the model stays up and serves the next request.
    assert obs.state("a") == "ready"
    assert (await obs.chat("a"))[0] == 200
    assert obs.runtime.router.upstreams["a"].in_flight == 0

    r = await obs.client.post("/api/inflight/999/cancel")
    assert r.status == 404
    assert (await r.json())["error"]["message"] == "inflight request not found"
    events.resp.close()


# -- version, performance, hardware ----------------------------------------------------


async def test_version_performance_and_hardware(
    apps: Apps,
) -> None:
    obs = await apps.start(ONE, log_to_stdout="both")
    version = await obs.json("/api/version")
    assert set(version) == {"version", "commit", "build_date"}

    perf_monitor = obs.app[PERF]
    await wait_until(lambda: bool(perf_monitor.history()["sys_stats"]), 4)
    perf = await obs.json("/api/performance")
    assert perf["enabled"] is True and perf["gpu_stats"] == []
    sample = perf["sys_stats"][-1]
    assert set(sample) >= {
        "timestamp",
        "cpu_util_per_core",
        "mem_total_mb",
        "mem_used_mb",
        "mem_free_mb",
        "swap_total_mb",
        "swap_used_mb",
        "load_avg_1",
        "load_avg_5",
        "load_avg_15",
        "net_io",
    }
    assert sample["mem_total_mb"] > 0
    last = sample["timestamp"]
    # Strictly after: the newest sample's own timestamp excludes it.
    after = await obs.json(f"/api/performance?after={last}")
    assert after["sys_stats"] == []
    await asyncio.to_thread(perf_monitor.sample)
    after = await obs.json(f"/api/performance?after={last}")
    assert len(after["sys_stats"]) == 1 and after["sys_stats"][0]["timestamp"] > last
    bad = await obs.json("/api/performance?after=yesterday", status=400)
    assert bad["error"]["message"] == "invalid 'after' timestamp, use RFC3339 format"

    hw = await obs.json("/api/hardware")
    assert hw["schema_version"] == 1
    assert hw["capture"]["scope"] == "inference_host"
    assert hw["capture"]["method"] == "detected"
    assert set(hw) == {
        "schema_version",
        "captured_at",
        "capture",
        "architecture",
        "operating_system",
        "environment",
        "cpu",
        "memory",
        "accelerators",
    }
    assert hw["architecture"]["name"] in ("x86_64", "arm64")
    assert hw["operating_system"]["family"] == "linux"
    assert hw["memory"]["capacity_bytes"] > 0
    assert hw["cpu"]["logical_thread_count"] >= 1
    assert await obs.json("/api/hardware") == hw  # one snapshot, kept


@pytest.mark.parametrize("path", ["/logs/stream", "/logs/stream/proxy", "/api/events"])
async def test_head_on_a_live_stream_is_its_headers_alone(
    apps: Apps, path: str
) -> None:
    """A stream never ends, so HEAD answers at once, with no body: the next
    request on the same connection reads a clean response."""
    obs = await apps.start(f"models:\n  a:\n    cmd: {fake_cmd('a')}\n")
    port = obs.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    async with asyncio.timeout(5):
        raw = await reader.read(-1)  # until the server closes after /health
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    # What follows the HEAD response is the next response, from its first byte.
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert rest.endswith(b"\r\n\r\nOK")
