"""Helpers for the routing, reload and feature integration tests.

``Apps`` starts the real app in-process from a config *file* (so a Reloader can
re-read it), with the native backend and real upstream processes on 127.0.0.1.
Model ports come from a block below the kernel's ephemeral range, so a port
``${PORT}`` hands out can never be taken meanwhile by the source port of some
outgoing connection (health probes open many). ``Apps`` also runs extra real
processes (a peer, a websocket server) and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from backends.native import NativeBackend
from controller.config.loader import load_config
from controller.engine.states import UpstreamState
from controller.http.app import create_app
from controller.http.keys import NAMES, RUNTIME
from tests.conftest import FAKE, PY, ROOT, port_block

if TYPE_CHECKING:
    from asyncio.subprocess import Process
    from collections.abc import Iterable

    from controller.dispatch.names import Names
    from controller.engine.router import Router
    from controller.engine.runtime import Runtime
    from controller.engine.upstream import Upstream

WS_ECHO = ROOT / "tests" / "fakes" / "ws_echo.py"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ws_cmd(*flags: str) -> str:
    """A ``cmd`` line running the websocket echo server on ``${PORT}``."""
    return f"{PY} {WS_ECHO} --port ${{PORT}} {' '.join(flags)}".rstrip()


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (asserting the framing)."""
    text = raw.decode()
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), f"not an SSE data event: {block!r}"
        events.append(block[len("data: ") :])
    return events


@dataclass
class App:
    """One in-process swapvisor serving on 127.0.0.1."""

    client: TestClient  # type: ignore[type-arg]
    runtime: Runtime
    config_path: Path
    start_port: int
    names: Names

    @property
    def router(self) -> Router:
        return self.runtime.router

    def upstream(self, model: str) -> Upstream:
        return self.router.upstreams[model]

    def state(self, model: str) -> str:
        return self.upstream(model).state.value

    def running(self) -> list[str]:
        """Models that are starting, ready or stopping, sorted."""
        return sorted(m for m, u in self.router.upstreams.items() if u.running)

    def ready(self) -> list[str]:
        return sorted(
            m
            for m, u in self.router.upstreams.items()
            if u.state is UpstreamState.READY
        )

    def pid(self, model: str) -> int | None:
        handle = self.upstream(model)._handle
        return None if handle is None else int(handle.ref)

    def write_config(self, yaml_text: str) -> None:
        """Replace the config file (same startPort, so ports stay put)."""
        self.config_path.write_text(f"startPort: {self.start_port}\n{yaml_text}")

    async def reply(self, model: str, **extra: object) -> str:
        """Chat with ``model``; assert 200; the reply's text (the fake answers
        "hello from <its --model>")."""
        r = await self.client.post("/v1/chat/completions", json=chat(model, **extra))
        text = await r.text()
        assert r.status == 200, f"{model}: {r.status} {text}"
        return str(json.loads(text)["choices"][0]["message"]["content"])


@dataclass
class Apps:
    """Starts apps and helper processes; ``aclose`` stops all of them."""

    tmp_path: Path
    _clients: list[TestClient] = field(default_factory=list)  # type: ignore[type-arg]
    _procs: list[Process] = field(default_factory=list)
    _count: int = 0

    async def start(self, yaml_text: str) -> App:
        start_port = port_block()
        self._count += 1
        path = self.tmp_path / f"routing-{self._count}.yaml"
        path.write_text(f"startPort: {start_port}\n{yaml_text}")
        config = load_config(path).config
        app = create_app(config, NativeBackend())
        server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
        client = TestClient(server)
        await client.start_server()
        self._clients.append(client)
        return App(client, app[RUNTIME], path, start_port, app[NAMES])

    async def spawn(self, argv: list[str], health_url: str) -> Process:
        """Run a helper server; return once ``health_url`` answers 200."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._procs.append(proc)
        async with aiohttp.ClientSession() as session, asyncio.timeout(15):
            while True:
                assert proc.returncode is None, f"{argv} exited: {proc.returncode}"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(health_url) as r:
                        if r.status == 200:
                            return proc
                await asyncio.sleep(0.02)

    async def fake_server(self, model: str, *flags: str) -> tuple[str, int]:
        """A fake upstream run directly (not by swapvisor): (base URL, pid)."""
        port = port_block(1)
        url = f"http://127.0.0.1:{port}"
        argv = [PY, str(FAKE), "--port", str(port), "--model", model, *flags]
        proc = await self.spawn(argv, url + "/health")
        return url, proc.pid

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()
        for proc in self._procs:
            if proc.returncode is None:
                proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class StateLog:
    """Every state change of a router's upstreams, with a monotonic timestamp."""

    events: list[tuple[float, str, str]] = field(default_factory=list)

    @classmethod
    def attach(cls, router: Router) -> StateLog:
        """Record the changes of every upstream the router has now."""
        return cls.watch(router.upstreams.values())

    @classmethod
    def watch(cls, upstreams: Iterable[Upstream]) -> StateLog:
        log = cls()
        for upstream in upstreams:
            original = upstream._on_change

            def record(
                u: Upstream,
                old: UpstreamState,
                new: UpstreamState,
                _original: Any = original,
            ) -> None:
                log.events.append((time.monotonic(), u.id, new.value))
                if _original is not None:
                    _original(u, old, new)

            upstream._on_change = record
        return log

    def entered(self, state: str) -> list[str]:
        """Models in the order they entered ``state``."""
        return [m for _, m, s in self.events if s == state]

    def max_together(self, states: frozenset[str]) -> tuple[int, set[str]]:
        """The most models ever in ``states`` at once, and one such set."""
        now: dict[str, str] = {}
        best: tuple[int, set[str]] = (0, set())
        for _, model, state in self.events:
            now[model] = state
            together = {m for m, s in now.items() if s in states}
            if len(together) > best[0]:
                best = (len(together), together)
        return best


RUNNING_STATES = frozenset({"starting", "ready", "stopping"})
