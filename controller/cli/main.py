"""Command line: ``swapvisor --config FILE [--listen ADDR]``.

``python -m controller`` is the same. Flags are llama-swap's and accept one
or two dashes. ``swapvisor check CONFIG`` validates a config and shows what it
resolves to; ``swapvisor schema`` prints the config's JSON Schema. A config
that cannot be loaded exits 1 with a one-line reason.

The event loop is asyncio's own; ``SWAPVISOR_LOOP=uvloop`` (with the
``uvloop`` extra installed) uses uvloop's, which measured ~5 % less CPU per
proxied request and ~4 ms more per swap (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from backends.native import NativeBackend
from controller import __version__
from controller.cli.early import EarlyListener, parse_listen
from controller.config.loader import load_config
from controller.engine.pool import check_backends, default_instance
from controller.engine.reload import Reloader
from controller.errors import ConfigError
from controller.http.app import create_app
from controller.http.keys import EVENTS, LOGS, RUNTIME
from controller.http.model_list import model_status
from controller.observability.logs import Logs, install as install_log_handler

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from controller.config.model import Config

log = logging.getLogger("swapvisor")

DEFAULT_HOST = "127.0.0.1"
# How long in-flight responses may keep streaming after SIGTERM/SIGINT.
SHUTDOWN_GRACE_S = 10.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="swapvisor",
        description="One OpenAI/Anthropic-compatible endpoint that swaps model "
        "servers on demand (llama-swap compatible). Subcommands: "
        "'swapvisor check CONFIG', 'swapvisor schema'.",
    )
    parser.add_argument("-config", "--config", help="config file (YAML)")
    parser.add_argument(
        "-config-dir",
        "--config-dir",
        help="directory of *.yml/*.yaml merged after --config",
    )
    parser.add_argument(
        "-listen",
        "--listen",
        default=None,
        help="address to listen on (default 127.0.0.1:8080, or :8443 with TLS)",
    )
    parser.add_argument(
        "-watch-config",
        "--watch-config",
        action="store_true",
        help="reload when the config changes (polls every 2 s)",
    )
    parser.add_argument("-tls-cert-file", "--tls-cert-file", help="TLS certificate")
    parser.add_argument("-tls-key-file", "--tls-key-file", help="TLS private key")
    parser.add_argument(
        "-version", "--version", action="store_true", help="print the version and exit"
    )
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(reason: str) -> int:
    print(f"swapvisor: {' '.join(reason.split())}", file=sys.stderr)  # noqa: T201
    return 1


def main(argv: Sequence[str] | None = None, early: EarlyListener | None = None) -> int:
    """``early``: the address, already bound and answering ``/health``
    (``controller.cli.entry``); None: bound here."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] in (["check"], ["schema"]):
        # Imported only here: serving needs neither (start-up time).
        from controller.cli.check import check_main, schema_main

        run = check_main if args_list[0] == "check" else schema_main
        return run(args_list[1:])
    args = parse_args(args_list)
    if args.version:
        print(f"version: {__version__} (swapvisor)")  # noqa: T201
        return 0
    if not args.config and not args.config_dir:
        return _fail("at least one of --config or --config-dir must be provided")
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        return _fail("both --tls-cert-file and --tls-key-file must be provided for TLS")
    tls = _tls_context(args.tls_cert_file, args.tls_key_file)
    if isinstance(tls, str):
        return _fail(tls)
    listen = args.listen or f"{DEFAULT_HOST}:{8443 if tls else 8080}"
    try:
        loaded = load_config(args.config, args.config_dir)
        check_backends(loaded.config)
        host, port = parse_listen(listen)
    except (ConfigError, ValueError) as exc:
        return _fail(f"{args.config or args.config_dir}: {exc}")
    cfg = loaded.config
    logs = Logs(cfg.log_to_stdout)
    install_log_handler(logs, cfg.log_level, cfg.log_time_format)
    for warning in loaded.warnings:
        log.warning("config: %s", warning)
    if not is_loopback(host):
        log.warning(
            "swapvisor is reachable by all hosts on the network; use "
            "--listen 127.0.0.1:%d to restrict it to loopback",
            port,
        )
    sources = (_path(args.config), _path(args.config_dir))
    serving = serve(cfg, host, port, tls, sources, args.watch_config, logs, early)
    with asyncio.Runner(loop_factory=loop_factory(os.environ)) as runner:
        runner.run(serving)
    return 0


def loop_factory(
    env: Mapping[str, str],
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``SWAPVISOR_LOOP=uvloop`` and it is installed, else
    None (asyncio's)."""
    if env.get("SWAPVISOR_LOOP", "").strip().lower() != "uvloop":
        return None
    try:
        import uvloop  # optional: the ``uvloop`` extra
    except ImportError:
        log.warning("SWAPVISOR_LOOP=uvloop but uvloop is not installed")
        return None
    return uvloop.new_event_loop


def _reloaded(app: web.Application) -> None:
    config = app[RUNTIME].config
    install_log_handler(app[LOGS], config.log_level, config.log_time_format)
    app[EVENTS].publish("modelStatus", model_status(app[RUNTIME]))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | str | None:
    if not cert or not key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load TLS certificate {cert} / key {key}: {exc}"
    return context


# What a kill and a container removal take after the graceful part.
KILL_MARGIN_S = 5.0


def shutdown_budget(raw: str | None) -> tuple[float, float | None]:
    """``SWAPVISOR_SHUTDOWN_TIMEOUT`` (seconds, e.g. a compose file's
    stop_grace_period minus a margin) as (request drain, per-model stop
    grace): a quarter for requests to finish, the rest for models to stop,
    with room for the kill. Unset: today's 10 s drain, each model's own
    unloadTimeout."""
    if not raw:
        return SHUTDOWN_GRACE_S, None
    try:
        total = float(raw)
    except ValueError:
        log.warning("SWAPVISOR_SHUTDOWN_TIMEOUT=%r is not a number: ignored", raw)
        return SHUTDOWN_GRACE_S, None
    drain = min(SHUTDOWN_GRACE_S, total / 4)
    return drain, max(0.0, total - drain - KILL_MARGIN_S)


async def serve(
    config: Config,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    sources: tuple[Path | None, Path | None],
    watch: bool,
    logs: Logs,
    early: EarlyListener | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then stop every upstream and return.
    ``early``: the bound socket to serve on, and the connections it holds."""
    app = create_app(config, NativeBackend(), logs, default_instance(port))
    drain_s, grace_cap = shutdown_budget(os.environ.get("SWAPVISOR_SHUTDOWN_TIMEOUT"))
    app[RUNTIME].shutdown_grace_cap = grace_cap
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=drain_s,
        access_log=None,
    )
    reloader = Reloader(app[RUNTIME], *sources, on_reload=lambda: _reloaded(app))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before setup: setup reaps orphan containers, which can take a while with
    # a slow engine, and a SIGTERM meanwhile must still shut down cleanly.
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    await runner.setup()
    watcher = asyncio.create_task(reloader.watch()) if watch else None
    try:
        await _site(runner, host, port, tls, early)
        scheme = "https" if tls else "http"
        log.info("swapvisor listening on %s://%s:%d", scheme, host, port)
        _tune_gc()
        await stop.wait()
        log.info("shutting down: stopping every upstream")
    finally:
        if watcher is not None:
            watcher.cancel()
        await reloader.aclose()
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(sig)
    log.info("shutdown complete")


# Young-generation threshold: CPython's 700 ran ~120 collections a second
# under load, for per-request objects that die by reference counting anyway.
GC_THRESHOLDS = (7000, 20, 20)


def _tune_gc() -> None:
    """Once serving: what start-up built (modules, the app, the config; ~80k
    objects) moves out of the collector's sight, and young collections run
    less often. Under load the collector had spent ~14 µs per request, most
    of it walking those start-up objects in full collections (bench/;
    docs/performance.md). A reload's replaced config is freed by reference
    counting as before; only cycles among start-up objects stay. Full
    collections become rarer too (every few million allocations), so cyclic
    garbage, a traceback's frames for one, lives longer before it is freed.
    No full collection first: it found nothing at start-up and took ~20 ms."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _site(
    runner: web.AppRunner,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    early: EarlyListener | None,
) -> None:
    """Serve on the early listener's socket (and the requests it left
    unread), else bind here."""
    if early is None:
        tcp = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
        await tcp.start()
        return
    sock, held = early.handover()
    await web.SockSite(runner, sock).start()
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None
    for conn in held:
        conn.setblocking(False)
        await loop.connect_accepted_socket(server, conn)


if __name__ == "__main__":
    sys.exit(main())
