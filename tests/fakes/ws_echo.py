"""A tiny websocket echo server for swapvisor's websocket relay tests.

Tests run it as a model's ``cmd`` (``python tests/fakes/ws_echo.py --port N``)
because the stdlib-only fake upstream does not speak websockets.

Endpoints: ``GET /health`` answers 200 ``ok``; ``GET /ws`` (and any path under
``/ws/``) upgrades to a websocket that echoes every text and binary frame. The
text frame ``path?`` is answered with the path and query the server saw.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import WSMsgType, web


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            text = msg.data
            await ws.send_str(request.path_qs if text == "path?" else text)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ws", echo)
    app.router.add_get("/ws/{tail:.*}", echo)
    print(f"ws-echo listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
