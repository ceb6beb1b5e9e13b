"""controller.dispatch.request: reading and rewriting the requested model (llama-swap.md §2.2)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from controller.dispatch.request import (
    ModelRequest,
    multipart_fields,
    read_model,
    replace_multipart_field,
    rewrite_model,
)
from controller.errors import BadRequest

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BOUNDARY = "----sv-boundary-42"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# Binary file content with bytes that look like structure: CRLFs, NUL, 0xff.
AUDIO = b'RIFF\x00\xff\xfe\r\n\r\nname="model"\r\n--not-the-boundary\x00\x01'


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    """(name, value, filename) parts, encoded by hand (RFC 7578)."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
            head = (
                f"Content-Disposition: {disposition}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"
            )
        else:
            head = f"Content-Disposition: {disposition}\r\n\r\n"
        out += f"--{BOUNDARY}\r\n".encode() + head.encode() + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def bad_request(method: str, ctype: str, query: dict[str, str], body: bytes) -> str:
    with pytest.raises(BadRequest) as info:
        read_model(method, ctype, query, body)
    assert info.value.status == 400
    return info.value.message


# -- read_model: JSON -------------------------------------------------------------------------


def test_requests_json_model_and_stream() -> None:
    body = b'{"model": "m", "stream": true, "messages": []}'
    assert read_model("POST", JSON, {}, body) == ModelRequest("m", True, "json")


def test_requests_json_stream_defaults_false() -> None:
    assert read_model("POST", JSON, {}, b'{"model": "m"}').stream is False


def test_requests_json_stream_must_be_true_not_truthy() -> None:
    assert (
        read_model("POST", JSON, {}, b'{"model": "m", "stream": "true"}').stream
        is False
    )


def test_requests_json_with_charset() -> None:
    ctype = "Application/JSON; charset=utf-8"
    assert read_model("POST", ctype, {}, b'{"model": "m"}').model == "m"


def test_requests_json_without_content_type_is_sniffed() -> None:
    assert read_model("POST", "", {}, b'{"model": "m"}').kind == "json"


def test_requests_json_model_is_not_trimmed() -> None:
    # As llama-swap: the name is looked up exactly as sent.
    assert read_model("POST", JSON, {}, b'{"model": "  m  "}').model == "  m  "


def test_requests_invalid_json_is_bad_request() -> None:
    msg = bad_request("POST", JSON, {}, b'{"model": ')
    assert msg.startswith("invalid JSON in request body: ")


def test_requests_invalid_utf8_json_is_bad_request() -> None:
    msg = bad_request("POST", JSON, {}, b'{"model": "\xff"}')
    assert msg.startswith("invalid JSON in request body: ")


def test_requests_json_not_an_object_is_bad_request() -> None:
    assert bad_request("POST", JSON, {}, b'["m"]') == (
        "the JSON request body must be an object with a 'model' field"
    )


def test_requests_json_without_model_is_bad_request() -> None:
    assert bad_request("POST", JSON, {}, b'{"messages": []}') == (
        "no model named: the request needs a 'model' field in the JSON body"
    )


@pytest.mark.parametrize("model", [b'""', b'"   "'])
def test_requests_json_empty_model_is_bad_request(model: bytes) -> None:
    msg = bad_request("POST", JSON, {}, b'{"model": ' + model + b"}")
    assert msg == "no model named: the request needs a 'model' field in the JSON body"


@pytest.mark.parametrize("model", [b"1", b"true", b'["m"]', b'{"id": "m"}'])
def test_requests_json_non_string_model_is_bad_request(model: bytes) -> None:
    msg = bad_request("POST", JSON, {}, b'{"model": ' + model + b"}")
    assert msg == "the 'model' field must be a string"


# -- read_model: query ------------------------------------------------------------------------


def test_requests_get_query_model() -> None:
    assert read_model("GET", "", {"model": "m"}, b"") == ModelRequest(
        "m", False, "query"
    )


def test_requests_get_query_stream() -> None:
    assert read_model("GET", "", {"model": "m", "stream": "true"}, b"").stream is True


def test_requests_get_ignores_the_body() -> None:
    req = read_model("GET", JSON, {"model": "q"}, b'{"model": "b"}')
    assert (req.model, req.kind) == ("q", "query")


def test_requests_get_without_model_is_bad_request() -> None:
    assert bad_request("GET", "", {}, b"") == (
        "no model named: the request needs a 'model' query parameter (?model=...)"
    )


def test_requests_post_without_body_uses_query() -> None:
    assert read_model("POST", JSON, {"model": "m"}, b"").kind == "query"


def test_requests_unknown_content_type_falls_back_to_query() -> None:
    assert read_model("POST", "text/plain", {"model": "m"}, b"hello").kind == "query"


# -- read_model: forms ------------------------------------------------------------------------


def test_requests_multipart_model_after_file() -> None:
    body = multipart(
        ("file", AUDIO, "a.wav"), ("model", b"whisper", None), ("stream", b"true", None)
    )
    assert read_model("POST", MULTIPART, {}, body) == ModelRequest(
        "whisper", True, "multipart"
    )


def test_requests_multipart_quoted_boundary() -> None:
    body = multipart(("model", b"m", None))
    ctype = f'multipart/form-data; boundary="{BOUNDARY}"'
    assert read_model("POST", ctype, {}, body).model == "m"


def test_requests_multipart_without_model_is_bad_request() -> None:
    body = multipart(("file", AUDIO, "a.wav"))
    assert bad_request("POST", MULTIPART, {}, body) == (
        "no model named: the request needs a multipart form field 'model'"
    )


def test_requests_multipart_without_boundary_is_bad_request() -> None:
    msg = bad_request(
        "POST", "multipart/form-data", {}, multipart(("model", b"m", None))
    )
    assert msg == "multipart request without a boundary"


def test_requests_multipart_truncated_is_bad_request() -> None:
    body = multipart(("model", b"m", None))[:30]
    assert bad_request("POST", MULTIPART, {}, body) == "malformed multipart body"


def test_requests_multipart_fields_skip_large_parts() -> None:
    body = multipart(("big", b"x" * 5000, None), ("model", b"m", None))
    assert multipart_fields(MULTIPART, body) == {"model": "m"}


def test_requests_urlencoded_form() -> None:
    body = b"model=org%2Fm+q&stream=true&x=1"
    assert read_model("POST", FORM, {}, body) == ModelRequest("org/m q", True, "form")


def test_requests_urlencoded_form_falls_back_to_query() -> None:
    assert read_model("POST", FORM, {"model": "q"}, b"x=1").model == "q"


def test_requests_urlencoded_form_without_model_is_bad_request() -> None:
    assert bad_request("POST", FORM, {}, b"x=1") == (
        "no model named: the request needs a form field 'model'"
    )


# -- rewrite_model ----------------------------------------------------------------------------


def test_requests_rewrite_json() -> None:
    body = b'{"model": "alias", "stream": true, "messages": [{"content": "h\\u00e9"}]}'
    req = read_model("POST", JSON, {}, body)
    new, query = rewrite_model(req, JSON, {}, body, "org/real")
    assert query is None
    assert json.loads(new) == {
        "model": "org/real",
        "stream": True,
        "messages": [{"content": "hé"}],
    }


def test_requests_rewrite_multipart_changes_only_the_model_bytes() -> None:
    before = multipart(("file", AUDIO, "a.wav"), ("model", b"alias", None))
    req = read_model("POST", MULTIPART, {}, before)
    new, query = rewrite_model(req, MULTIPART, {}, before, "org/real-model")
    assert query is None
    cut = before.index(b"alias")
    assert new == before[:cut] + b"org/real-model" + before[cut + len(b"alias") :]
    assert multipart_fields(MULTIPART, new)["model"] == "org/real-model"


def test_requests_rewrite_multipart_without_the_field_is_unchanged() -> None:
    body = multipart(("file", AUDIO, "a.wav"))
    assert replace_multipart_field(MULTIPART, body, "model", "x") == body


def test_requests_rewrite_form() -> None:
    body = b"a=1&model=alias&b=x+y&empty="
    req = read_model("POST", FORM, {}, body)
    new, query = rewrite_model(req, FORM, {}, body, "org/real")
    assert query is None
    assert new == b"a=1&model=org%2Freal&b=x+y&empty="


def test_requests_rewrite_query() -> None:
    q = {"model": "alias", "stream": "true"}
    req = read_model("GET", "", q, b"")
    body, query = rewrite_model(req, "", q, b"", "org/real")
    assert body == b""
    assert query is not None
    assert parse_qs(query) == {"model": ["org/real"], "stream": ["true"]}


def test_requests_rewrite_json_with_lone_surrogate_escape() -> None:
    body = b'{"model": "a", "prompt": "\\ud800"}'
    req = read_model("POST", JSON, {}, body)
    new, _ = rewrite_model(req, JSON, {}, body, "b")
    assert json.loads(new) == {"model": "b", "prompt": "\ud800"}


def test_requests_rewrite_json_keeps_other_values_verbatim() -> None:
    body = b'{"model": "a", "seed": 1e400}'
    req = read_model("POST", JSON, {}, body)
    new, _ = rewrite_model(req, JSON, {}, body, "b")
    assert b"1e400" in new
