"""The live event stream behind ``GET /api/events`` (llama-swap.md §5.3).

Framing and message types are llama-swap's, so its UI and other clients keep
working: ``event:message\\ndata:{"type": T, "data": "<JSON string>"}\\n\\n``.
Publishing never blocks; a subscriber whose backlog is full misses messages
(and a warning is logged once per burst).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("swapvisor.events")
BACKLOG = 1024


def frame(kind: str, data: Any) -> bytes:
    # Compact, as Go's json.Marshal writes it: byte for byte llama-swap's.
    compact = (",", ":")
    envelope = {"type": kind, "data": json.dumps(data, separators=compact)}
    return (
        b"event:message\ndata:"
        + json.dumps(envelope, separators=compact).encode()
        + b"\n\n"
    )


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()

    def publish(self, kind: str, data: Any) -> None:
        if not self._subscribers:
            return
        message = frame(kind, data)
        for queue in self._subscribers:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                log.debug("event subscriber backlog full; dropped a %s event", kind)

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        """End every stream (shutdown): clients reconnect to the next server."""
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(None)
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
