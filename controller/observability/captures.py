"""Request/response captures for activity rows (llama-swap.md §5.5).

This module owns what a capture holds and where it lives: :func:`build_capture`
applies llama-swap's per-path masks, header redaction and the "failed requests
keep no response body" rule; :class:`CaptureBuffer` is the byte-bounded FIFO
behind ``GET /api/captures/{id}`` (``captureBuffer`` MB; 0 or less disables).

Each capture is stored as zlib-compressed JSON (llama-swap uses zstd CBOR;
Python 3.11 has no zstd), and the byte budget counts the compressed size, as
llama-swap does. An item larger than the whole buffer is skipped; otherwise the
oldest captures are evicted until it fits.

Redacted headers (to ``[REDACTED]``) are exactly llama-swap's list:
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
``X-Api-Key`` (any case). Header names are shown in Go's canonical form
(``Content-Type``), one value per name (the first), and the response's
``Content-Encoding`` is dropped because the stored body is decompressed.
"""

from __future__ import annotations

import base64
import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "REDACTED",
    "SENSITIVE_HEADERS",
    "BoundedBody",
    "Capture",
    "CaptureBuffer",
    "CaptureFields",
    "build_capture",
    "canonical_header_key",
    "capture_fields_for",
    "header_map",
    "redact_headers",
]

REDACTED = "[REDACTED]"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
MB = 1024 * 1024


class CaptureFields(enum.IntFlag):
    """Which parts of a request/response a route keeps."""

    REQ_HEADERS = 1
    REQ_BODY = 2
    RESP_HEADERS = 4
    RESP_BODY = 8
    REQ_ALL = REQ_HEADERS | REQ_BODY
    RESP_ALL = RESP_HEADERS | RESP_BODY
    ALL = REQ_ALL | RESP_ALL


_F = CaptureFields
_FIELDS_BY_PATH: dict[str, CaptureFields] = {
    "/v1/audio/speech": _F.REQ_ALL | _F.RESP_HEADERS,
    "/v1/audio/voices": _F.REQ_HEADERS | _F.RESP_ALL,
    "/v1/audio/transcriptions": _F.REQ_HEADERS | _F.RESP_ALL,
    "/v1/images/generations": _F.REQ_ALL | _F.RESP_HEADERS,
    "/v1/images/edits": _F.REQ_HEADERS | _F.RESP_HEADERS,
    "/sdapi/v1/txt2img": _F.REQ_ALL | _F.RESP_HEADERS,
    "/sdapi/v1/img2img": _F.REQ_HEADERS | _F.RESP_HEADERS,
}


def capture_fields_for(path: str) -> CaptureFields:
    """The mask for a (post-dispatch) request path; everything by default.
    The proxy can skip buffering a request body the mask will not keep."""
    return _FIELDS_BY_PATH.get(path, CaptureFields.ALL)


# --------------------------------------------------------------- headers ---


def _is_token_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~")


def canonical_header_key(name: str) -> str:
    """Go's ``CanonicalMIMEHeaderKey``: ``x-api-key`` -> ``X-Api-Key``. A name
    with a character outside the HTTP token set is returned unchanged."""
    if not name or not all(_is_token_char(c) for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per canonical name, the first one seen (Go's ``headerMap``).
    Pass ``multidict.items()`` or any iterable of pairs."""
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(canonical_header_key(name), value)
    return out


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy with the sensitive headers' values replaced by ``[REDACTED]``."""
    return {
        k: REDACTED if k.lower() in SENSITIVE_HEADERS else v for k, v in headers.items()
    }


# --------------------------------------------------------------- capture ---


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class Capture:
    """One request/response pair. ``None`` parts were not captured."""

    id: int
    req_path: str
    req_headers: dict[str, str] | None = None
    req_body: bytes | None = None
    resp_headers: dict[str, str] | None = None
    resp_body: bytes | None = None

    def raw_size(self) -> int:
        headers = (self.req_headers or {}) | (self.resp_headers or {})
        bodies = len(self.req_body or b"") + len(self.resp_body or b"")
        return bodies + sum(len(k) + len(v) for k, v in headers.items()) + 64

    def to_json(self) -> dict[str, Any]:
        """``GET /api/captures/{id}``: bodies base64 (Go's ``[]byte``), parts
        not captured are ``null``."""
        return {
            "id": self.id,
            "req_path": self.req_path,
            "req_headers": self.req_headers,
            "req_body": _b64(self.req_body),
            "resp_headers": self.resp_headers,
            "resp_body": _b64(self.resp_body),
        }


def build_capture(
    entry_id: int,
    req_path: str,
    req_headers: Iterable[tuple[str, str]],
    req_body: bytes | None,
    resp_headers: Iterable[tuple[str, str]],
    resp_body: bytes | None,
    status: int,
) -> Capture:
    """A capture as llama-swap records it: masked by path, headers redacted
    and canonical, no ``Content-Encoding``, no response body unless 200.
    ``resp_body`` must already be decompressed (``usage.decompress_body``)."""
    fields = capture_fields_for(req_path)
    if status != 200:
        fields &= ~CaptureFields.RESP_BODY
    resp: dict[str, str] | None = None
    if fields & CaptureFields.RESP_HEADERS:
        resp = redact_headers(header_map(resp_headers))
        resp.pop("Content-Encoding", None)
    return Capture(
        id=entry_id,
        req_path=req_path,
        req_headers=(
            redact_headers(header_map(req_headers))
            if fields & CaptureFields.REQ_HEADERS
            else None
        ),
        req_body=req_body if fields & CaptureFields.REQ_BODY else None,
        resp_headers=resp,
        resp_body=resp_body if fields & CaptureFields.RESP_BODY else None,
    )


# ---------------------------------------------------------------- buffer ---


class Capturable(Protocol):
    """A capture, or something that becomes one when it is fetched."""

    def to_json(self) -> dict[str, Any]: ...

    def raw_size(self) -> int: ...


class CaptureBuffer:
    """Byte-bounded FIFO of captures keyed by activity id.

    ``max_bytes <= 0`` disables it: nothing is stored, ``add`` returns False.
    Thread-safe; compression runs outside the lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(max_bytes, 0)
        self._items: OrderedDict[int, tuple[Capturable, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @classmethod
    def from_megabytes(cls, megabytes: int) -> CaptureBuffer:
        """From the ``captureBuffer`` setting (MB)."""
        return cls(megabytes * MB)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def size(self) -> int:
        """Bytes held (raw body and header bytes)."""
        return self._size

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._items

    def add(self, entry_id: int, capture: Capturable) -> bool:
        """Store ``capture``; False when disabled or larger than the buffer.

        Kept as is and counted by raw size: encoding and compressing every
        capture on the request path cost more CPU per request than all of the
        proxying (bench/), so that work happens only when one is fetched.
        """
        if not self.enabled:
            return False
        size = capture.raw_size()
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(entry_id, None)
            self._size -= old[1] if old is not None else 0
            while self._items and self._size + size > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._size -= evicted
            self._items[entry_id] = (capture, size)
            self._size += size
        return True

    def get(self, entry_id: int) -> dict[str, Any] | None:
        """The capture's JSON (see :meth:`Capture.to_json`), or None."""
        with self._lock:
            item = self._items.get(entry_id)
        return None if item is None else item[0].to_json()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def resize(self, max_bytes: int) -> None:
        """A new ``captureBuffer`` (config reload): the oldest captures go
        until the rest fit; ``<= 0`` disables the buffer and empties it."""
        with self._lock:
            self.max_bytes = max(max_bytes, 0)
            while self._items and self._size > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._size -= evicted


class BoundedBody:
    """A copy of a body kept for a capture, up to ``limit`` bytes; past that
    it is dropped and :attr:`complete` turns False (store no capture then).

    llama-swap keeps every byte and judges the compressed size, so a limit of
    a few times the buffer's size lets compressible bodies (JSON, SSE) in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.complete = limit > 0

    def feed(self, chunk: bytes) -> None:
        if not self.complete or not chunk:
            return
        self._size += len(chunk)
        if self._size > self.limit:
            self._parts, self.complete = [], False
            return
        self._parts.append(chunk)

    def getvalue(self) -> bytes | None:
        """The whole body, or None when it outgrew the limit."""
        return b"".join(self._parts) if self.complete else None
