"""Log monitors: bounded histories of what swapvisor and its upstreams print,
with live subscribers (llama-swap.md §5.1).

Three monitors outlive reloads: ``proxy`` (swapvisor's own messages),
``upstream`` (every child's output) and ``mux`` (what goes to stdout and
``GET /logs``, chosen by ``logToStdout``). Each model has its own monitor that
writes through to ``upstream``. Writers never block: a subscriber that falls
behind loses bytes, and is told how many with a marker when it catches up.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TextIO

HISTORY_BYTES = 100 * 1024
SUBSCRIBER_BYTES = 256 * 1024
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")

Listener = Callable[[bytes], None]


def _marker(dropped: int) -> bytes:
    return f"\n— {dropped} bytes dropped —\n".encode()


class Subscription:
    """One live reader's bounded backlog.

    The drop marker goes where the bytes went missing: before the first chunk
    kept after them, or at the end once the reader has caught up.
    """

    def __init__(self, limit: int) -> None:
        # (chunk, bytes it counts against the limit): markers count 0.
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._size = 0
        self._limit = limit
        self._dropped = 0
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, data: bytes) -> None:
        if self._size + len(data) > self._limit:
            self._dropped += len(data)
        else:
            if self._dropped:
                self._chunks.append((_marker(self._dropped), 0))
                self._dropped = 0
            self._chunks.append((data, len(data)))
            self._size += len(data)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._chunks or self._dropped:
                if self._chunks:
                    chunk, counted = self._chunks.popleft()
                    self._size -= counted
                else:
                    chunk, self._dropped = _marker(self._dropped), 0
                yield chunk
            if self.closed:
                return


class LogMonitor:
    """A byte-bounded history plus fan-out to subscribers and parents."""

    def __init__(self, name: str = "", limit: int = HISTORY_BYTES) -> None:
        self.name = name
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Listener] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        while self._size > self._limit and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        for sub in self._subscribers:
            sub.offer(data)
        for listener in self._listeners:
            listener(data)

    def add_listener(self, listener: Listener) -> None:
        """Called synchronously on every write (parents, stdout, the event bus)."""
        self._listeners.append(listener)

    def history(self) -> bytes:
        return b"".join(self._chunks)

    def tail(self, n: int) -> list[str]:
        """The last ``n`` non-empty lines as text, for error messages."""
        text = b"".join(list(self._chunks)[-n:]).decode("utf-8", "replace")
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-n:]

    def subscribe(self, limit: int = SUBSCRIBER_BYTES) -> Subscription:
        sub = Subscription(limit)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.close()

    def close_subscribers(self) -> None:
        for sub in list(self._subscribers):
            self.unsubscribe(sub)


# Kept for callers that only need a model's history.
LogBuffer = LogMonitor


class Logs:
    """The process-wide monitors and one monitor per model."""

    def __init__(
        self, log_to_stdout: str = "proxy", stdout: TextIO | None = None
    ) -> None:
        self.proxy = LogMonitor("proxy")
        self.upstream = LogMonitor("upstream")
        self.mux = LogMonitor("mux")
        self._models: dict[str, LogMonitor] = {}
        out = stdout or sys.stdout
        self.mux.add_listener(lambda data: _print(out, data))
        self.log_to_stdout = log_to_stdout
        self.proxy.add_listener(self._from_proxy)
        self.upstream.add_listener(self._from_upstream)

    def set_log_to_stdout(self, mode: str) -> None:
        """Choose what ``mux`` (stdout, ``GET /logs``) carries from now on:
        ``proxy``, ``upstream``, ``both`` or ``none`` (config reload)."""
        self.log_to_stdout = mode

    def _from_proxy(self, data: bytes) -> None:
        if self.log_to_stdout in ("proxy", "both"):
            self.mux.write(data)

    def _from_upstream(self, data: bytes) -> None:
        if self.log_to_stdout in ("upstream", "both"):
            self.mux.write(data)

    def model(self, model_id: str) -> LogMonitor:
        monitor = self._models.get(model_id)
        if monitor is None:
            monitor = self._models[model_id] = LogMonitor(model_id)
            monitor.add_listener(self.upstream.write)
        return monitor

    def find(self, name: str) -> LogMonitor | None:
        if name == "proxy":
            return self.proxy
        if name == "upstream":
            return self.upstream
        return self._models.get(name)

    def close_subscribers(self) -> None:
        for monitor in (self.proxy, self.upstream, self.mux, *self._models.values()):
            monitor.close_subscribers()


def _print(out: TextIO, data: bytes) -> None:
    try:
        out.write(data.decode("utf-8", "replace"))
        out.flush()
    except (OSError, ValueError):
        pass  # stdout closed: the histories still have it


# Go time layouts llama-swap accepts for logTimeFormat, as strftime formats.
TIME_FORMATS = {
    "ansic": "%a %b %e %H:%M:%S %Y",
    "unixdate": "%a %b %e %H:%M:%S %Z %Y",
    "rubydate": "%a %b %d %H:%M:%S %z %Y",
    "rfc822": "%d %b %y %H:%M %Z",
    "rfc822z": "%d %b %y %H:%M %z",
    "rfc850": "%A, %d-%b-%y %H:%M:%S %Z",
    "rfc1123": "%a, %d %b %Y %H:%M:%S %Z",
    "rfc1123z": "%a, %d %b %Y %H:%M:%S %z",
    "rfc3339": "%Y-%m-%dT%H:%M:%S%z",
    "rfc3339nano": "%Y-%m-%dT%H:%M:%S.%f%z",
    "kitchen": "%I:%M%p",
    "stamp": "%b %e %H:%M:%S",
    "stampmilli": "%b %e %H:%M:%S.%f",
    "stampmicro": "%b %e %H:%M:%S.%f",
    "stampnano": "%b %e %H:%M:%S.%f",
}
_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}


class ProxyLogHandler(logging.Handler):
    """Routes swapvisor's own log records into the proxy monitor, formatted as
    llama-swap does: ``[<time> ][LEVEL] message``."""

    def __init__(self, monitor: LogMonitor, time_format: str = "") -> None:
        super().__init__()
        self._monitor = monitor
        name = time_format.strip().lower()
        self._time_format = name if name in TIME_FORMATS else ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _LEVEL_NAMES.get(record.levelname, record.levelname)
            stamp = ""
            if self._time_format:
                stamp = timestamp(self._time_format, record.created) + " "
            text = f"{stamp}[{level}] {record.getMessage()}\n"
            if record.exc_info:
                text += logging.Formatter().formatException(record.exc_info) + "\n"
            self._monitor.write(text.encode())
        except Exception:  # a logging handler must never raise
            self.handleError(record)


def timestamp(name: str, created: float) -> str:
    """``created`` (local time) in the ``TIME_FORMATS`` layout ``name``, as Go
    prints it.

    Go's RFC3339 zone is ``Z`` for UTC, else ``+hh:mm`` (strftime's ``%z``
    has no colon) and its nano form drops trailing zeros of the fraction;
    ``Stamp{Milli,Nano}`` have 3 and 9 digits; ``Kitchen``'s hour is unpadded.
    """
    at = datetime.fromtimestamp(created).astimezone()
    if name in ("rfc3339", "rfc3339nano"):
        head, _, rest = at.isoformat(timespec="microseconds").partition(".")
        fraction, zone = rest[:6], rest[6:]
        fraction = fraction.rstrip("0") if name == "rfc3339nano" else ""
        zone = "Z" if zone == "+00:00" else zone
        return f"{head}.{fraction}{zone}" if fraction else head + zone
    text = at.strftime(TIME_FORMATS[name])
    if name == "stampmilli":
        return text[:-3]
    if name == "stampnano":
        return text + "000"
    if name == "kitchen":
        return text.removeprefix("0")
    return text


def install(logs: Logs, level: str, time_format: str) -> ProxyLogHandler:
    """Send the ``swapvisor`` loggers to the proxy monitor at ``level``."""
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "error": logging.ERROR,
    }
    root = logging.getLogger("swapvisor")
    for old in [h for h in root.handlers if isinstance(h, ProxyLogHandler)]:
        root.removeHandler(old)
    handler = ProxyLogHandler(logs.proxy, time_format)
    root.addHandler(handler)
    root.setLevel(levels.get(level, logging.INFO))
    root.propagate = False
    return handler
