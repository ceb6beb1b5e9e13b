"""controller.observability.usage: token usage from response bodies (llama-swap.md §5.2)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from controller.observability import usage as usage_mod
from controller.observability.usage import (
    StreamUsage,
    UsageCollector,
    UsageResult,
    decompress_body,
    error_message,
    filter_accept_encoding,
    parse_usage,
    status_text,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "responses"
JSON = "application/json; charset=utf-8"
SSE = "text/event-stream"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def content_type(name: str) -> str:
    return SSE if name.endswith(".sse") else JSON


def parse(name: str) -> UsageResult:
    return parse_usage(content_type(name), None, body(name), 200)


def chunked(
    name: str, size: int, encoding: str | None = None, data: bytes = b""
) -> UsageResult:
    raw = data or body(name)
    c = UsageCollector(content_type(name), encoding, 200)
    for i in range(0, len(raw), size):
        c.feed(raw[i : i + size])
    return c.result()


ALL_FIXTURES = sorted(
    p.name
    for p in FIXTURES.iterdir()
    if p.suffix in (".json", ".sse") and p.name != "recorded.json"
)


# ------------------------------------------------------------ recorded ---


def test_recorded_fixtures_were_served_as_labelled() -> None:
    meta = json.loads(body("recorded.json"))
    assert meta["smollm2_chat.json"]["content_type"].startswith("application/json")
    assert meta["smollm2_chat_stream.sse"]["content_type"] == SSE
    assert all(m["status"] == 200 for m in meta.values())


def test_smollm2_chat_timings_override_usage() -> None:
    r = parse("smollm2_chat.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (36, 12, 0)
    assert r.prompt_per_second == pytest.approx(30.236906159761734)
    assert r.tokens_per_second == pytest.approx(5.096733688714673)
    assert (r.draft_tokens, r.draft_acc_tokens) == (-1, -1)
    assert r.timings_ms == int(1190.598 + 2158.245)
    assert r.parsed and r.capturable and r.error_msg == ""


def test_smollm2_stream_without_usage_uses_last_timings() -> None:
    r = parse("smollm2_chat_stream.sse")
    # The prompt was cached from the previous request: timings say 1 new token.
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (1, 12, 35)
    assert r.prompt_per_second == pytest.approx(46.39079606606049)
    assert r.tokens_per_second == pytest.approx(4.817215150404405)
    assert r.timings_ms == int(21.556 + 2283.477)


def test_smollm2_stream_with_include_usage() -> None:
    r = parse("smollm2_chat_stream_usage.sse")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (1, 12, 35)
    assert r.tokens_per_second == pytest.approx(22.5894026951211)


def test_smollm2_embeddings_usage_only() -> None:
    r = parse("smollm2_embeddings.json")
    assert (r.input_tokens, r.output_tokens) == (4, 0)
    assert (r.cache_tokens, r.prompt_per_second, r.tokens_per_second) == (
        -1,
        -1.0,
        -1.0,
    )
    assert r.parsed


@pytest.mark.parametrize("name", ALL_FIXTURES)
@pytest.mark.parametrize("size", [1, 7, 333])
def test_chunked_feeding_matches_whole_body(name: str, size: int) -> None:
    assert chunked(name, size) == parse(name)


# ------------------------------------------------------- API shapes ---


def test_openai_chat_cached_tokens() -> None:
    r = parse("openai_chat_cached.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (1117, 46, 1024)
    assert (r.prompt_per_second, r.tokens_per_second) == (-1.0, -1.0)


def test_openai_stream_final_usage_chunk() -> None:
    r = parse("openai_chat_stream_usage.sse")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (1200, 9, 1152)


def test_anthropic_message_cache_read() -> None:
    r = parse("anthropic_message.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (2095, 503, 1800)


def test_anthropic_stream_message_start_then_delta() -> None:
    r = parse("anthropic_stream.sse")
    # input and cache from message_start.message.usage; output from message_delta.
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (472, 89, 256)


def test_responses_api_non_stream() -> None:
    r = parse("responses.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (328, 52, 256)


def test_responses_api_stream_completed_event() -> None:
    r = parse("responses_stream.sse")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (37, 11, 0)


def test_vllm_metrics_speculative_decoding() -> None:
    r = parse("vllm_spec_decode.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (120, 100, 20)
    assert (r.draft_tokens, r.draft_acc_tokens) == (96, 71)
    assert r.prompt_per_second == pytest.approx((120 - 20) / 0.050)
    assert r.tokens_per_second == pytest.approx(1000 / 8.0)


def test_vllm_stream_metrics_without_cache_counts_all_input() -> None:
    r = parse("vllm_spec_decode_stream.sse")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (64, 32, -1)
    assert (r.draft_tokens, r.draft_acc_tokens) == (30, 21)
    assert r.prompt_per_second == pytest.approx(64 / 0.032)
    assert r.tokens_per_second == pytest.approx(250.0)


def test_vllm_metrics_need_both_draft_counts_and_positive_times() -> None:
    doc = {
        "usage": {"prompt_tokens": 5},
        "metrics": {
            "time_to_first_token_ms": 0,
            "mean_itl_ms": -1,
            "speculative_decoding": {"num_draft_tokens": 9},
        },
    }
    r = parse_usage(JSON, None, json.dumps(doc).encode(), 200)
    assert (r.draft_tokens, r.draft_acc_tokens) == (-1, -1)
    assert (r.prompt_per_second, r.tokens_per_second) == (-1.0, -1.0)


def test_llamacpp_infill_array_takes_last_timings() -> None:
    r = parse("llamacpp_infill.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (12, 6, 3)
    assert r.timings_ms == 66


def test_llamacpp_draft_counts_from_timings() -> None:
    r = parse("llamacpp_draft.json")
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (32, 64, 8)
    assert (r.draft_tokens, r.draft_acc_tokens) == (48, 40)
    assert r.timings_ms == 901


def test_timings_draft_needs_both_fields() -> None:
    doc = {"timings": {"prompt_n": 3, "predicted_n": 4, "draft_n": 10}}
    r = parse_usage(JSON, None, json.dumps(doc).encode(), 200)
    assert (r.draft_tokens, r.draft_acc_tokens) == (-1, -1)
    # timings present: missing speeds read as 0, as llama-swap's gjson does
    assert (r.input_tokens, r.output_tokens, r.prompt_per_second) == (3, 4, 0.0)


def test_duration_is_wall_or_timings_whichever_longer() -> None:
    r = parse("smollm2_chat.json")
    assert r.duration_ms(100) == 3348
    assert r.duration_ms(9999) == 9999
    assert UsageResult().duration_ms(42) == 42


# ---------------------------------------------------- minimal rows ---


MINIMAL = UsageResult()


def test_minimal_row_sentinels() -> None:
    assert (MINIMAL.input_tokens, MINIMAL.output_tokens) == (0, 0)
    assert (MINIMAL.cache_tokens, MINIMAL.draft_tokens, MINIMAL.draft_acc_tokens) == (
        -1,
        -1,
        -1,
    )
    assert (MINIMAL.prompt_per_second, MINIMAL.tokens_per_second) == (-1.0, -1.0)


def test_empty_200_body_is_minimal_and_not_captured() -> None:
    for ct in (JSON, SSE):
        r = parse_usage(ct, None, b"", 200)
        assert r == UsageResult(capturable=False)


def test_invalid_json_is_minimal_but_captured() -> None:
    assert parse_usage(JSON, None, b"{not json", 200) == MINIMAL


def test_json_without_usage_timings_metrics_is_minimal() -> None:
    assert parse_usage(JSON, None, b'{"object":"list","data":[]}', 200) == MINIMAL


def test_null_usage_counts_as_present() -> None:
    r = parse_usage(JSON, None, b'{"usage":null}', 200)
    assert r.parsed and (r.input_tokens, r.cache_tokens) == (0, -1)


def test_sse_without_usage_is_minimal() -> None:
    stream = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    assert parse_usage(SSE, None, stream, 200) == MINIMAL


def test_sse_skips_invalid_json_crlf_and_no_space_after_colon() -> None:
    stream = (
        b"data: {broken\r\n\r\n"
        b'data:{"usage":{"prompt_tokens":7,"completion_tokens":2}}\r\n\r\n'
        b"data: [DONE]\r\n"
    )
    r = parse_usage(SSE, None, stream, 200)
    assert (r.input_tokens, r.output_tokens) == (7, 2)


def test_sse_later_positive_values_override_zero_does_not() -> None:
    stream = (
        b'data: {"usage":{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":4}}\n'
        b'data: {"usage":{"input_tokens":0,"output_tokens":30}}\n'
        b'data: {"usage":{"cache_read_input_tokens":0}}\n'
    )
    r = parse_usage(SSE, None, stream, 200)
    assert (r.input_tokens, r.output_tokens, r.cache_tokens) == (10, 30, 0)


def test_sse_last_line_without_newline_is_read() -> None:
    stream = b'data: {"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    assert parse_usage(SSE, None, stream, 200).output_tokens == 4


def test_usage_numbers_as_strings_and_floats() -> None:
    doc = b'{"usage":{"prompt_tokens":"12","completion_tokens":3.9}}'
    r = parse_usage(JSON, None, doc, 200)
    assert (r.input_tokens, r.output_tokens) == (12, 3)


# ------------------------------------------------------ compression ---


def test_gzip_body() -> None:
    raw = body("smollm2_chat.json")
    assert parse_usage(JSON, "gzip", gzip.compress(raw), 200) == parse(
        "smollm2_chat.json"
    )


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -15], ids=["zlib", "raw"])
def test_deflate_body_zlib_wrapped_or_raw(wbits: int) -> None:
    raw = body("anthropic_message.json")
    comp = zlib.compressobj(wbits=wbits)
    data = comp.compress(raw) + comp.flush()
    assert parse_usage(JSON, "Deflate ", data, 200) == parse("anthropic_message.json")


@pytest.mark.parametrize("size", [1, 2, 50])
def test_gzip_sse_decoded_incrementally(size: int) -> None:
    data = gzip.compress(body("smollm2_chat_stream_usage.sse"))
    r = chunked("smollm2_chat_stream_usage.sse", size, "gzip", data)
    assert r == parse("smollm2_chat_stream_usage.sse")


def test_unknown_encoding_left_alone() -> None:
    raw = body("openai_chat_cached.json")
    assert parse_usage(JSON, "br", raw, 200) == parse("openai_chat_cached.json")


@pytest.mark.parametrize("ct", [JSON, SSE])
def test_decompression_failure_is_reported_and_not_captured(ct: str) -> None:
    r = parse_usage(ct, "gzip", b"definitely not gzip", 200)
    assert r.error_msg == "response decompression failed: gzip: invalid header"
    assert not r.capturable and not r.parsed


def test_truncated_gzip_is_unexpected_eof() -> None:
    data = gzip.compress(body("smollm2_chat.json"))[:-20]
    r = parse_usage(JSON, "gzip", data, 200)
    assert r.error_msg == "response decompression failed: unexpected EOF"


def test_corrupt_deflate_names_zlib_error() -> None:
    r = parse_usage(JSON, "deflate", b"\x78\x9c\xff\xff\xff\xff", 200)
    assert r.error_msg.startswith("response decompression failed: Error -3")


def test_decompress_body_helper() -> None:
    raw = b'{"a":1}'
    assert decompress_body(gzip.compress(raw), "gzip") == raw
    assert decompress_body(raw, None) == raw
    assert decompress_body(b"", "gzip") == b""
    with pytest.raises(usage_mod.DecompressError, match="invalid header"):
        decompress_body(b"xx", "gzip")


# ----------------------------------------------------------- errors ---


def test_error_body_message() -> None:
    r = parse_usage(JSON, None, body("error_400.json"), 400)
    assert (
        r.error_msg
        == "the request exceeds the available context size, try increasing it"
    )
    assert r.capturable and not r.parsed and r.input_tokens == 0


def test_502_empty_body_uses_status_text() -> None:
    r = parse_usage("", None, b"", 502)
    assert r.error_msg == "502 Bad Gateway"
    assert r == UsageResult(error_msg="502 Bad Gateway")


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({"error": "plain string"}, "plain string"),
        ({"error": {"message": "  nested  "}}, "nested"),
        ({"error": {"message": " "}, "message": "fallback"}, "fallback"),
        ({"detail": "fastapi style"}, "fastapi style"),
        (
            {"error": {"code": 5}, "message": 7, "detail": ["x"]},
            "500 Internal Server Error",
        ),
        (["not", "an", "object"], "500 Internal Server Error"),
    ],
)
def test_error_message_paths(doc: object, want: str) -> None:
    assert error_message(500, json.dumps(doc).encode()) == want


def test_error_message_truncated_to_500_bytes() -> None:
    assert (
        error_message(400, json.dumps({"error": "x" * 600}).encode())
        == "x" * 500 + "..."
    )
    assert error_message(400, json.dumps({"error": "x" * 500}).encode()) == "x" * 500


def test_error_message_truncation_cuts_bytes_like_go() -> None:
    msg = "a" + "é" * 300  # 601 bytes; byte 500 splits an "é"
    got = error_message(400, json.dumps({"error": msg}).encode())
    assert got == "a" + "é" * 249 + "\ufffd..."


def test_error_status_text_fallbacks() -> None:
    assert error_message(413, b"") == "413 Request Entity Too Large"
    assert error_message(599, b"<html>") == "HTTP 599"
    assert status_text(429) == "Too Many Requests"


def test_non_200_sse_is_not_token_parsed() -> None:
    r = parse_usage(SSE, None, body("openai_chat_stream_usage.sse"), 503)
    assert r.error_msg == "503 Service Unavailable" and not r.parsed


def test_non_200_gzip_error_body_is_decoded() -> None:
    data = gzip.compress(body("error_400.json"))
    assert parse_usage(JSON, "gzip", data, 400).error_msg.startswith(
        "the request exceeds"
    )


def test_non_200_undecodable_body() -> None:
    r = parse_usage(JSON, "gzip", b"nope", 500)
    assert r.error_msg == "response decode failed: gzip: invalid header"
    assert r.capturable


# ------------------------------------------------- streaming costs ---


def decoded_lines(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The SSE lines StreamUsage hands to the JSON decoder, as it does."""
    decoded: list[bytes] = []
    real = usage_mod._data_of

    def counting(line: bytes) -> object:
        decoded.append(line)
        return real(line)

    monkeypatch.setattr(usage_mod, "_data_of", counting)
    return decoded


def test_feed_only_decodes_lines_that_can_carry_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = decoded_lines(monkeypatch)
    s = StreamUsage()
    for line in body("openai_chat_stream_usage.sse").splitlines(keepends=True):
        s.feed(line)
    assert s.result().input_tokens == 1200
    # four "usage": null chunks and [DONE] are skipped without json.loads
    assert len(decoded) == 1 and b'"prompt_tokens":1200' in decoded[0]


# Pieces of SSE lines: markers, null usages, JSON punctuation and words. No
# fragment of a marker (such as '"us'), so removing a null usage can never
# splice a new marker together (see test_a_null_usage_never_makes_a_marker).
_PIECES = st.sampled_from(
    [
        b'"usage"',
        b'"usage":null',
        b'"usage": null',
        b'"usage":{"prompt_tokens":3}',
        b'"timings"',
        b'"metrics"',
        b"data: ",
        b"{",
        b"}",
        b":",
        b",",
        b" ",
        b"null",
        b'"choices":[]',
        b"x",
        b"\r",
    ]
)
_LINES = st.lists(st.lists(_PIECES, max_size=8).map(b"".join), max_size=12)


@given(_LINES, st.sampled_from([b"\n", b"\n\n"]))
def test_only_marked_lines_are_tested_and_none_is_missed(
    lines: list[bytes], sep: bytes
) -> None:
    block = sep.join(lines)
    every_line = [line for line in block.split(b"\n") if usage_mod._worth_parsing(line)]
    found = [block[a:b] for a, b in usage_mod._marked_lines(block)]
    assert [line for line in found if usage_mod._worth_parsing(line)] == every_line
    assert all(b"\n" not in line for line in found)


def test_a_null_usage_never_makes_a_marker() -> None:
    # Cutting '"usage":null' out of this line leaves '"usage"' behind; the
    # line has no usage key of its own and is not a candidate.
    assert usage_mod._marked_lines(b'data: {"us"usage":nullage"}') == []


def test_a_fast_streams_one_read_decodes_only_its_usage_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = decoded_lines(monkeypatch)
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    last = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1000}}'
    s = StreamUsage()
    s.feed(chunk * 1000 + last + b"\n\ndata: [DONE]\n\n")
    r = s.result()
    assert (r.input_tokens, r.output_tokens) == (7, 1000)
    assert decoded == [last]


def test_feed_keeps_only_a_partial_line() -> None:
    s = StreamUsage()
    s.feed(b'data: {"choices":[]}\n\ndata: {"usa')
    assert s._partial == b'data: {"usa'
    s.feed(b'ge":{"prompt_tokens":5}}\n\n')
    assert s._partial == b""
    assert s.result().input_tokens == 5


def test_over_long_line_is_skipped_and_memory_stays_bounded() -> None:
    s = StreamUsage()
    s.feed(b'data: {"usage":{"prompt_tokens":1},"x":"')
    for _ in range(5):
        s.feed(b"y" * (300 * 1024))
        assert len(s._partial) <= usage_mod._MAX_LINE
    s.feed(b'"}\ndata: {"usage":{"prompt_tokens":9,"completion_tokens":2}}\n')
    r = s.result()
    assert (r.input_tokens, r.output_tokens) == (9, 2)


def test_collector_modes() -> None:
    assert UsageCollector(SSE, None, 200).streaming
    assert not UsageCollector(SSE, None, 500).streaming
    assert not UsageCollector(JSON, None, 200).streaming


def test_collector_limit_keeps_usage_from_head_or_tail() -> None:
    big = "0." + "1" * 50
    head_usage = json.dumps({"usage": {"prompt_tokens": 4}, "data": [big] * 50_000})
    tail_usage = json.dumps(
        {"data": [big] * 50_000, "usage": {"prompt_tokens": 6, "completion_tokens": 1}}
    )
    for doc, want in ((head_usage, 4), (tail_usage, 6)):
        c = UsageCollector(JSON, None, 200, limit_bytes=1 << 20)
        data = doc.encode()
        assert len(data) > 2 << 20
        for i in range(0, len(data), 65536):
            c.feed(data[i : i + 65536])
        assert c._body.overflow and len(c._body.head) == 1 << 20
        assert c.result().input_tokens == want


def test_collector_over_limit_without_usage_is_minimal() -> None:
    c = UsageCollector(JSON, None, 200, limit_bytes=10)
    c.feed(b'{"data":"' + b"z" * 100 + b'"}')
    assert c.result() == MINIMAL


# ------------------------------------------------------------ misc ---


def test_filter_accept_encoding() -> None:
    assert filter_accept_encoding("gzip, deflate, br, zstd") == "gzip, deflate"
    assert filter_accept_encoding("br;q=1.0, GZIP;q=0.5") == "GZIP;q=0.5"
    assert filter_accept_encoding("br") == ""
    assert filter_accept_encoding("") == ""


_JSON_NUMBERS = st.integers(-(10**18), 10**18) | st.floats(
    allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15
)


@given(_JSON_NUMBERS, st.sampled_from(["", " ", "\t"]))
def test_numbers_read_as_gjson_reads_them(value: float, pad: str) -> None:
    # gjson's Int() truncates and Float() keeps a number; a numeric string
    # (padded or not) reads the same as the number it spells.
    assert usage_mod._as_int(value) == int(value)
    assert usage_mod._as_float(value) == float(value)
    assert usage_mod._as_int(f"{pad}{value!r}{pad}") == int(value)
    assert usage_mod._as_float(f"{pad}{value!r}{pad}") == float(value)


@given(st.none() | st.lists(st.integers()) | st.dictionaries(st.text(), st.integers()))
def test_non_numbers_read_as_zero_and_true_as_one(value: object) -> None:
    assert usage_mod._as_int(value) == 0
    assert usage_mod._as_float(value) == 0.0
    assert (usage_mod._as_int(True), usage_mod._as_int(False)) == (1, 0)
    assert (usage_mod._as_float(True), usage_mod._as_float(False)) == (1.0, 0.0)
