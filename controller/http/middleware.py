"""The one middleware the route table declares: a CORS preflight answered for
every path before anything else (as llama-swap), then API key checks (routes
the table marks open are exempt), and error rendering around both the check
and the handler (every ``ControllerError`` in the client's own shape; a
request body that cannot be decoded or nests too deeply is a 400).

One middleware rather than three: each costs a coroutine frame per request
on the data path (bench/).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import hdrs, web

from controller.dispatch.endpoints import is_anthropic
from controller.dispatch.request import TOO_DEEP
from controller.errors import SRC, ControllerError, anthropic_body, openai_body
from controller.http.keys import OPEN_ROUTES, RUNTIME
from controller.http.proxy import decoded_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R", bound=web.StreamResponse)
_CORS_DEFAULT_HEADERS = "Content-Type, Authorization, Accept, X-Requested-With"


@web.middleware
async def front_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    if request.method == hdrs.METH_OPTIONS:
        return await _rest_of_body(request, _preflight(request))
    try:
        denied = _unauthorized(request)
        response = denied if denied is not None else await handler(request)
    except ControllerError as exc:
        response = render_error(
            request, exc.status, exc.message, exc.code, exc.retry_after, exc.param
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            await _rest_of_body(request, exc)
            raise
        response = render_error(request, exc.status, exc.reason or "error", None, None)
    except web.RequestPayloadError as exc:
        return _unreadable_body(request, exc)
    except RecursionError:
        # Only input nests deep enough for this: a JSON body parsed into a
        # tree (the profile API, the filters). The client's fault, not ours.
        response = render_error(request, 400, TOO_DEEP, None, None)
    if request.content.is_eof():  # read, or none: the usual case
        return response
    return await _rest_of_body(request, response)


def _preflight(request: web.Request) -> web.Response:
    """The answer to a CORS preflight, for every path (as llama-swap)."""
    wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    allowed = ", ".join(h.strip() for h in wanted.split(",") if _is_token(h.strip()))
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: allowed or _CORS_DEFAULT_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: "86400",
        },
    )


def _is_token(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


def _unreadable_body(
    request: web.Request, exc: web.RequestPayloadError
) -> web.Response:
    """A body aiohttp could not decode (a Content-Encoding that lies, broken
    chunked framing) is the client's fault: a 400 saying why."""
    root: BaseException = exc
    seen = {id(root)}
    while (inner := _inner(root)) is not None and id(inner) not in seen:
        root = inner  # down to zlib's or the parser's own words
        seen.add(id(root))
    why = getattr(root, "message", None) or str(root)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    where = f" (Content-Encoding: {encoding})" if encoding else ""
    response = render_error(
        request, 400, f"cannot read the request body{where}: {why}", None, None
    )
    _stop_reading(request, response)
    return response


async def _rest_of_body(request: web.Request, response: R) -> R:
    """Read what the handler left of a body aiohttp decodes. Otherwise aiohttp
    reads it after the response (lingering close), and a decoding error there
    is logged as an unhandled exception with its traceback."""
    content = request.content
    if content.is_eof() or not decoded_body(request):
        return response
    try:
        while await content.readany():
            pass
    except (web.RequestPayloadError, ConnectionError):  # or the client has left
        _stop_reading(request, response)
    return response


def _stop_reading(request: web.Request, response: web.StreamResponse) -> None:
    # The rest of the body cannot be parsed: close the connection, and mark the
    # body read so that aiohttp does not try again after the response.
    response.force_close()
    request.content.feed_eof()


def _inner(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None or exc.__suppress_context__:
        return exc.__cause__
    return exc.__context__


def _unauthorized(request: web.Request) -> web.Response | None:
    """A 401 when the config has API keys and the request offers none of
    them on a route that needs one; else None."""
    keys = request.app[RUNTIME].config.api_keys
    if not keys or request.match_info.route in request.app[OPEN_ROUTES]:
        return None
    offered = _offered_key(request)
    if offered is not None and any(
        hmac.compare_digest(offered.encode(), key.encode()) for key in keys
    ):
        return None
    response = render_error(
        request, 401, "unauthorized: invalid or missing API key", None, None
    )
    response.headers[hdrs.WWW_AUTHENTICATE] = f'Basic realm="{SRC}"'
    return response


def _offered_key(request: web.Request) -> str | None:
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    if scheme.lower() == "bearer":
        return value.strip()
    return request.headers.get("x-api-key")


def render_error(
    request: web.Request,
    status: int,
    message: str,
    code: str | None,
    retry_after: int | None,
    param: str | None = None,
) -> web.Response:
    accept = request.headers.get(hdrs.ACCEPT, "")
    if "text/plain" in accept and not is_anthropic(request.path):
        response = web.Response(status=status, text=f"{SRC}: {message}")
    elif is_anthropic(request.path):
        response = web.Response(
            status=status,
            body=anthropic_body(status, message),
            content_type="application/json",
        )
    else:
        response = web.Response(
            status=status,
            body=openai_body(status, message, code, param),
            content_type="application/json",
        )
    if retry_after is not None:
        response.headers[hdrs.RETRY_AFTER] = str(retry_after)
    return response
