"""Fake OpenAI- and Anthropic-compatible inference server for swapvisor tests.

Tests start this file as a real process (``python tests/fakes/fake_upstream.py
--port N ...``) in place of llama.cpp's llama-server or vLLM.  It uses only the
standard library so it starts in a few tens of milliseconds and also runs in a
bare container that has nothing but a stdlib python.

On startup it prints ``fake-upstream listening on http://HOST:PORT model=MODEL
pid=PID`` and then one ``request METHOD PATH`` line per request.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /props``,
``GET /v1/audio/voices``, ``GET /sdapi/v1/loras``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings``, ``POST /v1/messages``,
``POST /v1/messages/count_tokens``, ``POST /v1/audio/transcriptions``; anything
else is echoed back as JSON (method, raw path, headers, body, JSON model).

Request-body knobs (top-level JSON keys) for tests: ``fake_chunks``,
``fake_delay``, ``fake_chunk_delay``, ``fake_crash_midstream``, ``fake_status``
and ``fake_reply``.  A last user message of the form ``echo: TEXT`` makes the
reply ``TEXT``.  See ``--help`` for the process-level failure flags.

Memory, for the footprint tests: ``--hold-mib N`` allocates and touches N MiB
before listening (so it is held once ``/health`` answers 200, as a loaded
model is), ``--grow-mib N`` N more MiB when the first POST arrives, before it
is answered (as a server's KV cache fills on first use).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import struct
import sys
import threading
import time
from collections import deque
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import FrameType

JSONDict = dict[str, Any]

_WORD_RE = re.compile(r"\s*\S+")
JSON_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
    }
)


class LogWriter:
    """Writes log lines from a background thread, flushing after each batch.

    Request handlers only enqueue, so a test that stops reading our stdout
    pipe cannot stall request handling once the pipe buffer is full.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: deque[tuple[bool, str]] = deque()
        self.busy = False
        threading.Thread(target=self.run, name="log-writer", daemon=True).start()

    def put(self, line: str, err: bool) -> None:
        with self.cond:
            self.pending.append((err, line))
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.pending))
                batch = list(self.pending)
                self.pending.clear()
                self.busy = True
            for err, line in batch:
                stream = sys.stderr if err else sys.stdout
                try:
                    stream.write(line + "\n")
                    stream.flush()
                except (OSError, ValueError):
                    pass  # closed or broken pipe: nobody is listening
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def drain(self, timeout: float = 0.5) -> None:
        """Wait (bounded) until every queued line has been written."""
        with self.cond:
            self.cond.wait_for(lambda: not self.pending and not self.busy, timeout)


_LOG: LogWriter | None = None


def log(line: str, *, err: bool = False) -> None:
    """Print one line, flushed (tests read our output line by line)."""
    global _LOG
    if _LOG is None:
        _LOG = LogWriter()
    _LOG.put(line, err)


def exit_now(code: int) -> NoReturn:
    """Flush queued log lines (bounded wait), then exit without cleanup."""
    if _LOG is not None:
        _LOG.drain()
    os._exit(code)


class Config:
    """Process-wide settings taken from the command line."""

    def __init__(
        self,
        host: str,
        port: int,
        model: str,
        health_delay: float,
        fail_health: bool,
        hang_health: bool,
        crash_after: int | None,
        hang_health_after: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.model = model
        self.health_delay = health_delay
        self.fail_health = fail_health
        self.hang_health = hang_health
        self.crash_after = crash_after
        self.hang_health_after = hang_health_after
        self.ready_at = 0.0
        self.started_at = time.monotonic()
        self.post_count = 0
        self.grow_mib = 0  # allocated at the first POST
        self.lock = threading.Lock()

    def count_post(self) -> int:
        with self.lock:
            self.post_count += 1
            return self.post_count


class FakeServer(ThreadingHTTPServer):
    """Threaded HTTP server carrying the fake's configuration."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        super().__init__((cfg.host, cfg.port), FakeHandler)


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    """Split text into stream pieces that concatenate back to the text."""
    words = _WORD_RE.findall(text)
    return words if words else [text]


def content_text(content: Any) -> str:
    """Text of an OpenAI/Anthropic message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def count_tokens(texts: Iterable[str]) -> int:
    """A cheap, deterministic token estimate: whitespace-separated words."""
    return max(1, sum(len(t.split()) for t in texts))


def messages_texts(body: JSONDict) -> list[str]:
    texts: list[str] = []
    system = body.get("system")
    if system is not None:
        texts.append(content_text(system))
    messages = body.get("messages")
    if isinstance(messages, list):
        texts.extend(
            content_text(msg.get("content"))
            for msg in messages
            if isinstance(msg, dict)
        )
    return texts


def last_user_content(body: JSONDict) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            return content if isinstance(content, str) else None
    return None


def embedding_for(text: str) -> list[float]:
    """Eight deterministic float32-exact values in [-1, 1) derived from text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    ints = struct.unpack("<8I", digest)
    raw = [i / 2**31 - 1.0 for i in ints]
    # Round-trip through float32 so JSON and base64 answers agree exactly.
    return list(struct.unpack("<8f", struct.pack("<8f", *raw)))


def parse_multipart(content_type: str, body: bytes) -> list[tuple[JSONDict, bytes]]:
    """Parse multipart/form-data into (params, data) pairs.

    params holds ``name`` and ``filename`` (either may be None) and
    ``content_type`` of the part.
    """
    ct = Message()
    ct["content-type"] = content_type
    boundary = ct.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart body without boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[tuple[JSONDict, bytes]] = []
    segments = body.split(delimiter)
    # segments[0] is the preamble; a segment starting with "--" is the epilogue.
    for segment in segments[1:]:
        if segment.startswith(b"--"):
            break
        if segment.startswith(b"\r\n"):
            segment = segment[2:]
        elif segment.startswith(b"\n"):
            segment = segment[1:]
        head, sep, data = segment.partition(b"\r\n\r\n")
        if not sep:
            head, sep, data = segment.partition(b"\n\n")
            if not sep:
                continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        headers = Message()
        for line in head.decode("utf-8", errors="replace").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip()] = value.strip()
        name_param = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        params: JSONDict = {
            "name": name_param if isinstance(name_param, str) else None,
            "filename": filename,
            "content_type": headers.get_content_type(),
        }
        parts.append((params, data))
    return parts


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------
# request handler
# --------------------------------------------------------------------------


class FakeHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fake-upstream/1.0"

    body: bytes = b""
    headers_sent: bool = False

    # ----- plumbing -------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return cast("FakeServer", self.server).cfg

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ClientGone
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ClientGone
                chunks.append(data)
                self.rfile.readline(65537)  # CRLF after the chunk data
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return b""
        data = self.rfile.read(length)
        if len(data) < length:
            raise ClientGone
        return data

    def send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.headers_sent = True
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_bytes(status, json.dumps(obj).encode("utf-8"), "application/json")

    def send_error_json(self, status: int, message: str, anthropic: bool) -> None:
        if anthropic:
            err_type = "api_error" if status >= 500 else "invalid_request_error"
            self.send_json(
                status,
                {
                    "type": "error",
                    "error": {"type": err_type, "message": message, "code": status},
                },
            )
        else:
            self.send_json(
                status,
                {"error": {"message": message, "type": "server_error", "code": status}},
            )

    def start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.headers_sent = True

    def write_chunk(self, data: bytes) -> None:
        """Write one chunked-encoding frame (the socket writer is unbuffered)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def sse_data(self, obj: Any) -> None:
        self.write_chunk(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")

    def sse_event(self, name: str, obj: Any) -> None:
        self.write_chunk(
            b"event: "
            + name.encode("ascii")
            + b"\ndata: "
            + json.dumps(obj).encode("utf-8")
            + b"\n\n"
        )

    # ----- dispatch -------------------------------------------------------

    def do_GET(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_PUT(self) -> None:
        self.dispatch()

    def do_PATCH(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def do_OPTIONS(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        log(f"request {self.command} {self.path}")
        self.headers_sent = False
        try:
            self.body = self.read_body()
            self.route()
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500, keep serving
            log(f"fake-upstream error: {exc!r}", err=True)
            self.close_connection = True
            if not self.headers_sent:
                try:
                    self.send_error_json(500, f"fake-upstream error: {exc!r}", False)
                except OSError:
                    pass

    def route(self) -> None:
        path = urlsplit(self.path).path
        method = self.command
        if method in ("GET", "HEAD"):
            if path == "/health":
                self.handle_health()
            elif path == "/v1/models":
                self.handle_models()
            elif path in ("/props", "/v1/audio/voices", "/sdapi/v1/loras"):
                self.handle_info()
            else:
                self.handle_echo()
            return
        if method != "POST":
            self.handle_echo()
            return

        cfg = self.cfg
        n = cfg.count_post()
        if n == 1 and cfg.grow_mib:
            hold_memory(cfg.grow_mib)
            log(f"grew by {cfg.grow_mib} MiB")
        if cfg.crash_after is not None and n >= cfg.crash_after:
            log(f"crash-after: request {n}, exiting with code 7")
            exit_now(7)

        anthropic = path.startswith("/v1/messages")
        body: JSONDict = {}
        if self.body.strip():
            try:
                parsed = json.loads(self.body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
            elif path in JSON_ENDPOINTS:
                self.send_error_json(
                    400, "request body is not a JSON object", anthropic
                )
                return

        delay = body.get("fake_delay")
        if isinstance(delay, int | float) and delay > 0:
            time.sleep(float(delay))
        status = body.get("fake_status")
        if isinstance(status, int) and not isinstance(status, bool):
            self.send_error_json(status, "fake error", anthropic)
            return
        streaming = bool(body.get("stream"))
        streams_here = path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/messages",
        )
        if body.get("fake_crash_midstream") and not (streaming and streams_here):
            log("fake_crash_midstream: exiting with code 9")
            exit_now(9)

        if path == "/v1/chat/completions":
            self.handle_chat(body)
        elif path == "/v1/completions":
            self.handle_completions(body)
        elif path == "/v1/embeddings":
            self.handle_embeddings(body)
        elif path == "/v1/messages":
            self.handle_messages(body)
        elif path == "/v1/messages/count_tokens":
            self.send_json(200, {"input_tokens": count_tokens(messages_texts(body))})
        elif path == "/v1/audio/transcriptions":
            self.handle_transcription()
        else:
            self.handle_echo()

    # ----- simple endpoints -----------------------------------------------

    def handle_health(self) -> None:
        cfg = self.cfg
        late = cfg.hang_health_after
        if cfg.hang_health or (
            late is not None and time.monotonic() - cfg.started_at > late
        ):
            threading.Event().wait()
        if cfg.fail_health:
            self.send_json(503, {"error": {"message": "Unavailable (fail-health)"}})
        elif time.monotonic() < cfg.ready_at:
            self.send_json(503, {"error": {"message": "Loading model"}})
        else:
            self.send_json(200, {"status": "ok"})

    def handle_models(self) -> None:
        model = self.cfg.model
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": now(),
                        "owned_by": "fake-upstream",
                    }
                ],
            },
        )

    def handle_info(self) -> None:
        parts = urlsplit(self.path)
        query: dict[str, str | list[str]] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            old = query.get(key)
            if old is None:
                query[key] = value
            elif isinstance(old, list):
                old.append(value)
            else:
                query[key] = [old, value]
        self.send_json(
            200, {"model": self.cfg.model, "path": parts.path, "query": query}
        )

    def handle_echo(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        json_model: Any = None
        try:
            parsed = json.loads(self.body) if self.body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            json_model = parsed.get("model")
        self.send_json(
            200,
            {
                "server_model": self.cfg.model,
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": self.body.decode("utf-8", errors="replace"),
                "json_model": json_model,
            },
        )

    # ----- generation helpers ---------------------------------------------

    def reply_pieces(self, body: JSONDict) -> list[str]:
        """The streamed pieces of the reply; joined they are the full reply."""
        chunks = body.get("fake_chunks")
        if isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 0:
            return ["x"] * chunks
        reply = body.get("fake_reply")
        if not isinstance(reply, str):
            last = last_user_content(body)
            prompt = body.get("prompt")
            if last is None and isinstance(prompt, str):
                last = prompt
            if last is not None and last.startswith("echo:"):
                reply = last[len("echo:") :].strip()
            else:
                reply = f"hello from {self.cfg.model}"
        return split_words(reply)

    def chunk_delay(self, body: JSONDict) -> float:
        delay = body.get("fake_chunk_delay")
        if isinstance(delay, int | float) and delay > 0:
            return float(delay)
        return 0.0

    def stream_pieces(self, body: JSONDict, pieces: list[str]) -> Iterator[str]:
        """Yield pieces, sleeping between them and crashing when asked."""
        delay = self.chunk_delay(body)
        crash = bool(body.get("fake_crash_midstream"))
        for i, piece in enumerate(pieces):
            if crash and i == 2:
                self.crash_midstream()
            if delay and i:
                time.sleep(delay)
            yield piece
        if crash:
            self.crash_midstream()

    def crash_midstream(self) -> None:
        self.wfile.flush()
        log("fake_crash_midstream: exiting with code 9")
        exit_now(9)

    @staticmethod
    def timings(prompt_n: int, predicted_n: int) -> JSONDict:
        return {
            "cache_n": 0,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_n * 0.5,
            "prompt_per_token_ms": 0.5,
            "prompt_per_second": 2000.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_n * 10.0,
            "predicted_per_token_ms": 10.0,
            "predicted_per_second": 100.0,
        }

    @staticmethod
    def usage(prompt_n: int, completion_n: int) -> JSONDict:
        return {
            "prompt_tokens": prompt_n,
            "completion_tokens": completion_n,
            "total_tokens": prompt_n + completion_n,
        }

    # ----- OpenAI chat / completions --------------------------------------

    def handle_chat(self, body: JSONDict) -> None:
        model = body.get("model", self.cfg.model)
        pieces = self.reply_pieces(body)
        prompt_n = count_tokens(messages_texts(body))
        completion_n = len(pieces)
        cid = f"chatcmpl-{os.urandom(12).hex()}"
        created = now()
        if not body.get("stream"):
            self.send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fake-upstream",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(pieces),
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self.usage(prompt_n, completion_n),
                    "timings": self.timings(prompt_n, completion_n),
                },
            )
            return

        def chunk(delta: JSONDict, finish: str | None) -> JSONDict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fake-upstream",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
            }

        self.start_sse()
        self.sse_data(chunk({"role": "assistant", "content": ""}, None))
        for piece in self.stream_pieces(body, pieces):
            self.sse_data(chunk({"content": piece}, None))
        self.sse_data(chunk({}, "stop"))
        self.sse_data(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fake-upstream",
                "choices": [],
                "usage": self.usage(prompt_n, completion_n),
                "timings": self.timings(prompt_n, completion_n),
            }
        )
        self.write_chunk(b"data: [DONE]\n\n")
        self.end_chunks()

    def handle_completions(self, body: JSONDict) -> None:
        model = body.get("model", self.cfg.model)
        pieces = self.reply_pieces(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt_n = count_tokens(str(p) for p in prompt)
        else:
            prompt_n = count_tokens([str(prompt or "")])
        completion_n = len(pieces)
        cid = f"cmpl-{os.urandom(12).hex()}"
        created = now()

        def obj(choices: list[JSONDict]) -> JSONDict:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fake-upstream",
                "choices": choices,
            }

        def choice(text: str, finish: str | None) -> JSONDict:
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
            }

        if not body.get("stream"):
            result = obj([choice("".join(pieces), "stop")])
            result["usage"] = self.usage(prompt_n, completion_n)
            result["timings"] = self.timings(prompt_n, completion_n)
            self.send_json(200, result)
            return

        self.start_sse()
        for piece in self.stream_pieces(body, pieces):
            self.sse_data(obj([choice(piece, None)]))
        self.sse_data(obj([choice("", "stop")]))
        final = obj([])
        final["usage"] = self.usage(prompt_n, completion_n)
        final["timings"] = self.timings(prompt_n, completion_n)
        self.sse_data(final)
        self.write_chunk(b"data: [DONE]\n\n")
        self.end_chunks()

    # ----- embeddings ------------------------------------------------------

    def handle_embeddings(self, body: JSONDict) -> None:
        raw = body.get("input", "")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        # A list of ints is a single tokenized input, not many inputs.
        if inputs and all(isinstance(x, int) for x in inputs):
            inputs = [raw]
        texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
        as_base64 = body.get("encoding_format") == "base64"
        data: list[JSONDict] = []
        for i, text in enumerate(texts):
            vector = embedding_for(text)
            embedding: Any = vector
            if as_base64:
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        prompt_n = count_tokens(texts)
        self.send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", self.cfg.model),
                "usage": {"prompt_tokens": prompt_n, "total_tokens": prompt_n},
            },
        )

    # ----- Anthropic messages ---------------------------------------------

    def handle_messages(self, body: JSONDict) -> None:
        model = body.get("model", self.cfg.model)
        pieces = self.reply_pieces(body)
        input_n = count_tokens(messages_texts(body))
        output_n = len(pieces)
        mid = f"msg_{os.urandom(12).hex()}"
        if not body.get("stream"):
            self.send_json(
                200,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "".join(pieces)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_n, "output_tokens": output_n},
                },
            )
            return

        self.start_sse()
        self.sse_event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_n, "output_tokens": 1},
                },
            },
        )
        self.sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self.sse_event("ping", {"type": "ping"})
        for piece in self.stream_pieces(body, pieces):
            self.sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        self.sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        self.sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_n},
            },
        )
        self.sse_event("message_stop", {"type": "message_stop"})
        self.end_chunks()

    # ----- audio -----------------------------------------------------------

    def handle_transcription(self) -> None:
        content_type = self.headers.get("Content-Type", "")
        try:
            parts = parse_multipart(content_type, self.body)
        except ValueError as exc:
            self.send_error_json(400, str(exc), False)
            return
        filename = "<none>"
        size = 0
        model = ""
        response_format = "json"
        for params, data in parts:
            name = params["name"]
            if name == "file":
                filename = params["filename"] or "<unnamed>"
                size = len(data)
            elif name == "model":
                model = data.decode("utf-8", errors="replace")
            elif name == "response_format":
                response_format = data.decode("utf-8", errors="replace")
        text = f"transcribed {filename} ({size} bytes) by {model}"
        if response_format in ("text", "srt", "vtt"):
            self.send_bytes(200, text.encode("utf-8"), "text/plain; charset=utf-8")
        else:
            self.send_json(200, {"text": text})


# --------------------------------------------------------------------------
# process setup
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("--model", default="fake", help="the model id this server reports")
    p.add_argument(
        "--startup-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep before binding the listener",
    )
    p.add_argument(
        "--health-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="/health answers 503 'Loading model' this long after binding",
    )
    p.add_argument("--fail-health", action="store_true", help="/health is always 503")
    p.add_argument("--hang-health", action="store_true", help="/health never answers")
    p.add_argument(
        "--exit-on-start",
        type=int,
        default=None,
        metavar="CODE",
        help="print a banner, then exit with CODE before listening",
    )
    p.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit with code 3 this long after start",
    )
    p.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="the N-th POST request kills the process (code 7) before answering",
    )
    p.add_argument(
        "--hang-health-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="/health stops answering this long after start (a wedged server)",
    )
    p.add_argument(
        "--log-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="while /health still says 'Loading model', print a progress line "
        "this often (a big model visibly loading)",
    )
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument(
        "--hold-mib",
        type=int,
        default=0,
        metavar="N",
        help="allocate and touch N MiB of memory before listening",
    )
    p.add_argument(
        "--grow-mib",
        type=int,
        default=0,
        metavar="N",
        help="allocate and touch N more MiB when the first POST arrives",
    )
    p.add_argument(
        "--spawn-child",
        action="store_true",
        help="spawn a sleeping grandchild process and print 'child pid N'",
    )
    p.add_argument(
        "--daemon-child",
        action="store_true",
        help="start a daemon (its own session, its parent gone: it hangs off "
        "init, outside this server's group and tree); print 'daemon pid N'",
    )
    return p.parse_args(argv)


_HELD: list[bytearray] = []  # alive for the life of the process

# The classic double fork: a new session, then the session leader exits.
_DAEMON = (
    "import os, sys, time\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "print(os.getpid(), flush=True)\n"
    "sys.stdout = open(os.devnull, 'w'); os.close(1)\n"
    "time.sleep(3600)\n"
)


def start_daemon() -> int:
    """Start a daemon that outlives its parent; its pid."""
    import subprocess  # only here: keeps the usual startup fast

    with subprocess.Popen(
        [sys.executable, "-c", _DAEMON],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # as a daemon does: not our log pipe
        text=True,
    ) as first:
        assert first.stdout is not None
        pid = int(first.stdout.readline())
    return pid


def hold_memory(mib: int) -> None:
    """Allocate ``mib`` MiB and write to every page, so all of it is resident
    (a fresh allocation is mapped lazily, to the shared zero page)."""
    buf = bytearray(mib << 20)
    page = 4096
    buf[::page] = b"\x01" * len(range(0, len(buf), page))
    _HELD.append(buf)


def _log_progress(cfg: Config, every_s: float) -> None:
    n = 0
    while time.monotonic() < cfg.ready_at:
        n += 1
        log(f"loading tensors: {n} chunks")
        time.sleep(every_s)


def install_signal_handlers(ignore_sigterm: bool) -> None:
    def on_term(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log(f"got {name}, exiting")
        exit_now(0)

    def on_term_ignored(signum: int, frame: FrameType | None) -> None:
        log("ignoring SIGTERM")

    signal.signal(signal.SIGTERM, on_term_ignored if ignore_sigterm else on_term)
    signal.signal(signal.SIGINT, on_term)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pid = os.getpid()
    install_signal_handlers(bool(args.ignore_sigterm))

    if args.exit_on_start is not None:
        log(f"fake-upstream starting model={args.model} pid={pid}")
        log("fatal: simulated startup failure", err=True)
        exit_now(int(args.exit_on_start))

    if args.exit_after is not None:
        exit_after = float(args.exit_after)

        def exit_later() -> None:
            time.sleep(exit_after)
            log(f"exit-after {exit_after}s reached, exiting with code 3")
            exit_now(3)

        threading.Thread(target=exit_later, name="exit-after", daemon=True).start()

    if args.spawn_child:
        import subprocess  # only here: keeps the usual startup fast

        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
        )
        log(f"child pid {child.pid}")

    if args.daemon_child:
        log(f"daemon pid {start_daemon()}")

    if args.startup_delay > 0:
        time.sleep(float(args.startup_delay))
    if args.hold_mib > 0:
        hold_memory(int(args.hold_mib))
        log(f"holding {args.hold_mib} MiB")

    cfg = Config(
        host=str(args.host),
        port=int(args.port),
        model=str(args.model),
        health_delay=float(args.health_delay),
        fail_health=bool(args.fail_health),
        hang_health=bool(args.hang_health),
        crash_after=args.crash_after,
        hang_health_after=args.hang_health_after,
    )
    cfg.grow_mib = max(int(args.grow_mib), 0)
    try:
        server = FakeServer(cfg)
    except OSError as exc:
        log(f"fatal: cannot listen on {cfg.host}:{cfg.port}: {exc}", err=True)
        exit_now(1)
    cfg.ready_at = time.monotonic() + cfg.health_delay
    if args.log_every:
        threading.Thread(
            target=_log_progress, args=(cfg, float(args.log_every)), daemon=True
        ).start()
    host, port = server.server_address[:2]
    host_str = host.decode() if isinstance(host, bytes) else str(host)
    url = f"http://{host_str}:{port}"
    log(f"fake-upstream listening on {url} model={cfg.model} pid={pid}")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
