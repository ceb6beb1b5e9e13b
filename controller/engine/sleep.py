"""Sleep instead of stop: the HTTP calls that put a server to sleep and wake it.

vLLM's sleep mode (``POST /sleep?level=N``, ``POST /wake_up``,
``GET /is_sleeping``) releases accelerator memory while the process stays, so
a wake costs a fraction of a load; other servers name their own endpoints.
This module only speaks to the server; the Upstream decides when (a swap
that would evict the model puts it to sleep; a request wakes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from controller.config.sections import SleepBlock

SLEEP_TIMEOUT_S = 120.0


class SleepError(Exception):
    """A sleep or wake call failed; the message says how."""


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Call:
        method, _, path = text.strip().partition(" ")
        return cls(method.upper(), path.strip())

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class SleepSpec:
    sleep: Call
    wake: Call
    check: Call | None = None  # answers whether the server sleeps
    timeout_s: float = SLEEP_TIMEOUT_S

    async def fall_asleep(self, base_url: str) -> None:
        await self._call(base_url, self.sleep)
        await self._expect(base_url, asleep=True)

    async def wake_up(self, base_url: str) -> None:
        await self._call(base_url, self.wake)
        await self._expect(base_url, asleep=False)

    async def _expect(self, base_url: str, *, asleep: bool) -> None:
        if self.check is None:
            return
        body = await self._call(base_url, self.check)
        state = _sleeping(body)
        if state is not None and state is not asleep:
            want = "asleep" if asleep else "awake"
            raise SleepError(f"{self.check} says the server is not {want}: {body}")

    async def _call(self, base_url: str, call: Call) -> Any:
        url = base_url.rstrip("/") + call.path
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.request(call.method, url) as resp,
            ):
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SleepError(f"{call}: {str(exc) or type(exc).__name__}") from exc
        if resp.status >= 300:
            raise SleepError(f"{call} answered {resp.status}: {text[:200]}")
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return text


def _sleeping(body: Any) -> bool | None:
    """``{"is_sleeping": true}`` (vLLM), ``{"sleeping": ...}``, or a bare
    boolean; None when the answer says nothing either way."""
    if isinstance(body, bool):
        return body
    if isinstance(body, dict):
        for key in ("is_sleeping", "sleeping", "asleep"):
            if isinstance(body.get(key), bool):
                return bool(body[key])
    return None


def vllm(level: int = 1) -> SleepSpec:
    return SleepSpec(
        Call("POST", f"/sleep?level={level}"),
        Call("POST", "/wake_up"),
        Call("GET", "/is_sleeping"),
    )


def sleep_spec(block: str | SleepBlock | None) -> SleepSpec | None:
    """The config's ``sleep:`` value as calls (validated at load)."""
    if block is None:
        return None
    if isinstance(block, str):
        return vllm()
    if block.mode == "vllm":
        return vllm(block.level)
    return SleepSpec(
        Call.parse(block.sleep),
        Call.parse(block.wake),
        Call.parse(block.check) if block.check else None,
    )
