"""Live reload: SIGHUP or ``--watch-config`` re-reads the config.

A new config is validated first; if it is invalid the old one keeps serving and
the error is logged. Overlapping requests coalesce into one more reload.
Unlike llama-swap, which rebuilds everything, unchanged models keep running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from controller.config.loader import load_config
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from controller.engine.runtime import Runtime

log = logging.getLogger("swapvisor.reload")
WATCH_INTERVAL_S = 2.0

Fingerprint = tuple[tuple[str, int, int], ...]


class Reloader:
    def __init__(
        self,
        runtime: Runtime,
        config_file: Path | None,
        config_dir: Path | None,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._on_reload = on_reload
        self._file = config_file
        self._dir = config_dir
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.reloads = 0  # completed reloads, for tests and logs

    def request(self) -> None:
        """Reload soon; a request during a reload runs one more afterwards."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="config reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            await self.reload_now()
            if not self._again:
                return

    async def reload_now(self) -> bool:
        try:
            # Unchanged models keep their ${PORT}, so they keep running.
            ports = self._runtime.config.port_plan
            loaded = load_config(self._file, self._dir, ports=ports)
        except ConfigError as exc:
            log.warning(
                "failed to reload config: %s (still serving the old one)", exc.message
            )
            return False
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
        try:
            restarting = self._runtime.reload(loaded.config)
        except Exception as exc:  # a backend that cannot be made, say
            log.error(
                "failed to apply the reloaded config: %s (still serving the old one)",
                exc,
            )
            return False
        self.reloads += 1
        if self._on_reload is not None:
            self._on_reload()
        log.info(
            "config reloaded; restarting after drain: %s",
            ", ".join(restarting) or "none",
        )
        await self._runtime.preload()
        return True

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Poll the sources (works with bind mounts and ConfigMap symlink swaps)."""
        seen = self.fingerprint()
        while True:
            await asyncio.sleep(interval_s)
            now = self.fingerprint()
            if now != seen:
                seen = now
                log.info("config change detected")
                self.request()

    def fingerprint(self) -> Fingerprint:
        files = [self._file] if self._file is not None else []
        if self._dir is not None and self._dir.is_dir():
            files += sorted(
                p for p in self._dir.iterdir() if p.suffix in (".yml", ".yaml")
            )
        out = []
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue  # a vanished file is ignored until it reappears
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(out)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
