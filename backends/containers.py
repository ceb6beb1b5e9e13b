"""Helpers for the container backends that speak to no engine and hold no
lifecycle: ownership labels and names, the command, environment and common
create-request fields a container gets, reading a pull's answer, exit
bookkeeping, splitting output into lines, decoding the engines' multiplexed log
stream, and handing blocking calls to threads.

The lifecycle that uses them is ``backends.container``'s; the engine adapters
(``backends.docker``, ``backends.podman``) use the request, decoding and
thread helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
import threading
import uuid
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, TypeVar

from backends.base import BackendStartError, ExitInfo
from backends.specs import parse_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from backends.base import LaunchSpec
    from backends.specs import ContainerSpec

T = TypeVar("T")

LABEL_INSTANCE = "swapvisor.instance"
LABEL_MODEL = "swapvisor.model"
LABEL_HASH = "swapvisor.config-hash"
# Which swapvisor process made the container: reaping spares this process's
# own, whichever of its backend objects (engine URLs) started them.
LABEL_RUN = "swapvisor.run"
RUN_ID = uuid.uuid4().hex[:16]
# Longest line handed to the log pump; longer output is cut into pieces so one
# runaway line cannot grow a buffer without bound.
MAX_LINE = 64 * 1024
# Lines a container's reader keeps while nobody reads them (oldest dropped).
FEED_LINES = 10_000
# How long stop() lets a container's log reader collect the last output
# before the container is removed.
LOG_DRAIN_S = 1.0
_INSTANCE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def check_instance(instance: str) -> str:
    """The instance id is part of container names and labels: keep it simple."""
    if not _INSTANCE_RE.match(instance):
        raise ValueError(
            f"instance id {instance!r}: 1-63 characters of [a-zA-Z0-9_.-], "
            "starting with a letter or digit"
        )
    return instance


def container_spec(spec: LaunchSpec, kind: str) -> ContainerSpec:
    if spec.container is None:
        raise BackendStartError(f"the {kind} backend needs a container spec (image)")
    return spec.container


def container_command(spec: LaunchSpec, cspec: ContainerSpec) -> tuple[str, ...]:
    """The container's command: its own, else the launch argv, else the image's."""
    return tuple(cspec.command) or spec.argv


def container_env(spec: LaunchSpec, cspec: ContainerSpec) -> dict[str, str]:
    # The host's environment is never copied in: a container sees only what
    # the config gives it (unlike a native child, which inherits everything).
    return {**spec.env, **cspec.env}


def container_name(instance: str, model: str, cspec: ContainerSpec) -> str:
    """``cspec.name``, else ``swapvisor-<instance>-<model>`` made name-safe.

    A model id that had to be altered (``org/model:q4``) gets a short digest of
    the original, so two ids that sanitise alike still get distinct names.
    """
    if cspec.name:
        return cspec.name
    safe = _NAME_UNSAFE.sub("-", model).strip("-.") or "model"
    if safe != model or len(safe) > 80:
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        safe = f"{safe[:80]}-{digest}"
    return f"swapvisor-{instance}-{safe}"


def common_request(
    spec: LaunchSpec,
    cspec: ContainerSpec,
    name: str,
    labels: dict[str, str],
    *,
    env_key: str,
) -> dict[str, object]:
    """The create-request fields that the Docker API and libpod spell alike
    (but for the environment's key); each engine adds its own, then
    ``cspec.extra`` last."""
    request: dict[str, object] = {
        "image": cspec.image,
        "name": name,
        "labels": labels,
        env_key: container_env(spec, cspec),
    }
    command = container_command(spec, cspec)
    if command:
        request["command"] = list(command)
    if cspec.entrypoint is not None:
        request["entrypoint"] = list(cspec.entrypoint)
    if cspec.shm_size is not None:
        request["shm_size"] = parse_bytes(cspec.shm_size)
    if cspec.user is not None:
        request["user"] = cspec.user
    if cspec.init:
        request["init"] = True
    return request


def ownership_labels(instance: str, model: str, cspec: ContainerSpec) -> dict[str, str]:
    return {
        **cspec.labels,
        LABEL_INSTANCE: instance,
        LABEL_MODEL: model,
        LABEL_HASH: cspec.config_hash(),
        LABEL_RUN: RUN_ID,
    }


def image_error(image: str, pull: str, reason: str) -> BackendStartError:
    """The one wording for an image that is not there and could not be had."""
    if pull == "never":
        return BackendStartError(
            f"image {image} not found locally and the pull policy is 'never'"
        )
    return BackendStartError(
        f"image {image} not found locally and could not be pulled: {reason}"
    )


def pull_error(answer: str | bytes) -> str | None:
    """The first error in a pull's answer, a stream of JSON objects: engines
    report a failed pull inside a 200 answer."""
    for line in answer.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("error"):
                return str(event["error"]).strip()
    return None


def top_pids(answer: object) -> frozenset[int]:
    """The pids in a ``top`` answer (``{"Titles": [...], "Processes": [[...]]}``),
    from its host-pid column: ``HPID`` (Podman's descriptor) or ``PID`` (the
    host's ``ps``, which is what dockerd runs)."""
    doc = answer if isinstance(answer, dict) else {}
    titles = [str(t).upper() for t in doc.get("Titles") or []]
    column = next((titles.index(t) for t in ("HPID", "PID") if t in titles), None)
    pids: set[int] = set()
    for row in doc.get("Processes") or [] if column is not None else []:
        with contextlib.suppress(IndexError, TypeError, ValueError):
            pids.add(int(row[column]))
    # Podman shows 0 for a process it cannot map to the host.
    pids.discard(0)
    return frozenset(pids)


def exit_info(code: int | None, *, forced: bool) -> ExitInfo:
    """Engines report a killed container as 128 + signal; when we killed it,
    say so the way the native backend does (``killed by signal 9``)."""
    if forced and code == 128 + signal.SIGKILL:
        code = -signal.SIGKILL
    return ExitInfo(code=code, forced=forced)


class ExitLog:
    """How recently removed containers ended, so a repeated stop can say."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._exits: OrderedDict[str, ExitInfo] = OrderedDict()

    def put(self, ref: str, info: ExitInfo) -> None:
        self._exits[ref] = info
        while len(self._exits) > self._size:
            self._exits.popitem(last=False)

    def get(self, ref: str) -> ExitInfo | None:
        return self._exits.get(ref)


class LineSplitter:
    """Bytes chunks in, complete lines (with their newline) out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            lines.extend(_cut(bytes(self._buf[start : end + 1])))
            start = end + 1
        del self._buf[:start]
        while len(self._buf) >= MAX_LINE:
            lines.append(bytes(self._buf[:MAX_LINE]))
            del self._buf[:MAX_LINE]
        return lines

    def flush(self) -> bytes | None:
        """What is left without a final newline, if anything."""
        if not self._buf:
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _cut(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE:
        return [line]
    return [line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]


class LogFeed:
    """A container's output, from its reader to the one ``logs()`` consumer.

    Engines deliver followed logs late (Podman's k8s-file driver polls every
    250 ms) and stop delivering once the container is removed, so a reader
    follows the stream, then reads the whole log once more after the exit and
    feeds what following missed. Call every method on the event loop.
    """

    def __init__(self, max_lines: int = FEED_LINES) -> None:
        self._lines: deque[bytes] = deque(maxlen=max_lines)
        self._splitter = LineSplitter()
        self._ready = asyncio.Event()
        self._closed = False

    def feed(self, payload: bytes) -> None:
        lines = self._splitter.feed(payload)
        if lines:
            self._lines.extend(lines)
            self._ready.set()

    def close(self) -> None:
        if self._closed:
            return
        tail = self._splitter.flush()
        if tail:
            self._lines.append(tail)
        self._closed = True
        self._ready.set()

    async def lines(self) -> AsyncIterator[bytes]:
        while True:
            while self._lines:
                yield self._lines.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()


class FrameDecoder:
    """Decodes the engines' multiplexed stdout/stderr stream into payloads.

    Each frame is an 8-byte header (stream type 0/1/2, three zero bytes, a
    big-endian length) and its payload. A container with a TTY sends raw
    bytes instead; that is detected from the first header and passed through.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._raw: bool | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self._raw:
            return [data]
        self._buf += data
        if self._raw is None:
            if len(self._buf) < 8:
                return []
            head = self._buf[:8]
            self._raw = head[0] not in (0, 1, 2) or head[1:4] != b"\0\0\0"
            if self._raw:
                raw = bytes(self._buf)
                self._buf.clear()
                return [raw]
        out: list[bytes] = []
        while len(self._buf) >= 8:
            size = int.from_bytes(self._buf[4:8], "big")
            if len(self._buf) < 8 + size:
                break
            out.append(bytes(self._buf[8 : 8 + size]))
            del self._buf[: 8 + size]
        return out


def run_in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run a blocking call on its own daemon thread; await its result.

    For calls that may block for long (a log stream, a wait for exit, a pull):
    on the loop's shared executor a few of them would starve every other
    ``to_thread`` user, and a wait that needs a later kill to return could
    deadlock behind it. Cancelling the future does not stop the thread.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not fut.done():
            fut.set_result(result)

    def fail(exc: BaseException) -> None:
        if not fut.done():
            fut.set_exception(exc)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            post_to_loop(loop, fail, exc)
        else:
            post_to_loop(loop, succeed, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    # A failure nobody awaits any more (a cancelled start) must not be logged
    # as "exception was never retrieved".
    fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return fut


def post_to_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object
) -> None:
    """From another thread: run ``fn(*args)`` on ``loop``, unless it has closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop has closed: nobody is waiting any more
        pass
