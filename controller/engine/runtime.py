"""Runtime: the engine as the handlers see it, reconfigured as one piece on a
reload.

Holds the config, the backend pool and the router (and through it every
Upstream). Layers above keep state that a reload resets (the active profile,
the selectors' reservations) and subscribe to ``reload_listeners``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from controller.engine.pool import BackendPool, default_instance
from controller.engine.router import Router
from controller.errors import ControllerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Backend
    from backends.memory import MemoryProbe
    from controller.config.model import Config
    from controller.engine.upstream import LogSink


log = logging.getLogger("swapvisor.http")


class Runtime:
    def __init__(
        self,
        config: Config,
        backend: Backend,
        model_logs: Callable[[str], LogSink] | None = None,
        instance: str | None = None,
        memory: MemoryProbe | None = None,
    ) -> None:
        self.config = config
        self.backends = BackendPool(backend, instance or default_instance())
        self.router = Router(config, self.backends, model_logs, memory)
        # The most any model gets to stop gracefully at shutdown (None: its
        # unloadTimeout), so a deployment's grace period can bound shutdown.
        self.shutdown_grace_cap: float | None = None
        # Called with the new config once it is in place, synchronously.
        self.reload_listeners: list[Callable[[Config], None]] = []

    def reload(self, config: Config) -> list[str]:
        """Swap in a validated config; returns the models that will restart."""
        restarting = self.router.reconfigure(config)
        self.config = config
        for listener in self.reload_listeners:
            listener(config)
        return restarting

    async def preload(self) -> None:
        """hooks.on_startup.preload: load each listed model in turn."""
        for name in self.config.hooks.on_startup.preload:
            model_id = self.config.resolve(name.strip())
            if model_id is None:
                continue  # warned about at config load
            try:
                async with self.router.lease(model_id):
                    log.info("preloaded %s", model_id)
            except ControllerError as exc:
                log.warning("preload of %s failed: %s", model_id, exc.message)

    async def aclose(self) -> None:
        await self.router.aclose(self.shutdown_grace_cap)
