"""The backends a config needs, made on first use and closed together.

Native is always there; docker, podman and mock are imported only when a
model uses them (their SDKs are optional extras). Containers carry this
instance's label, so a restarted swapvisor can remove what an earlier run of
the same instance left behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from typing import TYPE_CHECKING

from backends.base import BackendError, SupportsOrphanCleanup
from backends.registry import ensure_installed, load_backend
from controller.errors import ConfigError

if TYPE_CHECKING:
    from backends.base import Backend
    from controller.config.model import Config

log = logging.getLogger("swapvisor.backends")


def default_instance(port: int | None = None) -> str:
    """``SWAPVISOR_INSTANCE``, else the hostname and the listen port: stable
    across restarts of one deployment, distinct between two on one engine."""
    named = os.environ.get("SWAPVISOR_INSTANCE")
    raw = named or f"{socket.gethostname()}-{port or 'app'}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)[:63] or "swapvisor"


def check_backends(config: Config) -> None:
    """Raise ConfigError, one line naming the model and the missing extra, if
    a model's backend cannot be made here (``swapvisor check`` and start-up
    say so before anything runs)."""
    for mid, model in sorted(config.models.items()):
        try:
            ensure_installed(model.backend_kind)
        except BackendError as exc:
            raise ConfigError(f"model {mid}: {exc}") from exc


class BackendPool:
    def __init__(self, native: Backend, instance: str) -> None:
        self.instance = instance
        self._made: dict[tuple[str, str | None], Backend] = {("native", None): native}
        self._reaping: asyncio.Task[list[str]] | None = None

    def get(self, kind: str, engine_url: str | None = None) -> Backend:
        key = (kind, engine_url if kind in ("docker", "podman") else None)
        backend = self._made.get(key)
        if backend is None:
            kwargs: dict[str, object] = {"instance": self.instance}
            if kind in ("docker", "podman"):
                kwargs["engine_url"] = engine_url
            backend = self._made[key] = load_backend(kind, **kwargs)
        return backend

    def start_reaping(self, config: Config) -> None:
        """``reap_orphans`` in the background, owned by the pool (``aclose``
        cancels it). Start-up must not wait on an engine: one that never
        answers would keep swapvisor from listening, native models too. A
        start on an engine waits for that engine's reap (the backend sees to
        it), so an orphan holding the model's port is gone first."""
        self._reaping = asyncio.create_task(
            self.reap_orphans(config), name="reap orphans"
        )

    async def reap_orphans(self, config: Config) -> list[str]:
        """Remove containers an earlier run of this instance left behind."""
        # Once per backend (kind and engine), not per model: models share an
        # engine, and an unreachable one would be waited on once per model.
        # All engines at once: a slow one must not hold up the others.
        engines = sorted(
            {
                (m.backend_kind, m.engine_url)
                for m in config.models.values()
                if m.backend_kind in ("docker", "podman")
            },
            key=lambda e: (e[0], e[1] or ""),
        )
        backends = [self.get(kind, url) for kind, url in engines]
        found = await asyncio.gather(
            *(_reap(b) for b in backends if isinstance(b, SupportsOrphanCleanup))
        )
        removed = [name for names in found for name in names]
        for name in removed:
            log.warning("removed container %s left behind by an earlier run", name)
        return removed

    async def aclose(self) -> None:
        if self._reaping is not None:
            self._reaping.cancel()
            await asyncio.wait([self._reaping])
        for backend in self._made.values():
            try:
                await backend.aclose()
            except BackendError as exc:
                log.warning("closing a backend failed: %s", exc)


async def _reap(backend: SupportsOrphanCleanup) -> list[str]:
    try:
        return await backend.reap_orphans()
    except BackendError as exc:
        log.warning("could not look for leftover containers: %s", exc)
        return []
