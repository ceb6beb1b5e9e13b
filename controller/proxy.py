"""The data path: forward one request to an upstream and stream its answer back.

Bytes pass through untouched (no decompression, no re-encoding) and each chunk
is written as soon as it arrives, so SSE is never buffered. The request body is
sent as given unless a rewrite needed a new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from controller.errors import UpstreamError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Mapping

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
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
# swapvisor's own API keys are not the upstream's business.
_CLIENT_KEYS = frozenset({"authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class MidStreamError:
    """How to tell a client that the upstream died after the headers were sent."""

    sse_event: Callable[[str], bytes]


def openai_sse_error(message: str) -> bytes:
    # The openai SDK raises APIError on a data event whose JSON has "error".
    body = {
        "error": {"message": message, "type": "server_error", "code": "upstream_error"},
        "src": "swapvisor",
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def anthropic_sse_error(message: str) -> bytes:
    # The anthropic SDK raises on an "error" event.
    body = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


class Proxy:
    """One pooled HTTP client for every upstream."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def forward(
        self,
        request: web.Request,
        url: str,
        body: bytes | AsyncIterable[bytes] | None,
        on_mid_stream: MidStreamError,
        on_dropped: Callable[[], Awaitable[str | None]] | None = None,
        *,
        strip_client_keys: bool = False,
    ) -> web.StreamResponse:
        """Send the request to ``url`` and stream the response to the client.

        Raises UpstreamError (502) if the upstream fails before answering.
        """
        headers = _request_headers(request, body, strip_client_keys)
        try:
            upstream = await self._client().request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"upstream {url} did not answer: {_describe(exc)}"
                + await _why(on_dropped)
            ) from exc
        async with upstream:
            return await self._relay(request, upstream, on_mid_stream, on_dropped)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        on_mid_stream: MidStreamError,
        on_dropped: Callable[[], Awaitable[str | None]] | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_response_headers(upstream.headers),
        )
        is_sse = upstream.content_type == "text/event-stream"
        if is_sse:
            response.headers["X-Accel-Buffering"] = "no"
        if upstream.content_length is not None and not is_sse:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            message = (
                f"upstream connection lost mid-response: {_describe(exc)}"
                + await _why(on_dropped)
            )
            if not is_sse:
                # A truncated body must not look complete: drop the connection.
                if request.transport is not None:
                    request.transport.close()
                raise UpstreamError(message) from exc
            await response.write(on_mid_stream.sse_event(message))
        await response.write_eof()
        return response

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _why(on_dropped: Callable[[], Awaitable[str | None]] | None) -> str:
    if on_dropped is None:
        return ""
    reason = await on_dropped()
    return f"; the upstream process ended: {reason}" if reason else ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _request_headers(
    request: web.Request,
    body: bytes | AsyncIterable[bytes] | None,
    strip_client_keys: bool,
) -> CIMultiDict[str]:
    drop = _DROP_REQUEST | _CLIENT_KEYS if strip_client_keys else _DROP_REQUEST
    headers = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in drop
    )
    if body is not None and not isinstance(body, bytes | bytearray):
        # A streamed body keeps the client's length rather than going chunked.
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


def _response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in _DROP_RESPONSE
    )
