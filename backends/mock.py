"""Mock backend: a simulated container lifecycle in-process, for CI with no
container engine and no GPU.

Each "container" is a small OpenAI/Anthropic-compatible aiohttp server on
127.0.0.1 at the port of ``LaunchSpec.base_url``, so requests really go over
HTTP. ``LaunchSpec.mock`` (a ``MockSpec``) scripts its life: a start delay,
failing health probes, an exit at launch or after N requests, a stop signal
that is ignored, a slow graceful stop. Exit codes and log lines read like a
real server's, so the controller cannot tell it apart from the other backends
through the ``Backend`` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import yarl
from aiohttp import web

from backends.base import (
    BackendStartError,
    ExitInfo,
    Footprint,
    Handle,
    Health,
    LaunchSpec,
)
from backends.containers import ExitLog
from backends.probe import HttpProbe
from backends.specs import MockSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.base import Backend, SupportsOrphanCleanup

JSON = dict[str, object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A simulated crash drops open connections at once, as a dying process would.
CRASH_SHUTDOWN_S = 0.05
GRACEFUL_SHUTDOWN_S = 1.0


@dataclass(eq=False, slots=True)
class _Server:
    """One simulated container: its script, state and output."""

    ref: str
    model: str
    port: int
    spec: MockSpec
    lines: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    listening: bool = False
    exit: ExitInfo | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    health_probes: int = 0
    served: int = 0
    runner: web.AppRunner | None = None
    life: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def has_exited(self) -> bool:
        return self.exit is not None

    def log(self, text: str) -> None:
        if not self.exited.is_set():
            self.lines.put_nowait(f"{text}\n".encode())

    async def finish(self, code: int, *, forced: bool, shutdown_s: float) -> None:
        """The process ends: stop listening, close connections, end the output."""
        if self.exit is not None:
            return
        self.exit = ExitInfo(code=code, forced=forced)
        self.listening = False
        runner, self.runner = self.runner, None
        if runner is not None:
            # Closing the listener and the open connections; shutdown_s bounds
            # how long in-flight requests may still finish.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), shutdown_s + 1.0)
        self.lines.put_nowait(None)
        self.exited.set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class MockBackend:
    """Serves each model from a simulated server in this process.

    ``instance`` is accepted for symmetry with the container backends (it
    shows in the log lines); nothing outlives the process, so there are no
    orphans to reap.
    """

    kind: ClassVar[str] = "mock"

    def __init__(self, instance: str = "mock") -> None:
        self.instance = instance
        self._servers: dict[str, _Server] = {}
        self._exits = ExitLog()
        self._probe = HttpProbe()
        self._ids = itertools.count(1)

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        url = yarl.URL(spec.base_url)
        port = url.explicit_port
        if port is None or url.host not in ("127.0.0.1", "localhost"):
            raise BackendStartError(
                f"the mock backend serves on 127.0.0.1 only; base_url {spec.base_url}"
            )
        ref = f"mock-{os.getpid()}-{next(self._ids)}"
        server = _Server(ref, model, port, spec.mock or MockSpec())
        self._servers[ref] = server
        server.log(f"mock[{self.instance}]: starting model={model} id={ref}")
        server.life = asyncio.create_task(self._live(server), name=f"mock {ref}")
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def _live(self, server: _Server) -> None:
        spec = server.spec
        if spec.start_delay_s:
            await asyncio.sleep(spec.start_delay_s)
        if spec.startup_exit:
            server.log("fatal: simulated startup failure")
            await server.finish(spec.exit_code, forced=False, shutdown_s=0)
            return
        runner = web.AppRunner(
            _app(server), access_log=None, shutdown_timeout=GRACEFUL_SHUTDOWN_S
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", server.port).start()
        except OSError as exc:
            await runner.cleanup()
            server.log(f"fatal: cannot listen on 127.0.0.1:{server.port}: {exc}")
            await server.finish(1, forced=False, shutdown_s=0)
            return
        server.runner = runner
        server.listening = True
        server.log(
            f"mock listening on http://127.0.0.1:{server.port} model={server.model}"
        )

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        server = self._servers.get(handle.ref)
        if server is not None and not server.has_exited() and not server.listening:
            return Health.STARTING  # still "loading": nothing to probe yet
        return await self._probe.health(
            handle, spec, exited=lambda: server is None or server.has_exited()
        )

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        server = self._servers.pop(handle.ref, None)
        if server is None:
            return self._exits.get(handle.ref) or ExitInfo(code=None, forced=False)
        if server.life is not None and not server.life.done():
            server.life.cancel()  # still "loading": the stop interrupts it
            with contextlib.suppress(asyncio.CancelledError):
                await server.life
        if server.exit is None:
            server.log("got SIGTERM")
            mock = server.spec
            if mock.ignore_stop or mock.stop_delay_s > grace:
                if mock.ignore_stop:
                    server.log("ignoring SIGTERM")
                await asyncio.sleep(max(grace, 0.0))
                await server.finish(
                    -signal.SIGKILL, forced=True, shutdown_s=CRASH_SHUTDOWN_S
                )
            else:
                await asyncio.sleep(mock.stop_delay_s)
                server.log("exiting")
                await server.finish(0, forced=False, shutdown_s=GRACEFUL_SHUTDOWN_S)
        for task in list(server.tasks):
            task.cancel()
        assert server.exit is not None
        self._exits.put(handle.ref, server.exit)
        return server.exit

    async def footprint(self, handle: Handle) -> Footprint:
        """No processes of its own (it runs inside swapvisor); the memory its
        spec declares (``memory``), from launch until it exits."""
        server = self._servers.get(handle.ref)
        if server is None or server.has_exited():
            return Footprint()
        return Footprint(host_bytes=server.spec.memory_bytes)

    async def wait(self, handle: Handle) -> None:
        """Return once the simulated server has exited."""
        server = self._servers.get(handle.ref)
        if server is not None:
            await server.exited.wait()

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        server = self._servers.get(handle.ref)
        if server is None:
            return
        while (line := await server.lines.get()) is not None:
            yield line

    async def reap_orphans(self) -> list[str]:
        return []  # in-process servers cannot outlive swapvisor

    async def aclose(self) -> None:
        await self._probe.aclose()


# -- the simulated server's HTTP API ------------------------------------------


def _app(server: _Server) -> web.Application:
    app = web.Application()

    def counted(handler: Handler) -> Handler:
        """An inference request: logged, counted, and maybe the last one."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            server.log(f"request {request.method} {request.path}")
            resp = await handler(request)
            server.served += 1
            limit = server.spec.crash_after_requests
            if limit is not None and server.served >= limit and server.exit is None:
                # The answer goes out in full first; then the process "dies".
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write_eof()
                server.log(f"crash after {server.served} requests")
                server.spawn(
                    server.finish(
                        server.spec.exit_code,
                        forced=False,
                        shutdown_s=CRASH_SHUTDOWN_S,
                    )
                )
            return resp

        return wrapped

    async def health(request: web.Request) -> web.StreamResponse:
        failures = server.spec.health_failures
        server.health_probes += 1
        if failures < 0 or server.health_probes <= failures:
            return web.json_response(
                {"error": {"message": "Loading model", "code": 503}}, status=503
            )
        return web.json_response({"status": "ok"})

    async def models(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": server.model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "swapvisor-mock",
                    }
                ],
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return await _openai(request, server, body, chat=True)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return await _openai(request, server, body, chat=False)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(text))}
            for i, text in enumerate(inputs)
        ]
        n = _count(" ".join(str(t) for t in inputs))
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", server.model),
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return await _anthropic(request, server, body)

    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", counted(chat))
    app.router.add_post("/v1/completions", counted(completions))
    app.router.add_post("/v1/embeddings", counted(embeddings))
    app.router.add_post("/v1/messages", counted(messages))
    return app


async def _body(request: web.Request) -> JSON:
    try:
        doc = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": "body is not JSON"}}),
            content_type="application/json",
        ) from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": "body is not a JSON object"}}),
            content_type="application/json",
        )
    return doc


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _count(text: str) -> int:
    return max(1, len(text.split()))


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [i / 2**31 - 1.0 for i in struct.unpack("<8I", digest)]


def _prompt_text(body: JSON) -> str:
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                parts.append(content)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    return " ".join(parts)


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    return resp


async def _openai(
    request: web.Request, server: _Server, body: JSON, *, chat: bool
) -> web.StreamResponse:
    model = body.get("model", server.model)
    pieces = _pieces(server.spec.reply)
    usage = {
        "prompt_tokens": _count(_prompt_text(body)),
        "completion_tokens": len(pieces),
        "total_tokens": _count(_prompt_text(body)) + len(pieces),
    }
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(8).hex()}"
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"

    def choice(text: str | None, finish: str | None, *, delta: bool) -> JSON:
        if not chat:
            return {"index": 0, "text": text or "", "finish_reason": finish}
        key = "delta" if delta else "message"
        content: JSON = {} if text is None else {"content": text}
        if not delta:
            content["role"] = "assistant"
        return {"index": 0, key: content, "finish_reason": finish}

    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice(server.spec.reply, "stop", delta=False)],
                "usage": usage,
            }
        )
    resp = await _sse(request)
    chunk_kind = f"{kind}.chunk" if chat else kind

    async def send(choices: list[JSON], extra: JSON | None = None) -> None:
        doc: JSON = {
            "id": ident,
            "object": chunk_kind,
            "created": created,
            "model": model,
            "choices": choices,
            **(extra or {}),
        }
        await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

    for piece in pieces:
        await send([choice(piece, None, delta=True)])
        if server.spec.chunk_delay_s:
            await asyncio.sleep(server.spec.chunk_delay_s)
    await send([choice(None, "stop", delta=True)])
    await send([], {"usage": usage})
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _anthropic(
    request: web.Request, server: _Server, body: JSON
) -> web.StreamResponse:
    model = body.get("model", server.model)
    pieces = _pieces(server.spec.reply)
    ident = f"msg_{os.urandom(8).hex()}"
    in_n = _count(_prompt_text(body))
    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": server.spec.reply}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": in_n, "output_tokens": len(pieces)},
            }
        )
    resp = await _sse(request)

    async def event(name: str, doc: JSON) -> None:
        data = json.dumps({"type": name, **doc}).encode()
        await resp.write(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")

    await event(
        "message_start",
        {
            "message": {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": in_n, "output_tokens": 1},
            }
        },
    )
    await event(
        "content_block_start",
        {"index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for piece in pieces:
        await event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        if server.spec.chunk_delay_s:
            await asyncio.sleep(server.spec.chunk_delay_s)
    await event("content_block_stop", {"index": 0})
    await event(
        "message_delta",
        {
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(pieces)},
        },
    )
    await event("message_stop", {})
    return resp


if TYPE_CHECKING:
    _check: type[Backend] = MockBackend
    _check_reap: type[SupportsOrphanCleanup] = MockBackend
