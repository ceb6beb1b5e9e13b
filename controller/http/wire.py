"""A lean HTTP/1.1 client for the data path's common case.

The proxy sends most requests to a local model server over plain HTTP with a
body it already holds. For those, aiohttp's client cost ~200 µs of CPU a
request on the project's 2-core machine against ~60 µs for a bare asyncio
protocol (bench/, docs/performance.md), more than all of the rest of the
proxying. This module is that protocol: one keep-alive connection pool per
``host:port``, the request head and body in one write, the response head
parsed here, the body relayed as it arrives (Content-Length, chunked or
until the connection closes) with flow control. Everything else (TLS, a
body streamed from the client, websockets, peers' extra headers) stays on
aiohttp (:func:`fits`).

Failures are raised as the aiohttp exceptions the proxy already tells apart:
``ServerDisconnectedError`` when the server closes before an answer (a stale
kept-alive connection: sent once more), ``ClientConnectionError`` when it
cannot connect, ``ConnectionTimeoutError`` when connecting takes too long,
``ClientPayloadError`` when a body ends early.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, cast

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

# A connection idle longer than this is not reused (aiohttp's default).
KEEPALIVE_S = 15.0
# Reading from the server pauses while this much is waiting for the client.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_HEAD = 64 * 1024  # a longer response head is refused, as aiohttp does
_BODYLESS = frozenset({204, 304})
_CRLF = b"\r\n"


def fits(url: str, body: object, extra_headers: object) -> bool:
    """Whether a request can go through this client: plain http, a body held
    in memory (or none), no headers set by the route (peers)."""
    return (
        url.startswith("http://")
        and (body is None or isinstance(body, bytes | bytearray))
        and not extra_headers
    )


class Response:
    """One upstream answer: the head at once, the body as it arrives."""

    def __init__(self, conn: _Conn, head: _Head) -> None:
        self._conn = conn
        self.status = head.status
        self.reason = head.reason
        self.headers = CIMultiDictProxy(head.headers)
        ctype = head.headers.get("Content-Type", "")
        self.content_type = ctype.split(";", 1)[0].strip().lower()
        self.content_length = head.length if not head.chunked else None

    @property
    def arrived(self) -> bool:
        """Whether some of the body has already arrived with the head."""
        return self._conn.arrived()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, whatever has arrived joined into one piece per step."""
        while (chunk := await self._conn.next_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        """Back to the pool if the body was read to its end, else closed."""
        self._conn.finish()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class Client:
    """Keep-alive connections per ``host:port``, most recently used first."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | bytearray | None,
        connect_timeout_s: float | None,
    ) -> Response:
        target = URL(url)
        host, port = target.raw_host or "", target.port or 80
        head = _request_head(method, target, headers, body)
        conn = self._reused(host, port)
        if conn is None:
            conn = await self._connect(host, port, connect_timeout_s)
        return await conn.send(head, body, method == "HEAD")

    def _reused(self, host: str, port: int) -> _Conn | None:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int, timeout_s: float | None) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, (host, port)), host, port
                )
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host http://{host}:{port}"
            ) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectionError(
                f"Cannot connect to host {host}:{port} [{exc.strerror or exc}]"
            ) from exc
        return conn

    def idle(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_head(
    method: str,
    target: URL,
    headers: Iterable[tuple[str, str]],
    body: bytes | bytearray | None,
) -> bytes:
    """As aiohttp writes it: Host (with the port unless 80, an IPv6 address
    in brackets), the headers, ``Accept: */*`` unless given, and the body's
    length."""
    authority = target.host_port_subcomponent
    lines = [f"{method} {target.raw_path_qs} HTTP/1.1", f"Host: {authority}"]
    accept = False
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"newline in the value of header {name!r}")
        lines.append(f"{name}: {value}")
        accept = accept or name.lower() == "accept"
    if not accept:
        lines.append("Accept: */*")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class _Head:
    """A parsed response head and how its body is framed."""

    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status")

    def __init__(self, raw: bytes, head_request: bool) -> None:
        lines = raw.decode("utf-8", "surrogateescape").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, self.reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise aiohttp.ClientError(
                f"invalid HTTP response status line {lines[0][:100]!r}"
            )
        self.status = int(code)
        self.headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers.add(name.strip(), value.strip())
        self.keep_alive = version == "HTTP/1.1" and "close" not in _tokens(
            self.headers.getall("Connection", ())
        )
        # RFC 9112 6.3: chunked frames the body only as the final coding;
        # with another one last, the body runs until the connection closes.
        # Either way a Transfer-Encoding overrides any Content-Length.
        codings = _tokens(self.headers.getall("Transfer-Encoding", ()))
        self.chunked = bool(codings) and codings[-1] == "chunked"
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or codings:
            self.length: int | None = None
        else:
            self.length = int(length)
        if head_request or self.status in _BODYLESS or self.status < 200:
            self.chunked, self.length = False, 0

    @property
    def informational(self) -> bool:
        return 100 <= self.status < 200


def _tokens(fields: Iterable[str]) -> list[str]:
    """The comma-separated tokens of every field of one header, lowercase."""
    return [t.strip().lower() for f in fields for t in f.split(",") if t.strip()]


class _Conn(asyncio.Protocol):
    """One connection: parses the answer to the request last sent on it."""

    def __init__(self, client: Client, key: tuple[str, int]) -> None:
        self._client = client
        self.key = key
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head_request = False
        self._head: asyncio.Future[_Head] | None = None
        self._body: _Body | None = None
        self._used = time.monotonic()
        self._lost = False

    # -- asyncio -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without subclassing it.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._client.forget(self)
        if self._head is not None and not self._head.done():
            self._head.set_exception(aiohttp.ServerDisconnectedError())
        if self._body is not None:
            self._body.lost(exc)

    # -- the client's side ---------------------------------------------------------

    def usable(self, now: float) -> bool:
        return not self._lost and now - self._used < KEEPALIVE_S

    async def send(
        self, head: bytes, body: bytes | bytearray | None, head_request: bool
    ) -> Response:
        assert self._transport is not None
        self._head_request = head_request
        self._head = asyncio.get_running_loop().create_future()
        self._transport.write(head + body if body else head)
        try:
            parsed = await self._head
        except BaseException:
            self.close()
            raise
        return Response(self, parsed)

    def arrived(self) -> bool:
        return self._body is not None and self._body.waiting()

    async def next_chunk(self) -> bytes | None:
        assert self._body is not None
        chunk = await self._body.take()
        if self._transport is not None and self._body.resumable():
            self._transport.resume_reading()
        return chunk

    def finish(self) -> None:
        """The caller is done with the response."""
        body, self._body = self._body, None
        if body is not None and body.complete and body.reusable and not self._lost:
            self._used = time.monotonic()
            self._client.idle(self)
        else:
            self.close()

    def close(self) -> None:
        self._lost = True
        if self._transport is not None:
            self._transport.close()

    # -- parsing -----------------------------------------------------------------

    def _parse(self) -> None:
        if self._body is not None:
            self._feed_body()
            return
        if self._head is None or self._head.done():
            if self._buffer:  # bytes nobody asked for: not a connection to reuse
                self.close()
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail_head(aiohttp.ClientPayloadError("response head too long"))
            return
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        try:
            head = _Head(raw, self._head_request)
        except (aiohttp.ClientError, ValueError) as exc:
            self._fail_head(exc)
            return
        if head.informational:  # 100 Continue and the like: the answer follows
            self._parse()
            return
        self._body = _Body(head, self._pause)
        self._head.set_result(head)
        self._feed_body()

    def _fail_head(self, exc: BaseException) -> None:
        assert self._head is not None
        self._head.set_exception(exc)
        self.close()

    def _feed_body(self) -> None:
        assert self._body is not None
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        try:
            leftover = self._body.feed(data)
        except aiohttp.ClientPayloadError as exc:  # a malformed chunked body
            self._body.fail(exc)
            self.close()
            return
        if leftover:  # bytes after the body nobody asked for: never expected
            self.close()

    def _pause(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()


class _Body:
    """The decoded body as it arrives, waiting for the reader."""

    def __init__(self, head: _Head, pause: Callable[[], None]) -> None:
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._pause = pause
        self._paused = False
        self.reusable = head.keep_alive and (head.chunked or head.length is not None)
        self._left = head.length  # bytes to come; None: chunked or until closed
        self._chunked = _Chunks() if head.chunked else None
        self.complete = head.length == 0 and not head.chunked

    def feed(self, data: bytes) -> bytes:
        """Take what belongs to the body; return what follows it."""
        if self._chunked is not None:
            pieces, rest = self._chunked.feed(data)
            for piece in pieces:
                self._add(piece)
            self.complete = self._chunked.done
        elif self._left is not None:
            piece, rest = data[: self._left], data[self._left :]
            self._left -= len(piece)
            self._add(piece)
            self.complete = self._left == 0
        else:
            self._add(data)
            rest = b""
        self._wake()
        return rest

    def lost(self, exc: Exception | None) -> None:
        if self._left is None and self._chunked is None:
            self.complete = True  # a body read until the connection closes
        elif not self.complete:
            error = aiohttp.ClientPayloadError(
                "Response payload is not completed"
                + (f": {exc!r}" if exc is not None else "")
            )
            self._error = error
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    async def take(self) -> bytes | None:
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        return chunk

    def waiting(self) -> bool:
        return bool(self._pieces)

    def resumable(self) -> bool:
        if self._paused and self._size < LOW_WATER:
            self._paused = False
            return True
        return False

    def _add(self, piece: bytes) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Chunks:
    """An incremental decoder of ``Transfer-Encoding: chunked``."""

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0  # data bytes left in the current chunk
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self._trailers = False
        self.done = False

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """The data pieces in ``data``, and what follows the last chunk."""
        buf = self._pending + data if self._pending else data
        self._pending = b""
        pieces: list[bytes] = []
        pos = 0
        while pos < len(buf) and not self.done:
            if not (self._left or self._crlf or self._trailers):
                # The common case, whole chunks from ``pos`` on, in a tight
                # loop: a fast stream brings hundreds per read
                # (bench/native_sse). What it leaves, the steps below take.
                pos = _whole_chunks(buf, pos, pieces)
                if pos >= len(buf):
                    break
            if self._left:
                piece = buf[pos : pos + self._left]
                pieces.append(piece)
                self._left -= len(piece)
                pos += len(piece)
                self._crlf = self._left == 0
                continue
            end = buf.find(_CRLF, pos)
            if end < 0:
                self._pending = buf[pos:]
                if len(self._pending) > MAX_HEAD:
                    raise aiohttp.ClientPayloadError("chunk size line too long")
                return pieces, b""
            line = buf[pos:end]
            pos = end + 2
            self._line(line)
        return pieces, buf[pos:]

    def _line(self, line: bytes) -> None:
        if self._crlf:  # the empty line after a chunk's data
            if line:
                raise aiohttp.ClientPayloadError("chunk not followed by CRLF")
            self._crlf = False
        elif self._trailers:
            self.done = not line  # trailer fields end at an empty line
        else:
            size = line.split(b";", 1)[0].strip()
            if not _hex(size):  # int() would take "-3", "0x1a" or "1_0"
                raise aiohttp.ClientPayloadError(f"invalid chunk size {size[:20]!r}")
            self._left = int(size, 16)
            self._trailers = self._left == 0


def _whole_chunks(buf: bytes, pos: int, pieces: list[bytes]) -> int:
    """Append the data of the whole non-empty chunks from ``pos`` on whose
    size lines are plain hex digits; return where the first other begins."""
    while True:
        end = buf.find(_CRLF, pos)
        if end < 0:
            return pos
        line = buf[pos:end]
        if not line or line.translate(None, _HEX_DIGITS):
            return pos
        size = int(line, 16)
        stop = end + 2 + size
        if not size or buf[stop : stop + 2] != _CRLF:
            return pos
        pieces.append(buf[end + 2 : stop])
        pos = stop + 2


_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _hex(digits: bytes) -> bool:
    return bool(digits) and not digits.translate(None, _HEX_DIGITS)
