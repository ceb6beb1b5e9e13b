"""Docker backend: each model server is a container, driven through the Docker SDK.

Works with any engine that speaks the Docker API: dockerd (``unix://``,
``tcp://``, ``ssh://``) and Podman's Docker-compatible socket. The SDK blocks,
so every call runs off the event loop: short calls on ``asyncio.to_thread``,
long ones (log streams, waits for exit, pulls) on their own threads. The SDK is
untyped; ``_Engine`` is the one place that touches it and hands typed values
back, so no ``Any`` leaves this module.

Ownership: every container carries ``swapvisor.instance``/``model``/
``config-hash`` labels, a stale container of this instance that holds the
wanted name is removed before creating, and stop always removes (llama-swap
#130, #220: containers that outlived their model, and name conflicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import docker
import docker.errors
import docker.types

from backends.base import (
    BackendError,
    BackendStartError,
    BackendUnavailable,
    ExitInfo,
    Handle,
    Health,
    LaunchSpec,
)
from backends.containers import (
    LABEL_INSTANCE,
    LOG_DRAIN_S,
    ExitLog,
    LogFeed,
    check_instance,
    container_command,
    container_env,
    container_name,
    container_spec,
    exit_info,
    image_error,
    ownership_labels,
    run_in_thread,
)
from backends.probe import HttpProbe, join_url
from backends.specs import ContainerSpec, parse_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator

    from backends.base import Backend, SupportsOrphanCleanup

T = TypeVar("T")

DEFAULT_URL = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 60.0
# After SIGKILL a container gets this long to be reported stopped; longer
# means the engine hangs.
WAIT_SLACK_S = 30.0
LIST_ATTEMPTS = 5
LIST_RETRY_S = 0.05
# An exit watch whose engine call failed asks again after this long.
WATCH_RETRY_S = 1.0
STOP_POLL_MIN_S = 0.005
STOP_POLL_MAX_S = 0.05
# More than the SDK's 10: every running container holds one connection for
# its log stream.
MAX_POOL = 64
_BRIDGE_MODES = ("host", "bridge", "none", "default")


class _NameConflict(Exception):
    """The wanted container name is taken."""


@dataclass(frozen=True, slots=True)
class _State:
    running: bool
    exit_code: int
    stop_signal: str | None
    name: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Summary:
    id: str
    name: str


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


class _Engine:
    """One Docker API endpoint. Every method blocks; call it from a thread.

    Errors: ``docker.errors.APIError`` is an answer from the engine and is
    handled where it is expected; anything else that fails to reach the engine
    (a requests or socket error) becomes ``BackendUnavailable`` naming the URL.
    """

    def __init__(self, url: str | None, timeout_s: float) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        ssh = self.url.startswith("ssh://")
        if self.url.startswith("unix://"):
            self._probe_socket(self.url.removeprefix("unix://"))
        try:
            # version="auto" asks the engine for its API version: this is the
            # first call, so an unreachable engine fails here.
            if url is None:
                self._client: Any = docker.from_env(
                    timeout=int(timeout_s), max_pool_size=MAX_POOL, use_ssh_client=ssh
                )
            else:
                self._client = docker.DockerClient(
                    base_url=url,
                    version="auto",
                    timeout=int(timeout_s),
                    max_pool_size=MAX_POOL,
                    use_ssh_client=ssh,
                )
        except docker.errors.DockerException as exc:
            raise self._unavailable(exc) from exc
        self._api: Any = self._client.api

    def _probe_socket(self, path: str) -> None:
        """Connect once ourselves: the SDK leaks its socket when the first
        connect fails, and "no such socket" is the usual reason here."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"Docker engine at {self.url} is unreachable: {exc}")

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except docker.errors.APIError:
            raise
        except (docker.errors.DockerException, OSError) as exc:
            # requests' errors are OSErrors: refused, missing socket, timeout.
            raise self._unavailable(exc) from exc

    def image_present(self, image: str) -> bool:
        try:
            self._guard(lambda: self._api.inspect_image(image))
        except docker.errors.NotFound:
            return False
        return True

    def pull(self, image: str) -> None:
        """Pull ``image``; raises BackendStartError with the engine's reason."""

        def run() -> None:
            repo, tag = _split_tag(image)
            # Not streamed: the whole answer is read, so its connection is
            # released even when we stop at the first error.
            text = str(self._api.pull(repo, tag=tag))
            for line in text.splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    # Engines report a failed pull inside a 200 answer.
                    if isinstance(event, dict) and event.get("error"):
                        raise BackendStartError(str(event["error"]).strip())

        try:
            self._guard(run)
        except docker.errors.APIError as exc:
            raise BackendStartError(_explain(exc)) from exc

    def launch(
        self, args: dict[str, object], instance: str, cancelled: threading.Event
    ) -> str:
        """Create and start a container; remove a stale one of ours that holds
        the name. Returns the container id. If ``cancelled`` is set meanwhile,
        removes what it made and raises."""
        name = str(args["name"])
        try:
            ref = self._create(args)
        except _NameConflict:
            self._remove_stale(name, instance)
            try:
                ref = self._create(args)
            except _NameConflict:
                raise BackendStartError(
                    f"container name {name} is still in use after removing the "
                    "stale container"
                ) from None
        try:
            if cancelled.is_set():
                raise BackendStartError("start cancelled")
            try:
                self._guard(lambda: self._api.start(ref))
            except docker.errors.APIError as exc:
                raise BackendStartError(
                    f"container {name} ({args['image']}) failed to start: "
                    + _explain(exc)
                ) from exc
            if cancelled.is_set():
                raise BackendStartError("start cancelled")
        except BaseException:
            # Whatever went wrong, nothing half-made is left behind.
            with contextlib.suppress(BackendError, docker.errors.APIError):
                self.remove(ref)
            raise
        return ref

    def _create(self, args: dict[str, object]) -> str:
        try:
            container = self._guard(lambda: self._client.containers.create(**args))
        except docker.errors.ImageNotFound as exc:
            raise BackendStartError(
                f"image {args['image']} not found: {_explain(exc)}"
            ) from exc
        except docker.errors.APIError as exc:
            text = _explain(exc)
            # Docker answers 409; Podman's compat API 500 "already in use".
            if exc.status_code == 409 or "already in use" in text:
                raise _NameConflict(text) from exc
            raise BackendStartError(
                f"could not create container {args['name']}: {text}"
            ) from exc
        except TypeError as exc:  # an unknown option in ContainerSpec.extra
            raise BackendStartError(f"invalid container option: {exc}") from exc
        return str(container.id)

    def _remove_stale(self, name: str, instance: str) -> None:
        state = self.inspect(name)
        if state is None:
            return  # removed meanwhile
        owner = state.labels.get(LABEL_INSTANCE)
        if owner != instance:
            raise BackendStartError(
                f"container name {name} is taken by a container that swapvisor "
                f"instance {instance} does not own"
                + (f" (it belongs to instance {owner})" if owner else "")
                + "; remove it or choose another name"
            )
        self.remove(name)

    def inspect(self, ref: str) -> _State | None:
        """The container's state, or None if it does not exist."""
        try:
            info = self._guard(lambda: self._api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise BackendUnavailable(
                f"Docker engine at {self.url}: inspect failed: {_explain(exc)}"
            ) from exc
        state = info.get("State") or {}
        config = info.get("Config") or {}
        stop_signal = config.get("StopSignal")
        return _State(
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            stop_signal=str(stop_signal) if stop_signal else None,
            name=str(info.get("Name", "")).lstrip("/"),
            labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        )

    def kill(self, ref: str, sig: str) -> None:
        """Send ``sig``; a container that is already gone or stopped is fine."""
        try:
            self._guard(lambda: self._api.kill(ref, signal=sig))
        except docker.errors.APIError as exc:
            state = self.inspect(ref)
            if state is not None and state.running:
                raise BackendError(
                    f"could not signal container {ref[:12]}: {_explain(exc)}"
                ) from exc

    def wait_exit(self, ref: str) -> None:
        """Block until the container is not running (or is gone)."""
        with contextlib.suppress(docker.errors.NotFound):
            self._guard(lambda: self._api.wait(ref, timeout=None))

    def remove(self, ref: str, *, kill: bool = True) -> None:
        """Remove with its anonymous volumes, SIGKILLing it first if it runs.

        ``kill``: a forced remove alone stops a running container gracefully
        with its stop timeout (10 s on Podman); the paths that remove a live
        container (reaping, a stale name, an aborted start) want it gone now.
        """
        if kill:
            with contextlib.suppress(docker.errors.APIError):
                self._guard(lambda: self._api.kill(ref, signal="SIGKILL"))
        try:
            self._guard(lambda: self._api.remove_container(ref, force=True, v=True))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" (409) ends the same way.
            if exc.status_code != 409:
                raise BackendError(
                    f"could not remove container {ref[:12]}: {_explain(exc)}"
                ) from exc

    def list_owned(self, instance: str) -> list[_Summary]:
        rows = self._list(f"{LABEL_INSTANCE}={instance}")
        out: list[_Summary] = []
        for row in rows:
            names = row.get("Names") or [row.get("Id", "")]
            out.append(_Summary(id=str(row["Id"]), name=str(names[0]).lstrip("/")))
        return out

    def _list(self, label: str) -> Any:
        for attempt in range(LIST_ATTEMPTS):
            try:
                return self._guard(
                    lambda: self._api.containers(all=True, filters={"label": label})
                )
            except docker.errors.APIError as exc:
                # Podman fails a whole listing when a container vanishes while
                # it is being listed ("container not known"); ask again.
                if attempt == LIST_ATTEMPTS - 1:
                    raise BackendUnavailable(
                        f"Docker engine at {self.url}: list failed: {_explain(exc)}"
                    ) from exc
                time.sleep(LIST_RETRY_S)
        return []

    def open_logs(self, ref: str) -> _LogStream | None:
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

    def all_logs(self, ref: str) -> bytes:
        """Everything the container has written so far (stdout and stderr)."""
        try:
            data = self._guard(
                lambda: self._api.logs(ref, stdout=True, stderr=True, stream=False)
            )
        except docker.errors.APIError:
            return b""
        return bytes(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


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
    args: dict[str, object] = {
        "image": cspec.image,
        "name": name,
        "labels": labels,
        "environment": container_env(spec, cspec),
    }
    command = container_command(spec, cspec)
    if command:
        args["command"] = list(command)
    if cspec.entrypoint is not None:
        args["entrypoint"] = list(cspec.entrypoint)
    if cspec.network in _BRIDGE_MODES or cspec.network.startswith("container:"):
        args["network_mode"] = cspec.network
    else:
        args["network"] = cspec.network
    if cspec.ports:
        args["ports"] = {f"{c}/tcp": ("127.0.0.1", h) for c, h in cspec.ports.items()}
    if cspec.mounts:
        args["volumes"] = [m.as_text() for m in cspec.mounts]
    requests = device_requests(cspec.gpu_request)
    if requests:
        args["device_requests"] = requests
    if cspec.shm_size is not None:
        args["shm_size"] = parse_bytes(cspec.shm_size)
    if cspec.ipc is not None:
        args["ipc_mode"] = cspec.ipc
    if cspec.user is not None:
        args["user"] = cspec.user
    if cspec.stop_signal is not None:
        args["stop_signal"] = cspec.stop_signal
    if cspec.init:
        args["init"] = True
    args.update(cspec.extra)
    return args


async def _until_stopped(engine: _Engine, ref: str, timeout_s: float) -> _State | None:
    """Poll the container's state until it is not running or ``timeout_s``.

    Polling rather than the API's wait: Podman's compatible wait polls every
    250 ms itself, and a blocking wait would hold a thread for the whole grace.
    """
    deadline = time.monotonic() + max(timeout_s, 0.0)
    interval = STOP_POLL_MIN_S
    while True:
        state = await asyncio.to_thread(engine.inspect, ref)
        if state is None or not state.running:
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            return state
        await asyncio.sleep(min(interval, left))
        interval = min(interval * 2, STOP_POLL_MAX_S)


@dataclass(slots=True)
class _Container:
    ref: str
    name: str
    engine: _Engine
    stop_signal: str | None
    feed: LogFeed = field(default_factory=LogFeed)
    exited: bool = False
    exit_code: int | None = None
    reader: asyncio.Future[None] | None = None
    stream: _LogStream | None = None
    # The reader thread and stop() share these: whoever ends the following
    # first (under the lock) does the final read, so it happens exactly once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    delivered: int = 0
    followed: bool = False  # following has ended; the final read is claimed

    def read_logs(self) -> None:
        """Start the reader thread: follow the log until the container exits,
        then read what following missed (the engine may deliver late, and
        nothing once the container is removed)."""
        loop = asyncio.get_running_loop()

        def post(fn: Callable[..., None], *args: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(fn, *args)

        def follow() -> bool:
            """False once stop() has taken over the final read."""
            stream = self.engine.open_logs(self.ref)
            if stream is None:
                return True
            self.stream = stream
            try:
                for chunk in stream.chunks():
                    with self.lock:
                        if self.followed:
                            return False
                        self.delivered += len(chunk)
                        post(self.feed.feed, chunk)
            finally:
                stream.close()
            return True

        def claim() -> bool:
            with self.lock:
                if self.followed:
                    return False
                self.followed = True
                return True

        def run() -> None:
            mine = False
            try:
                if not follow() or not (mine := claim()):
                    return
                rest = self.engine.all_logs(self.ref)[self.delivered :]
                if rest:
                    post(self.feed.feed, rest)
                post(self.feed.close)
            except Exception:  # an engine error ends the output like an exit
                if mine or claim():
                    post(self.feed.close)

        self.reader = run_in_thread(run, f"docker logs {self.name}")

    async def finish_logs(self) -> None:
        """Once the container has stopped: feed what following has not
        delivered yet and end the output, without waiting for the stream
        (Podman's compatible API may not even have answered it yet)."""
        with self.lock:
            claimed = not self.followed
            self.followed = True
            delivered = self.delivered
        self.stop_following()
        if not claimed:  # the reader saw the end itself and reads the rest
            if self.reader is not None:
                await asyncio.wait([self.reader], timeout=LOG_DRAIN_S)
            return
        try:
            rest = (await asyncio.to_thread(self.engine.all_logs, self.ref))[delivered:]
            # Chunks the reader posted before the claim ran during that await,
            # so this lands after them.
            if rest:
                self.feed.feed(rest)
        finally:
            self.feed.close()

    def stop_following(self) -> None:
        with self.lock:
            self.followed = True
        if self.stream is not None:
            self.stream.close()


class DockerBackend:
    """Runs ``LaunchSpec.container`` on a Docker API engine.

    ``instance`` names this swapvisor in every container's labels and default
    name; it must be the same across restarts for ``reap_orphans`` to find
    what an earlier run left. ``engine_url`` is the default engine (None:
    ``DOCKER_HOST``, else the local socket); a spec's own ``engine_url`` wins.
    ``engines`` lists further engines for ``reap_orphans`` to clean.
    """

    kind: ClassVar[str] = "docker"

    def __init__(
        self,
        instance: str,
        *,
        engine_url: str | None = None,
        engines: Iterable[str] = (),
        api_timeout_s: float = API_TIMEOUT_S,
    ) -> None:
        self.instance = check_instance(instance)
        self._default_url = engine_url
        self._reap_urls: set[str | None] = {engine_url, *engines}
        self._timeout_s = api_timeout_s
        # One connecting task per URL, shared by concurrent callers; it
        # finishes even if they are cancelled, so no client is left unclosed.
        self._engines: dict[str | None, asyncio.Future[_Engine]] = {}
        self._containers: dict[str, _Container] = {}
        self._exits = ExitLog()
        self._probe = HttpProbe()
        self._closed = False

    async def _engine(self, url: str | None) -> _Engine:
        url = url or self._default_url
        connecting = self._engines.get(url)
        if connecting is None or (
            connecting.done()
            and not connecting.cancelled()
            and connecting.exception() is not None
        ):
            # First use, or the engine was unreachable last time: try again.
            connecting = asyncio.ensure_future(
                asyncio.to_thread(_Engine, url, self._timeout_s)
            )
            self._engines[url] = connecting
            self._reap_urls.add(url)
        return await asyncio.shield(connecting)

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        cspec = container_spec(spec, self.kind)
        engine = await self._engine(cspec.engine_url)
        # Nothing exists yet while the image is checked or pulled, so a
        # cancellation here needs no cleanup.
        await self._ensure_image(engine, cspec)
        name = container_name(self.instance, model, cspec)
        args = create_args(
            spec, cspec, name, ownership_labels(self.instance, model, cspec)
        )
        cancelled = threading.Event()
        launch = run_in_thread(
            lambda: engine.launch(args, self.instance, cancelled),
            f"docker start {name}",
        )
        try:
            ref = await asyncio.shield(launch)
        except asyncio.CancelledError:
            # The thread sees the flag, removes what it made and raises; wait
            # for that so nothing launched outlives the cancelled start.
            cancelled.set()
            with contextlib.suppress(Exception):
                await launch
            raise
        rec = self._containers[ref] = _Container(ref, name, engine, cspec.stop_signal)
        rec.read_logs()
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def _ensure_image(self, engine: _Engine, cspec: ContainerSpec) -> None:
        image, policy = cspec.image, cspec.pull
        present = await asyncio.to_thread(engine.image_present, image)
        if present and policy != "always":
            return
        if not present and policy == "never":
            raise image_error(image, policy, "")
        try:
            await run_in_thread(lambda: engine.pull(image), f"docker pull {image}")
        except BackendStartError as exc:
            raise image_error(image, policy, str(exc)) from exc
        # Some engines end a failed pull without an error event.
        if not await asyncio.to_thread(engine.image_present, image):
            raise image_error(image, policy, "the engine reported no error")

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        rec = self._containers.get(handle.ref)
        if rec is None or rec.exited:
            return Health.EXITED
        state = await asyncio.to_thread(rec.engine.inspect, rec.ref)
        if state is None or not state.running:
            # Seen from the engine: a crash while starting or while serving.
            rec.exited = True
            rec.exit_code = state.exit_code if state is not None else None
            return Health.EXITED
        if spec.check_endpoint is None:
            return Health.READY
        url = join_url(handle.base_url, spec.check_endpoint)
        if await self._probe.ok(url, spec.probe_timeout_s):
            return Health.READY
        return Health.STARTING

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        rec = self._containers.pop(handle.ref, None)
        if rec is None:
            return self._exits.get(handle.ref) or ExitInfo(code=None, forced=False)
        stopped = False
        try:
            info = await self._terminate(rec, grace)
            stopped = True
            await rec.finish_logs()
        finally:
            # Always remove, after a crash too: a leftover holds the name and,
            # with host networking, maybe the port.
            rec.stop_following()
            await asyncio.to_thread(
                functools.partial(rec.engine.remove, rec.ref, kill=not stopped)
            )
        self._exits.put(rec.ref, info)
        return info

    async def _terminate(self, rec: _Container, grace: float) -> ExitInfo:
        """Stop signal, wait ``grace``, SIGKILL. Done here rather than with the
        engine's stop, whose timeout is whole seconds and which does not say
        whether it had to kill."""
        engine = rec.engine
        state = await asyncio.to_thread(engine.inspect, rec.ref)
        if state is None:
            return ExitInfo(code=rec.exit_code, forced=False)
        if not state.running:
            return exit_info(state.exit_code, forced=False)
        sig = rec.stop_signal or state.stop_signal or "SIGTERM"
        await asyncio.to_thread(engine.kill, rec.ref, sig)
        state = await _until_stopped(engine, rec.ref, grace)
        if state is None or not state.running:
            return exit_info(state.exit_code if state else None, forced=False)
        await asyncio.to_thread(engine.kill, rec.ref, "SIGKILL")
        state = await _until_stopped(engine, rec.ref, WAIT_SLACK_S)
        if state is not None and state.running:
            raise BackendError(
                f"container {rec.name} still runs {WAIT_SLACK_S:g} s after SIGKILL"
            )
        return exit_info(state.exit_code if state else None, forced=True)

    async def wait(self, handle: Handle) -> None:
        """Return once the container has stopped; never raises for that.

        For ``controller.upstream``'s exit watch. The engine's wait blocks, on
        its own thread; an engine that drops the call is asked again.
        """
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        if self._closed:
            await _forever()  # closed: exits can no longer be seen
        engine, ref = rec.engine, rec.ref
        while True:
            try:
                await run_in_thread(lambda: engine.wait_exit(ref), f"docker wait {ref}")
                state = await asyncio.to_thread(engine.inspect, ref)
                if state is None or not state.running:
                    return
            except (BackendError, docker.errors.APIError):
                await asyncio.sleep(WATCH_RETRY_S)
                if self._closed:
                    await _forever()

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        async for line in rec.feed.lines():
            yield line

    async def reap_orphans(self) -> list[str]:
        reaped: list[str] = []
        for url in sorted(self._reap_urls, key=lambda u: u or ""):
            engine = await self._engine(url)
            for row in await asyncio.to_thread(engine.list_owned, self.instance):
                if row.id in self._containers:
                    continue  # ours, started by this object: not an orphan
                await asyncio.to_thread(engine.remove, row.id)
                reaped.append(row.name)
        return reaped

    async def aclose(self) -> None:
        self._closed = True
        for rec in self._containers.values():
            rec.stop_following()
        engines, self._engines = list(self._engines.values()), {}
        for connecting in engines:
            with contextlib.suppress(Exception):
                engine = await connecting
                await asyncio.to_thread(engine.close)
        await self._probe.aclose()


async def _forever() -> None:
    """Park an exit watch whose backend was closed until it is cancelled."""
    await asyncio.get_running_loop().create_future()


if TYPE_CHECKING:
    _check: type[Backend] = DockerBackend
    _check_reap: type[SupportsOrphanCleanup] = DockerBackend
