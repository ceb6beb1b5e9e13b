"""Upstream lifecycle states, the edges between them, and the records the
engine reports them in. Imports nothing."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UpstreamState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"  # the last start failed; ``Upstream.failure`` says why
    # The process stays but released its accelerator memory (sleep mode);
    # also while it is falling asleep. A request wakes it.
    SLEEPING = "sleeping"


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
        (S.STOPPING, S.FAILED),  # it died or stopped answering while idle
        (S.READY, S.SLEEPING),  # a swap evicts a sleep-capable model
        (S.SLEEPING, S.STARTING),  # a request wakes it (or restarts it)
        (S.SLEEPING, S.STOPPING),  # unload, sleepTTL, reload, death
    }
)

# States in which the model holds (or is about to hold, or still holds) memory.
RUNNING = frozenset({S.STARTING, S.READY, S.STOPPING})


@dataclass(frozen=True, slots=True)
class StateChange:
    """One upstream's state change, as the router reports it to observers."""

    model: str
    old: UpstreamState
    new: UpstreamState
    # Why the stop now beginning happened: swap, ttl, unload, reload,
    # shutdown or crash ("" when ``new`` is not STOPPING).
    reason: str = ""
    # Seconds from launch to ready or failure, when a start just ended.
    load_s: float | None = None


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A crash-looping model's quarantine: no start before ``until``."""

    reason: str  # the last start's failure
    failures: int  # failed starts in a row
    until: float  # wall-clock time (time.time()) when it ends
    backoff_s: float


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model as the router sees it now (advisory: for reports only)."""

    state: UpstreamState
    in_flight: int
    # Set while the model is quarantined after repeated failed starts.
    quarantine: Quarantine | None = None
    # Wall-clock time it fell asleep, while it sleeps.
    asleep_since: float | None = None

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def listed_state(self) -> str:
        """``status.value`` in ``/v1/models``: loaded, sleeping or unloaded."""
        if self.state is UpstreamState.SLEEPING:
            return "sleeping"
        return "loaded" if self.running else "unloaded"
