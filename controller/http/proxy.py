"""The data path: forward one request to an upstream and stream its answer back.

Bytes pass through untouched (no decompression, no re-encoding) and each chunk
is written as soon as it arrives, so SSE is never buffered. The request body is
sent as given unless a rewrite needed a new one. Websocket upgrades are relayed
frame by frame.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict

from controller.errors import SRC, UpstreamError
from controller.http import wire

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping

log = logging.getLogger("swapvisor.proxy")
# An upstream's answer: from the lean client (the common case) or aiohttp's.
Answer = aiohttp.ClientResponse | wire.Response
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Bodies up to this size with a Content-Length are relayed in one piece.
WHOLE_BODY_MAX = 1 << 20
DROP_REQUEST = HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
# aiohttp's server decodes request bodies sent with these (http_parser.py).
_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
# swapvisor's own API keys are not the upstream's business.
CLIENT_KEYS = frozenset({"authorization", "x-api-key"})
_WS_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


def openai_sse_error(message: str, code: str = "upstream_error") -> bytes:
    # The openai SDK raises APIError on a data event whose JSON has "error".
    body = {
        "error": {"message": message, "type": "server_error", "code": code},
        "src": SRC,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def anthropic_sse_error(message: str, code: str = "upstream_error") -> bytes:
    # The anthropic SDK raises on an "error" event.
    body = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class Route:
    """Where and how to forward one request."""

    url: str
    sse_error: Callable[[str], bytes] = openai_sse_error
    # Explains a dropped connection (e.g. the process's exit code), if known.
    on_dropped: Callable[[], Awaitable[str | None]] | None = None
    drop_headers: frozenset[str] = DROP_REQUEST
    set_headers: Mapping[str, str] = field(default_factory=dict)
    forwarded_for: bool = True
    connect_timeout_s: float | None = None
    header_timeout_s: float | None = None
    label: str = "upstream"
    # Sees the response headers and every relayed chunk (activity, metrics).
    tap: Tap | None = None


class Tap(Protocol):
    def headers(self, status: int, headers: Iterable[tuple[str, str]]) -> None: ...

    def chunk(self, data: bytes) -> None: ...


class Proxy:
    """One pooled HTTP client for every upstream."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._wire = wire.Client()

    def client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                # One client serves every user: a Set-Cookie from an upstream
                # must never be replayed to it on someone else's request.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def forward(
        self,
        request: web.Request,
        route: Route,
        body: bytes | AsyncIterable[bytes] | None,
        into: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Send the request to ``route.url`` and stream the response back.

        With ``into``, an SSE response already sent to the client (a loading
        stream), the upstream's body is appended to it. Raises UpstreamError
        (502) if the upstream fails before answering.
        """
        upstream = await self._open(request, route, body)
        async with upstream:
            if into is not None:
                return await _append(request, upstream, into, route)
            return await _relay(request, upstream, route)

    async def _open(
        self,
        request: web.Request,
        route: Route,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> Answer:
        timeout = _timeouts(route.connect_timeout_s)
        try:
            if route.header_timeout_s is None:  # no timer to arm per request
                return await self._send(request, route, body, timeout)
            async with asyncio.timeout(route.header_timeout_s):
                return await self._send(request, route, body, timeout)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):  # connecting took too long
                raise UpstreamError(
                    f"{route.label} {route.url} did not answer: {_describe(exc)}"
                ) from exc
            raise UpstreamError(
                f"{route.label} {route.url} sent no response headers within "
                f"{route.header_timeout_s:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if not isinstance(exc.__cause__, web.RequestPayloadError):
                raise UpstreamError(
                    f"{route.label} {route.url} did not answer: {_describe(exc)}"
                    + await _why(route)
                ) from exc
            unreadable = exc.__cause__
        # Not the upstream: the client's body could not be decoded (a 400).
        raise unreadable

    async def _send(
        self,
        request: web.Request,
        route: Route,
        body: bytes | AsyncIterable[bytes] | None,
        limits: aiohttp.ClientTimeout,
    ) -> Answer:
        # A kept-alive connection the server has just closed (llama.cpp does
        # after a long stream) fails at once: a body we still hold is sent
        # once more on a fresh connection, as Go's transport does.
        for retry in (True, False):
            try:
                return await self._request(request, route, body, limits)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                stale = not isinstance(exc, aiohttp.ClientConnectorError)
                if not (retry and stale and not _streamed(body)):
                    raise
                log.debug("%s: stale connection (%s); sending again", route.url, exc)
        raise AssertionError("unreachable")

    async def _request(
        self,
        request: web.Request,
        route: Route,
        body: bytes | AsyncIterable[bytes] | None,
        limits: aiohttp.ClientTimeout,
    ) -> Answer:
        headers = request_headers(request, route, body)
        if wire.fits(route.url, body, route.set_headers):
            assert body is None or isinstance(body, bytes | bytearray)
            return await self._wire.request(
                request.method,
                route.url,
                headers.items(),
                body,
                route.connect_timeout_s,
            )
        return await self.client().request(
            request.method,
            route.url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=limits,
        )

    async def websocket(
        self, request: web.Request, route: Route
    ) -> web.WebSocketResponse:
        """Relay a websocket session frame by frame in both directions."""
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in DROP_REQUEST | _WS_HEADERS | route.drop_headers
        }
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        try:
            upstream = await self.client().ws_connect(
                route.url, headers=headers, protocols=protocols, autoping=False
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"{route.label} websocket {route.url} failed: {_describe(exc)}"
            ) from exc
        client = web.WebSocketResponse(protocols=protocols, autoping=False)
        await client.prepare(request)
        async with upstream:
            await asyncio.gather(_pump_ws(client, upstream), _pump_ws(upstream, client))
        return client

    async def aclose(self) -> None:
        self._wire.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _pump_ws(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in src:
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await dst.pong(msg.data)
    await dst.close()


async def _relay(
    request: web.Request, upstream: Answer, route: Route
) -> web.StreamResponse:
    is_sse = upstream.content_type == "text/event-stream"
    length = upstream.content_length
    if not is_sse and length is not None and length <= WHOLE_BODY_MAX:
        return await _relay_whole(request, upstream, route)
    # When the first chunk came with the headers, both go out in one write:
    # one wake-up of the client instead of two (the first chunk arrived ~1 ms
    # late during a fast stream on 2 cores, bench/). Otherwise the headers go
    # out at once, as llama-swap sends them.
    together = isinstance(upstream, wire.Response) and upstream.arrived
    response = (_WithFirstChunk if together else web.StreamResponse)(
        status=upstream.status,
        reason=upstream.reason,
        headers=_response_headers(upstream.headers),
    )
    if is_sse:
        response.headers["X-Accel-Buffering"] = "no"
    if upstream.content_length is not None and not is_sse:
        response.content_length = upstream.content_length
    tap = route.tap
    if tap is not None:
        tap.headers(upstream.status, upstream.headers.items())
    await response.prepare(request)
    return await _stream(request, upstream, response, route, is_sse)


class _WithFirstChunk(web.StreamResponse):
    """A streamed response whose headers are sent with its first chunk."""

    _send_headers_immediately = False


async def _relay_whole(
    request: web.Request, upstream: Answer, route: Route
) -> web.StreamResponse:
    """A small body of known length: headers and body in one write (a second
    socket write per request was a third of the proxy's cost, bench/)."""
    try:
        body = await upstream.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(await _lost(route, exc)) from exc
    if route.tap is not None:
        route.tap.headers(upstream.status, upstream.headers.items())
        route.tap.chunk(body)
    return web.Response(
        status=upstream.status,
        reason=upstream.reason,
        headers=_response_headers(upstream.headers),
        body=body,
    )


async def _append(
    request: web.Request,
    upstream: Answer,
    into: web.StreamResponse,
    route: Route,
) -> web.StreamResponse:
    """Continue an already-started SSE response with the upstream's stream."""
    if route.tap is not None:
        route.tap.headers(upstream.status, upstream.headers.items())
    if upstream.status == 200 and upstream.content_type == "text/event-stream":
        return await _stream(request, upstream, into, route, is_sse=True)
    # Headers are gone: say it inside the stream, well-formed.
    try:
        text = (await upstream.read()).decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError) as exc:
        error = await _lost(route, exc)
    else:
        error = f"{route.label} answered {upstream.status}: {text[:2000]}"
    return await _end_with(request, into, route.sse_error(error))


async def _stream(
    request: web.Request,
    upstream: Answer,
    out: web.StreamResponse,
    route: Route,
    is_sse: bool,
) -> web.StreamResponse:
    """Copy the body into the started ``out`` chunk by chunk, then end it,
    telling upstream and client failures apart."""
    chunks = (
        upstream.chunks()
        if isinstance(upstream, wire.Response)
        else upstream.content.iter_any()
    )
    tap = route.tap
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, OSError) as exc:
            return await _upstream_lost(request, out, route, exc, is_sse)
        if tap is not None:
            tap.chunk(chunk)
        try:
            await out.write(chunk)
        except (ConnectionError, RuntimeError):  # closing transport
            return _client_left(request, out)
    try:
        await out.write_eof()
    except ConnectionError:
        return _client_left(request, out)
    return out


async def _upstream_lost(
    request: web.Request,
    out: web.StreamResponse,
    route: Route,
    exc: BaseException,
    is_sse: bool,
) -> web.StreamResponse:
    message = await _lost(route, exc)
    if not is_sse:
        # A truncated body must not look complete: drop the connection.
        if request.transport is not None:
            request.transport.close()
        raise UpstreamError(message) from exc
    return await _end_with(request, out, route.sse_error(message))


async def _lost(route: Route, cause: BaseException) -> str:
    return (
        f"{route.label} connection lost mid-response: {_describe(cause)}"
        + await _why(route)
    )


async def _end_with(
    request: web.Request, response: web.StreamResponse, event: bytes
) -> web.StreamResponse:
    """End a started SSE response with an error event (if the client is still
    there to read it)."""
    try:
        await response.write(event)
        await response.write_eof()
    except ConnectionError:
        return _client_left(request, response)
    return response


def _client_left(
    request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """The client hung up mid-response (some do as soon as they have read
    ``data: [DONE]``): one line, not a traceback."""
    log.info(
        "%s %s: the client left before the response ended",
        request.method,
        request.path,
    )
    return response


async def _why(route: Route) -> str:
    if route.on_dropped is None:
        return ""
    reason = await route.on_dropped()
    return f"; the upstream process ended: {reason}" if reason else ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@functools.lru_cache(maxsize=32)
def _timeouts(connect_s: float | None) -> aiohttp.ClientTimeout:
    # Immutable, and the same for every request to a model: made once.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s)


def decoded_body(request: web.Request) -> bool:
    """Whether aiohttp's server decodes this request's body as it reads it."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    return encoding is not None and encoding.lower() in _DECODED


def _streamed(body: object) -> bool:
    """A body read from the client as it arrives cannot be sent twice."""
    return body is not None and not isinstance(body, bytes | bytearray)


def request_headers(
    request: web.Request, route: Route, body: bytes | AsyncIterable[bytes] | None
) -> CIMultiDict[str]:
    drop = route.drop_headers
    # aiohttp has decoded such a body: it goes on as it is now, unlabelled,
    # and its length is no longer the client's.
    decoded = decoded_body(request)
    if decoded:
        drop = drop | {"content-encoding"}
    headers = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in drop
    )
    if body is not None and not isinstance(body, bytes | bytearray) and not decoded:
        # A streamed body keeps the client's length rather than going chunked.
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
    if route.forwarded_for and request.remote:
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = (
            f"{prior}, {request.remote}" if prior else request.remote
        )
    headers.update(route.set_headers)
    return headers


def _response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in _DROP_RESPONSE
    )
