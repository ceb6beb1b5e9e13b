"""The address is bound in the first milliseconds of start-up: ``/health``
answers while the rest is still importing, and a request that arrives before
the app is ready waits for it (its connection is handed over unread) instead
of being refused."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from controller.cli.early import EarlyListener
from tests.conftest import PY, ROOT, fake_cmd, free_port, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


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


def thread_cpu_s(tid: int) -> float:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_request_that_is_not_whole_does_not_keep_a_core_busy(
    early: Callable[..., EarlyListener],
) -> None:
    """A connection stays readable while its request is incomplete; the
    thread looks at it again every few ms instead of spinning on it (which
    took CPU from the imports it runs beside), and still answers once the
    rest arrives, and hands a held one over."""
    port = free_port()
    listener = early("--config", "c.yaml", "--listen", f"127.0.0.1:{port}")
    tid = listener._thread.native_id
    assert tid is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as health,
        socket.create_connection(("127.0.0.1", port), timeout=10) as prefix,
    ):
        health.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no end yet
        prefix.sendall(b"GET /he")  # not even known to be /health yet
        before = thread_cpu_s(tid)
        time.sleep(0.5)  # the window measured, not a wait for an event
        busy = thread_cpu_s(tid) - before
        assert busy < 0.1, f"the early thread ran {busy:.2f} s of 0.5 s"
        health.sendall(b"\r\n")
        assert health.recv(1024).startswith(b"HTTP/1.1 200 OK")
        prefix.sendall(b"x HTTP/1.1\r\n\r\n")  # /hex: not /health
        wait_until_sync(lambda: bool(listener._held))
        _, held = listener.handover()
        assert len(held) == 1
        assert held[0].recv(1024) == b"GET /hex HTTP/1.1\r\n\r\n"
        held[0].close()


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
