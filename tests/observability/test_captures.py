"""controller.observability.captures: capture contents and the byte-bounded buffer (§5.5)."""

from __future__ import annotations

import base64
import os

import pytest

from controller.observability.captures import (
    REDACTED,
    BoundedBody,
    Capture,
    CaptureBuffer,
    CaptureFields,
    build_capture,
    canonical_header_key,
    capture_fields_for,
    header_map,
    redact_headers,
)

REQ_HEADERS = [
    ("content-type", "application/json"),
    ("authorization", "Bearer sk-secret"),
    ("Proxy-Authorization", "Basic abc"),
    ("COOKIE", "a=1"),
    ("x-api-key", "k"),
    ("X-Session-Token", "kept"),  # not in llama-swap's list
    ("x-secret-thing", "kept"),
    ("accept", "first"),
    ("Accept", "second"),
]
RESP_HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Encoding", "gzip"),
    ("set-cookie", "sid=1"),
]


def blob(n: int) -> bytes:
    """Incompressible bytes, so a capture's stored size tracks ``n``."""
    return os.urandom(n)


def cap(i: int, size: int = 0) -> Capture:
    return Capture(id=i, req_path="/v1/chat/completions", req_body=blob(size))


# ---------------------------------------------------------- headers ---


def test_redaction_follows_llama_swaps_exact_list() -> None:
    got = redact_headers(header_map(REQ_HEADERS))
    assert got == {
        "Content-Type": "application/json",
        "Authorization": REDACTED,
        "Proxy-Authorization": REDACTED,
        "Cookie": REDACTED,
        "X-Api-Key": REDACTED,
        "X-Session-Token": "kept",
        "X-Secret-Thing": "kept",
        "Accept": "first",
    }


def test_redact_headers_is_case_insensitive_and_copies() -> None:
    src = {"set-cookie": "x", "AUTHORIZATION": "y"}
    assert redact_headers(src) == {"set-cookie": REDACTED, "AUTHORIZATION": REDACTED}
    assert src == {"set-cookie": "x", "AUTHORIZATION": "y"}


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("content-type", "Content-Type"),
        ("X-API-KEY", "X-Api-Key"),
        ("www-authenticate", "Www-Authenticate"),
        ("x-forwarded-for", "X-Forwarded-For"),
        ("bad header", "bad header"),
        ("", ""),
    ],
)
def test_canonical_header_key(raw: str, canonical: str) -> None:
    assert canonical_header_key(raw) == canonical


# ---------------------------------------------------------- capture ---


def test_build_capture_success_keeps_everything_but_content_encoding() -> None:
    c = build_capture(
        7, "/v1/chat/completions", REQ_HEADERS, b'{"a":1}', RESP_HEADERS, b"ok", 200
    )
    assert c.req_headers is not None and c.req_headers["Authorization"] == REDACTED
    assert c.resp_headers == {
        "Content-Type": "application/json",
        "Set-Cookie": REDACTED,
    }
    assert (c.req_body, c.resp_body) == (b'{"a":1}', b"ok")


def test_build_capture_failed_request_never_keeps_response_body() -> None:
    c = build_capture(
        8, "/v1/chat/completions", REQ_HEADERS, b"req", RESP_HEADERS, b"err", 502
    )
    assert c.req_body == b"req" and c.resp_headers is not None
    assert c.resp_body is None


@pytest.mark.parametrize(
    ("path", "has"),
    [
        ("/v1/audio/speech", (True, True, True, False)),
        ("/v1/audio/voices", (True, False, True, True)),
        ("/v1/audio/transcriptions", (True, False, True, True)),
        ("/v1/images/generations", (True, True, True, False)),
        ("/v1/images/edits", (True, False, True, False)),
        ("/sdapi/v1/txt2img", (True, True, True, False)),
        ("/sdapi/v1/img2img", (True, False, True, False)),
        ("/v1/embeddings", (True, True, True, True)),
    ],
)
def test_per_path_capture_masks(path: str, has: tuple[bool, bool, bool, bool]) -> None:
    c = build_capture(1, path, REQ_HEADERS, b"rq", RESP_HEADERS, b"rs", 200)
    parts = (c.req_headers, c.req_body, c.resp_headers, c.resp_body)
    assert tuple(p is not None for p in parts) == has


def test_capture_fields_default_all() -> None:
    assert capture_fields_for("/v1/chat/completions") == CaptureFields.ALL
    assert not capture_fields_for("/v1/images/edits") & CaptureFields.REQ_BODY


def test_capture_json_bodies_base64_and_missing_parts_null() -> None:
    c = Capture(3, "/v1/images/edits", {"A": "b"}, None, None, b"\x00\xffbin")
    assert c.to_json() == {
        "id": 3,
        "req_path": "/v1/images/edits",
        "req_headers": {"A": "b"},
        "req_body": None,
        "resp_headers": None,
        "resp_body": base64.b64encode(b"\x00\xffbin").decode(),
    }


# ----------------------------------------------------------- buffer ---


@pytest.mark.parametrize("size", [0, -1])
def test_disabled_buffer_stores_nothing(size: int) -> None:
    buf = CaptureBuffer(size)
    assert not buf.enabled
    assert buf.add(1, cap(1)) is False
    assert 1 not in buf and buf.get(1) is None and len(buf) == 0


def test_round_trip() -> None:
    buf = CaptureBuffer.from_megabytes(5)
    c = build_capture(
        4, "/v1/chat/completions", REQ_HEADERS, b"q", RESP_HEADERS, b"r", 200
    )
    assert buf.max_bytes == 5 * 1024 * 1024
    assert buf.add(4, c) and 4 in buf and "4" not in buf
    assert buf.get(4) == c.to_json()


def test_eviction_is_fifo_by_bytes() -> None:
    buf = CaptureBuffer(10_000)
    for i in range(1, 5):
        assert buf.add(i, cap(i, 4_000))  # ~4.1 kB stored: two fit
    assert [i in buf for i in range(1, 5)] == [False, False, True, True]
    assert buf.size <= 10_000 and len(buf) == 2


def test_item_larger_than_buffer_is_skipped_and_evicts_nothing() -> None:
    buf = CaptureBuffer(5_000)
    assert buf.add(1, cap(1, 1_000))
    assert buf.add(2, cap(2, 10_000)) is False
    assert 1 in buf and 2 not in buf


def test_re_adding_an_id_replaces_it() -> None:
    buf = CaptureBuffer(10_000)
    buf.add(1, cap(1, 4_000))
    before = buf.size
    buf.add(1, cap(1, 10))
    assert len(buf) == 1 and buf.size < before


def test_captures_count_raw_bytes() -> None:
    # Stored uncompressed (compressing on the request path was too costly).
    buf = CaptureBuffer(4_096)
    big = Capture(1, "/v1/chat/completions", req_body=b"a" * 100_000)
    assert not buf.add(1, big)
    small = Capture(2, "/v1/chat/completions", req_body=b"a" * 1_000)
    assert buf.add(2, small) and 1_000 < buf.size < 4_096


def test_clear() -> None:
    buf = CaptureBuffer(10_000)
    buf.add(1, cap(1))
    buf.clear()
    assert len(buf) == 0 and buf.size == 0


# ------------------------------------------------------ bounded body ---


def test_bounded_body_within_and_over_limit() -> None:
    ok = BoundedBody(10)
    for chunk in (b"abc", b"", b"defghij"):
        ok.feed(chunk)
    assert ok.complete and ok.getvalue() == b"abcdefghij"
    over = BoundedBody(10)
    over.feed(b"abcdef")
    over.feed(b"ghijk")
    over.feed(b"l")
    assert not over.complete and over.getvalue() is None
    assert BoundedBody(0).getvalue() is None
