"""Docker backend: each model server is a container, driven through the Docker SDK.

Owns the Docker API side only: ``DockerEngine`` adapts docker-py to the
``backends.container.Engine`` protocol, and ``create_args`` builds the create
request. The lifecycle (stop escalation, logs, reaping, name conflicts) is
``backends.container.ContainerBackend``'s, shared with the Podman backend.

Works with any engine that speaks the Docker API: dockerd (``unix://``,
``tcp://``, ``ssh://``) and Podman's Docker-compatible socket. The SDK blocks,
so every call runs off the event loop: short calls on ``asyncio.to_thread``,
long ones (log streams, waits for exit, pulls) on their own threads. The SDK is
untyped; ``DockerEngine`` is the one place that touches it and hands typed
values back, so no ``Any`` leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import docker
import docker.errors
import docker.types
import requests

from backends import container
from backends.base import BackendStartError, BackendUnavailable
from backends.containers import (
    LABEL_INSTANCE,
    common_request,
    post_to_loop,
    pull_error,
    run_in_thread,
    top_pids,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from backends.base import Backend, LaunchSpec, SupportsOrphanCleanup
    from backends.specs import ContainerSpec

T = TypeVar("T")

DEFAULT_URL = "unix:///var/run/docker.sock"
STOP_POLL_MIN_S = 0.005
STOP_POLL_MAX_S = 0.05
# More than the SDK's 10: every running container holds one connection for
# its log stream.
MAX_POOL = 64
_BRIDGE_MODES = ("host", "bridge", "none", "default")
# `top` arguments that list host pids: dockerd runs the host's ps(1) with
# them; Podman's compatible API reads them as its own descriptors, where
# "hpid" is the host pid ("pid" would be the one inside the container).
PS_ARGS_DOCKER = "-o pid"
PS_ARGS_PODMAN = "hpid"
# Inactive file pages are dropped first under pressure: docker stats leaves
# them out (cgroup v1's total_inactive_file, v2's inactive_file). "cache" is
# what Docker before 19.03 left out; last, for old engines.
_RECLAIMABLE_KEYS = ("total_inactive_file", "inactive_file", "cache")


class _LogStream:
    """A following log stream; ``close()`` from any thread ends the iteration."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def chunks(self) -> Iterator[bytes]:
        for chunk in self._stream:
            yield bytes(chunk)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed or half-open
            self._stream.close()
        # The SDK's close shuts the socket down but leaves the response (and
        # its socket object) open until garbage collection.
        with contextlib.suppress(Exception):
            self._stream._response.close()


class _LogPump:
    """A following log stream read on its own thread, its chunks handed to the
    event loop. ``close()`` on the loop ends it, even while the thread still
    waits for the engine to answer the request."""

    def __init__(self, open_stream: Callable[[], _LogStream | None], name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._lock = threading.Lock()
        self._stream: _LogStream | None = None
        self._closed = False
        self._thread = run_in_thread(lambda: self._run(open_stream), name)

    def _run(self, open_stream: Callable[[], _LogStream | None]) -> None:
        """The thread's body: follow until the end, then post the end."""
        stream: _LogStream | None = None
        try:
            stream = open_stream()
            with self._lock:
                if stream is None or self._closed:
                    return
                self._stream = stream
            for chunk in stream.chunks():
                post_to_loop(self._loop, self._chunks.put_nowait, chunk)
        finally:
            if stream is not None:
                stream.close()
            post_to_loop(self._loop, self._chunks.put_nowait, None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream = self._stream
        if stream is not None:
            stream.close()


class DockerEngine:
    """One Docker API endpoint as an ``Engine``. Building it blocks (it asks the
    engine for its API version): build it on a thread.

    ``url`` None: ``DOCKER_HOST`` and the rest of the SDK's environment, else
    the local socket. Errors: ``docker.errors.APIError`` is an answer from the
    engine and becomes ``Refused`` or what the method says; anything else that
    fails to reach the engine (a requests or socket error) becomes
    ``BackendUnavailable`` naming the URL.
    """

    def __init__(
        self, url: str | None, timeout_s: float, connect_timeout_s: float | None = None
    ) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        self.where = f"Docker engine at {self.url}"
        connect_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        ssh = self.url.startswith("ssh://")
        if self.url.startswith("unix://"):
            self._probe_socket(self.url.removeprefix("unix://"), connect_s)
        try:
            # version="auto" asks the engine for its API version: this is the
            # first call, so an unreachable engine fails here, within
            # connect_s (the SDK's timeout then becomes timeout_s).
            if url is None:
                self._client: Any = docker.from_env(
                    timeout=connect_s, max_pool_size=MAX_POOL, use_ssh_client=ssh
                )
            else:
                self._client = docker.DockerClient(
                    base_url=url,
                    version="auto",
                    timeout=connect_s,
                    max_pool_size=MAX_POOL,
                    use_ssh_client=ssh,
                )
        except docker.errors.DockerException as exc:
            raise self._unavailable(exc) from exc
        self._api: Any = self._client.api
        self._api.timeout = timeout_s
        self._ps_args: str | None = None  # found at the first top

    def _probe_socket(self, path: str, timeout_s: float) -> None:
        """Connect once ourselves: the SDK leaks its socket when the first
        connect fails, and "no such socket" is the usual reason here."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout_s)
                sock.connect(path)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        # The SDK wraps a timed-out version query in a DockerException.
        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, TimeoutError | requests.exceptions.Timeout) or isinstance(
            cause, requests.exceptions.Timeout
        ):
            return BackendUnavailable(f"{self.where} is not answering: {exc}")
        return BackendUnavailable(f"{self.where} is unreachable: {exc}")

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run one blocking SDK call (on a worker thread)."""
        try:
            return fn()
        except docker.errors.APIError:
            raise
        except (docker.errors.DockerException, OSError) as exc:
            # requests' errors are OSErrors: refused, missing socket, timeout.
            raise self._unavailable(exc) from exc

    async def _call(self, fn: Callable[[], T]) -> T:
        """A short SDK call, off the event loop."""
        return await asyncio.to_thread(self._guard, fn)

    async def ping(self, timeout_s: float) -> None:
        url = f"{self._api.base_url}/_ping"
        answer = await self._call(lambda: self._api.get(url, timeout=timeout_s))
        if answer.status_code != 200:
            raise BackendUnavailable(
                f"{self.where}: ping answered HTTP {answer.status_code}"
            )

    def create_request(
        self, spec: LaunchSpec, cspec: ContainerSpec, name: str, labels: dict[str, str]
    ) -> container.Request:
        return create_args(spec, cspec, name, labels)

    async def image_present(self, image: str) -> bool:
        try:
            await self._call(lambda: self._api.inspect_image(image))
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"{self.where}: {_explain(exc)}") from exc
        return True

    async def pull(self, image: str) -> None:
        try:
            await run_in_thread(
                lambda: self._guard(lambda: self._pull(image)), f"docker pull {image}"
            )
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc

    def _pull(self, image: str) -> None:
        repo, tag = _split_tag(image)
        # Not streamed: the whole answer is read, so its connection is
        # released even when we stop at the first error.
        reason = pull_error(str(self._api.pull(repo, tag=tag)))
        if reason is not None:
            raise container.Refused(reason)

    async def create(self, request: container.Request) -> str:
        try:
            made = await self._call(lambda: self._client.containers.create(**request))
        except docker.errors.ImageNotFound as exc:
            raise container.ImageMissing(_explain(exc)) from exc
        except docker.errors.APIError as exc:
            text = _explain(exc)
            # Docker answers 409; Podman's compat API 500 "already in use".
            if exc.status_code == 409 or "already in use" in text:
                raise container.NameConflict(text) from exc
            raise container.Refused(text) from exc
        except TypeError as exc:  # an unknown option in ContainerSpec.extra
            raise BackendStartError(f"invalid container option: {exc}") from exc
        return str(made.id)

    async def start(self, ref: str) -> None:
        try:
            await self._call(lambda: self._api.start(ref))
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc

    async def inspect(self, ref: str) -> container.State | None:
        try:
            info = await self._call(lambda: self._api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise BackendUnavailable(
                f"{self.where}: inspect failed: {_explain(exc)}"
            ) from exc
        return container.State.parse(info)

    async def kill(self, ref: str, sig: str) -> None:
        try:
            await self._call(lambda: self._api.kill(ref, signal=sig))
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc

    async def remove(self, ref: str) -> None:
        await asyncio.to_thread(self._remove, ref)

    def _remove(self, ref: str) -> None:
        # SIGKILL first: Podman's compatible forced remove stops a running
        # container gracefully, waiting its stop timeout (10 s).
        with contextlib.suppress(docker.errors.APIError):
            self._guard(lambda: self._api.kill(ref, signal="SIGKILL"))
        try:
            self._guard(lambda: self._api.remove_container(ref, force=True, v=True))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" (409) ends the same way.
            if exc.status_code != 409:
                raise container.Refused(_explain(exc)) from exc

    async def wait_stopped(
        self, ref: str, timeout_s: float
    ) -> container.Stopped | None:
        # Polling rather than the API's wait: Podman's compatible wait polls
        # every 250 ms itself, and a blocking wait would hold a thread for the
        # whole grace.
        deadline = time.monotonic() + timeout_s
        interval = STOP_POLL_MIN_S
        while True:
            state = await self.inspect(ref)
            if state is None or not state.running:
                return container.Stopped(state.exit_code if state is not None else None)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 2, STOP_POLL_MAX_S)

    async def watch(self, ref: str) -> None:
        # The API's wait blocks for the container's whole life: its own thread.
        try:
            await run_in_thread(
                lambda: self._guard(lambda: self._api.wait(ref, timeout=None)),
                f"docker wait {ref[:12]}",
            )
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc

    async def list_owned(self, instance: str) -> list[container.Summary]:
        label = f"{LABEL_INSTANCE}={instance}"
        try:
            rows = await self._call(
                lambda: self._api.containers(all=True, filters={"label": label})
            )
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc
        return container.Summary.parse_list(rows)

    async def processes(self, ref: str) -> frozenset[int]:
        try:
            answer = await self._call(lambda: self._top(ref))
        except docker.errors.NotFound:
            return frozenset()
        except docker.errors.APIError as exc:
            # dockerd answers 409 "is not running" for a stopped container.
            if exc.status_code == 409 or "not running" in _explain(exc):
                return frozenset()
            raise container.Refused(_explain(exc)) from exc
        return top_pids(answer)

    def _top(self, ref: str) -> object:
        if self._ps_args is None:
            # Asked once: which engine answers decides how top names host pids.
            components = self._api.version().get("Components") or []
            podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
            self._ps_args = PS_ARGS_PODMAN if podman else PS_ARGS_DOCKER
        try:
            return self._api.top(ref, ps_args=self._ps_args)
        except ValueError:
            # Podman answers a stopped container's top with an empty 200; the
            # SDK's JSON error is also an OSError, which _guard would take for
            # an unreachable engine.
            return {}

    async def memory_usage(self, ref: str) -> int | None:
        try:
            stats = await self._call(lambda: self._stats(ref))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise container.Refused(_explain(exc)) from exc
        return memory_in_use(
            stats.get("memory_stats") if isinstance(stats, dict) else {}
        )

    def _stats(self, ref: str) -> object:
        # one_shot (API 1.41+) spares the second sample of CPU figures nobody
        # reads here; dockerd still answers at its next collection (up to
        # 1 s), which is why ContainerBackend reads the cgroup when it can.
        one_shot = docker.utils.version_gte(self._api.api_version, "1.41") or None
        try:
            return self._api.stats(ref, stream=False, one_shot=one_shot)
        except ValueError:
            # Podman answers a stopped container's stats with an empty body;
            # the SDK's JSON error is also an OSError (see _top).
            return {}

    async def follow_logs(self, ref: str) -> AsyncIterator[bytes]:
        pump = _LogPump(lambda: self._open_logs(ref), f"docker logs {ref[:12]}")
        try:
            async for chunk in pump.chunks():
                yield chunk
        finally:
            pump.close()

    def _open_logs(self, ref: str) -> _LogStream | None:
        """Follow stdout and stderr from the start; None if the container is gone."""
        try:
            stream = self._guard(
                lambda: self._api.logs(
                    ref, stdout=True, stderr=True, stream=True, follow=True
                )
            )
        except docker.errors.APIError:
            return None
        return _LogStream(stream)

    async def all_logs(self, ref: str) -> bytes:
        try:
            data = await self._call(
                lambda: self._api.logs(ref, stdout=True, stderr=True, stream=False)
            )
        except docker.errors.APIError:
            return b""
        return bytes(data)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._client.close)


def _explain(exc: Any) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()


def _split_tag(image: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` → (repo, tag or digest), as ``docker pull`` reads it."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return image, "latest"


def memory_in_use(memory_stats: object) -> int | None:
    """A stats answer's ``memory_stats`` as ``docker stats`` shows it: usage
    without the reclaimable page cache; None when it has no usage (a stopped
    container's stats are empty)."""
    mem = memory_stats if isinstance(memory_stats, dict) else {}
    usage = mem.get("usage")
    if not isinstance(usage, int):
        return None
    detail = mem.get("stats")
    if not isinstance(detail, dict):
        detail = {}
    for key in _RECLAIMABLE_KEYS:
        value = detail.get(key)
        if isinstance(value, int):
            return usage - value if value < usage else usage
    return usage


def placed_requests(devices: tuple[int, ...]) -> list[Any]:
    """The GPUs the workload is placed on, by NVML index; none: no GPU."""
    if not devices:
        return []
    ids = [str(i) for i in devices]
    return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def device_requests(gpus: str | int | tuple[str, ...] | None) -> list[Any]:
    """``--gpus`` as Docker's DeviceRequest: count -1 is all GPUs."""
    if gpus is None:
        return []
    if gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int):
        return [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]


def create_args(
    spec: LaunchSpec, cspec: ContainerSpec, name: str, labels: dict[str, str]
) -> dict[str, object]:
    """Keyword arguments for the SDK's ``containers.create``."""
    args = common_request(spec, cspec, name, labels, env_key="environment")
    if cspec.network in _BRIDGE_MODES or cspec.network.startswith("container:"):
        args["network_mode"] = cspec.network
    else:
        args["network"] = cspec.network
    if cspec.ports:
        args["ports"] = {f"{c}/tcp": ("127.0.0.1", h) for c, h in cspec.ports.items()}
    if cspec.mounts:
        args["volumes"] = [m.as_text() for m in cspec.mounts]
    # A placement replaces the container's own `gpus`: the engine decided
    # which devices it may use, and counted their memory.
    requests = (
        device_requests(cspec.gpu_request)
        if spec.devices is None
        else placed_requests(spec.devices)
    )
    if requests:
        args["device_requests"] = requests
    if cspec.ipc is not None:
        args["ipc_mode"] = cspec.ipc
    if cspec.stop_signal is not None:
        args["stop_signal"] = cspec.stop_signal
    args.update(cspec.extra)
    return args


class DockerBackend(container.ContainerBackend):
    """Runs ``LaunchSpec.container`` on a Docker API engine.

    ``engine_url`` None: ``DOCKER_HOST``, else the local socket. The rest is
    ``ContainerBackend``'s.
    """

    kind: ClassVar[str] = "docker"

    async def _connect(self, url: str | None, timeout_s: float) -> container.Engine:
        return await asyncio.to_thread(DockerEngine, url, self._timeout_s, timeout_s)


if TYPE_CHECKING:
    _check: type[Backend] = DockerBackend
    _check_reap: type[SupportsOrphanCleanup] = DockerBackend
    _check_engine: type[container.Engine] = DockerEngine
