"""KV slot persistence for llama.cpp servers (``keepSlots``).

Before a ``keepSlots`` model stops, every slot that holds tokens is saved
(``GET /slots``, then ``POST /slots/<id>?action=save``) into the model's slot
directory (``${SLOT_DIR}``, given to the server as ``--slot-save-path``); on
its next start the files are restored (``POST /slots/<id>?action=restore``)
before any request is granted, so a conversation continues with a cache hit
instead of a full prefill.

Files are named by the model's launch fingerprint, so a file is never
restored into another model or another launch command; the cache is bounded
(``slotCache.maxSize``) and evicted oldest-first. Every failure is reported
and never stops the model from serving: a save or restore that fails costs
only the warm start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, is_dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from controller.config.sections import slot_dir_name

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from backends.base import LaunchSpec

log = logging.getLogger("swapvisor.slots")
SLOT_FILE = re.compile(r"^(?P<fp>[0-9a-f]{16})-slot(?P<id>\d+)\.bin$")
SAVE_TIMEOUT_S = 30.0
RESTORE_TIMEOUT_S = 30.0


def launch_fingerprint(spec: LaunchSpec) -> str:
    """16 hex digits that change whenever the launch command, environment or
    container changes: a saved KV cache only fits the server that made it."""
    parts: dict[str, Any] = {
        "argv": list(spec.argv),
        "env": sorted(spec.env.items()),
        "container": _plain(spec.container),
    }
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _plain(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


@dataclass(frozen=True, slots=True)
class SlotFiles:
    """What a model has saved: files, tokens they hold, bytes on disk."""

    count: int = 0
    tokens: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class SlotReport:
    """One save or restore: for logs, metrics and ``/running``."""

    action: str  # "save" or "restore"
    count: int
    tokens: int
    bytes: int
    seconds: float
    error: str = ""


class SlotStore:
    """The slot cache on disk: one directory per model under ``root``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def model_dir(self, model_id: str) -> Path:
        """The directory ``${SLOT_DIR}`` names for this model."""
        return self.root / slot_dir_name(model_id)

    def evict(self) -> list[Path]:
        """Delete the oldest slot files until the cache fits ``max_bytes``."""
        files = sorted(
            (p for p in self.root.glob("*/*.bin") if SLOT_FILE.match(p.name)),
            key=lambda p: p.stat().st_mtime,
        )
        total = sum(p.stat().st_size for p in files)
        gone: list[Path] = []
        for path in files:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            gone.append(path)
        return gone


class SlotKeeper:
    """Saves and restores one model's slots through its server's ``/slots``."""

    def __init__(self, store: SlotStore, model_id: str, fingerprint: str) -> None:
        self.store = store
        self.dir = store.model_dir(model_id)
        self.fingerprint = fingerprint
        # file name -> tokens it holds, kept beside the files across restarts
        self.tokens: dict[str, int] = self._read_index()

    def _index(self) -> Path:
        return self.dir / "tokens.json"

    def _read_index(self) -> dict[str, int]:
        try:
            raw = json.loads(self._index().read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _write_index(self) -> None:
        live = {p.name for p in self.files()}
        self.tokens = {k: v for k, v in self.tokens.items() if k in live}
        self._index().write_text(json.dumps(self.tokens))

    def files(self) -> list[Path]:
        """This launch's saved files, by slot id."""
        if not self.dir.is_dir():
            return []
        found = [
            p
            for p in self.dir.iterdir()
            if (m := SLOT_FILE.match(p.name)) and m["fp"] == self.fingerprint
        ]
        return sorted(found, key=lambda p: int(SLOT_FILE.match(p.name)["id"]))  # type: ignore[index]

    def saved(self) -> SlotFiles:
        files = self.files()
        return SlotFiles(
            len(files),
            sum(self.tokens.get(p.name, 0) for p in files),
            sum(p.stat().st_size for p in files),
        )

    def prepare(self) -> None:
        """Make the slot directory the server writes into."""
        self.dir.mkdir(parents=True, exist_ok=True)

    def _name(self, slot_id: int) -> str:
        return f"{self.fingerprint}-slot{slot_id}.bin"

    async def save(
        self, base_url: str, timeout_s: float = SAVE_TIMEOUT_S
    ) -> SlotReport:
        """Save every slot that holds tokens; empty ones leave no file."""
        began = time.monotonic()
        count = tokens = written = 0
        try:
            async with _client(timeout_s) as http:
                for slot_id in await _slot_ids(http, base_url):
                    name = self._name(slot_id)
                    data = await _post(http, base_url, slot_id, "save", name)
                    saved = int(data.get("n_saved") or 0)
                    if saved <= 0:
                        (self.dir / name).unlink(missing_ok=True)
                        continue
                    count, tokens = count + 1, tokens + saved
                    written += int(data.get("n_written") or 0)
                    self.tokens[name] = saved
            self.store.evict()
            self._write_index()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return _failed("save", began, exc, count, tokens, written)
        return SlotReport("save", count, tokens, written, time.monotonic() - began)

    async def restore(
        self, base_url: str, timeout_s: float = RESTORE_TIMEOUT_S
    ) -> SlotReport:
        """Restore this launch's files into the slots they came from."""
        began = time.monotonic()
        count = tokens = read = 0
        try:
            files = self.files()
            if not files:
                return SlotReport("restore", 0, 0, 0, 0.0)
            async with _client(timeout_s) as http:
                slots = set(await _slot_ids(http, base_url))
                for path in files:
                    slot_id = int(SLOT_FILE.match(path.name)["id"])  # type: ignore[index]
                    if slot_id not in slots:
                        continue  # the server has fewer slots now
                    data = await _post(http, base_url, slot_id, "restore", path.name)
                    count += 1
                    tokens += int(data.get("n_restored") or 0)
                    read += int(data.get("n_read") or 0)
                    path.touch()  # recently used: evicted last
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return _failed("restore", began, exc, count, tokens, read)
        return SlotReport("restore", count, tokens, read, time.monotonic() - began)


def _failed(
    action: str, began: float, exc: BaseException, count: int, tokens: int, n: int
) -> SlotReport:
    why = str(exc) or type(exc).__name__
    return SlotReport(action, count, tokens, n, time.monotonic() - began, why)


def _client(timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))


async def _slot_ids(http: aiohttp.ClientSession, base_url: str) -> list[int]:
    async with http.get(base_url.rstrip("/") + "/slots") as resp:
        if resp.status != 200:
            raise ValueError(f"GET /slots answered {resp.status}: {await _why(resp)}")
        body = await resp.json(content_type=None)
    if not isinstance(body, list):
        raise ValueError("GET /slots did not answer a list of slots")
    return sorted(int(s["id"]) for s in _mappings(body))


def _mappings(items: Iterable[object]) -> Iterable[dict[str, Any]]:
    return (i for i in items if isinstance(i, dict) and "id" in i)


async def _post(
    http: aiohttp.ClientSession, base_url: str, slot_id: int, action: str, name: str
) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/slots/{slot_id}?action={action}"
    async with http.post(url, json={"filename": name}) as resp:
        if resp.status != 200:
            raise ValueError(f"{action} of slot {slot_id}: {await _why(resp)}")
        body = await resp.json(content_type=None)
    if not isinstance(body, dict):
        raise ValueError(f"{action} of slot {slot_id}: not a JSON object")
    return body


async def _why(resp: aiohttp.ClientResponse) -> str:
    text = (await resp.text())[:300]
    try:
        message = json.loads(text)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status} {text}".strip()
