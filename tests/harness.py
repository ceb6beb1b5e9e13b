"""The in-process harness: swapvisor's real app, served on 127.0.0.1 by
aiohttp's test server, over the native backend and real upstream processes.

``Apps.start`` writes the config to a *file* (so a Reloader can re-read it)
and serves it; ``App`` reaches the running pieces (runtime, router, names,
log monitors) and talks to it over real HTTP. Model ports come from a block
below the kernel's ephemeral range, so a port ``${PORT}`` hands out can never
be taken meanwhile by the source port of some outgoing connection (health
probes open many). ``Apps`` also runs extra real processes (a peer, a
websocket server) and stops everything it started. The ``apps`` fixture in
``tests/conftest.py`` hands one to a test. ``StateLog`` records every state
change of a router's upstreams, for the routing tests.

swapvisor as a real subprocess is the ``swapvisor`` fixture (``Swapvisor``,
also in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from backends.native import NativeBackend
from controller.config.loader import load_config
from controller.engine.states import UpstreamState
from controller.http.app import create_app
from controller.http.keys import LOGS, NAMES, RUNTIME
from controller.observability.logs import Logs, install
from tests.conftest import FAKE, PY, ROOT, port_block

if TYPE_CHECKING:
    from asyncio.subprocess import Process
    from collections.abc import Iterable
    from pathlib import Path

    from aiohttp import web

    from backends.memory import MemoryProbe
    from controller.dispatch.names import Names
    from controller.engine.router import Router
    from controller.engine.runtime import Runtime
    from controller.engine.upstream import Upstream

WS_ECHO = ROOT / "tests" / "fakes" / "ws_echo.py"


def ws_cmd(*flags: str) -> str:
    """A ``cmd`` line running the websocket echo server on ``${PORT}``."""
    return f"{PY} {WS_ECHO} --port ${{PORT}} {' '.join(flags)}".rstrip()


def chat(model: str, **extra: object) -> dict[str, object]:
    """A chat completion request body for ``model`` saying "hi"."""
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
    app: web.Application
    config_path: Path
    start_port: int
    # What the log monitors print (``Apps.start``'s ``log_to_stdout``).
    stdout: io.StringIO

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def router(self) -> Router:
        return self.runtime.router

    @property
    def names(self) -> Names:
        return self.app[NAMES]

    @property
    def logs(self) -> Logs:
        return self.app[LOGS]

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

    async def chat(
        self,
        model: str,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> tuple[int, Any]:
        """POST a chat completion; (status, JSON body or the raw SSE text)."""
        r = await self.client.post(
            "/v1/chat/completions", json=chat(model, **extra), headers=headers
        )
        text = await r.text()
        if r.content_type == "application/json":
            return r.status, json.loads(text)
        return r.status, text

    async def json(self, path: str, status: int = 200) -> Any:
        """GET ``path``; assert ``status``; the JSON body."""
        r = await self.client.get(path)
        body = await r.text()
        assert r.status == status, f"GET {path}: {r.status} {body}"
        return json.loads(body)


@dataclass
class Apps:
    """Starts apps and helper processes; ``aclose`` stops all of them and puts
    the ``swapvisor`` loggers back as they were."""

    tmp_path: Path
    _clients: list[TestClient] = field(default_factory=list)  # type: ignore[type-arg]
    _procs: list[Process] = field(default_factory=list)
    _count: int = 0
    _saved_logger: tuple[int, bool, list[logging.Handler]] = field(init=False)

    def __post_init__(self) -> None:
        root = logging.getLogger("swapvisor")
        self._saved_logger = (root.level, root.propagate, list(root.handlers))

    async def start(
        self,
        yaml_text: str,
        *,
        log_to_stdout: str | None = None,
        memory: MemoryProbe | None = None,
    ) -> App:
        """Serve ``yaml_text`` (a fresh ``startPort`` block is put in front).

        ``log_to_stdout`` None: the ``swapvisor`` loggers are left alone (pytest
        captures them) and the monitors print nothing. A mode (``proxy``,
        ``upstream``, ``both``, ``none``): swapvisor's own log handler is
        installed as the command line does, and the monitors print to
        ``App.stdout``. ``memory``: the machine's memory as the resources
        engine sees it (a fake NVML behind ``SystemMemory``)."""
        start_port = port_block()
        self._count += 1
        path = self.tmp_path / f"app-{self._count}.yaml"
        path.write_text(f"startPort: {start_port}\n{yaml_text}")
        config = load_config(path).config
        stdout = io.StringIO()
        logs = Logs(log_to_stdout or "none", stdout=stdout)
        if log_to_stdout is not None:
            install(logs, config.log_level, config.log_time_format)
        app = create_app(config, NativeBackend(), logs, memory=memory)
        server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
        client = TestClient(server)
        await client.start_server()
        self._clients.append(client)
        return App(client, app, path, start_port, stdout)

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
        root = logging.getLogger("swapvisor")
        root.setLevel(self._saved_logger[0])
        root.propagate = self._saved_logger[1]
        root.handlers[:] = self._saved_logger[2]


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
