"""The backend contract: what every way of running a model server must offer.

Backends are mechanism, not policy: they launch, probe, tail and stop one
workload. Retries, deadlines and eviction live in ``controller``. This module
imports nothing outside the standard library (``backends.specs`` is stdlib too).

Error tree::

    BackendError
    ├── BackendStartError    could not launch (bad command, missing image)
    ├── BackendUnavailable   the engine itself is unreachable
    └── BackendNotInstalled  the backend's optional dependency is missing

Container engines also offer ``SupportsOrphanCleanup``: a second, optional
protocol, so the core ``Backend`` stays the same for every kind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from backends.specs import ContainerSpec, MockSpec


class BackendError(Exception):
    """Root of every error a backend raises."""


class BackendStartError(BackendError):
    """The workload could not be launched; the message says why."""


class BackendUnavailable(BackendError):
    """The backend's infrastructure (a container engine) cannot be reached."""


class BackendNotInstalled(BackendError):
    """The backend needs an optional dependency; the message names the extra."""


class Health(enum.Enum):
    STARTING = "starting"  # alive, the check endpoint does not answer 200 yet
    READY = "ready"  # the check endpoint answered 200 (or no check is configured)
    EXITED = "exited"  # the process or container is gone


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a backend needs to launch one model server.

    ``cmd_stop`` may hold the literal ``${PID}``; the backend replaces it with the
    workload's pid when it stops it.

    ``container`` is what the container backends (docker, podman) run; when its
    ``command`` is empty they run ``argv`` inside the image, and ``env`` is
    merged under ``container.env``. ``mock`` drives the mock backend's
    simulated lifecycle. The native backend ignores both.
    """

    argv: tuple[str, ...]
    base_url: str
    check_endpoint: str | None = "/health"  # None: ready as soon as launched
    env: Mapping[str, str] = field(default_factory=dict)
    cmd_stop: tuple[str, ...] = ()
    probe_timeout_s: float = 2.0
    container: ContainerSpec | None = None
    mock: MockSpec | None = None
    # GPU indices the workload is placed on by the resources engine (native:
    # CUDA_VISIBLE_DEVICES; containers: device requests / CDI devices, in
    # place of the container's own ``gpus``). None: not placed.
    devices: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Handle:
    """A launched workload. ``ref`` is the pid or container id."""

    model: str
    kind: str
    ref: str
    base_url: str


@dataclass(frozen=True, slots=True)
class ExitInfo:
    code: int | None  # None when unknown (never observed the exit)
    forced: bool  # True when the grace period ran out and the workload was killed

    def describe(self) -> str:
        if self.code is None:
            return "exit status unknown"
        if self.code < 0:
            return f"killed by signal {-self.code}"
        return f"exit code {self.code}"


@dataclass(frozen=True, slots=True)
class Footprint:
    """What one workload holds in host memory now, and which processes it is.

    ``pids`` are the host pids of its processes (the process tree of a native
    server, a container's processes), so accelerator memory can be attributed
    per process (NVML); empty when they cannot be known. ``host_bytes`` is
    its host memory: PSS (else RSS) summed over the process tree, or the
    container cgroup's usage; None when it cannot be read.
    """

    pids: frozenset[int] = frozenset()
    host_bytes: int | None = None


class Backend(Protocol):
    """One way of running model servers (native process, container engine, mock).

    Calls for one handle are never concurrent: ``controller.upstream.Upstream``
    serialises them. No method blocks the event loop.
    """

    kind: ClassVar[str]

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        """Launch the workload and return once it exists (not once it is ready).

        Raises BackendStartError when it cannot be launched. If cancelled after
        launching, kills what it launched before re-raising.
        """
        ...

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        """One cheap probe, bounded by ``spec.probe_timeout_s``.

        Never raises because of the workload's own condition: a dead workload is
        EXITED, a slow or failing one STARTING. Raises BackendUnavailable only if
        the backend's infrastructure is unreachable.
        """
        ...

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        """Stop gracefully, kill after ``grace`` seconds, wait, clean up.

        Idempotent: stopping an exited workload just reports how it ended.
        """
        ...

    async def footprint(self, handle: Handle) -> Footprint:
        """What the workload holds in memory now (cheap; a few reads).

        Never raises because of the workload's condition: an exited one is
        ``Footprint()``. Raises BackendUnavailable only if the engine is gone.
        """
        ...

    def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        """Yield the workload's output line by line from launch to exit.

        Exactly one consumer reads it (the Upstream's log pump).
        """
        ...

    async def aclose(self) -> None:
        """Release clients and sessions. Does not stop workloads."""
        ...


@runtime_checkable
class SupportsOrphanCleanup(Protocol):
    """A backend whose workloads can outlive swapvisor (container engines).

    Every workload carries the backend's instance id (a container label), so a
    new swapvisor with the same instance id finds what an earlier run left
    behind when it was SIGKILLed, and removes it before serving.
    """

    async def reap_orphans(self) -> list[str]:
        """Remove every workload labelled with this instance that this backend
        process did not start; return their names. Call it once at start-up."""
        ...
