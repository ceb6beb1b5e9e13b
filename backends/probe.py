"""The shared readiness verdict: one GET of a server's check endpoint, and the
"exited? → no check endpoint → probe" order every backend's ``health`` follows.

Owned here so every backend probes and decides the same way; the polling loop
and its deadline belong to ``controller.upstream``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from backends.base import Health

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Handle, LaunchSpec


class HttpProbe:
    """GETs ``base_url + check_endpoint`` and reports whether it answered 200."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive: a probe is rare, and a pooled connection to a
            # server that restarted on the same port would fail spuriously.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                auto_decompress=False,
            )
        return self._session

    async def ok(self, url: str, timeout_s: float) -> bool:
        """True when the GET answered 200 within ``timeout_s``; never raises."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().get(url, timeout=timeout) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def health(
        self, handle: Handle, spec: LaunchSpec, *, exited: Callable[[], bool]
    ) -> Health:
        """EXITED when ``exited()``; READY when no check endpoint is configured
        or it answers 200; else STARTING. Never raises.

        ``exited`` is asked again after the probe: a server can die while the
        probe is out, and a refused connect must not read as still starting.
        """
        if exited():
            return Health.EXITED
        if spec.check_endpoint is None:
            return Health.READY
        url = join_url(handle.base_url, spec.check_endpoint)
        if await self.ok(url, spec.probe_timeout_s):
            return Health.READY
        return Health.EXITED if exited() else Health.STARTING

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def join_url(base_url: str, path: str) -> str:
    """``base`` + ``path`` with exactly one slash between them."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")
