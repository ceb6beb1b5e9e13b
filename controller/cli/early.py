"""The listening socket, from the first milliseconds of start-up.

Importing aiohttp and pydantic and building the app take ~300 ms on a small
machine; llama-swap (Go) answers ``/health`` in ~30 ms. So the ``swapvisor``
command binds its address before it imports anything heavy, and a small
thread answers ``GET /health`` (``OK``, as the app does, with the header
``X-Swapvisor-State: starting``) from then on. Any
other request is left unread on its connection: when the app is ready it
takes over the listening socket and every such connection, and reads them
itself, so a request that arrives during start-up waits instead of being
refused. The thread looks at a request with ``MSG_PEEK`` and consumes only
the ``/health`` ones it answers.

Standard library only, and nothing from ``controller``: it runs before the
rest is imported. Not used with TLS (the app's server does the handshake),
nor when the address cannot be bound (the app then reports the error as it
always did).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_LISTEN = "127.0.0.1:8080"
HEALTH = (b"GET /health ", b"HEAD /health ")
MAX_PEEK = 8192
PARTIAL_POLL_S = 0.01
# As the app answers, plus a header saying the app is not serving yet.
STARTING = "X-Swapvisor-State"
_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"X-Swapvisor-State: starting\r\n"
    b"Content-Length: 2\r\nConnection: close\r\n\r\n"
)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080"
        )
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


def flag(argv: Sequence[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` / ``--name=VALUE`` (one or two dashes),
    as argparse would read it for these simple flags; None when absent."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


class EarlyListener:
    """The bound socket and the thread answering ``/health`` until
    ``handover``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._held: list[socket.socket] = []
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name="early /health", daemon=True
        )

    @classmethod
    def start(cls, argv: Sequence[str]) -> EarlyListener | None:
        """Bind and start answering, when ``argv`` asks to serve plain HTTP."""
        if not argv or argv[0] in ("check", "schema"):
            return None
        informational = {"-h", "--help", "-version", "--version"}
        if informational & set(argv):
            return None
        if flag(
            argv, "-tls-cert-file", "--tls-cert-file", "-tls-key-file", "--tls-key-file"
        ):
            return None
        if not flag(argv, "-config", "--config", "-config-dir", "--config-dir"):
            return None
        try:
            host, port = parse_listen(
                flag(argv, "-listen", "--listen") or DEFAULT_LISTEN
            )
            sock = socket.create_server(
                (host, port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                backlog=128,
            )
        except (OSError, ValueError):
            return None  # the app binds, and says what is wrong, as before
        listener = cls(sock)
        listener._thread.start()
        return listener

    def handover(self) -> tuple[socket.socket, list[socket.socket]]:
        """Stop answering; the listening socket and the connections whose
        requests are still unread, for the app to serve. Once."""
        if not self._thread.is_alive():
            return self.sock, []
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        held, self._held = self._held, []
        return self.sock, held

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        waiting: list[socket.socket] = []
        # Connections whose request is not whole yet: looked at again every
        # PARTIAL_POLL_S, not whenever they are readable (they stay readable,
        # so that would spin a core against the imports until more came).
        partial: list[socket.socket] = []
        try:
            while True:
                for key, _ in sel.select(PARTIAL_POLL_S if partial else None):
                    if key.data == "wake":
                        self._held.extend(waiting)
                        return
                    if key.data == "accept":
                        self._accept(sel, waiting)
                    else:
                        sel.unregister(key.fileobj)
                        self._look(waiting, partial, key.fileobj)  # type: ignore[arg-type]
                again, partial = partial, []
                for conn in again:
                    self._look(waiting, partial, conn)
        finally:
            sel.close()

    def _accept(
        self, sel: selectors.BaseSelector, waiting: list[socket.socket]
    ) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        waiting.append(conn)
        sel.register(conn, selectors.EVENT_READ, "conn")

    def _look(
        self,
        waiting: list[socket.socket],
        partial: list[socket.socket],
        conn: socket.socket,
    ) -> None:
        """Answer a complete ``/health`` request; leave anything else unread;
        put one that is not whole yet in ``partial``."""
        try:
            data = conn.recv(MAX_PEEK, socket.MSG_PEEK)
        except OSError:
            data = b""
        health = any(data.startswith(h) for h in HEALTH)
        maybe = any(h.startswith(data) for h in HEALTH)  # too short to tell yet
        end = data.find(b"\r\n\r\n")
        if data and (maybe or (health and end < 0 and len(data) < MAX_PEEK)):
            partial.append(conn)  # more is coming
            return
        waiting.remove(conn)
        if not data:  # the client went away
            conn.close()
        elif health and end >= 0:
            with contextlib.suppress(OSError):
                conn.recv(end + 4)  # exactly the head: a GET has no body
                head = data.startswith(b"HEAD ")
                conn.sendall(_ANSWER if head else _ANSWER + b"OK")
            conn.close()
        else:
            self._held.append(conn)  # the app reads it
