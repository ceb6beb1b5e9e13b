"""Upstream lifecycle states and the edges between them. Imports nothing."""

from __future__ import annotations

import enum


class UpstreamState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"  # the last start failed; ``Upstream.failure`` says why


S = UpstreamState
ALLOWED: frozenset[tuple[UpstreamState, UpstreamState]] = frozenset(
    {
        (S.STOPPED, S.STARTING),  # ensure_ready
        (S.FAILED, S.STARTING),  # the next request tries again
        (S.STARTING, S.READY),  # health check passed
        (S.STARTING, S.FAILED),  # exited, bad command, deadline passed
        (S.STARTING, S.STOPPING),  # unloaded or evicted while starting
        (S.READY, S.STOPPING),  # unload, eviction, TTL, or the process exited
        (S.STOPPING, S.STOPPED),
    }
)

# States in which the model holds (or is about to hold, or still holds) memory.
RUNNING = frozenset({S.STARTING, S.READY, S.STOPPING})
