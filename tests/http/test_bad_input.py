"""Bad input through the real app: a 400 that names what is wrong, never a 500
(and no traceback in the log); a body the client encoded reaches the upstream
as the server decoded it."""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import fake_cmd

if TYPE_CHECKING:
    from tests.harness import App, Apps

ONE = f"""
models:
  a:
    cmd: {fake_cmd("a")}
"""
FILTERED = f"""
  f:
    cmd: {fake_cmd("f")}
    filters: {{setParams: {{seed: 1}}}}
"""
JSON = {"Content-Type": "application/json"}
PLAIN = b'{"model": "a", "input": "hi"}'


async def post(
    app: App, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    r = await app.client.post(path, data=body, headers=headers)
    assert r.content_type == "application/json", await r.text()
    return r.status, await r.json()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


def deep(model: str, levels: int, *, objects: bool = False) -> bytes:
    opening, closing = (b'{"a":', b"}") if objects else (b"[", b"]")
    return (
        b'{"model":"%s","x":' % model.encode()
        + opening * levels
        + b"1"
        + closing * levels
        + b"}"
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # The model reader (the parser it falls back to).
        ("POST", "/v1/chat/completions", deep("a", 100_000)),
        # The reader copes; the filters' tree does not (two frames an object).
        ("POST", "/v1/chat/completions", deep("f", 600, objects=True)),
        # Any JSON the API parses.
        ("PUT", "/api/profiles/active", deep("a", 100_000)),
    ],
    ids=["reader", "filters", "profiles"],
)
async def test_bad_input_deep_json_is_a_400(
    apps: Apps,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: bytes,
) -> None:
    app = await apps.start(ONE + FILTERED)
    r = await app.client.request(method, path, data=body, headers=JSON)
    assert r.status == 400, await r.text()
    message = (await r.json())["error"]["message"]
    assert message == "the JSON request body nests too deeply to read"
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("encoding", "body", "why"),
    [
        ("gzip", PLAIN, "incorrect header check"),  # the header lies
        ("deflate", b"\xff garbage \x00", "while decompressing data"),
    ],
    ids=["gzip-on-plain", "deflate-garbage"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",  # read whole by the model reader
        "/upstream/a/v1/echo",  # streamed to the upstream as it arrives
    ],
)
async def test_bad_input_undecodable_body_is_a_400(
    apps: Apps,
    caplog: pytest.LogCaptureFixture,
    encoding: str,
    body: bytes,
    why: str,
    path: str,
) -> None:
    app = await apps.start(ONE)
    headers = {**JSON, "Content-Encoding": encoding}
    status, answer = await post(app, path, body, headers)
    assert status == 400, answer
    message = answer["error"]["message"]
    assert message.startswith(
        f"cannot read the request body (Content-Encoding: {encoding}): "
    )
    assert why in message
    # The connection is closed, not reused with half a body in it; the app
    # serves on.
    r = await app.client.get("/health")
    assert r.status == 200
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
@pytest.mark.parametrize("path", ["/v1/responses", "/upstream/a/v1/echo"])
async def test_bad_input_encoded_body_is_forwarded_decoded(
    apps: Apps, encoding: str, encode: Any, path: str
) -> None:
    # aiohttp decodes the body it receives: the upstream must get it without
    # the Content-Encoding (and Content-Length) that described the encoded one.
    app = await apps.start(ONE)
    headers = {**JSON, "Content-Encoding": encoding}
    status, echo = await post(app, path, encode(PLAIN), headers)
    assert status == 200, echo
    assert echo["body"] == PLAIN.decode()
    assert "content-encoding" not in echo["headers"]
    assert echo["headers"].get("content-length", str(len(PLAIN))) == str(len(PLAIN))
