"""controller.http.wire: the lean upstream client, against scripted servers.

Each server reads one request at a time and answers with the bytes a test
gives, written in the pieces it gives, so framing edge cases (chunks split
anywhere, interim answers, bodies cut short) are exercised byte for byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from unittest import mock

import aiohttp
import pytest
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import example, given, strategies as st

from controller.http import wire

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

Script = list[list[bytes]]  # per request: the pieces of the answer


@dataclass
class Scripted:
    """A server answering request n with ``script[n]``; closes after the
    last piece when ``close`` (or after the script runs out)."""

    script: Script
    close: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            while self.script:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                self.requests.append(head + await reader.readexactly(length))
                for piece in self.script.pop(0):
                    writer.write(piece)
                    await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


if TYPE_CHECKING:
    Start = Callable[[Scripted], Awaitable[Scripted]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(scripted: Scripted) -> Scripted:
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        servers.append(server)
        scripted.port = server.sockets[0].getsockname()[1]
        return scripted

    yield start
    for server in servers:
        server.close()


async def fetch(
    client: wire.Client, port: int, method: str = "POST", body: bytes | None = b"{}"
) -> tuple[wire.Response, bytes]:
    url = f"http://127.0.0.1:{port}/v1/chat?x=1"
    headers = [("Content-Type", "application/json")]
    resp = await client.request(method, url, headers, body, None)
    async with resp:
        return resp, await resp.read()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


async def test_a_kept_alive_connection_is_reused(serve: Start) -> None:
    srv = await serve(Scripted([[OK + b"{}"], [OK, b"{", b"}"]]))
    client = wire.Client()
    for _ in range(2):
        resp, body = await fetch(client, srv.port)
        assert (resp.status, resp.reason, body) == (200, "OK", b"{}")
        assert resp.content_type == "application/json"
        assert resp.content_length == 2
    assert srv.connections == 1
    client.close()


async def test_the_request_is_written_as_aiohttp_writes_it(serve: Start) -> None:
    srv = await serve(Scripted([[OK + b"{}"], [OK + b"{}"]]))
    client = wire.Client()
    await fetch(client, srv.port)
    await fetch(client, srv.port, "GET", None)
    post, get = srv.requests
    assert post == (
        b"POST /v1/chat?x=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{srv.port}\r\n".encode()
        + b"Content-Type: application/json\r\nAccept: */*\r\n"
        + b"Content-Length: 2\r\n\r\n{}"
    )
    assert b"Content-Length" not in get
    client.close()


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
async def test_chunked_bodies_split_anywhere_decode(serve: Start, split: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"6;ext=1\r\ndata: \r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    pieces = [raw[i : i + split] for i in range(0, len(raw), split)]
    srv = await serve(Scripted([pieces, [OK + b"{}"]]))
    client = wire.Client()
    resp, body = await fetch(client, srv.port)
    assert body == b"data: 0123456789"
    assert resp.content_length is None
    assert resp.content_type == "text/event-stream"
    await fetch(client, srv.port)
    assert srv.connections == 1  # complete: reused
    client.close()


def framed(body: bytes, sizes: list[int], upper: bool, ext: bool) -> bytes:
    """``body`` as chunks of ``sizes`` (cycled), hex sizes in either case,
    each size line with an extension when ``ext``."""
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = min(sizes[i % len(sizes)], len(body) - pos)
        size = format(n, "X" if upper else "x").encode()
        out.append(size + (b";e=1" if ext and i % 2 else b"") + b"\r\n")
        out.append(body[pos : pos + n] + b"\r\n")
        pos, i = pos + n, i + 1
    return b"".join(out)


@given(
    body=st.binary(max_size=400),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=5),
    upper=st.booleans(),
    ext=st.booleans(),
    trailer=st.booleans(),
    after=st.binary(max_size=8),
    feeds=st.lists(st.integers(1, 600), min_size=1, max_size=6),
)
@example(  # all of it in one read: the whole-chunk loop takes every chunk
    body=bytes(range(200)),
    sizes=[50, 7],
    upper=True,
    ext=False,
    trailer=False,
    after=b"",
    feeds=[600],
)
def test_chunked_decoding_takes_any_framing_fed_in_any_pieces(
    body: bytes,
    sizes: list[int],
    upper: bool,
    ext: bool,
    trailer: bool,
    after: bytes,
    feeds: list[int],
) -> None:
    end = b"0\r\n" + (b"X-Trailer: t\r\n" if trailer else b"") + b"\r\n"
    raw = framed(body, sizes, upper, ext) + end + after
    decoder, got, rest, pos, i = wire._Chunks(), [], b"", 0, 0
    while pos < len(raw) and not decoder.done:
        piece = raw[pos : pos + feeds[i % len(feeds)]]
        pos, i = pos + len(piece), i + 1
        pieces, rest = decoder.feed(piece)
        got += pieces
    assert decoder.done
    assert b"".join(got) == body
    assert rest + raw[pos:] == after


@pytest.mark.parametrize(
    "raw",
    [
        b"3\r\nabcX\r\n",  # no CRLF after the data
        b"-3\r\nabc\r\n",  # a sign (int() takes it: a negative size hung the loop)
        b"0x3\r\nabc\r\n",  # a prefix int() takes
        b"1_0\r\n",  # an underscore int() takes
        b"g\r\n",  # not hex
        b"\r\n",  # no size
    ],
)
def test_a_malformed_chunk_is_refused_however_it_arrives(raw: bytes) -> None:
    for split in (1, len(raw)):
        decoder = wire._Chunks()
        with pytest.raises(aiohttp.ClientPayloadError):
            for i in range(0, len(raw), split):
                decoder.feed(raw[i : i + split])


# -- the response head, held to llhttp (aiohttp's own C parser) ---------------------

_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
    min_size=1,
    max_size=12,
)
_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20
)
# The fields that frame the body or decide reuse, valid and not.
_FRAMING = st.sampled_from(
    [
        ("Content-Length", "12"),
        ("Content-Length", "007"),
        ("Content-Length", "-3"),
        ("Content-Length", "+5"),
        ("Content-Length", "5, 5"),
        ("Transfer-Encoding", "chunked"),
        ("Transfer-Encoding", "gzip, chunked"),
        ("Transfer-Encoding", "chunked, gzip"),
        ("Transfer-Encoding", "gzip"),
        ("Transfer-Encoding", "identity"),
        ("Connection", "close"),
        ("Connection", "keep-alive"),
        ("Connection", "Keep-Alive, Close"),
    ]
)


def _llhttp(raw: bytes) -> RawResponseMessage | None:
    """What aiohttp's C parser makes of a head; None where it refuses it."""
    loop = asyncio.new_event_loop()
    try:
        # The protocol only sees the body's flow control: a stand-in will do.
        protocol = mock.Mock()
        parser = HttpResponseParser(
            protocol, loop, 2**16, max_line_size=8190, max_field_size=8190
        )
        messages, _, _ = parser.feed_data(raw + b"\r\n\r\n")
    except HttpProcessingError:
        return None
    finally:
        loop.close()
    message: RawResponseMessage = messages[0][0]
    return message


@given(
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    code=st.integers(100, 599),
    reason=_VALUE,
    fields=st.lists(st.one_of(st.tuples(_TOKEN, _VALUE), _FRAMING), max_size=5),
)
@example(  # chunked not last: the body runs until the connection closes
    version="HTTP/1.1",
    code=200,
    reason="OK",
    fields=[("Transfer-Encoding", "chunked, gzip")],
)
@example(  # the last Connection field says close
    version="HTTP/1.1",
    code=200,
    reason="OK",
    fields=[
        ("Content-Length", "1"),
        ("Connection", "keep-alive"),
        ("Connection", "close"),
    ],
)
def test_a_response_head_is_read_as_llhttp_reads_it(
    version: str, code: int, reason: str, fields: list[tuple[str, str]]
) -> None:
    """Status, reason, fields and chunked framing as llhttp has them; a
    connection kept only where llhttp keeps it; and where llhttp refuses a
    head, no framing that could hang or misread the body."""
    raw = f"{version} {code} {reason}".encode() + b"".join(
        f"\r\n{k}: {v}".encode() for k, v in fields
    )
    ref = _llhttp(raw)
    try:
        ours: wire._Head | None = wire._Head(raw, head_request=False)
    except (aiohttp.ClientError, ValueError):
        ours = None
    if ref is None:
        assert ours is None or ours.length is None or ours.length >= 0
        return
    assert ours is not None, raw
    assert (ours.status, ours.reason) == (ref.code, ref.reason)
    lower = [(k.lower(), v) for k, v in ours.headers.items()]
    assert lower == [(k.lower(), v) for k, v in ref.headers.items()]
    if not (code < 200 or code in (204, 304)):  # bodyless: no framing at all
        assert ours.chunked == ref.chunked, raw
        if ours.length is not None:
            assert ours.length == int(ref.headers["Content-Length"])
    reused = ours.keep_alive and (ours.chunked or ours.length is not None)
    assert not (reused and ref.should_close), raw


async def test_chunked_before_another_coding_reads_until_close(serve: Start) -> None:
    """``Transfer-Encoding: chunked, gzip``: the body is not chunk-framed
    (RFC 9112 6.3), so its bytes pass as they are and it ends with the
    connection."""
    body = b"5\r\nhello\r\n0\r\n\r\n"  # looks chunked, is not
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    srv = await serve(Scripted([[head, body]], close=True))
    client = wire.Client()
    resp, got = await fetch(client, srv.port)
    assert (resp.status, got) == (200, body)
    client.close()


async def test_a_body_without_length_ends_with_the_connection(serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    srv = await serve(Scripted([[head, b"all ", b"of it"]], close=True))
    client = wire.Client()
    _, body = await fetch(client, srv.port)
    assert body == b"all of it"
    client.close()


async def test_interim_answers_are_skipped(serve: Start) -> None:
    srv = await serve(Scripted([[b"HTTP/1.1 100 Continue\r\n\r\n", OK + b"{}"]]))
    client = wire.Client()
    resp, body = await fetch(client, srv.port)
    assert (resp.status, body) == (200, b"{}")
    client.close()


async def test_bodyless_answers_keep_the_connection(serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    srv = await serve(
        Scripted([[head], [b"HTTP/1.1 204 No Content\r\n\r\n"], [OK + b"{}"]])
    )
    client = wire.Client()
    assert (await fetch(client, srv.port, "HEAD", None))[1] == b""
    resp, body = await fetch(client, srv.port)
    assert (resp.status, body) == (204, b"")
    await fetch(client, srv.port)
    assert srv.connections == 1
    client.close()


async def test_a_body_cut_short_is_a_payload_error(serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    srv = await serve(Scripted([[head, b"12345"]], close=True))
    client = wire.Client()
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, srv.port)
    client.close()


async def test_a_malformed_chunk_is_a_payload_error(serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = await serve(Scripted([[head + b"zz\r\n"]]))
    client = wire.Client()
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, srv.port)
    client.close()


async def test_no_answer_is_a_server_disconnect(serve: Start) -> None:
    srv = await serve(Scripted([[]], close=True))
    client = wire.Client()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(client, srv.port)
    client.close()


async def test_a_bad_status_line_is_a_client_error(serve: Start) -> None:
    srv = await serve(Scripted([[b"NOPE\r\n\r\n"]]))
    client = wire.Client()
    with pytest.raises(aiohttp.ClientError, match="status line"):
        await fetch(client, srv.port)
    client.close()


async def test_a_refused_connection_is_a_connection_error(serve: Start) -> None:
    client = wire.Client()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(aiohttp.ClientConnectionError, match="Cannot connect"):
        await fetch(client, port)
    client.close()


async def test_a_large_body_flows_with_reading_paused_and_resumed(
    serve: Start,
) -> None:
    size = 4 * wire.HIGH_WATER
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
    srv = await serve(Scripted([[head, b"x" * size], [OK + b"{}"]]))
    client = wire.Client()
    resp = await client.request(
        "POST", f"http://127.0.0.1:{srv.port}/", [], b"{}", None
    )
    got = 0
    async with resp:
        async for chunk in resp.chunks():
            got += len(chunk)
    assert got == size
    await fetch(client, srv.port)
    assert srv.connections == 1
    client.close()


async def test_a_response_left_unread_closes_its_connection(serve: Start) -> None:
    head_only = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"  # no body comes
    srv = await serve(Scripted([[head_only], [OK + b"{}"]]))
    client = wire.Client()
    resp = await client.request("POST", f"http://127.0.0.1:{srv.port}/", [], b"", None)
    resp.release()
    await fetch(client, srv.port)
    assert srv.connections == 2
    client.close()


def test_fits_only_plain_http_with_a_held_body() -> None:
    assert wire.fits("http://h:1/", b"{}", {})
    assert wire.fits("http://h:1/", None, {})
    assert not wire.fits("https://h/", b"{}", {})
    assert not wire.fits("http://h:1/", object(), {})
    assert not wire.fits("http://h:1/", b"{}", {"Authorization": "Bearer k"})


async def test_an_ipv6_upstream_gets_a_bracketed_host() -> None:
    scripted = Scripted([[OK + b"{}"]])
    try:
        server = await asyncio.start_server(scripted.handle, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.sockets[0].getsockname()[1]
    client = wire.Client()
    resp = await client.request("GET", f"http://[::1]:{port}/", [], None, None)
    async with resp:
        assert await resp.read() == b"{}"
    assert scripted.requests[0].startswith(
        b"GET / HTTP/1.1\r\n" + f"Host: [::1]:{port}\r\n".encode()
    )
    client.close()
    server.close()


async def test_a_slow_connect_is_a_connection_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "create_connection", never)
    client = wire.Client()
    with pytest.raises(aiohttp.ConnectionTimeoutError):
        await client.request("GET", "http://127.0.0.1:9/", [], None, 0.01)
