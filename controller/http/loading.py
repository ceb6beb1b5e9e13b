"""``sendLoadingState``: while a model loads, stream progress to a streaming chat
client as ``reasoning_content`` chunks (llama-swap.md §3.6).

The format matches llama-swap's so UIs that strip the block between the
``━━━━━`` markers keep working. Unlike llama-swap, a failed load ends the
stream with a well-formed SSE error event, never raw JSON, and so does a
failure after it (the 200 is gone by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable

MARKER = "━━━━━"
TICK_S = 0.75


def reasoning_chunk(text: str) -> bytes:
    payload = {"choices": [{"index": 0, "delta": {"reasoning_content": text}}]}
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class LoadingStream:
    """Writes the loading block into an SSE response until ``finish``."""

    def __init__(
        self,
        response: web.StreamResponse,
        model_id: str,
        position: Callable[[], int | None],
    ) -> None:
        self._response = response
        self._model_id = model_id
        self._position = position
        self._began = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._done = False  # the loading block is closed

    @classmethod
    async def open(
        cls, request: web.Request, model_id: str, position: Callable[[], int | None]
    ) -> LoadingStream:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        await response.prepare(request)
        stream = cls(response, model_id, position)
        await stream._write(
            reasoning_chunk(f"{MARKER}\nswapvisor loading model: {model_id}\n")
        )
        stream._ticker = asyncio.create_task(stream._tick())
        return stream

    @property
    def response(self) -> web.StreamResponse:
        return self._response

    async def _tick(self) -> None:
        last_position: int | None = None
        while True:
            await asyncio.sleep(TICK_S)
            position = self._position()
            if position is not None and position != last_position:
                text = f"\nQueue position: #{position} "
            else:
                text = "."
            last_position = position
            await self._write(reasoning_chunk(text))

    async def _write(self, data: bytes) -> None:
        # A client that has left is told nothing more; the proxy says so in
        # the log when it relays the answer.
        with contextlib.suppress(ConnectionError):
            await self._response.write(data)

    async def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None

    async def finish(self) -> None:
        """The model is ready: close the block; the upstream's stream follows."""
        await self._stop_ticker()
        self._done = True
        elapsed = time.monotonic() - self._began
        await self._write(reasoning_chunk(f"\nDone! ({elapsed:.2f}s)\n{MARKER}\n "))

    async def fail(self, sse_error: bytes) -> web.StreamResponse:
        """End the stream with a well-formed error event: a failed load closes
        the block first; a failure after ``finish`` follows what was sent."""
        await self._stop_ticker()
        if not self._done:
            self._done = True
            await self._write(reasoning_chunk(f"\nFailed.\n{MARKER}\n "))
        await self._write(sse_error)
        with contextlib.suppress(ConnectionError):
            await self._response.write_eof()
        return self._response

    async def aclose(self) -> None:
        await self._stop_ticker()
