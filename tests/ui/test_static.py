"""``controller.http.ui``: how the UI's files are served (no browser needed).

Runs the real app in-process (``tests/harness.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import controller
from controller.http import ui as ui_static

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tests.harness import Apps

    Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.ui

UI_DIR = Path(controller.__file__).parent / "ui"


@pytest.fixture
async def client(apps: Apps) -> Client:
    return (await apps.start("models: {}\n")).client


async def test_ui_redirects_to_the_slash(client: Client) -> None:
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == "/ui/"
    resp = await client.get("/ui?x=1", allow_redirects=False)
    assert resp.headers["Location"] == "/ui/?x=1"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/pages/models.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
        ("/ui/favicon.ico", "image/x-icon"),
        ("/favicon.ico", "image/x-icon"),
    ],
)
async def test_files_have_their_content_type(
    client: Client, path: str, content_type: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == content_type
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["ETag"].startswith('"')
    name = "index.html" if path == "/ui/" else path.removeprefix("/ui/").lstrip("/")
    assert await resp.read() == (UI_DIR / name).read_bytes()


async def test_an_unchanged_file_is_a_304(client: Client) -> None:
    first = await client.get("/ui/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/ui/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    other = await client.get("/ui/app.js", headers={"If-None-Match": '"other"'})
    assert other.status == 200


async def test_html_forbids_other_origins(client: Client) -> None:
    resp = await client.get("/ui/")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp


@pytest.mark.parametrize("path", ["/ui/models", "/ui/deep/link/", "/ui/logs"])
async def test_unknown_paths_without_an_extension_are_the_app(
    client: Client, path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert (await resp.text()).startswith("<!doctype html>")


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/pages/nope.css",
        "/ui/missing.png",
        "/ui/%2e%2e/%2e%2e/pyproject.toml",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/..%2F__init__.py",
        "/ui/%2e%2e%2fui_static.py",
        "/ui/pages/..%2f..%2fapp.py",
        "/ui/..\\..\\pyproject.toml",
        "/ui/%00.js",
    ],
)
async def test_unknown_files_and_traversal_are_404(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404, path
    body = await resp.read()
    assert b"[build-system]" not in body and b"import" not in body


async def test_traversal_never_serves_a_file_outside_the_ui(client: Client) -> None:
    for path in ("/ui/../app.py", "/ui/%2e%2e/app.py", "/ui//etc/passwd"):
        resp = await client.get(path)
        body = await resp.read()
        assert b"def create_app" not in body and b"root:" not in body, path


def test_only_ui_files_are_in_the_table() -> None:
    files = ui_static.assets()
    assert "index.html" in files and "app.js" in files and "pages/models.js" in files
    assert all(not name.startswith(("/", "..")) for name in files)
    assert all(".." not in name.split("/") for name in files)


def test_nothing_comes_from_a_cdn() -> None:
    """Every import is relative and no file names an http(s) URL (but the
    SVG namespace, which is a name, not a fetch)."""
    for path in UI_DIR.rglob("*"):
        if path.suffix not in (".js", ".html", ".css", ".svg"):
            continue
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://", text), path
        for spec in re.findall(r"^\s*import\b[^'\"]*['\"]([^'\"]+)['\"]", text, re.M):
            assert spec.startswith(("./", "../")), (path, spec)


async def test_with_api_keys_the_ui_asks_for_basic_auth(apps: Apps) -> None:
    import base64

    client = (await apps.start("apiKeys: [k1]\nmodels: {}\n")).client
    resp = await client.get("/ui/", headers={"Accept": "text/html"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")
    basic = base64.b64encode(b"me:k1").decode()
    resp = await client.get("/ui/", headers={"Authorization": f"Basic {basic}"})
    assert resp.status == 200
    resp = await client.get("/favicon.ico")  # open, like llama-swap's
    assert resp.status == 200
