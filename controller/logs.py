"""Log buffers: a bounded history of a model's (or the proxy's) output.

Writers never block. Fan-out to live readers (``/logs/stream``) hangs off the
same buffer; a reader that falls behind loses lines, never slows the writer.
"""

from __future__ import annotations

import asyncio
from collections import deque

HISTORY_BYTES = 100 * 1024


class LogBuffer:
    """A byte-bounded ring of log lines with non-blocking subscribers."""

    def __init__(self, limit: int = HISTORY_BYTES) -> None:
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._subscribers: set[asyncio.Queue[bytes]] = set()

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        while self._size > self._limit and len(self._lines) > 1:
            self._size -= len(self._lines.popleft())
        for queue in self._subscribers:
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                pass  # a slow reader drops lines rather than stall the writer

    def history(self) -> bytes:
        return b"".join(self._lines)

    def tail(self, n: int) -> list[str]:
        """The last ``n`` non-empty lines as text, for error messages."""
        lines = [
            ln.decode("utf-8", "replace").rstrip() for ln in list(self._lines)[-n:]
        ]
        return [ln for ln in lines if ln]

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._subscribers.discard(queue)
