"""A fake model server that holds real memory, for ``scripts/device-check``.

    python3 scripts/gpu_hold.py --port PORT [--vram-mib N] [--ram-mib M]
                                [--state-dir DIR] [--name NAME]

It binds 127.0.0.1:PORT at once and answers ``GET /health`` with 503 until
its memory is held, then 200. ``--vram-mib`` holds N MiB on the GPU it sees
(the driver applies ``CUDA_VISIBLE_DEVICES``: device 0 is the first visible
one) through ctypes over the driver's ``libcuda.so.1``: ``cuInit``,
``cuDeviceGet``, ``cuCtxCreate_v2``, ``cuMemAlloc_v2``; no CUDA toolkit, no
Python GPU package. ``--ram-mib`` holds M MiB of host memory, every page
written so it counts in RSS and PSS. ``POST /v1/chat/completions`` (and
``/v1/completions``) answers a minimal OpenAI reply; ``GET /v1/models`` lists
NAME. SIGTERM or SIGINT frees everything and exits 0.

With ``--state-dir`` it writes ``DIR/NAME.json`` once the memory is held:
pid, process group, port, what it holds, when it started and when its
memory was held (``time.time()``), the GPU it allocated on (name,
UUID, total memory, ``CUDA_VISIBLE_DEVICES``) and how long that took. A
failed CUDA call exits 1 naming the call and the error
(``cuMemAlloc_v2(...) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory``).

Standard library only, so it runs under any Python 3.11+.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MIB = 1 << 20
CHUNK_MIB = 1024  # cuMemAlloc in 1 GiB pieces: progress shows, no size limit hit

# The CUresult values a device check can meet; cuGetErrorName names the rest.
CU_ERRORS = {
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    46: "CUDA_ERROR_DEVICES_UNAVAILABLE",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    802: "CUDA_ERROR_SYSTEM_NOT_READY",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    999: "CUDA_ERROR_UNKNOWN",
}


class CudaError(RuntimeError):
    """A driver call returned something other than CUDA_SUCCESS."""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Cuda:
    """The few driver-API calls a memory holder needs, over ctypes."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaError(
                f"cannot load libcuda.so.1 (the NVIDIA driver's library): {exc}"
            ) from exc
        self.ctx = ctypes.c_void_p()
        self.pointers: list[int] = []

    def error_name(self, code: int) -> str:
        name = CU_ERRORS.get(code, "")
        text = ""
        for fn_name, is_name in (("cuGetErrorName", True), ("cuGetErrorString", False)):
            fn = getattr(self.lib, fn_name, None)
            if fn is None:
                continue
            out = ctypes.c_char_p()
            if fn(ctypes.c_int(code), ctypes.byref(out)) == 0 and out.value:
                value = out.value.decode("utf-8", "replace")
                if is_name:
                    name = value
                else:
                    text = value
        return f"{name or 'CUresult'} ({code})" + (f": {text}" if text else "")

    def call(self, name: str, *args: Any, shown: str = "") -> None:
        fn = getattr(self.lib, name)
        fn.restype = ctypes.c_int
        code = int(fn(*args))
        if code != 0:
            raise CudaError(f"{name}({shown}) failed: {self.error_name(code)}")

    def has(self, name: str) -> bool:
        return getattr(self.lib, name, None) is not None

    def open_device(self) -> dict[str, Any]:
        """cuInit, device 0 (of those visible), a context; what the device is."""
        self.call("cuInit", ctypes.c_uint(0), shown="0")
        count = ctypes.c_int(0)
        self.call("cuDeviceGetCount", ctypes.byref(count))
        if count.value < 1:
            raise CudaError(
                "cuDeviceGetCount: no GPU visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
            )
        dev = ctypes.c_int(0)
        self.call("cuDeviceGet", ctypes.byref(dev), ctypes.c_int(0), shown="0")
        name = ctypes.create_string_buffer(256)
        self.call("cuDeviceGetName", name, ctypes.c_int(256), dev)
        total = ctypes.c_size_t(0)
        self.call("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
        if self.has("cuCtxCreate_v2"):
            self.call("cuCtxCreate_v2", ctypes.byref(self.ctx), ctypes.c_uint(0), dev)
        else:  # a driver without the old entry point: the primary context
            self.call("cuDevicePrimaryCtxRetain", ctypes.byref(self.ctx), dev)
            self.call("cuCtxSetCurrent", self.ctx)
        return {
            "name": name.value.decode("utf-8", "replace"),
            "uuid": self._uuid(dev),
            "total_bytes": total.value,
            "visible_count": count.value,
        }

    def _uuid(self, dev: ctypes.c_int) -> str | None:
        raw = (ctypes.c_ubyte * 16)()
        for fn_name in ("cuDeviceGetUuid_v2", "cuDeviceGetUuid"):
            if self.has(fn_name):
                try:
                    self.call(fn_name, raw, dev)
                except CudaError:
                    continue
                h = bytes(raw).hex()
                return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return None

    def hold(self, mib: int) -> None:
        """cuMemAlloc_v2 ``mib`` MiB in pieces; every piece stays held."""
        left = mib
        while left > 0:
            piece = min(left, CHUNK_MIB)
            ptr = ctypes.c_uint64(0)
            self.call(
                "cuMemAlloc_v2",
                ctypes.byref(ptr),
                ctypes.c_size_t(piece * MIB),
                shown=f"{piece} MiB, {mib - left} MiB held so far",
            )
            self.pointers.append(ptr.value)
            left -= piece

    def release(self) -> None:
        for ptr in self.pointers:
            try:
                self.call("cuMemFree_v2", ctypes.c_uint64(ptr))
            except CudaError as exc:
                say(f"gpu_hold: {exc}")
        self.pointers.clear()
        if self.ctx.value:
            try:
                if self.has("cuCtxCreate_v2"):
                    self.call("cuCtxDestroy_v2", self.ctx)
            except CudaError as exc:
                say(f"gpu_hold: {exc}")
            self.ctx = ctypes.c_void_p()


def hold_ram(mib: int) -> bytearray:
    """``mib`` MiB of host memory, one byte written in every page."""
    buf = bytearray(mib * MIB)
    pages = len(range(0, len(buf), 4096))
    buf[::4096] = b"\x01" * pages
    return buf


class Server(ThreadingHTTPServer):
    daemon_threads = True
    ready = False
    name = "fake"
    summary = ""


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # swapvisor logs every request already

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if self.server.ready:
                self._json(200, {"status": "ok"})
            else:
                self._json(503, {"status": "loading"})
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.server.name, "object": "model"}],
                },
            )
        else:
            self._json(404, {"error": {"message": f"no route {path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        model = body.get("model") if isinstance(body, dict) else None
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": f"no route {path}"}})
            return
        if not self.server.ready:
            self._json(503, {"error": {"message": "loading"}})
            return
        text = f"{self.server.name} holds {self.server.summary}"
        if path == "/v1/completions":
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop"}
            kind = "text_completion"
        else:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            kind = "chat.completion"
        self._json(
            200,
            {
                "id": f"fake-{os.getpid()}-{time.monotonic_ns()}",
                "object": kind,
                "created": int(time.time()),
                "model": model or self.server.name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": 3,
                    "total_tokens": 4,
                },
            },
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--vram-mib", type=int, default=0, help="GPU memory to hold")
    p.add_argument("--ram-mib", type=int, default=0, help="host memory to hold")
    p.add_argument("--name", default="fake", help="model name (state file, replies)")
    p.add_argument("--state-dir", help="write NAME.json here once memory is held")
    return p.parse_args(argv)


def process_start() -> float:
    """When this process began, as ``time.time()`` (from /proc, to 10 ms;
    now, where /proc cannot tell)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22 of stat(5)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def write_state(directory: str, name: str, state: dict[str, Any]) -> None:
    path = Path(directory) / f"{name}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    started_at = process_start()
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = Server(("127.0.0.1", args.port), Handler)
    except OSError as exc:
        say(f"gpu_hold {args.name}: cannot listen on 127.0.0.1:{args.port}: {exc}")
        return 1
    server.name = args.name
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    started = time.monotonic()
    cuda: Cuda | None = None
    device: dict[str, Any] | None = None
    ram: bytearray | None = None
    try:
        if args.vram_mib > 0:
            cuda = Cuda()
            device = cuda.open_device()
            cuda.hold(args.vram_mib)
        if args.ram_mib > 0:
            ram = hold_ram(args.ram_mib)
    except CudaError as exc:
        say(f"gpu_hold {args.name}: {exc}")
        server.shutdown()
        return 1
    except MemoryError:
        say(f"gpu_hold {args.name}: cannot hold {args.ram_mib} MiB of host memory")
        server.shutdown()
        return 1
    held_s = time.monotonic() - started
    parts = []
    if args.vram_mib:
        where = f"{device['name']} {device['uuid']}" if device else "GPU"
        parts.append(f"{args.vram_mib} MiB on {where}")
    if args.ram_mib:
        parts.append(f"{args.ram_mib} MiB of host memory")
    server.summary = " and ".join(parts) or "nothing"
    if args.state_dir:
        write_state(
            args.state_dir,
            args.name,
            {
                "name": args.name,
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
                "port": args.port,
                "vram_mib": args.vram_mib,
                "ram_mib": args.ram_mib,
                "device": device,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "hold_s": round(held_s, 3),
                "started_at": started_at,
                "held_at": time.time(),
            },
        )
    server.ready = True
    say(f"gpu_hold {args.name}: holding {server.summary} (took {held_s:.2f} s)")
    while not stop.wait(1.0):
        pass
    server.ready = False
    if cuda is not None:
        cuda.release()
    del ram
    server.shutdown()
    say(f"gpu_hold {args.name}: freed, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
