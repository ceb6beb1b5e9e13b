"""Shared fixtures: free ports, config files, the fake upstream command,
swapvisor itself as a real subprocess (``swapvisor``) and in-process
(``apps``, from ``tests/harness.py``). Every fixture that starts something
stops it (and checks nothing it started is left running)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from io import TextIOWrapper

    from tests.harness import Apps

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fakes" / "fake_upstream.py"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Below Linux's default ephemeral range (32768-60999): no outgoing connection's
# source port can land here, so a block found free stays free.
_PORT_LOW, _PORT_HIGH = 20000, 32000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_block(n: int = 16) -> int:
    """The first of ``n`` consecutive free ports outside the ephemeral range
    (for ``startPort``: models get consecutive ports)."""
    for _ in range(500):
        base = random.randrange(_PORT_LOW, _PORT_HIGH - n)
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports")


def fake_cmd(model: str, *flags: str) -> str:
    """A ``cmd`` line that runs the fake upstream on ``${PORT}``."""
    extra = " ".join(flags)
    return f"{PY} {FAKE} --port ${{PORT}} --model {model} {extra}".rstrip()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_of(pattern: str) -> list[int]:
    """Live processes whose command line contains ``pattern`` (zombies excluded)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmdline and alive(int(entry.name)):
            out.append(int(entry.name))
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` under a deadline (never a bare sleep-and-hope)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text to a fresh config file and return its path."""
    counter = iter(range(1000))

    def write(text: str) -> Path:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(text)
        return path

    return write


@dataclass
class Swapvisor:
    """A running ``python -m controller`` subprocess."""

    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    marker: str  # a string unique to this test's upstream command lines
    _log: TextIOWrapper | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text()

    def upstream_pids(self) -> list[int]:
        return pids_of(self.marker)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def swapvisor(
    tmp_path: Path,
) -> Iterator[Callable[..., Swapvisor]]:
    """Factory: start swapvisor on a config path; wait for /health; clean up.

    Upstream ``cmd`` lines should contain ``marker`` (tests use the tmp path)
    so leftovers can be found by command line.
    """
    started: list[Swapvisor] = []

    def start(
        config: Path, *extra: str, marker: str = "", env: dict[str, str] | None = None
    ) -> Swapvisor:
        port = free_port()
        log_path = tmp_path / f"swapvisor-{port}.log"
        log = log_path.open("w")
        full_env = {**os.environ, **(env or {})}
        # Children (the launchers) find this venv's python first.
        full_env["PATH"] = f"{Path(PY).parent}{os.pathsep}{full_env.get('PATH', '')}"
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "controller",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                *extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
        )
        sv = Swapvisor(proc, port, log_path, marker or str(config.parent), log)
        started.append(sv)
        _wait_healthy(sv)
        return sv

    yield start
    for sv in started:
        if sv.proc.poll() is None:
            sv.proc.kill()
            sv.proc.wait(10)
        if sv._log is not None:
            sv._log.close()
        for pid in sv.upstream_pids():  # never leave a process behind
            os.kill(pid, signal.SIGKILL)


def _wait_healthy(sv: Swapvisor) -> None:
    import urllib.request

    def up() -> bool:
        if sv.proc.poll() is not None:
            raise RuntimeError(f"swapvisor exited: {sv.output()}")
        try:
            with urllib.request.urlopen(sv.url + "/health", timeout=1) as r:
                # Not the early listener's answer: the app serves now.
                return r.status == 200 and "X-Swapvisor-State" not in r.headers
        except OSError:
            return False

    wait_until_sync(up, timeout=20)


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[Apps]:
    """The in-process harness (``tests.harness.Apps``); everything it started
    is stopped afterwards."""
    from tests.harness import Apps  # the harness imports this module

    apps = Apps(tmp_path)
    yield apps
    await apps.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# In CI every tier must really run: a container, browser or model test that
# skips there (setup quietly failed) turns the run red instead of green.
_ALLOWED_SKIPS = ("root may write anywhere",)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SWAPVISOR_REQUIRE_ALL") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [
        r
        for r in reporter.stats.get("skipped", [])
        if not any(a in str(r.longrepr) for a in _ALLOWED_SKIPS)
    ]
    if skipped:
        reporter.write_line(
            f"SWAPVISOR_REQUIRE_ALL: {len(skipped)} tests skipped; every tier must "
            f"run in CI. First: {skipped[0].nodeid}: {skipped[0].longrepr}",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
