"""Runtime: what the handlers work with, replaced as one piece on a reload.

Holds the config, the router (and through it every Upstream), the proxy's HTTP
client, the active profile and the selectors' reservations.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from controller.engine.pool import BackendPool, default_instance
from controller.engine.router import Router
from controller.errors import ControllerError
from controller.proxy import Proxy
from controller.selection import Profiles, Selectors

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Backend
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
    ) -> None:
        self.config = config
        self.backends = BackendPool(backend, instance or default_instance())
        self.router = Router(config, self.backends, model_logs)
        self.proxy = Proxy()
        self.profiles = Profiles(config)
        self.selectors = Selectors(config, self.router.state_of)

    def reload(self, config: Config) -> list[str]:
        """Swap in a validated config; returns the models that will restart."""
        restarting = self.router.reconfigure(config)
        self.config = config
        self.profiles = Profiles(config)  # as llama-swap: a reload resets it
        self.selectors = Selectors(config, self.router.state_of)
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
        await self.router.aclose()
        await self.proxy.aclose()
