"""A kept-alive upstream connection that the server closes just as the next
request arrives (llama.cpp does after a long stream): the request is sent
again on a fresh connection instead of failing with a 502."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.harness import chat

if TYPE_CHECKING:
    from tests.harness import Apps

REPLY = b'{"id":"x","object":"chat.completion","choices":[]}'


async def closing_server() -> tuple[asyncio.Server, int, list[int]]:
    """Answers the first request of each connection (keep-alive) and closes
    the connection, unanswered, when a second request comes on it."""
    served: list[int] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                count += 1
                if count > 1:
                    return  # closed idle, as the request arrived
                served.append(count)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(REPLY)}\r\n\r\n".encode()
                    + REPLY
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, served


async def test_a_stale_keep_alive_connection_is_retried_once(apps: Apps) -> None:
    server, port, served = await closing_server()
    try:
        app = await apps.start(
            f"models: {{}}\npeers:\n  p:\n    proxy: http://127.0.0.1:{port}\n"
            "    models: [m]\n"
        )
        for _ in range(3):
            r = await app.client.post("/v1/chat/completions", json=chat("p/m"))
            assert r.status == 200, await r.text()
        assert len(served) == 3  # each on a fresh connection after a close
    finally:
        server.close()
        await server.wait_closed()
