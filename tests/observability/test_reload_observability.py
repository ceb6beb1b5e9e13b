"""A live reload applies the observability keys (llama-swap.md §1.2, §7):
``store.path``, ``captureBuffer``, ``metricsMaxInMemory``, ``performance``,
``logToStdout`` and ``ui.activity.session_id``, through the runtime's reload
listeners, so the command line and the in-process harness both get them."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

from controller.engine.reload import Reloader
from controller.http.keys import OBSERVER, PERF
from controller.observability.activity import ActivityEntry
from controller.observability.captures import MB, Capture, CaptureBuffer
from tests.conftest import fake_cmd, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.harness import App, Apps

MODELS = f"""
models:
  a:
    cmd: {fake_cmd("a")}
"""


async def reload(app: App, settings: str) -> None:
    app.write_config(settings + MODELS)
    assert await Reloader(app.runtime, app.config_path, None).reload_now()


def sampler_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "perf sampler"]


def store_path(app: App) -> str | None:
    return app.app[OBSERVER].store.path


async def rows(app: App) -> list[dict[str, object]]:
    data = (await app.json("/api/metrics/activity"))["data"]
    assert isinstance(data, list)
    return data


async def test_reload_resizes_capture_buffer_and_row_cap(apps: Apps) -> None:
    app = await apps.start("captureBuffer: 1\n" + MODELS)
    obs = app.app[OBSERVER]
    await app.reply("a")
    await wait_until(lambda: len(obs.captures) == 1)

    for _ in range(4):
        obs.store.add(ActivityEntry(model="a"))
    await reload(app, "captureBuffer: 0\nmetricsMaxInMemory: 2\n")
    assert not obs.captures.enabled and len(obs.captures) == 0
    assert len(await rows(app)) == 2  # pruned at once, not at the next batch
    await app.reply("a")
    await wait_until(lambda: obs.store.query({})["data"][0]["id"] == 6)
    assert (await rows(app))[0]["has_capture"] is False

    await reload(app, "captureBuffer: 3\nui:\n  activity:\n    session_id: [X-Me]\n")
    assert obs.captures.max_bytes == 3 * MB and obs.store.max_rows == 1000
    assert obs.session_headers == ("X-Me",)
    await app.reply("a")
    await wait_until(lambda: len(obs.captures) == 1)
    assert (await rows(app))[0]["has_capture"] is True


async def test_reload_starts_restarts_and_stops_the_perf_sampler(apps: Apps) -> None:
    app = await apps.start("performance:\n  disabled: true\n" + MODELS)
    r = await app.client.get("/api/performance")
    assert r.status == 503 and not sampler_tasks()

    await reload(app, "performance:\n  every: 5s\n")
    await wait_until(lambda: bool(app.app[PERF].history()["sys_stats"]))
    assert (await app.json("/api/performance"))["enabled"] is True
    [first] = sampler_tasks()

    await reload(app, "performance:\n  every: 5s\n")  # unchanged: left running
    assert sampler_tasks() == [first]

    await reload(app, "performance:\n  every: 1m\n")
    await wait_until(lambda: first.done())
    [second] = sampler_tasks()
    assert app.app[PERF].every_s == 60 and app.app[PERF].capacity == 60

    await reload(app, "performance:\n  disabled: true\n")
    await wait_until(lambda: second.done())
    assert not sampler_tasks()
    assert (await app.client.get("/api/performance")).status == 503
    assert (await app.client.get("/metrics")).status == 503


async def test_reload_repoints_log_to_stdout(apps: Apps) -> None:
    app = await apps.start(MODELS, log_to_stdout="proxy")
    said = logging.getLogger("swapvisor.test")
    said.warning("before")
    assert "[WARN] before" in app.stdout.getvalue()

    await reload(app, "logToStdout: none\n")
    said.warning("muted")
    await app.reply("a")
    assert "muted" not in app.stdout.getvalue()
    assert "muted" in app.logs.proxy.history().decode()

    await reload(app, "logToStdout: upstream\n")
    said.warning("proxy only")
    app.logs.model("a").write(b"from the model\n")
    out = app.stdout.getvalue()
    assert "from the model" in out and "proxy only" not in out

    await reload(app, "logToStdout: both\n")
    said.warning("everything")
    assert "[WARN] everything" in app.stdout.getvalue()
    assert "[WARN] everything" in app.logs.mux.history().decode()


async def test_reload_moves_the_activity_store(apps: Apps, tmp_path: Path) -> None:
    app = await apps.start(MODELS)
    obs = app.app[OBSERVER]
    await app.reply("a")
    await wait_until(lambda: obs.store.query({})["total"] == 1)
    assert len(obs.captures) == 1

    path = tmp_path / "activity.db"
    await reload(app, f"store:\n  path: {path}\n")
    assert store_path(app) == str(path)
    assert await rows(app) == [] and len(obs.captures) == 0
    obs.store.add(ActivityEntry(model="a"))
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT model_id FROM activity").fetchall() == [("a",)]
        assert db.execute("SELECT version_id FROM goose_db_version").fetchall() == [
            (0,),
            (1,),
        ]

    await reload(app, "")  # back to memory
    assert store_path(app) is None and await rows(app) == []


async def test_reload_keeps_the_store_when_the_new_one_cannot_open(
    apps: Apps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await apps.start(MODELS)
    obs = app.app[OBSERVER]
    obs.store.add(ActivityEntry(model="kept"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a SQLite database, not even close" * 40)
    with caplog.at_level(logging.ERROR, logger="swapvisor.reload"):
        await reload(app, f"store:\n  path: {junk}\n")
    assert store_path(app) is None
    assert [r["model"] for r in await rows(app)] == ["kept"]
    assert f"store.path: cannot open {junk}" in caplog.text
    assert "activity stays in memory" in caplog.text

    good = tmp_path / "good.db"
    await reload(app, f"store:\n  path: {good}\n")
    assert store_path(app) == str(good)


def test_capture_buffer_resize_keeps_the_newest_that_fit() -> None:
    buf = CaptureBuffer(10_000)
    for i in (1, 2, 3):
        assert buf.add(i, Capture(i, "/v1/chat/completions", req_body=b"x" * 3_000))
    buf.resize(7_000)
    assert [i in buf for i in (1, 2, 3)] == [False, True, True]
    assert buf.size <= 7_000 and buf.max_bytes == 7_000
    buf.resize(-1)
    assert (buf.max_bytes, len(buf), buf.size) == (0, 0, 0)
