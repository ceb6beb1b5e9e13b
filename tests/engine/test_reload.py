"""Live reload (llama-swap.md §7), through the Reloader in-process and through
the real CLI: unchanged models keep running and streaming, changed ones
restart after they drain, removed ones stop, an invalid config changes nothing,
and both --watch-config and SIGHUP reload."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.config.loader import load_config
from controller.engine.reload import Reloader
from controller.engine.states import UpstreamState
from tests.conftest import alive, fake_cmd, pids_of, port_block, wait_until
from tests.harness import (
    App,
    Apps,
    chat,
    sse_events,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from controller.engine.upstream import Upstream
    from tests.conftest import Swapvisor


def config(
    a_flags: tuple[str, ...] = (), extra: str = "", *, with_b: bool = True
) -> str:
    text = f"models:\n  a:\n    cmd: {fake_cmd('a', *a_flags)}\n{extra}"
    if with_b:
        text += f"  b:\n    cmd: {fake_cmd('b')}\n"
    return text


async def reload(app: App, yaml_text: str) -> bool:
    app.write_config(yaml_text)
    return await Reloader(app.runtime, app.config_path, None).reload_now()


async def test_unchanged_model_keeps_running_and_streaming(apps: Apps) -> None:
    app = await apps.start(config())
    r = await app.client.post(
        "/v1/chat/completions",
        json=chat("a", stream=True, fake_chunks=8, fake_chunk_delay=0.1),
    )
    first = await r.content.readuntil(b"\n\n")
    upstream, pid = app.upstream("a"), app.pid("a")
    assert pid is not None
    # b's command changes, a's TTL changes (no restart needed), c is new.
    new = config(extra="    ttl: 60\n") + f"  c:\n    cmd: {fake_cmd('c')}\n"
    new = new.replace(fake_cmd("b"), fake_cmd("b", "--health-delay", "0"))
    assert await reload(app, new)
    assert app.upstream("a") is upstream and app.pid("a") == pid
    assert upstream.ttl_s == 60
    events = sse_events(first + await r.read())  # the stream went on
    assert sum('"content": "x"' in e for e in events) == 8
    assert events[-1] == "[DONE]"
    assert await app.reply("a") == "hello from a"
    assert app.pid("a") == pid and alive(pid)
    listed = await (await app.client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["a", "b", "c"]


async def test_changed_model_restarts_only_after_its_request_drains(
    apps: Apps,
) -> None:
    app = await apps.start(config())
    await app.reply("a")
    slow = asyncio.create_task(app.reply("a", fake_delay=1.0))
    await wait_until(lambda: app.upstream("a").in_flight == 1)
    old, old_pid = app.upstream("a"), app.pid("a")
    assert old_pid is not None
    assert await reload(app, config(a_flags=("--health-delay", "0.01")))
    new = app.upstream("a")
    assert new is not old
    assert (old.state, new.state) == (UpstreamState.READY, UpstreamState.STOPPED)
    seen: list[tuple[str, int]] = []
    spy_on_start(new, lambda: seen.append((old.state.value, old.in_flight)))
    # A request for the new a waits: the old one holds the port until drained.
    after = asyncio.create_task(app.reply("a"))
    assert await slow == "hello from a"  # the in-flight request was not cut
    assert await after == "hello from a"
    assert seen == [("stopped", 0)]  # the new one started after the old stopped
    assert not alive(old_pid)
    assert app.pid("a") != old_pid
    running = (await (await app.client.get("/running")).json())["running"]
    assert [m["model"] for m in running] == ["a"]
    assert "--health-delay 0.01" in running[0]["cmd"]


async def test_reload_while_a_changed_model_starts_serves_the_new_one(
    apps: Apps,
) -> None:
    """The request waiting for the old version's start is not failed: the old
    start is abandoned and the new version serves it."""
    app = await apps.start(config(a_flags=("--health-delay", "0.5")))
    waiting = asyncio.create_task(app.reply("a"))
    await wait_until(lambda: app.state("a") == "starting")
    old = app.upstream("a")
    assert await reload(app, config(a_flags=("--health-delay", "0.1")))
    assert await waiting == "hello from a"
    assert old.state is UpstreamState.STOPPED
    assert processes_of(app, "a") == [app.pid("a")]
    assert "--health-delay 0.1" in cmdline(app.pid("a"))


async def test_reload_just_as_a_changed_model_gets_ready(apps: Apps) -> None:
    """A reload landing between the old version becoming ready and its swap
    finishing must neither restart the retired process nor hand the request
    to the new, still stopped, upstream."""
    app = await apps.start(config(a_flags=("--health-delay", "0.2")))
    old = app.upstream("a")
    app.write_config(config(a_flags=("--health-delay", "0.1")))
    new_config = load_config(app.config_path).config
    reloaded: list[str] = []

    def reload_now(u: Upstream, before: UpstreamState, now: UpstreamState) -> None:
        if now is UpstreamState.READY and not reloaded:
            reloaded.extend(app.runtime.reload(new_config))

    spy_on(old, reload_now)
    assert await app.reply("a") == "hello from a"
    assert reloaded == ["a"]
    await wait_until(lambda: old.state is UpstreamState.STOPPED)
    assert app.state("a") == "ready"
    assert app.router.scheduler.in_flight("a") == app.upstream("a").in_flight == 0
    # One process for a, the new upstream's, and it is the new version.
    assert processes_of(app, "a") == [app.pid("a")]
    assert "--health-delay 0.1" in cmdline(app.pid("a"))
    assert await app.reply("a") == "hello from a"


async def test_reload_removing_a_starting_model_fails_its_waiters(
    apps: Apps,
) -> None:
    app = await apps.start(config(a_flags=("--health-delay", "0.5")))
    waiting = asyncio.create_task(
        app.client.post("/v1/chat/completions", json=chat("a"))
    )
    await wait_until(lambda: app.pid("a") is not None)  # spawned, not ready
    assert app.state("a") == "starting"
    old, pid = app.upstream("a"), app.pid("a")
    assert pid is not None
    assert await reload(app, f"models:\n  b:\n    cmd: {fake_cmd('b')}\n")
    r = await waiting
    assert r.status == 503
    assert "removed from the config" in (await r.json())["error"]["message"]
    await wait_until(lambda: old.state is UpstreamState.STOPPED)
    assert not alive(pid)
    assert await app.reply("b") == "hello from b"


async def test_removed_model_is_stopped_after_it_drains(apps: Apps) -> None:
    pair = "routing:\n  router:\n    settings:\n      groups:\n        g: {swap: false, members: [a, b]}\n"
    app = await apps.start(config() + pair)
    await app.reply("a")
    await app.reply("b")
    a_pid, b_pid = app.pid("a"), app.pid("b")
    assert a_pid is not None and b_pid is not None
    slow = asyncio.create_task(app.reply("b", fake_delay=0.8))
    await wait_until(lambda: app.upstream("b").in_flight == 1)
    old_b = app.upstream("b")
    assert await reload(app, config(with_b=False))
    assert "b" not in app.router.upstreams
    r = await app.client.post("/v1/chat/completions", json=chat("b"))
    assert r.status == 404  # gone from the config at once
    assert await slow == "hello from b"  # ... but its request finished
    await wait_until(lambda: old_b.state is UpstreamState.STOPPED)
    assert not alive(b_pid)
    assert app.pid("a") == a_pid and alive(a_pid)
    assert app.running() == ["a"]


async def test_invalid_config_keeps_the_old_one_serving(apps: Apps) -> None:
    app = await apps.start(config())
    await app.reply("a")
    pid, before = app.pid("a"), app.runtime.config
    reloader = Reloader(app.runtime, app.config_path, None)
    for broken in (
        "models: [unclosed\n",  # not YAML
        config(extra="    ttl: -5\n"),  # fails validation
        config(a_flags=("'",)),  # a cmd that cannot be split
    ):
        app.write_config(broken)
        assert await reloader.reload_now() is False
        assert app.runtime.config is before
        assert await app.reply("a") == "hello from a"
        assert app.pid("a") == pid
    assert reloader.reloads == 0
    app.write_config(config(with_b=False))
    assert await reloader.reload_now() is True
    assert reloader.reloads == 1
    assert app.pid("a") == pid


async def test_reload_requests_during_a_reload_coalesce_into_one_more(
    apps: Apps,
) -> None:
    preload = "hooks:\n  on_startup: {preload: [a]}\n"
    slow = config(a_flags=("--health-delay", "0.3"), with_b=False) + preload
    app = await apps.start(slow)
    await wait_until(lambda: app.state("a") == "ready")
    await app.client.post("/api/models/unload")
    reloader = Reloader(app.runtime, app.config_path, None)
    reloader.request()
    # The reload runs its preload hook (a loads again): meanwhile, two more
    # requests arrive and make exactly one more reload.
    await wait_until(lambda: reloader.reloads == 1 and app.state("a") == "starting")
    reloader.request()
    reloader.request()
    task = reloader._task
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert reloader.reloads == 2
    assert app.state("a") == "ready"


async def test_reload_resets_the_profile_and_runs_preload_again(apps: Apps) -> None:
    extra = "profiles:\n  p: {pins: {chat: a}}\nhooks:\n  on_startup: {preload: [a]}\n"
    app = await apps.start(config(with_b=False) + extra)
    await wait_until(lambda: app.state("a") == "ready")
    r = await app.client.put("/api/profiles/active", json={"name": "p"})
    assert (await r.json()) == {"active": "p"}
    await app.client.post("/api/models/unload")
    assert app.running() == []
    assert await reload(app, config(with_b=False) + extra)
    assert app.names.profiles.active is None
    await wait_until(lambda: app.state("a") == "ready")  # preloaded again


async def test_cli_watch_config_and_sighup_reload(
    swapvisor: Callable[..., Swapvisor],
    write_config: Callable[[str], Path],
    http: aiohttp.ClientSession,
) -> None:
    head = f"startPort: {port_block()}\nmodels:\n  a:\n    cmd: {fake_cmd('a')}\n"
    path = write_config(head)
    sv = swapvisor(path, "--watch-config")

    async def ids() -> list[str]:
        async with http.get(sv.url + "/v1/models") as r:
            body: dict[str, Any] = await r.json()
        return [m["id"] for m in body["data"]]

    async def wait_ids(expected: list[str]) -> None:
        async with asyncio.timeout(10):
            while await ids() != expected:
                await asyncio.sleep(0.05)

    assert await ids() == ["a"]
    path.write_text(head + f"  bb:\n    cmd: {fake_cmd('bb')}\n")
    await wait_ids(["a", "bb"])  # the watcher saw the edit
    # Same size, same mtime, swapped in atomically: invisible to the watcher;
    # only SIGHUP reloads it.
    st = path.stat()
    edited = path.with_suffix(".next")
    edited.write_text(head + f"  cc:\n    cmd: {fake_cmd('cc')}\n")
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(edited, path)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (
        st.st_mtime_ns,
        st.st_size,
    )
    sv.proc.send_signal(signal.SIGHUP)
    await wait_ids(["a", "cc"])
    assert sv.output().count("config reloaded") == 2
    assert sv.stop() == 0


# -- helpers ---------------------------------------------------------------------------


def spy_on(
    upstream: Upstream,
    hook: Callable[[Upstream, UpstreamState, UpstreamState], None],
) -> None:
    """Call ``hook`` after each of ``upstream``'s state changes."""
    original = upstream._on_change

    def spy(u: Upstream, old: UpstreamState, new: UpstreamState) -> None:
        if original is not None:
            original(u, old, new)
        hook(u, old, new)

    upstream._on_change = spy


def spy_on_start(upstream: Upstream, hook: Callable[[], None]) -> None:
    """Call ``hook`` the moment ``upstream`` enters ``starting``."""
    spy_on(
        upstream, lambda u, old, new: hook() if new is UpstreamState.STARTING else None
    )


def processes_of(app: App, model: str) -> list[int]:
    """Live processes serving ``model`` on its port (whichever version)."""
    port = app.upstream(model).base_url.rsplit(":", 1)[1]
    return sorted(pids_of(f"--port {port} --model {model} "))


def cmdline(pid: int | None) -> str:
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
