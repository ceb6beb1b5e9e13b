"""swapvisor's one upstream client serves every user: a ``Set-Cookie`` an
upstream sends must reach the client that asked, and never come back to the
upstream on someone else's request (through the lean client, and through
aiohttp's, which a peer with an ``apiKey`` uses; a host name, as aiohttp's
default jar keeps no cookies for an IP address)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from tests.harness import chat

if TYPE_CHECKING:
    from tests.harness import Apps


async def cookie_server() -> tuple[asyncio.Server, int, list[bytes]]:
    """Sets a cookie on every answer and records each request's Cookie header."""
    seen: list[bytes] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = 0
                cookie = b""
                for line in lines:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    if name.lower() == b"cookie":
                        cookie = value.strip()
                await reader.readexactly(length)
                seen.append(cookie)
                body = json.dumps({"choices": [], "cookie": cookie.decode()}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Set-Cookie: session=secret-of-user-1; Path=/\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_an_upstream_cookie_is_never_replayed_to_it(apps: Apps) -> None:
    server, port, seen = await cookie_server()
    try:
        app = await apps.start(
            f"models:\n  m:\n    cmd: sleep 1000\n    proxy: http://127.0.0.1:{port}\n"
            "    checkEndpoint: none\n"
            f"peers:\n  p:\n    proxy: http://localhost:{port}\n    apiKey: k\n    models: [x]\n"
        )
        for model in ("m", "m", "p/x", "p/x"):
            app.client.session.cookie_jar.clear()  # each request another user
            r = await app.client.post("/v1/chat/completions", json=chat(model))
            assert r.status == 200, await r.text()
            assert r.headers.getall("Set-Cookie") == [
                "session=secret-of-user-1; Path=/"
            ]
        assert seen == [b"", b"", b"", b""]
    finally:
        server.close()
        await server.wait_closed()
