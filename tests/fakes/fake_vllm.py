"""Fake vLLM OpenAI server with sleep mode, for swapvisor's warm-swap tests.

Run as a real process (``python tests/fakes/fake_vllm.py --port N ...``), like
``fake_upstream.py``, and standard library only for the same reasons. It plays
vLLM's part in a swap: a slow model load at start, then ``POST /sleep?level=N``
and ``POST /wake_up`` that release and take back (pretend) accelerator memory
while the process stays.

Lifecycle: LOADING (``/health`` is 503 for ``--load-seconds``, with progress
lines) -> AWAKE <-> ASLEEP. Falling asleep takes ``--sleep-seconds``; waking
takes ``--wake-seconds``, or ``--wake2-seconds`` after a level-2 sleep (the
weights were dropped: default five times ``--wake-seconds``). Sleep and wake
calls block until done, as vLLM's do, and run one at a time. ``/health`` stays
200 while asleep (vLLM's does: the process is healthy, only inference is
off); inference answers 503 ``{"error": ...}`` unless AWAKE.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
(``"stream": true`` for SSE), ``POST /sleep?level=1|2``, ``POST /wake_up``,
``GET /is_sleeping`` (``{"is_sleeping": bool}``), ``GET /metrics``
(``fake_vllm_gpu_memory_bytes`` and friends), and the same three calls on
custom paths, to stand in for a server with its own endpoints:
``POST /custom/sleep[?level=N]``, ``POST /custom/wake``, ``GET /custom/status``
(``{"sleeping": bool}``). Output: ``fake-vllm listening on http://HOST:PORT
model=MODEL pid=PID``, one ``request METHOD PATH`` line per request, and one
line per state change (``state: awake -> falling asleep (level 1)``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

JSONDict = dict[str, Any]
MIB = 1024 * 1024
# What stays on the accelerator while asleep (CUDA context, graphs): a small
# share of the full figure, never zero, as vLLM reports it.
ASLEEP_FRACTION = 0.02
LOAD_PROGRESS_EVERY_S = 0.5

LOADING = "loading"
AWAKE = "awake"
FALLING_ASLEEP = "falling asleep"
ASLEEP = "asleep"
WAKING = "waking"


class LogWriter:
    """Writes log lines from one background thread (``fake_upstream``'s design:
    a reader that stops draining our stdout never stalls a request)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: deque[str] = deque()
        self.busy = False
        threading.Thread(target=self.run, name="log-writer", daemon=True).start()

    def put(self, line: str) -> None:
        with self.cond:
            self.pending.append(line)
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.pending))
                batch = list(self.pending)
                self.pending.clear()
                self.busy = True
            try:
                sys.stdout.write("".join(line + "\n" for line in batch))
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # closed or broken pipe: nobody is listening
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def drain(self, timeout: float = 0.5) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.pending and not self.busy, timeout)


_LOG = LogWriter()


def log(line: str) -> None:
    _LOG.put(line)


def exit_now(code: int) -> NoReturn:
    _LOG.drain()
    os._exit(code)


class SleepError(Exception):
    """A sleep or wake call that the server refuses (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    """The fake's state: loading, awake, asleep and the transitions between.

    ``lock`` guards the fields; ``transition`` serialises sleep and wake calls
    (a wake that arrives while the server is falling asleep waits for the
    sleep to finish, then wakes it).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.model = str(args.model)
        self.load_s = float(args.load_seconds)
        self.sleep_s = float(args.sleep_seconds)
        self.wake_s = float(args.wake_seconds)
        wake2 = args.wake2_seconds
        self.wake2_s = 5 * self.wake_s if wake2 is None else float(wake2)
        self.fail_sleep = bool(args.fail_sleep)
        self.fail_wake = bool(args.fail_wake)
        self.gpu_bytes = int(args.gpu_mib) * MIB
        self.lock = threading.Lock()
        self.transition = threading.Lock()
        self.state = LOADING if self.load_s > 0 else AWAKE
        self.level = 0  # of the current or last sleep
        self.sleeps = 0
        self.wakes = 0
        self.requests = 0
        self.started = time.monotonic()

    def set_state(self, new: str, note: str = "") -> None:
        with self.lock:
            old, self.state = self.state, new
        log(f"state: {old} -> {new}{f' ({note})' if note else ''}")

    def current(self) -> str:
        with self.lock:
            return self.state

    def load(self) -> None:
        """Simulate the model load (a thread): progress lines, then AWAKE."""
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < self.load_s:
            log(f"Loading weights: {min(99, int(100 * elapsed / self.load_s))}%")
            time.sleep(min(LOAD_PROGRESS_EVERY_S, self.load_s - elapsed))
        self.set_state(AWAKE, f"model loaded in {time.monotonic() - began:.2f} s")

    def sleep(self, level: int) -> None:
        """Fall asleep at ``level``; blocks for ``sleep_s``. Idempotent."""
        if level not in (1, 2):
            raise SleepError(400, f"level must be 1 or 2, got {level}")
        with self.transition:
            state = self.current()
            if state == ASLEEP:
                log(f"sleep (level {level}): already asleep")
                return
            if state == LOADING:
                raise SleepError(503, "model is still loading")
            if self.fail_sleep:
                log(f"sleep (level {level}): failing (--fail-sleep)")
                raise SleepError(500, "sleep failed (--fail-sleep)")
            self.set_state(FALLING_ASLEEP, f"level {level}")
            time.sleep(self.sleep_s)
            with self.lock:
                self.level = level
                self.sleeps += 1
            what = "weights offloaded" if level == 1 else "weights discarded"
            self.set_state(ASLEEP, f"level {level}, {what}, KV cache discarded")

    def wake(self) -> None:
        """Wake up; blocks for the level's wake time. Idempotent."""
        with self.transition:
            state = self.current()
            if state in (AWAKE, LOADING):
                log(f"wake_up: already {state}")
                return
            if self.fail_wake:
                log("wake_up: failing (--fail-wake)")
                raise SleepError(500, "wake_up failed (--fail-wake)")
            seconds = self.wake2_s if self.level == 2 else self.wake_s
            self.set_state(WAKING, f"from level {self.level}")
            time.sleep(seconds)
            with self.lock:
                self.wakes += 1
            self.set_state(AWAKE, f"woke in {seconds:.2f} s")

    def is_sleeping(self) -> bool:
        # vLLM reports the sleep once it is done, and until the wake is.
        return self.current() in (ASLEEP, WAKING)

    def gpu_memory(self) -> int:
        if self.current() in (ASLEEP, WAKING):
            return int(self.gpu_bytes * ASLEEP_FRACTION)
        return self.gpu_bytes

    def metrics(self) -> str:
        with self.lock:
            level = self.level if self.state in (ASLEEP, WAKING) else 0
            sleeps, wakes, requests = self.sleeps, self.wakes, self.requests
        label = f'model_name="{self.model}"'
        lines = [
            "# HELP fake_vllm_gpu_memory_bytes Accelerator memory the server holds.",
            "# TYPE fake_vllm_gpu_memory_bytes gauge",
            f"fake_vllm_gpu_memory_bytes{{{label}}} {self.gpu_memory()}",
            "# HELP fake_vllm_is_sleeping 1 while asleep (or waking).",
            "# TYPE fake_vllm_is_sleeping gauge",
            f"fake_vllm_is_sleeping{{{label}}} {int(self.is_sleeping())}",
            "# HELP fake_vllm_sleep_level Level of the current sleep, 0 if awake.",
            "# TYPE fake_vllm_sleep_level gauge",
            f"fake_vllm_sleep_level{{{label}}} {level}",
            "# TYPE fake_vllm_sleeps_total counter",
            f"fake_vllm_sleeps_total{{{label}}} {sleeps}",
            "# TYPE fake_vllm_wakes_total counter",
            f"fake_vllm_wakes_total{{{label}}} {wakes}",
            "# TYPE fake_vllm_requests_total counter",
            f"fake_vllm_requests_total{{{label}}} {requests}",
        ]
        return "\n".join(lines) + "\n"

    def count_request(self) -> None:
        with self.lock:
            self.requests += 1


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, engine: Engine) -> None:
        self.engine = engine
        super().__init__((host, port), Handler)


class Handler(BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fake-vllm/1.0"

    @property
    def engine(self) -> Engine:
        return cast("FakeServer", self.server).engine

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    # ----- plumbing -------------------------------------------------------

    def read_json(self) -> JSONDict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    def send_bytes(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def send_error_json(self, status: int, message: str) -> None:
        kind = "BadRequestError" if status < 500 else "ServiceUnavailableError"
        self.send_json(
            status, {"error": {"message": message, "type": kind, "code": status}}
        )

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def query_level(self, default: int) -> int | None:
        values = parse_qs(urlsplit(self.path).query).get("level")
        if not values:
            return default
        try:
            return int(values[0])
        except ValueError:
            return None

    # ----- dispatch -------------------------------------------------------

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        log(f"request {self.command} {self.path}")
        try:
            self.route(self.command, urlsplit(self.path).path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500, keep serving
            log(f"fake-vllm error: {exc!r}")
            self.close_connection = True

    def route(self, method: str, path: str) -> None:
        engine = self.engine
        get_routes: dict[str, Callable[[], None]] = {
            "/health": self.health,
            "/v1/models": self.models,
            "/is_sleeping": lambda: self.send_json(
                200, {"is_sleeping": engine.is_sleeping()}
            ),
            "/custom/status": lambda: self.send_json(
                200, {"sleeping": engine.is_sleeping()}
            ),
            "/metrics": lambda: self.send_bytes(
                200, engine.metrics().encode(), "text/plain; version=0.0.4"
            ),
        }
        post_routes: dict[str, Callable[[], None]] = {
            "/v1/chat/completions": self.chat,
            "/sleep": lambda: self.sleep(empty=True),
            "/custom/sleep": lambda: self.sleep(empty=False),
            "/wake_up": lambda: self.wake(empty=True),
            "/custom/wake": lambda: self.wake(empty=False),
        }
        routes = get_routes if method == "GET" else post_routes
        handler = routes.get(path)
        if handler is None:
            self.read_json()
            status = 405 if path in {**get_routes, **post_routes} else 404
            self.send_error_json(status, f"{method} {path}: not here")
            return
        handler()

    # ----- endpoints ------------------------------------------------------

    def health(self) -> None:
        if self.engine.current() == LOADING:
            self.send_json(503, {"error": {"message": "Loading model"}})
        else:
            self.send_bytes(200, b"", "application/json")

    def models(self) -> None:
        entry = {
            "id": self.engine.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.engine.model,
        }
        self.send_json(200, {"object": "list", "data": [entry]})

    def sleep(self, *, empty: bool) -> None:
        """vLLM answers its own calls with an empty 200; the custom ones say
        where they are."""
        self.read_json()
        level = self.query_level(default=1)
        try:
            if level is None:
                raise SleepError(400, "level must be an integer")
            self.engine.sleep(level)
        except SleepError as exc:
            self.send_error_json(exc.status, str(exc))
            return
        if empty:
            self.send_bytes(200, b"", "application/json")
        else:
            self.send_json(200, {"sleeping": True})

    def wake(self, *, empty: bool) -> None:
        self.read_json()
        try:
            self.engine.wake()
        except SleepError as exc:
            self.send_error_json(exc.status, str(exc))
            return
        if empty:
            self.send_bytes(200, b"", "application/json")
        else:
            self.send_json(200, {"sleeping": False})

    def chat(self) -> None:
        body = self.read_json()
        engine = self.engine
        engine.count_request()
        state = engine.current()
        if state != AWAKE:
            # vLLM's engine refuses work while its weights are away.
            self.send_error_json(503, f"model {engine.model} is {state}")
            return
        messages = body.get("messages")
        prompt_n = 1
        if isinstance(messages, list):
            prompt_n += sum(
                len(str(m.get("content", "")).split())
                for m in messages
                if isinstance(m, dict)
            )
        words = f"hello from {engine.model}".split()
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words = words[:max_tokens]
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        usage = {
            "prompt_tokens": prompt_n,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_n + len(pieces),
        }
        cid = f"chatcmpl-{os.urandom(8).hex()}"
        head = {
            "id": cid,
            "created": int(time.time()),
            "model": body.get("model", engine.model),
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {**head, "object": "chat.completion", "choices": [choice]}
            self.send_json(200, {**reply, "usage": usage})
            return
        self.stream(head, pieces, usage)

    def stream(self, head: JSONDict, pieces: list[str], usage: JSONDict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(delta: JSONDict, finish: str | None, **extra: Any) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            self.write_chunk(b"data: %s\n\n" % json.dumps({**obj, **extra}).encode())

        event({"role": "assistant", "content": ""}, None)
        for piece in pieces:
            event({"content": piece}, None)
        event({}, "stop", usage=usage)
        self.write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --------------------------------------------------------------------------
# process setup
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("--model", default="fake-vllm", help="the model id it reports")

    def seconds(name: str, default: float, what: str) -> None:
        p.add_argument(name, type=float, default=default, metavar="S", help=what)

    seconds("--load-seconds", 0.0, "model load at start: /health is 503 this long")
    seconds("--sleep-seconds", 0.05, "how long POST /sleep takes")
    seconds("--wake-seconds", 0.2, "how long POST /wake_up takes after level 1")
    p.add_argument(
        "--wake2-seconds",
        type=float,
        default=None,
        metavar="S",
        help="how long a wake takes after level 2 (default: 5 x --wake-seconds)",
    )
    p.add_argument("--fail-sleep", action="store_true", help="sleep calls answer 500")
    p.add_argument("--fail-wake", action="store_true", help="wake calls answer 500")
    p.add_argument(
        "--gpu-mib",
        type=int,
        default=16384,
        metavar="N",
        help="accelerator memory it reports while awake (default 16384)",
    )
    return p.parse_args(argv)


def install_signal_handlers() -> None:
    def on_term(signum: int, frame: FrameType | None) -> None:
        log(f"got {signal.Signals(signum).name}, exiting")
        exit_now(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    engine = Engine(args)
    try:
        server = FakeServer(str(args.host), int(args.port), engine)
    except OSError as exc:
        log(f"fatal: cannot listen on {args.host}:{args.port}: {exc}")
        exit_now(1)
    host, port = server.server_address[:2]
    host_str = host.decode() if isinstance(host, bytes) else str(host)
    log(
        f"fake-vllm listening on http://{host_str}:{port} model={engine.model} "
        f"pid={os.getpid()}"
    )
    if engine.state == LOADING:
        threading.Thread(target=engine.load, name="load", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
