"""The web UI's files under ``/ui/`` (llama-swap.md §9).

The UI is plain ES modules and one stylesheet shipped as package data in
``controller/ui/``: nothing is built at run time and nothing comes from a CDN.
Routes (rows of ``controller.http.app.ROUTES``): ``GET /ui``, ``GET /ui/{tail}``
and ``GET /favicon.ico``.

``/ui`` redirects (301) to ``/ui/``; a known file is served with its content
type; an unknown path without an extension is the SPA's ``index.html`` (the UI
routes with ``#/page`` hashes, so this only helps bookmarked deep links); an
unknown file is 404. Only files found under ``controller/ui/`` when the first
request arrives can ever be served: a request path is a key into that table,
never joined onto the file system, so ``..`` and friends cannot escape it.
The files are read once, at the first request (restart swapvisor to serve
edited ones). Every response has an ``ETag`` and ``Cache-Control: no-cache``
(the browser keeps a copy but revalidates it, so an upgrade is seen at once
and an unchanged file costs a 304); HTML also gets a Content-Security-Policy
that allows this origin only.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}
# The page may only talk to its own origin: no CDN can sneak in later.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Asset]:
    out: dict[str, Asset] = {}
    for item in folder.iterdir():
        name = item.name
        if name.startswith((".", "_")):
            continue
        rel = f"{prefix}{name}"
        if item.is_dir():
            out.update(_walk(item, rel + "/"))
            continue
        content_type = CONTENT_TYPES.get(posixpath.splitext(name)[1].lower())
        if content_type is None:
            continue  # only known kinds of file are ever served
        body = item.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out[rel] = Asset(body, content_type, etag)
    return out


@cache
def assets() -> dict[str, Asset]:
    """Every servable file, by its path relative to ``controller/ui/``."""
    return _walk(resources.files("controller") / "ui")


def lookup(tail: str) -> Asset | None:
    """The asset for a path below ``/ui/``; ``index.html`` for unknown paths
    without an extension; ``None`` (404) for any other unknown path."""
    files = assets()
    if tail in ("", "/"):
        return files.get(INDEX)
    found = files.get(tail)
    if found is not None:
        return found
    last = tail.rstrip("/").rsplit("/", 1)[-1]
    if "." in last or "\\" in tail or "\0" in tail:
        return None
    return files.get(INDEX)


def _respond(request: web.Request, asset: Asset) -> web.Response:
    headers = {
        hdrs.CACHE_CONTROL: "no-cache",
        hdrs.ETAG: asset.etag,
        "X-Content-Type-Options": "nosniff",
    }
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "same-origin"
    if asset.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
        return web.Response(status=304, headers=headers)
    headers[hdrs.CONTENT_TYPE] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


async def serve_ui(request: web.Request) -> web.StreamResponse:
    """``GET /ui`` and ``GET /ui/{tail:.*}``."""
    if "tail" not in request.match_info:  # /ui itself
        location = "/ui/" + (f"?{request.query_string}" if request.query_string else "")
        raise web.HTTPMovedPermanently(location)
    asset = lookup(request.match_info["tail"])
    if asset is None:
        raise web.HTTPNotFound(text="404 page not found")
    return _respond(request, asset)


async def favicon(request: web.Request) -> web.StreamResponse:
    """``GET /favicon.ico`` (open, like llama-swap's)."""
    asset = assets().get("favicon.ico") or assets().get("favicon.svg")
    if asset is None:
        raise web.HTTPNotFound(text="404 page not found")
    return _respond(request, asset)
