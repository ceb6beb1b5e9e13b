"""The address is bound in the first milliseconds of start-up: ``/health``
answers while the rest is still importing, and a request that arrives before
the app is ready waits for it (its connection is handed over unread) instead
of being refused."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from controller.cli.early import EarlyListener
from tests.conftest import PY, ROOT, fake_cmd, free_port, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def early() -> Iterator[Callable[..., EarlyListener]]:
    made: list[EarlyListener] = []

    def start(*argv: str) -> EarlyListener:
        listener = EarlyListener.start(list(argv))
        assert listener is not None
        made.append(listener)
        return listener

    yield start
    for listener in made:
        sock, held = listener.handover()
        for conn in held:
            conn.close()
        sock.close()


def test_health_is_answered_and_everything_else_left_unread(
    early: Callable[..., EarlyListener],
) -> None:
    port = free_port()
    listener = early("--config", "c.yaml", "--listen", f"127.0.0.1:{port}")
    assert exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").endswith(
        b"\r\n\r\nOK"
    )
    head = exchange(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"\r\nX-Swapvisor-State: starting\r\n" in head
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    # A /health request in two pieces is still answered.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /hea")
        time.sleep(0.05)  # the two pieces must arrive apart: this is the case
        s.sendall(b"lth HTTP/1.1\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")
    # Anything else stays unread for the app.
    post = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(post)
    wait_until_sync(lambda: bool(listener._held))
    sock, held = listener.handover()
    assert len(held) == 1
    assert held[0].recv(1024) == post  # unread: the app reads it whole
    held[0].close()
    client.close()
    assert sock is listener.sock


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "c.yaml"],
        ["--version", "--config", "c.yaml"],
        ["--config", "c.yaml", "--tls-cert-file", "a", "--tls-key-file", "b"],
        ["--listen", "127.0.0.1:1"],  # no config: nothing to serve
        ["--config", "c.yaml", "--listen", "nonsense"],
    ],
)
def test_not_started_where_the_app_binds_or_nothing_serves(argv: list[str]) -> None:
    assert EarlyListener.start(argv) is None


def test_a_request_sent_during_start_up_is_served(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  m:\n    cmd: {fake_cmd('m')}\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "controller",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def health() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=1
                ) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until_sync(health, timeout=20)
        # Sent at once, most likely before the app took over: held, then served.
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
        reply = exchange(
            port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b"hello from m" in reply
    finally:
        proc.terminate()
        proc.wait(30)
