"""Observation of proxied requests: in flight, then as activity.

One ``Observer`` per app owns the activity store, the capture buffer, the
metrics and the in-flight table. Each model-dispatched POST gets a
``Recording`` that the proxy feeds (headers, then every relayed chunk); the
cost on the data path is a counter update and an incremental usage scan.
When the request ends the row is stored, the capture kept, the metrics
counted and an ``activity`` event published (llama-swap.md §5.2–§5.5).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from controller.observability.activity import ActivityEntry, ActivityStore
from controller.observability.captures import (
    BoundedBody,
    CaptureBuffer,
    build_capture,
    redact_headers,
)
from controller.observability.usage import (
    DecompressError,
    UsageCollector,
    UsageResult,
    decompress_body,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aiohttp import web

    from controller.observability.events import EventBus
    from controller.observability.metrics import Metrics

log = logging.getLogger("swapvisor.activity")
# An in-flight entry is re-sent at most this often while bytes flow.
UPSERT_EVERY_S = 0.25
CAPTURE_LIMIT = 8 * 1024 * 1024


class Observer:
    def __init__(
        self,
        store: ActivityStore,
        captures: CaptureBuffer,
        metrics: Metrics,
        events: EventBus,
        session_headers: Iterable[str] = ("X-Session-ID", "X-Litellm-Session-Id"),
    ) -> None:
        self.store = store
        self.captures = captures
        self.metrics = metrics
        self.events = events
        self.session_headers = tuple(session_headers)
        self.in_flight: dict[str, Recording] = {}
        self._ids = itertools.count(1)

    def begin(
        self,
        request: web.Request,
        model: str,
        path: str,
        body: bytes | None,
        metadata: Mapping[str, str] | None = None,
    ) -> Recording:
        rec = Recording(
            self, str(next(self._ids)), request, model, path, body, dict(metadata or {})
        )
        self.in_flight[rec.id] = rec
        if self.events.subscribers:
            self.events.publish(
                "inflight", {"operation": "upsert", "request": rec.entry()}
            )
        return rec

    def snapshot(self) -> dict[str, Any]:
        return {
            "operation": "snapshot",
            "requests": [r.entry() for r in self.in_flight.values()],
        }

    def cancel(self, rid: str) -> bool:
        rec = self.in_flight.get(rid)
        if rec is None or rec.task is None:
            return False
        rec.task.cancel()
        return True

    def _finish(self, rec: Recording) -> None:
        self.in_flight.pop(rec.id, None)
        self.events.publish("inflight", {"operation": "remove", "id": rec.id})


class Recording:
    """One request's observation; ``close()`` exactly once, however it ends."""

    def __init__(
        self,
        observer: Observer,
        rid: str,
        request: web.Request,
        model: str,
        path: str,
        body: bytes | None,
        metadata: dict[str, str],
    ) -> None:
        self.id = rid
        self._obs = observer
        self._request = request
        self.model = model
        self.path = path
        self.metadata = metadata
        self._req_body = body
        self.task = asyncio.current_task()
        self._began = time.monotonic()
        self._started_at = time.time()
        self._status = 0
        self._resp_headers: list[tuple[str, str]] = []
        self._content_type = ""
        self._usage: UsageCollector | None = None
        self._capture: BoundedBody | None = None
        self._first_byte: float | None = None
        self._bytes = 0
        self._last_upsert = 0.0
        self._error = ""

    # -- fed by the proxy ---------------------------------------------------------

    def headers(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self._status = status
        self._resp_headers = list(headers)
        lower = {k.lower(): v for k, v in self._resp_headers}
        self._content_type = lower.get("content-type", "")
        encoding = lower.get("content-encoding")
        self._usage = UsageCollector(self._content_type, encoding, status)
        if self._obs.captures.enabled:
            self._capture = BoundedBody(CAPTURE_LIMIT)
        self._upsert(force=True)

    def chunk(self, data: bytes) -> None:
        if self._first_byte is None:
            self._first_byte = time.monotonic()
        self._bytes += len(data)
        if self._usage is not None:
            self._usage.feed(data)
        if self._capture is not None:
            self._capture.feed(data)
        self._upsert()

    def failed(self, status: int, message: str) -> None:
        """An error swapvisor produced (429, 502, 503, 504) instead of a response."""
        self._status = status
        self._error = message

    # -- in flight ----------------------------------------------------------------

    def entry(self) -> dict[str, Any]:
        req = self._request
        headers = redact_headers(dict(req.headers.items()))
        out: dict[str, Any] = {
            "id": self.id,
            "timestamp": _rfc3339(self._started_at),
            "model": self.model,
            "req_path": req.path,
            "method": req.method,
            "req_headers": headers,
            "remote_ip": req.remote or "",
            "resp_headers": dict(self._resp_headers),
            "resp_bytes": self._bytes,
            "elapsed_ms": int((time.monotonic() - self._began) * 1000),
        }
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def _upsert(self, force: bool = False) -> None:
        if not self._obs.events.subscribers:
            return  # nobody watching: don't build the entry at all
        now = time.monotonic()
        if force or now - self._last_upsert >= UPSERT_EVERY_S:
            self._last_upsert = now
            self._obs.events.publish(
                "inflight", {"operation": "upsert", "request": self.entry()}
            )

    # -- the end ----------------------------------------------------------------

    def close(self) -> None:
        obs = self._obs
        obs._finish(self)
        wall_s = time.monotonic() - self._began
        ttfb = self._first_byte - self._began if self._first_byte else None
        usage = self._usage.result() if self._usage is not None else UsageResult()
        entry = ActivityEntry.from_usage(
            self.model,
            self.path,
            self._content_type,
            self._status or 499,
            usage,
            int(wall_s * 1000),
            self.metadata,
        )
        if self._error:
            entry.error_msg = self._error[:500]
        entry.timestamp = self._started_at
        try:
            rid = obs.store.add(entry)
        except Exception:  # the activity log must never fail a request
            log.exception("could not store activity for %s", self.model)
            return
        entry.has_capture = self._keep_capture(rid, usage)
        obs.metrics.request_done(
            self.model,
            self._status or 499,
            wall_s,
            ttfb,
            max(usage.input_tokens, 0),
            max(usage.output_tokens, 0),
            max(usage.cache_tokens, 0),
        )
        obs.events.publish("activity", {"id": rid})

    def _keep_capture(self, rid: int, usage: UsageResult) -> bool:
        obs = self._obs
        if not obs.captures.enabled or not usage.capturable or self._status == 0:
            return False
        raw = self._capture.getvalue() if self._capture is not None else None
        capture = LazyCapture(
            rid,
            self.path,
            list(self._request.headers.items()),
            self._req_body,
            self._resp_headers,
            raw,
            self._status,
        )
        return obs.captures.add(rid, capture)


class LazyCapture:
    """The raw parts of a capture; redacted, decoded and shaped only when
    fetched (doing that per request cost more CPU than the proxying)."""

    def __init__(
        self,
        rid: int,
        path: str,
        req_headers: list[tuple[str, str]],
        req_body: bytes | None,
        resp_headers: list[tuple[str, str]],
        resp_body: bytes | None,
        status: int,
    ) -> None:
        self.rid, self.path, self.status = rid, path, status
        self.req_headers, self.req_body = req_headers, req_body
        self.resp_headers, self.resp_body = resp_headers, resp_body

    def raw_size(self) -> int:
        headers = sum(
            len(k) + len(v) for k, v in (*self.req_headers, *self.resp_headers)
        )
        bodies = len(self.req_body or b"") + len(self.resp_body or b"")
        return bodies + headers + 64

    def to_json(self) -> dict[str, Any]:
        encoding = next(
            (v for k, v in self.resp_headers if k.lower() == "content-encoding"), None
        )
        try:
            body = decompress_body(self.resp_body, encoding) if self.resp_body else None
        except DecompressError:
            body = None
        return build_capture(
            self.rid,
            self.path,
            self.req_headers,
            self.req_body,
            self.resp_headers,
            body,
            self.status,
        ).to_json()


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
