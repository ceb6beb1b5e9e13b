"""Token usage read out of upstream responses (llama-swap.md §5.2).

This module owns turning a response body into token counts and speeds for an
activity row. It does no I/O: the proxy feeds it the bytes it relays.

What is read, in llama-swap's order:

* ``usage`` (OpenAI, Anthropic, Responses API; in SSE also ``response.usage``
  and ``message.usage``): input = ``prompt_tokens`` or ``input_tokens``, output
  = ``completion_tokens`` or ``output_tokens``, cached =
  ``cache_read_input_tokens`` or ``input_tokens_details.cached_tokens`` or
  ``prompt_tokens_details.cached_tokens``. In a stream, later positive values
  override earlier ones (a cached count of 0 also overrides).
* llama-server ``timings`` (the last one in a stream; for ``/infill`` arrays
  the last element's) overrides the counts: ``prompt_n``, ``predicted_n``,
  ``prompt_per_second``, ``predicted_per_second``, ``cache_n``, and
  ``draft_n`` + ``draft_n_accepted`` (both needed). ``prompt_ms +
  predicted_ms`` is kept so the caller can take ``max(wall, timings)``.
* vLLM ``metrics`` (the last one in a stream):
  ``speculative_decoding.num_draft_tokens`` + ``num_accepted_draft_tokens``
  (both needed); prompt speed = (input - cached) / (``time_to_first_token_ms``
  / 1000) and generation speed = 1000 / ``mean_itl_ms``, each when > 0.

Unknown values keep the ``-1`` sentinels (cache, drafts, speeds); counts stay
0. A non-200 response gets no token parsing, only ``error_msg``.

Two entry points:

* :func:`parse_usage` for a whole body in hand.
* :class:`UsageCollector` for the response path: ``feed()`` each relayed
  chunk, ``result()`` once at the end. It picks :class:`StreamUsage` for
  ``text/event-stream`` 200s (incremental, never holds the stream) and a
  bounded buffer otherwise.

Cheapness of :meth:`StreamUsage.feed`: a chunk is only split into lines when
it (with the held partial line) contains ``"usage"`` (not followed by
``:null``), ``"timings"`` or ``"metrics"``, and only such lines are
JSON-decoded. The usage, timings and metrics keys are always written as
plain JSON keys by the servers we proxy, so a key spelled with ``\\u``
escapes would be missed; llama-swap's full parse would see it.

Deliberate differences from llama-swap, all documented here:

* A top-level JSON array takes ``timings`` from its last element whatever the
  path (llama-swap checks the path starts with ``/infill``; only ``/infill``
  answers with an array carrying timings).
* Bodies past the collector's byte limit are parsed best-effort from the
  retained head and a 64 KiB tail (llama-swap buffers every byte).
* Decompression error texts come from Python's zlib, not Go's.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "DecompressError",
    "StreamUsage",
    "UsageCollector",
    "UsageResult",
    "decompress_body",
    "error_message",
    "filter_accept_encoding",
    "parse_usage",
    "status_text",
]

DEFAULT_BODY_LIMIT = 1 << 20
"""Bytes of a non-SSE body the collector keeps for parsing (1 MiB)."""

ERROR_MSG_MAX = 500
_TAIL_WINDOW = 64 * 1024
_MAX_LINE = 1 << 20  # an SSE line longer than this is skipped, not parsed
_USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"))
_ERROR_PATHS = (("error", "message"), ("error",), ("message",), ("detail",))
_MARKERS = (b'"usage"', b'"timings"', b'"metrics"')
_NULL_USAGE = (b'"usage":null', b'"usage": null')
_MISSING: Any = object()

# Go's net/http StatusText, so "<code> <text>" matches llama-swap byte for byte.
# fmt: off
_STATUS_TEXT = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing",
    103: "Early Hints", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required",
    412: "Precondition Failed", 413: "Request Entity Too Large",
    414: "Request URI Too Long", 415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable", 417: "Expectation Failed",
    418: "I'm a teapot", 421: "Misdirected Request",
    422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    451: "Unavailable For Legal Reasons", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage",
    508: "Loop Detected", 510: "Not Extended",
    511: "Network Authentication Required",
}
# fmt: on


@dataclass(frozen=True, slots=True)
class UsageResult:
    """What one response says about tokens. Defaults are the minimal row."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = -1
    draft_tokens: int = -1
    draft_acc_tokens: int = -1
    prompt_per_second: float = -1.0
    tokens_per_second: float = -1.0
    timings_ms: int = 0
    """``int(prompt_ms + predicted_ms)`` from llama-server timings, else 0."""
    parsed: bool = False
    """True when usage, timings or metrics were found."""
    error_msg: str = ""
    capturable: bool = True
    """Whether llama-swap would store a capture for this response: not for a
    200 with an empty body, nor one that failed to decompress. (Non-200s are
    captured without the response body.)"""

    def duration_ms(self, wall_ms: int) -> int:
        """llama-swap's duration: the wall time, or the timings if longer."""
        return max(wall_ms, self.timings_ms)


class DecompressError(ValueError):
    """A ``Content-Encoding`` body that does not decompress."""


# ---------------------------------------------------------------- helpers ---


def status_text(status: int) -> str:
    """Go's ``http.StatusText`` (empty for an unknown code)."""
    return _STATUS_TEXT.get(status, "")


def filter_accept_encoding(value: str) -> str:
    """Keep only gzip/deflate in a request's Accept-Encoding (llama-swap does
    this so the response stays parseable); parameters such as ``;q=`` stay."""
    kept = []
    for part in value.split(","):
        name = part.strip().split(";", 1)[0].strip().lower()
        if name in ("gzip", "deflate"):
            kept.append(part.strip())
    return ", ".join(kept)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested objects, or ``_MISSING``. A JSON null is
    present (``None``), as gjson's ``Exists`` sees it."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _as_int(value: Any) -> int:
    """gjson's ``Int()``: numbers truncate, numeric strings parse, true is 1."""
    if type(value) is int:  # nearly always, for every response: first and exact
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else 0
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return _as_int(_as_float(value))
    return 0


def _as_float(value: Any) -> float:
    """gjson's ``Float()``: numbers as is, numeric strings parse, true is 1."""
    if type(value) is float:
        return value
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return 0.0
    return 0.0


# ----------------------------------------------------------- accumulating ---


class _Tally:
    """Counts gathered from usage objects, plus the last timings/metrics."""

    __slots__ = ("cached", "found", "input", "metrics", "output", "timings")

    def __init__(self) -> None:
        self.input = 0
        self.output = 0
        self.cached = -1
        self.found = False
        self.timings: Any = _MISSING
        self.metrics: Any = _MISSING

    def add_usage(self, usage: Any, *, streaming: bool) -> None:
        """Fold one usage object in; a stream keeps later positive values."""
        got = _usage_tokens(usage)
        if got is None:
            return
        self.found = True
        i, o, c = got
        if not streaming:
            self.input, self.output, self.cached = i, o, c
            return
        if i > 0:
            self.input = i
        if o > 0:
            self.output = o
        if c >= 0:
            self.cached = c

    def add_event(self, event: Any) -> None:
        """One SSE ``data:`` JSON value."""
        for path in _USAGE_PATHS:
            usage = _get(event, path)
            if usage is not _MISSING:
                self.add_usage(usage, streaming=True)
        self._keep_last(event)

    def _keep_last(self, obj: Any) -> None:
        timings = _get(obj, ("timings",))
        if timings is not _MISSING:
            self.timings, self.found = timings, True
        metrics = _get(obj, ("metrics",))
        if metrics is not _MISSING:
            self.metrics, self.found = metrics, True

    def add_document(self, doc: Any) -> None:
        """A whole JSON (non-SSE) body."""
        usage = _get(doc, ("usage",))
        if usage is not _MISSING:
            self.found = True
            self.add_usage(usage, streaming=False)
        self._keep_last(doc)
        if isinstance(doc, list) and doc:  # /infill: timings of the last element
            self.timings = _get(doc[-1], ("timings",))
            self.found = self.found or self.timings is not _MISSING

    def result(self) -> UsageResult:
        if not self.found:
            return UsageResult()
        return _build(self.input, self.output, self.cached, self.timings, self.metrics)


# Where each count may be, first match wins: input, output, cached.
_TOKEN_PATHS = (
    (("prompt_tokens",), ("input_tokens",)),
    (("completion_tokens",), ("output_tokens",)),
    (
        ("cache_read_input_tokens",),
        ("input_tokens_details", "cached_tokens"),
        ("prompt_tokens_details", "cached_tokens"),
    ),
)


def _first(obj: Any, paths: tuple[tuple[str, ...], ...]) -> Any:
    for path in paths:
        value = _get(obj, path)
        if value is not _MISSING:
            return value
    return _MISSING


def _usage_tokens(usage: Any) -> tuple[int, int, int] | None:
    """(input, output, cached) from a usage object; None if it names none.
    The paths of ``_TOKEN_PATHS``, spelled out: this runs for every response."""
    if not isinstance(usage, dict):
        return None
    i = usage.get("prompt_tokens", _MISSING)
    if i is _MISSING:
        i = usage.get("input_tokens", _MISSING)
    o = usage.get("completion_tokens", _MISSING)
    if o is _MISSING:
        o = usage.get("output_tokens", _MISSING)
    c = usage.get("cache_read_input_tokens", _MISSING)
    if c is _MISSING:
        c = _first(usage, _TOKEN_PATHS[2][1:])
    if i is _MISSING and o is _MISSING and c is _MISSING:
        return None
    return (
        0 if i is _MISSING else _as_int(i) or 0,
        0 if o is _MISSING else _as_int(o) or 0,
        -1 if c is _MISSING else _as_int(c),
    )


def _build(
    input_tokens: int, output_tokens: int, cached: int, timings: Any, metrics: Any
) -> UsageResult:
    """llama-swap's buildMetrics: timings override, then vLLM metrics."""
    fields: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_tokens": cached,
    }
    if timings is not _MISSING:
        fields.update(_timing_fields(timings))
    # Built once (every response gets here; dataclasses.replace is not free).
    res = UsageResult(parsed=True, **fields)
    if metrics is not _MISSING:
        res = _apply_metrics(res, metrics)
    return res


def _timing_fields(t: Any) -> dict[str, Any]:
    """llama.cpp's ``timings`` as UsageResult fields (they override usage)."""
    num = (t if isinstance(t, dict) else {}).get  # a missing key reads as None: 0
    changes: dict[str, Any] = {
        "input_tokens": _as_int(num("prompt_n")),
        "output_tokens": _as_int(num("predicted_n")),
        "prompt_per_second": _as_float(num("prompt_per_second")),
        "tokens_per_second": _as_float(num("predicted_per_second")),
        "timings_ms": int(_as_float(num("prompt_ms")) + _as_float(num("predicted_ms"))),
    }
    if (cached := num("cache_n", _MISSING)) is not _MISSING:
        changes["cache_tokens"] = _as_int(cached)
    drafted, accepted = num("draft_n", _MISSING), num("draft_n_accepted", _MISSING)
    if drafted is not _MISSING and accepted is not _MISSING:
        changes["draft_tokens"] = _as_int(drafted)
        changes["draft_acc_tokens"] = _as_int(accepted)
    return changes


def _apply_metrics(res: UsageResult, m: Any) -> UsageResult:
    changes: dict[str, Any] = {}
    drafted = _get(m, ("speculative_decoding", "num_draft_tokens"))
    accepted = _get(m, ("speculative_decoding", "num_accepted_draft_tokens"))
    if drafted is not _MISSING and accepted is not _MISSING:
        changes["draft_tokens"] = _as_int(drafted)
        changes["draft_acc_tokens"] = _as_int(accepted)
    ttft = _get(m, ("time_to_first_token_ms",))
    if ttft is not _MISSING and _as_float(ttft) > 0:
        uncached = res.input_tokens - max(res.cache_tokens, 0)
        changes["prompt_per_second"] = uncached / (_as_float(ttft) / 1000)
    itl = _get(m, ("mean_itl_ms",))
    if itl is not _MISSING and _as_float(itl) > 0:
        changes["tokens_per_second"] = 1000 / _as_float(itl)
    return replace(res, **changes)


# ------------------------------------------------------------- SSE lines ---


def _data_of(line: bytes) -> Any:
    """The JSON value of one SSE ``data:`` line, or ``_MISSING``."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return _MISSING
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return _MISSING
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return _MISSING


def _worth_parsing(data: bytes) -> bool:
    """Cheap byte scan: could these bytes hold usage, timings or metrics?"""
    if _MARKERS[1] in data or _MARKERS[2] in data:
        return True
    if _MARKERS[0] not in data:
        return False
    for null in _NULL_USAGE:
        data = data.replace(null, b"")
    return _MARKERS[0] in data


def _marked_lines(block: bytes) -> list[tuple[int, int]]:
    """(start, end) of each line of ``block`` holding a marker other than a
    null usage, in order. A fast upstream's read can hold a thousand events
    and a usage event at the end: testing every line cost a fifth of the
    relay's CPU (bench/native_sse), while searching for the markers skips the
    lines between them in C."""
    starts: set[int] = set()
    for marker in _MARKERS:
        pos = block.find(marker)
        while pos >= 0:
            after = pos + len(marker)
            if marker != _MARKERS[0] or not _null_at(block, after):
                starts.add(block.rfind(b"\n", 0, pos) + 1)
            pos = block.find(marker, after)
    lines = []
    for start in sorted(starts):
        end = block.find(b"\n", start)
        lines.append((start, len(block) if end < 0 else end))
    return lines


def _null_at(block: bytes, pos: int) -> bool:
    """Whether a usage key ending at ``pos`` has the value null, as written
    in ``_NULL_USAGE``."""
    return any(block.startswith(null[len(_MARKERS[0]) :], pos) for null in _NULL_USAGE)


# --------------------------------------------------------- decompression ---


class _Decoder:
    """Incremental gzip/deflate decoding; identity for anything else (as
    llama-swap, which leaves unknown encodings alone)."""

    def __init__(self, encoding: str | None) -> None:
        self.name = (encoding or "").strip().lower()
        self._zd: Any = None
        self._head = b""
        self.active = self.name in ("gzip", "deflate")
        self.fed = False

    def feed(self, chunk: bytes) -> bytes:
        if not self.active:
            return chunk
        self.fed = self.fed or bool(chunk)
        if self._zd is None:
            return self._start(chunk)
        return self._inflate(chunk)

    def _start(self, chunk: bytes) -> bytes:
        self._head += chunk
        if len(self._head) < 2:
            return b""
        head, self._head = self._head, b""
        if self.name == "gzip":
            if head[:2] != b"\x1f\x8b":
                raise DecompressError("gzip: invalid header")
            self._zd = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:  # RFC 9110 deflate is zlib-wrapped; Go reads raw deflate. Take both.
            zlib_wrapped = (head[0] & 0x0F) == 8 and int.from_bytes(head[:2]) % 31 == 0
            self._zd = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -15)
        return self._inflate(head)

    def _inflate(self, chunk: bytes) -> bytes:
        try:
            return bytes(self._zd.decompress(chunk))
        except zlib.error as exc:
            raise DecompressError(str(exc)) from exc

    def finish(self) -> bytes:
        """Flush; a stream cut short raises ``unexpected EOF`` (as Go)."""
        if not self.active or not self.fed:
            return b""
        if self._zd is None:
            raise DecompressError("unexpected EOF")
        try:
            tail = bytes(self._zd.flush())
        except zlib.error as exc:
            raise DecompressError(str(exc)) from exc
        if not self._zd.eof:
            raise DecompressError("unexpected EOF")
        return tail


def decompress_body(body: bytes, encoding: str | None) -> bytes:
    """A whole body decoded per ``Content-Encoding`` (gzip/deflate; others are
    returned unchanged). Raises :class:`DecompressError`."""
    if not body:
        return body
    dec = _Decoder(encoding)
    return dec.feed(body) + dec.finish()


# ------------------------------------------------------------- errors -------


def error_message(status: int, body: bytes) -> str:
    """``error_msg`` for a non-200: the first non-blank string at
    ``error.message``, ``error``, ``message``, ``detail`` (cut to 500 bytes +
    ``...``), else ``"<code> <StatusText>"``. ``body`` is already decoded."""
    msg = _json_error_text(body)
    if msg:
        raw = msg.encode()
        if len(raw) > ERROR_MSG_MAX:  # Go cuts bytes; JSON shows a split rune as U+FFFD
            msg = raw[:ERROR_MSG_MAX].decode("utf-8", "replace") + "..."
        return msg
    text = status_text(status)
    return f"{status} {text}" if text else f"HTTP {status}"


def _json_error_text(body: bytes) -> str:
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return ""
    for path in _ERROR_PATHS:
        value = _get(doc, path)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


# ----------------------------------------------------------- collectors ---


class StreamUsage:
    """Incremental SSE scanner for a 200 ``text/event-stream`` response.

    ``feed()`` holds at most one partial line (bounded by 1 MiB; a longer line
    is skipped) and JSON-decodes only lines that can carry usage, timings or
    metrics. ``result()`` may be called once the stream has ended.
    """

    def __init__(self, content_encoding: str | None = None) -> None:
        self._decoder = _Decoder(content_encoding)
        self._tally = _Tally()
        self._partial = b""
        self._skipping = False  # inside an over-long line
        self._error = ""
        self._seen = False

    def feed(self, chunk: bytes) -> None:
        if self._error or not chunk:
            return
        self._seen = True
        try:
            data = self._decoder.feed(chunk)
        except DecompressError as exc:
            self._error = f"response decompression failed: {exc}"
            return
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return
        complete = self._partial + data[: cut + 1] if self._partial else data[: cut + 1]
        if self._skipping:  # drop the rest of the over-long line
            complete = complete[complete.find(b"\n") + 1 :]
            self._skipping = False
        self._partial = b""
        self._hold(data[cut + 1 :])
        self._lines(complete)

    def _hold(self, data: bytes) -> None:
        if self._skipping or not data:
            return
        if len(self._partial) + len(data) > _MAX_LINE:
            self._partial, self._skipping = b"", True
            return
        self._partial += data

    def _lines(self, block: bytes) -> None:
        for start, end in _marked_lines(block):
            line = block[start:end]
            if _worth_parsing(line):
                event = _data_of(line)
                if event is not _MISSING:
                    self._tally.add_event(event)

    def result(self) -> UsageResult:
        if not self._error:
            try:
                self._scan(self._decoder.finish() + b"\n")
            except DecompressError as exc:
                self._error = f"response decompression failed: {exc}"
        if self._error:
            return UsageResult(error_msg=self._error, capturable=False)
        if not self._seen:
            return UsageResult(capturable=False)
        return self._tally.result()


class _BoundedBody:
    """The first ``limit`` decoded bytes, plus a rolling 64 KiB tail after."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = b""
        self.overflow = False

    def add(self, data: bytes) -> None:
        if self.limit is None or len(self.head) + len(data) <= self.limit:
            self.head += data
            return
        room = max(self.limit - len(self.head), 0)
        self.head += data[:room]
        self.overflow = True
        self.tail = (self.tail + data[room:])[-_TAIL_WINDOW:]


class UsageCollector:
    """Usage for one response, fed chunk by chunk as the proxy relays it.

    * 200 + ``text/event-stream``: :class:`StreamUsage` (incremental).
    * anything else: the first ``limit_bytes`` decoded bytes are kept
      (``None`` = no limit) and parsed at :meth:`result`.

    ``feed()`` never raises; ``result()`` is meant to be called once.
    """

    def __init__(
        self,
        content_type: str,
        content_encoding: str | None,
        status: int,
        limit_bytes: int | None = DEFAULT_BODY_LIMIT,
    ) -> None:
        self.status = status
        self._stream: StreamUsage | None = None
        if status == 200 and "text/event-stream" in content_type:
            self._stream = StreamUsage(content_encoding)
        self._decoder = _Decoder(content_encoding)
        self._body = _BoundedBody(limit_bytes)
        self._error: DecompressError | None = None
        self._seen = False

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def feed(self, chunk: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(chunk)
            return
        if self._error is not None or not chunk:
            return
        self._seen = True
        try:
            self._body.add(self._decoder.feed(chunk))
        except DecompressError as exc:
            self._error = exc

    def result(self) -> UsageResult:
        if self._stream is not None:
            return self._stream.result()
        if self._error is None:
            try:
                self._body.add(self._decoder.finish())
            except DecompressError as exc:
                self._error = exc
        if self.status != 200:
            return self._failed()
        if self._error is not None:
            return UsageResult(
                error_msg=f"response decompression failed: {self._error}",
                capturable=False,
            )
        return self._parse_body()

    def _failed(self) -> UsageResult:
        if self._error is not None:
            return UsageResult(error_msg=f"response decode failed: {self._error}")
        return UsageResult(error_msg=error_message(self.status, bytes(self._body.head)))

    def _parse_body(self) -> UsageResult:
        tally = _Tally()
        if not self._body.head and not self._seen:
            return UsageResult(capturable=False)
        if not self._body.overflow:
            try:
                doc = json.loads(self._body.head) if self._body.head else _MISSING
            except (ValueError, UnicodeDecodeError):
                doc = _MISSING
            if doc is not _MISSING:
                tally.add_document(doc)
            return tally.result()
        for window in (bytes(self._body.head), self._body.tail):
            _scan_keys(window, tally)
        return tally.result()


def _scan_keys(window: bytes, tally: _Tally) -> None:
    """Best effort for an over-limit body: decode the value after the last
    ``"usage"``/``"timings"``/``"metrics"`` key found in ``window``."""
    text = window.decode("utf-8", "ignore")
    decoder = json.JSONDecoder()
    for key in ("usage", "timings", "metrics"):
        at = text.rfind(f'"{key}"')
        colon = text.find(":", at + len(key) + 2) if at >= 0 else -1
        if colon < 0 or text[at + len(key) + 2 : colon].strip():
            continue
        rest = text[colon + 1 :].lstrip()
        try:
            value, _ = decoder.raw_decode(rest)
        except ValueError:
            continue
        if key == "usage":
            tally.found = True
            tally.add_usage(value, streaming=False)
        else:
            tally.add_document({key: value})


def parse_usage(
    content_type: str, content_encoding: str | None, body: bytes, status: int
) -> UsageResult:
    """Usage from a whole response body (no size limit)."""
    collector = UsageCollector(content_type, content_encoding, status, None)
    collector.feed(body)
    return collector.result()
