"""The native backend against real processes: launch, probe, stop escalation,
process groups, cmdStop, output capture, and dying with its parent."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backends import native
from backends.base import BackendStartError, Handle, Health, LaunchSpec
from backends.native import NativeBackend
from tests.conftest import FAKE, PY, alive, free_port, wait_until, wait_until_sync
from tests.e2e.conftest import group_members


def spec_for(port: int, *flags: str, cmd_stop: tuple[str, ...] = ()) -> LaunchSpec:
    return LaunchSpec(
        argv=(PY, str(FAKE), "--port", str(port), "--model", "m", *flags),
        base_url=f"http://127.0.0.1:{port}",
        cmd_stop=cmd_stop,
        probe_timeout_s=1.0,
    )


async def until_ready(backend: NativeBackend, handle: Handle, spec: LaunchSpec) -> None:
    async with asyncio.timeout(10):
        while await backend.health(handle, spec) is not Health.READY:
            await asyncio.sleep(0.01)


async def test_native_start_ready_stop_graceful() -> None:
    backend = NativeBackend()
    spec = spec_for(free_port())
    handle = await backend.start("m", spec)
    await until_ready(backend, handle, spec)
    info = await backend.stop(handle, spec, grace=5)
    assert (info.code, info.forced) == (0, False)
    assert not alive(int(handle.ref))
    assert await backend.health(handle, spec) is Health.EXITED
    await backend.aclose()


async def test_native_ignoring_sigterm_is_killed_after_grace() -> None:
    backend = NativeBackend()
    spec = spec_for(free_port(), "--ignore-sigterm")
    handle = await backend.start("m", spec)
    await until_ready(backend, handle, spec)
    info = await backend.stop(handle, spec, grace=0.3)
    assert info.forced is True
    assert info.code == -signal.SIGKILL
    assert info.describe() == "killed by signal 9"
    await backend.aclose()


def logged_pid(lines: list[bytes], what: bytes) -> int:
    """The pid in the fake's ``<what> pid N`` log line."""
    found = re.search(rb"%s pid (\d+)" % what, b"".join(lines))
    assert found is not None, f"no {what!r} pid logged"
    return int(found.group(1))


async def test_native_stop_kills_the_whole_process_group() -> None:
    backend = NativeBackend()
    spec = spec_for(free_port(), "--spawn-child")
    handle = await backend.start("m", spec)
    lines: list[bytes] = []

    async def read() -> None:
        async for line in backend.logs(handle):
            lines.append(line)  # noqa: PERF401 - read while it grows

    reader = asyncio.create_task(read())
    await wait_until(lambda: any(b"child pid" in ln for ln in lines))
    child = logged_pid(lines, b"child")
    assert alive(child)
    await backend.stop(handle, spec, grace=5)
    await wait_until(lambda: not alive(child), timeout=5)
    await asyncio.wait_for(reader, 5)
    await backend.aclose()


async def test_native_stop_ends_a_daemon_that_left_the_group_and_the_tree() -> None:
    """A server that daemonizes a worker (setsid, then its parent exits): the
    worker is neither in the group nor below the server; its mark finds it."""
    backend = NativeBackend()
    spec = spec_for(free_port(), "--daemon-child")
    handle = await backend.start("m", spec)
    out: list[bytes] = []

    async def read() -> None:
        async for line in backend.logs(handle):
            out.append(line)
            if b"daemon pid" in line:
                return

    await asyncio.wait_for(read(), 10)
    daemon = logged_pid(out, b"daemon")
    assert alive(daemon)
    assert os.getpgid(daemon) != int(handle.ref)  # out of the group
    await backend.stop(handle, spec, grace=5)
    await wait_until(lambda: not alive(daemon), timeout=5)
    await backend.aclose()


async def test_native_stop_after_a_crash_ends_the_daemon_it_left() -> None:
    backend = NativeBackend()
    spec = spec_for(free_port(), "--daemon-child", "--exit-after", "0.5")
    handle = await backend.start("m", spec)
    out: list[bytes] = []
    async for line in backend.logs(handle):  # to the end: it exits
        out.append(line)  # noqa: PERF401 - read while it grows
    daemon = logged_pid(out, b"daemon")
    assert alive(daemon)  # the server is gone, its daemon is not
    await backend.stop(handle, spec, grace=5)
    await wait_until(lambda: not alive(daemon), timeout=5)
    await backend.aclose()


async def test_native_cmd_stop_runs_with_pid(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    stopper = ("sh", "-c", f"echo ${{PID}} > {marker}; kill -TERM ${{PID}}")
    backend = NativeBackend()
    spec = spec_for(free_port(), cmd_stop=stopper)
    handle = await backend.start("m", spec)
    await until_ready(backend, handle, spec)
    info = await backend.stop(handle, spec, grace=5)
    assert marker.read_text().strip() == handle.ref
    assert info.code == 0
    await backend.aclose()


# Writes its pid to argv[1], SIGTERMs argv[2] if given, then hangs.
HANGING_STOPPER = (
    "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
    "sys.argv[2:] and os.kill(int(sys.argv[2]), 15); time.sleep(1000)"
)


@pytest.mark.parametrize(
    ("stops_server", "expected"),
    [
        pytest.param(False, (-signal.SIGKILL, True), id="hangs"),
        pytest.param(True, (0, False), id="stops-server-then-hangs"),
    ],
)
async def test_native_hanging_cmd_stop_is_killed_at_the_grace_deadline(
    tmp_path: Path, stops_server: bool, expected: tuple[int, bool]
) -> None:
    """cmdStop runs beside the grace timer: one that hangs cannot hang the stop."""
    pidfile = tmp_path / "stopper.pid"
    stopper = (PY, "-c", HANGING_STOPPER, str(pidfile), *(["${PID}"] * stops_server))
    backend = NativeBackend()
    spec = spec_for(free_port(), cmd_stop=stopper)
    handle = await backend.start("m", spec)
    await until_ready(backend, handle, spec)
    began = time.monotonic()
    info = await asyncio.wait_for(backend.stop(handle, spec, grace=1.0), 10)
    assert time.monotonic() - began < 2.5
    assert (info.code, info.forced) == expected
    server, stopper_pid = int(handle.ref), int(pidfile.read_text())
    assert group_members(server) == group_members(stopper_pid) == []
    await backend.aclose()


async def test_native_output_is_captured_line_by_line() -> None:
    backend = NativeBackend()
    port = free_port()
    spec = spec_for(port)
    handle = await backend.start("m", spec)
    first = await anext(backend.logs(handle))
    assert first.decode().startswith(
        f"fake-upstream listening on http://127.0.0.1:{port}"
    )
    await backend.stop(handle, spec, grace=5)
    await backend.aclose()


async def test_native_missing_binary_is_a_clear_start_error() -> None:
    backend = NativeBackend()
    spec = LaunchSpec(
        argv=("/nonexistent/llama-server", "--port", "1"), base_url="http://127.0.0.1:1"
    )
    with pytest.raises(BackendStartError, match="/nonexistent/llama-server"):
        await backend.start("m", spec)
    with pytest.raises(BackendStartError, match="empty command"):
        await backend.start("m", LaunchSpec(argv=(), base_url="http://127.0.0.1:1"))
    await backend.aclose()


async def test_native_exit_is_seen_by_health() -> None:
    backend = NativeBackend()
    spec = spec_for(free_port(), "--exit-on-start", "3")
    handle = await backend.start("m", spec)
    async with asyncio.timeout(10):
        while await backend.health(handle, spec) is not Health.EXITED:
            await asyncio.sleep(0.01)
    info = await backend.stop(handle, spec, grace=1)
    assert info.code == 3
    await backend.aclose()


def run_parent_then_sigkill_it(tmp_path: Path, *flags: str) -> list[int]:
    """Start the fake (with ``flags``) from a NativeBackend in another process,
    SIGKILL that process; return the server's pid and any ``child pid`` it
    printed."""
    port = free_port()
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, re, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from backends.native import NativeBackend
        from backends.base import LaunchSpec
        async def main():
            spec = LaunchSpec(argv=({PY!r}, {str(FAKE)!r}, "--port", "{port}",
                                    *{flags!r}),
                              base_url="http://127.0.0.1:{port}")
            backend = NativeBackend()
            handle = await backend.start("m", spec)
            pids = [handle.ref]
            async for line in backend.logs(handle):  # up to the banner
                if m := re.search(rb"(?:child|daemon) pid (\\d+)", line):
                    pids.append(m.group(1).decode())
                if b"listening" in line:
                    break
            print(*pids, flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        wait_until_sync(lambda: all(alive(p) for p in pids))
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
    return pids


def test_native_children_die_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """The kernel's parent-death signal: no orphan even after SIGKILL."""
    [child] = run_parent_then_sigkill_it(tmp_path)
    wait_until_sync(lambda: not alive(child), timeout=5)


def test_native_daemons_die_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """The lifeline also takes what left the group, by its mark."""
    _, daemon = run_parent_then_sigkill_it(tmp_path, "--daemon-child")
    wait_until_sync(lambda: not alive(daemon), timeout=5)


def test_native_grandchildren_die_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """The lifeline takes the whole group, not only the direct child."""
    child, grandchild = run_parent_then_sigkill_it(tmp_path, "--spawn-child")
    wait_until_sync(lambda: group_members(child) == [], timeout=2)
    assert not alive(grandchild)


async def test_a_stop_does_not_wait_long_for_a_stuck_proc_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading /proc can block on a process stuck in the kernel; the stop
    goes on without the stray search after STRAY_SCAN_S."""
    monkeypatch.setattr(native, "STRAY_SCAN_S", 0.2)
    release = threading.Event()

    def stuck(mark: str, pgid: int) -> frozenset[int]:
        release.wait(10)
        return frozenset()

    monkeypatch.setattr(native, "_strays", stuck)
    backend = NativeBackend()
    spec = spec_for(free_port())
    handle = await backend.start("m", spec)
    await until_ready(backend, handle, spec)
    began = time.monotonic()
    try:
        info = await asyncio.wait_for(backend.stop(handle, spec, grace=5), 5)
    finally:
        release.set()
    assert info.forced is False
    assert time.monotonic() - began < 2
    await backend.aclose()
