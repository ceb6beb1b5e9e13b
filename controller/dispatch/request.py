"""Reading the model out of an inference request, and rewriting it.

llama-swap.md §2.2: the model comes from the JSON body, a multipart or
urlencoded form field, or ``?model=`` on GET. A rewrite (``useModelName``)
changes only the model's bytes; everything else is forwarded as received.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from controller.errors import BadRequest

TOO_DEEP = "the JSON request body nests too deeply to read"


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    stream: bool
    kind: str  # "json" | "multipart" | "form" | "query"


def read_model(
    method: str, content_type: str, query: dict[str, str], body: bytes
) -> ModelRequest:
    """Find the requested model, or raise BadRequest naming what is wrong."""
    if method == "GET" or (not body and "model" in query):
        return _from_query(query)
    ctype = content_type.lower()
    if "application/json" in ctype or (not ctype and body[:1] in (b"{", b"[")):
        return _from_json(body)
    if ctype.startswith("multipart/form-data"):
        fields = multipart_fields(content_type, body)
        return _require(
            fields.get("model"),
            fields.get("stream") == "true",
            "multipart",
            "a multipart form field 'model'",
        )
    if ctype.startswith("application/x-www-form-urlencoded"):
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        return _require(
            form.get("model") or query.get("model"),
            form.get("stream") == "true",
            "form",
            "a form field 'model'",
        )
    return _from_query(query)


def _from_query(query: dict[str, str]) -> ModelRequest:
    return _require(
        query.get("model"),
        query.get("stream") == "true",
        "query",
        "a 'model' query parameter (?model=...)",
    )


def _from_json(body: bytes) -> ModelRequest:
    found = scan_model(body)
    if found is None:  # the parser reads what the scan cannot, or says what is wrong
        return _from_tree(body)
    return _require(*found, "json", "a 'model' field in the JSON body")


def _from_tree(body: bytes) -> ModelRequest:
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise BadRequest(TOO_DEEP) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the JSON request body must be an object with a 'model' field")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("the 'model' field must be a string")
    return _require(
        model, data.get("stream") is True, "json", "a 'model' field in the JSON body"
    )


def _require(model: str | None, stream: bool, kind: str, where: str) -> ModelRequest:
    if not model or not model.strip():
        raise BadRequest(f"no model named: the request needs {where}")
    return ModelRequest(model, stream, kind)


def rewrite_model(
    req: ModelRequest, content_type: str, query: dict[str, str], body: bytes, new: str
) -> tuple[bytes, str | None]:
    """The body (and, for GET, the new query string) with the model replaced."""
    if req.kind == "json":
        return replace_json_model(body, new), None
    if req.kind == "multipart":
        return replace_multipart_field(content_type, body, "model", new), None
    if req.kind == "form":
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return urlencode(
            [(k, new if k == "model" else v) for k, v in form]
        ).encode(), None
    return body, urlencode({**query, "model": new})


def replace_json_model(body: bytes, value: str) -> bytes:
    """Replace the top-level "model" string, leaving every other byte as is.

    Re-serialising would change numbers, escapes and spacing the upstream may
    care about (llama-swap edits in place too, with sjson).
    """
    new = json.dumps(value, ensure_ascii=False)
    match = _scan(body)
    if match is not None and match.start(1) >= 0:
        return body[: match.start(1)] + new.encode() + body[match.end(1) :]
    try:
        text = body.decode("utf-8")
        start, end = _top_level_value_span(text, "model")
    except (ValueError, RecursionError) as exc:  # a BOM, UTF-16: JSON but not ours
        raise BadRequest(f"cannot rewrite the model in this JSON body: {exc}") from exc
    return (text[:start] + new + text[end:]).encode()


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _top_level_value_span(text: str, key: str) -> tuple[int, int]:
    """Where the value of ``key`` in a top-level JSON object starts and ends,
    for what the scan leaves to the parser (escaped keys, deep values).

    The last occurrence wins, as in json.loads. The text is known to parse.
    """
    span = (-1, -1)
    pos = _skip_ws(text, _skip_ws(text, 0) + 1)  # past "{"
    while pos < len(text) and text[pos] == '"':
        name, pos = _DECODER.raw_decode(text, pos)
        value_start = _skip_ws(text, _skip_ws(text, pos) + 1)  # past ":"
        _, value_end = _DECODER.raw_decode(text, value_start)
        if name == key:
            span = (value_start, value_end)
        pos = _skip_ws(text, value_end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    if span[0] < 0:
        raise BadRequest(f"no top-level '{key}' field to rewrite")
    return span


_DECODER = json.JSONDecoder()


# -- the scan: the top-level object in one regex match, no tree --------------------
#
# Nested values are skipped, not checked: only their brackets must balance
# (of any kind) and their strings end where JSON's do; the upstream reads them.
# The last "model" and "stream" members win, as in json.loads (group captures
# keep the last repetition). Anything else goes to the parser: keys with
# escapes (one might spell "model"), values nested deeper than SCAN_DEPTH, a
# BOM, invalid UTF-8 and malformed bodies.

SCAN_DEPTH = 16
_WS = rb"[ \t\n\r]*+"
# Tried in turn: a string with no escaped quote; one whose escaped quotes have
# a single backslash; any. A two-byte class ([^"\\]) scans several times slower
# than [^"], so the exact pattern is the last resort.
_STRING = (
    rb'(?:"[^"]*+(?<!\\)"'
    rb'|"(?:[^"]*+(?<=[^\\]\\)")*+[^"]*+(?<!\\)"'
    rb'|"[^"\\]*+(?:\\.[^"\\]*+)*+")'
)
_SCALAR = (
    _STRING
    + rb"|-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+"
    + rb"|true|false|null|NaN|-?Infinity"
)
_OTHER = rb'[^"\[\]{}]*+'  # numbers, literals, commas, colons: not checked


def _nested(depth: int) -> bytes:
    """An array or object nested at most ``depth`` deep."""
    pattern = rb"[\[{]" + _OTHER + rb"(?:" + _STRING + _OTHER + rb")*+[\]}]"
    for _ in range(depth - 1):
        item = rb"(?:" + _STRING + rb"|" + pattern + rb")"
        pattern = rb"[\[{]" + _OTHER + rb"(?:" + item + _OTHER + rb")*+[\]}]"
    return pattern


def _member(key: bytes, value: bytes) -> bytes:
    return key + _WS + rb":" + _WS + value


_VALUE = rb"(?:" + _SCALAR + rb"|" + _nested(SCAN_DEPTH) + rb")"
_MEMBER = b"|".join(
    (
        _member(rb'"model"', rb"(" + _VALUE + rb")"),
        _member(rb'"stream"', rb"(" + _VALUE + rb")"),
        _member(rb'"[^"\\]*+"', _VALUE),
    )
)
# A member, then a comma and the next key or the closing brace.
_ONE = (
    rb"(?:(?:" + _MEMBER + rb")" + _WS + rb'(?:,(?=[ \t\n\r]*+")|(?=\}))' + _WS + rb")"
)
_TOP = _WS + rb"\{" + _WS + _ONE + rb"*+\}" + _WS + rb"\Z"


@functools.cache
def _top() -> re.Pattern[bytes]:
    # Compiled on the first request, not at import: compiling it took ~10 ms
    # of swapvisor's start-up.
    return re.compile(_TOP, re.DOTALL)


def _scan(body: bytes) -> re.Match[bytes] | None:
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return _top().match(body)


def scan_model(body: bytes) -> tuple[str, bool] | None:
    """The top-level "model" string and whether "stream" is true, read without
    a tree; None where the scan leaves it to the parser (see above)."""
    match = _scan(body)
    if match is None or match.start(1) < 0 or body[match.start(1)] != ord('"'):
        return None
    try:  # strictly, as the parser would: escapes, control characters
        model: str = json.loads(match.group(1))
    except ValueError:
        return None
    return model, match.group(2) == b"true"


# -- multipart, just enough to read and replace small text fields ------------------

_NAME_RE = re.compile(rb'name="([^"]*)"', re.IGNORECASE)


def _boundary(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise BadRequest("multipart request without a boundary")
    return match.group(1).encode()


def _parts(content_type: str, body: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, name) of each part's value bytes within ``body``."""
    delimiter = b"--" + _boundary(content_type)
    out = []
    pos = body.find(delimiter)
    while pos != -1:
        head_start = pos + len(delimiter)
        if body[head_start : head_start + 2] == b"--":
            break
        head_end = body.find(b"\r\n\r\n", head_start)
        nxt = body.find(b"\r\n" + delimiter, head_end)
        if head_end == -1 or nxt == -1:
            raise BadRequest("malformed multipart body")
        match = _NAME_RE.search(body[head_start:head_end])
        out.append((head_end + 4, nxt, match.group(1) if match else b""))
        pos = nxt + 2
    return out


def multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Small text fields of a multipart form (file parts are skipped)."""
    fields: dict[str, str] = {}
    for start, end, name in _parts(content_type, body):
        if end - start <= 4096:
            fields.setdefault(
                name.decode("utf-8", "replace"),
                body[start:end].decode("utf-8", "replace"),
            )
    return fields


def replace_multipart_field(
    content_type: str, body: bytes, field: str, value: str
) -> bytes:
    for start, end, name in _parts(content_type, body):
        if name == field.encode():
            return body[:start] + value.encode() + body[end:]
    return body
