#!/usr/bin/env python3
"""Reference proxies for ``bench/stack_floor.py``: what a proxied request
costs before swapvisor's own code runs.

* ``bare``: an ``asyncio.Protocol`` front, one upstream connection per
  client connection, ``Content-Length`` bodies only, nothing parsed beyond
  the head's end and the length, nothing observed. The floor of any proxy
  on asyncio.
* ``front``: what a server front of swapvisor's own would cost before any of
  swapvisor's logic: an ``asyncio.Protocol`` whose requests aiohttp's C
  parser (llhttp) reads, a task per request, swapvisor's pooled lean upstream
  client, the response head written by hand. A request body must arrive
  with its head (the benchmark's small POSTs do): a measuring prototype.
* ``aiohttp``: aiohttp's ``web.Application`` and swapvisor's lean upstream
  client (``controller.http.wire``), the hop-by-hop headers dropped and
  nothing else: the stack swapvisor's data path is built on.
* ``unobserved``: swapvisor itself with its request observation switched off
  (no in-flight entry, activity row, capture, usage or metrics per request);
  the other arguments are swapvisor's. A measuring switch, not a feature.

    python bench/floor_proxies.py bare|front|aiohttp LISTEN_PORT UPSTREAM_PORT
    python bench/floor_proxies.py unobserved --config FILE --listen HOST:PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from aiohttp import web
    from aiohttp.http_parser import RawRequestMessage

HOST = "127.0.0.1"
_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def _message_end(buf: bytearray) -> int:
    """The end of the first whole message in ``buf`` (head and a
    Content-Length body), or -1 while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return -1
    head = bytes(buf[: end + 2]).lower()
    at = head.find(b"\r\ncontent-length:")
    length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
    whole = end + 4 + length
    return whole if len(buf) >= whole else -1


class _Upstream(asyncio.Protocol):
    def __init__(self, front: _Front) -> None:
        self._front = front
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := _message_end(self._buf)) > 0:
            self._front.reply(bytes(self._buf[:end]))
            del self._buf[:end]


class _Front(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self._port = upstream_port
        self._buf = bytearray()
        self._up: _Upstream | None = None
        self._waiting: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        task = asyncio.get_running_loop().create_task(self._connect())
        task.add_done_callback(lambda t: t.exception())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: _Upstream(self), HOST, self._port)
        self._up = up
        for message in self._waiting:
            self._send(message)
        self._waiting.clear()

    def _send(self, message: bytes) -> None:
        assert self._up is not None and self._up.transport is not None
        self._up.transport.write(message)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := _message_end(self._buf)) > 0:
            message = bytes(self._buf[:end])
            del self._buf[:end]
            if self._up is None:
                self._waiting.append(message)
            else:
                self._send(message)

    def reply(self, message: bytes) -> None:
        if self._transport is not None:
            self._transport.write(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()


async def bare(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Front(upstream_port), HOST, port)
    async with server:
        await server.serve_forever()


def _kept(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in _HOP]


async def front(port: int, upstream_port: int) -> None:
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_parser import HttpRequestParser

    from controller.http import wire

    client = wire.Client()
    base = f"http://{HOST}:{upstream_port}"
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    class Front(BaseProtocol):
        def __init__(self) -> None:
            super().__init__(loop)
            self._requests = HttpRequestParser(self, loop, 2**16)

        def data_received(self, data: bytes) -> None:
            messages, _, _ = self._requests.feed_data(data)
            for message, payload in messages:
                self._requests.message_consumed()
                body = payload.read_nowait(-1) if payload.is_eof() else b""
                task = loop.create_task(self._answer(message, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def _answer(self, message: RawRequestMessage, body: bytes) -> None:
            answer = await client.request(
                message.method,
                base + message.path,
                _kept(message.headers.items()),
                body or None,
                None,
            )
            async with answer:
                data = await answer.read()
            lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
            lines += [f"{k}: {v}" for k, v in _kept(answer.headers.items())]
            lines.append(f"Content-Length: {len(data)}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode()
            if self.transport is not None:
                self.transport.write(head + data)

    server = await loop.create_server(Front, HOST, port)
    async with server:
        await server.serve_forever()


def aiohttp_proxy(port: int, upstream_port: int) -> None:
    from aiohttp import web

    from controller.http import wire

    client = wire.Client()
    base = f"http://{HOST}:{upstream_port}"

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        answer = await client.request(
            request.method,
            base + request.path_qs,
            _kept(request.headers.items()),
            body or None,
            None,
        )
        async with answer:
            data = await answer.read()
        headers = _kept(answer.headers.items())
        return web.Response(status=answer.status, body=data, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def unobserved(argv: list[str]) -> int:
    from controller.cli.entry import main
    from controller.http import inference

    @contextlib.contextmanager
    def observed(*_: object, **__: object) -> Iterator[None]:
        yield None

    # A renamed hook would leave this variant observing, silently.
    if not callable(getattr(inference, "observed", None)):
        raise SystemExit("controller.http.inference.observed is gone: update bench")
    inference.observed = observed
    return main(argv)


if __name__ == "__main__":
    kind, rest = sys.argv[1], sys.argv[2:]
    if kind == "bare":
        asyncio.run(bare(int(rest[0]), int(rest[1])))
    elif kind == "front":
        asyncio.run(front(int(rest[0]), int(rest[1])))
    elif kind == "aiohttp":
        aiohttp_proxy(int(rest[0]), int(rest[1]))
    elif kind == "unobserved":
        sys.exit(unobserved(rest))
    else:
        sys.exit(f"unknown kind {kind!r}: bare, front, aiohttp or unobserved")
