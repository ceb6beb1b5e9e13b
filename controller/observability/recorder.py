"""Observation of proxied requests: in flight, then as activity.

One ``Observer`` per app owns the activity store, the capture buffer, the
metrics and the in-flight table. Each model-dispatched POST gets a
``Recording`` that the proxy feeds (headers, then every relayed chunk); the
cost on the data path is a counter update and an incremental usage scan.
When the request ends it leaves the in-flight table at once; its usage is
read, its row stored, its capture kept, its metrics counted and an
``activity`` event published (llama-swap.md §5.2–§5.5) in a batch with the
other requests that ended within ``FLUSH_AFTER_S``, after their responses
have gone out: one SQLite transaction and one metrics update per label set a
batch. Reading the store, the captures (:attr:`Observer.store`,
:attr:`Observer.captures`) or calling :meth:`Observer.flush` first writes
what is waiting, so no reader ever misses a finished request.
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
from controller.observability.metrics import RequestDone
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
# How long a finished request's bookkeeping may wait for others to join its
# batch; at most FLUSH_MAX wait (a burst is written at once).
FLUSH_AFTER_S = 0.02
FLUSH_MAX = 256


class Observer:
    def __init__(
        self,
        store: ActivityStore,
        captures: CaptureBuffer,
        metrics: Metrics,
        events: EventBus,
        session_headers: Iterable[str] = ("X-Session-ID", "X-Litellm-Session-Id"),
    ) -> None:
        self._store = store
        self._captures = captures
        self.metrics = metrics
        self.events = events
        self.session_headers = tuple(session_headers)
        self.in_flight: dict[str, Recording] = {}
        self._ids = itertools.count(1)
        self._ended: list[Recording] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def store(self) -> ActivityStore:
        """The activity rows, every finished request's included."""
        self.flush()
        return self._store

    @property
    def captures(self) -> CaptureBuffer:
        """The kept captures, every finished request's included."""
        self.flush()
        return self._captures

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
        if self.events.subscribers:
            self.events.publish("inflight", {"operation": "remove", "id": rec.id})
        self._ended.append(rec)
        if len(self._ended) >= FLUSH_MAX:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to wait on (a synchronous caller)
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        """Store, capture, count and announce every request that has ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._ended:
            return
        batch, self._ended = self._ended, []
        settled = [rec.settle() for rec in batch]
        try:
            ids = self._store.add_many([entry for entry, _ in settled])
        except Exception:  # the activity log must never fail a request
            log.exception("could not store activity for %d requests", len(batch))
            return
        done: list[RequestDone] = []
        for rec, (entry, usage), rid in zip(batch, settled, ids, strict=True):
            entry.has_capture = rec.keep_capture(rid, usage)
            done.append(rec.counted(usage))
        self.metrics.requests_done(done)
        if self.events.subscribers:
            for rid in ids:
                self.events.publish("activity", {"id": rid})


class Recording:
    """One request's observation; ``close()`` exactly once, however it ends."""

    __slots__ = (
        "_began",
        "_bytes",
        "_capture",
        "_content_type",
        "_error",
        "_first_byte",
        "_last_upsert",
        "_obs",
        "_req_body",
        "_request",
        "_resp_headers",
        "_started_at",
        "_status",
        "_usage",
        "_wall_s",
        "id",
        "metadata",
        "model",
        "path",
        "task",
    )

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
        self._wall_s = 0.0

    # -- fed by the proxy ---------------------------------------------------------

    def headers(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self._status = status
        self._resp_headers = list(headers)
        lower = {k.lower(): v for k, v in self._resp_headers}
        self._content_type = lower.get("content-type", "")
        encoding = lower.get("content-encoding")
        self._usage = UsageCollector(self._content_type, encoding, status)
        if self._obs._captures.enabled:
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
        """The request has ended: out of the in-flight table now, the rest in
        the observer's next batch."""
        self._wall_s = time.monotonic() - self._began
        self._obs._finish(self)

    def settle(self) -> tuple[ActivityEntry, UsageResult]:
        """The activity row (without its id) and the usage read from the
        response; called once, by the observer's flush."""
        usage = self._usage.result() if self._usage is not None else UsageResult()
        entry = ActivityEntry.from_usage(
            self.model,
            self.path,
            self._content_type,
            self._status or 499,
            usage,
            int(self._wall_s * 1000),
            self.metadata,
        )
        if self._error:
            entry.error_msg = self._error[:500]
        entry.timestamp = self._started_at
        return entry, usage

    def counted(self, usage: UsageResult) -> RequestDone:
        """What the metrics count for this request."""
        ttfb = self._first_byte - self._began if self._first_byte else None
        return RequestDone(
            self.model,
            self._status or 499,
            self._wall_s,
            ttfb,
            max(usage.input_tokens, 0),
            max(usage.output_tokens, 0),
            max(usage.cache_tokens, 0),
        )

    def keep_capture(self, rid: int, usage: UsageResult) -> bool:
        captures = self._obs._captures
        if not captures.enabled or not usage.capturable or self._status == 0:
            return False
        raw = self._capture.getvalue() if self._capture is not None else None
        capture = LazyCapture(
            rid,
            self.path,
            _head(self._request.headers.items()),
            self._req_body,
            _head(self._resp_headers),
            raw,
            self._status,
        )
        return captures.add(rid, capture)


class LazyCapture:
    """The raw parts of a capture; redacted, decoded and shaped only when
    fetched (doing that per request cost more CPU than the proxying).

    Only strings, bytes and ints: the buffer holds thousands of these, and
    header lists of tuples there made every full garbage collection walk
    them (captures on cost 30 µs per proxied request, bench/)."""

    __slots__ = (
        "path",
        "req_body",
        "req_head",
        "resp_body",
        "resp_head",
        "rid",
        "status",
    )

    def __init__(
        self,
        rid: int,
        path: str,
        req_head: str,
        req_body: bytes | None,
        resp_head: str,
        resp_body: bytes | None,
        status: int,
    ) -> None:
        self.rid, self.path, self.status = rid, path, status
        self.req_head, self.req_body = req_head, req_body
        self.resp_head, self.resp_body = resp_head, resp_body

    def raw_size(self) -> int:
        bodies = len(self.req_body or b"") + len(self.resp_body or b"")
        return bodies + len(self.req_head) + len(self.resp_head) + 64

    def to_json(self) -> dict[str, Any]:
        resp_headers = _pairs(self.resp_head)
        encoding = next(
            (v for k, v in resp_headers if k.lower() == "content-encoding"), None
        )
        try:
            body = decompress_body(self.resp_body, encoding) if self.resp_body else None
        except DecompressError:
            body = None
        return build_capture(
            self.rid,
            self.path,
            _pairs(self.req_head),
            self.req_body,
            resp_headers,
            body,
            self.status,
        ).to_json()


def _head(headers: Iterable[tuple[str, str]]) -> str:
    """Header pairs as one string of ``name: value`` lines (a header can hold
    neither CR nor LF, so the lines split back exactly)."""
    return "\r\n".join([f"{k}: {v}" for k, v in headers])


def _pairs(head: str) -> list[tuple[str, str]]:
    """The pairs :func:`_head` joined."""
    pairs = (line.partition(": ") for line in head.split("\r\n") if line)
    return [(name, value) for name, _, value in pairs]


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
