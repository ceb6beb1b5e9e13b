"""Command line: ``swapvisor --config FILE [--listen ADDR]``.

``python -m controller`` is the same.

Flags are llama-swap's and accept one or two dashes. A config that cannot be
loaded exits 1 with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from backends.native import NativeBackend
from controller import __version__
from controller.app import create_app
from controller.config import Config, load_config
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("swapvisor")

DEFAULT_LISTEN = "127.0.0.1:8080"
# How long in-flight responses may keep streaming after SIGTERM/SIGINT.
SHUTDOWN_GRACE_S = 10.0
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="swapvisor",
        description="One OpenAI/Anthropic-compatible endpoint that swaps model "
        "servers on demand (llama-swap compatible).",
    )
    parser.add_argument("-config", "--config", help="config file (YAML)")
    parser.add_argument(
        "-listen",
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "-version", "--version", action="store_true", help="print the version and exit"
    )
    return parser.parse_args(argv)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}"
        )
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        print(f"swapvisor version: {__version__}")  # noqa: T201
        return 0
    if not args.config:
        print("swapvisor: --config FILE is required", file=sys.stderr)  # noqa: T201
        return 1
    try:
        loaded = load_config(args.config)
        host, port = parse_listen(args.listen)
    except (ConfigError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # one line, whatever YAML said
        print(f"swapvisor: {args.config}: {reason}", file=sys.stderr)  # noqa: T201
        return 1
    logging.basicConfig(
        level=_LEVELS[loaded.config.log_level],
        stream=sys.stdout,
        format="[%(levelname)s] %(message)s",
    )
    for warning in loaded.warnings:
        log.warning("config: %s", warning)
    if not is_loopback(host):
        log.warning(
            "swapvisor is reachable by all hosts on the network; use "
            "--listen 127.0.0.1:%d to restrict it to loopback",
            port,
        )
    asyncio.run(serve(loaded.config, host, port))
    return 0


async def serve(config: Config, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM, then stop every upstream and return."""
    app = create_app(config, NativeBackend())
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_S,
        access_log=None,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("swapvisor listening on http://%s:%d", host, port)
        await stop.wait()
        log.info("shutting down: stopping every upstream")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(sig)
    log.info("shutdown complete")


if __name__ == "__main__":
    sys.exit(main())
