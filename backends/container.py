"""The container lifecycle, once for every engine: ``ContainerBackend`` and the
``Engine`` adapter protocol it drives.

``ContainerBackend`` owns what a container backend does: connecting to
engines, image policy, name-conflict replacement, the stop escalation, the
health verdict, the exit watch, the log reader and its final drain, list
retries, reaping and closing. An ``Engine`` only translates single calls into
one engine API and its errors into the types below; it holds no lifecycle
policy. ``backends.docker`` adapts the Docker SDK, ``backends.podman`` libpod's
REST API; each backend there is this class with its adapter plugged in.

Where the Docker and Podman backends used to differ, the behaviour kept:

1. Stop signal: docker used the engine's ``StopSignal`` as reported, podman
   mapped libpod's number to a name. → Normalised here for every engine
   (``stop_signal_of``): engines report numbers or names, and one spelling
   keeps the choice independent of the engine.
2. Kill before removal: docker SIGKILLed first only after a failed stop,
   podman always removed with ``timeout=0``. → ``Engine.remove`` always kills
   at once: one meaning of "remove" on every path (stop, stale name, aborted
   start, reap), at the cost of one cheap call after a clean stop.
3. Log drain: docker's reader thread and ``stop`` shared a lock to decide who
   did the final read; podman's reader task followed, then read the whole log
   once and fed what following missed. → Podman's: the reader task alone does
   the final read, and the bytes delivered are counted on the loop, so the
   offset is exact without a lock; the Docker adapter's thread only feeds
   ``follow_logs``.
4. Cancelled start: docker's launch thread checked a flag between its steps;
   podman shielded create + start and removed what it made. → Both: the
   launch is shielded (a create cut off halfway leaves a broken container in
   Podman's database that fails every listing) and skips the start once
   cancelled (no server is booted only to be removed).
5. Engine connection: docker kept one connecting task per URL and retried a
   failed one; podman built its client with no way to fail later. → Docker's,
   for both: concurrent starts share one connect, an unreachable engine is
   tried again next time, and ``aclose`` closes even a connect whose caller
   was cancelled.
6. Reap ordering: docker reaped every engine it had ever tried (unreachable
   ones too, so each later reap failed on them), podman only those it had
   built. → Engines in URL order (the implicit default first), and an engine
   joins the reap set once it has connected.
7. ``aclose``: docker closed its log streams without awaiting its readers and
   left ``logs()`` consumers waiting forever; podman cancelled and awaited its
   reader tasks, which end the output. → Podman's: every reader is cancelled
   and awaited (each task has an owner), then every engine and the probe are
   closed.
8. ``ssh://``: docker tunnels it through the SDK; podman refused it in the
   backend, apart from the client that refused other schemes. → The refusal
   is the libpod adapter's, where its URL is parsed: what an engine API can
   reach is the adapter's business, not the lifecycle's.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

import yarl

from backends.base import (
    BackendError,
    BackendStartError,
    BackendUnavailable,
    ExitInfo,
    Footprint,
    Handle,
)
from backends.containers import (
    LABEL_INSTANCE,
    LABEL_RUN,
    LOG_DRAIN_S,
    RUN_ID,
    ExitLog,
    LogFeed,
    check_instance,
    container_name,
    container_spec,
    exit_info,
    image_error,
    ownership_labels,
)
from backends.probe import HttpProbe
from backends.procfs import container_memory
from backends.specs import signal_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterable

    from backends.base import Health, LaunchSpec
    from backends.specs import ContainerSpec

API_TIMEOUT_S = 60.0
# An engine must answer a ping within this long before a start or a reap uses
# it: one that accepts connections but never answers would otherwise hold
# each call for API_TIMEOUT_S (a request's 503, swapvisor's start-up).
PING_TIMEOUT_S = 5.0
# After SIGKILL a container gets this long to be reported stopped; longer
# means the engine hangs.
WAIT_SLACK_S = 30.0
LIST_ATTEMPTS = 5
LIST_RETRY_S = 0.05
# An exit watch whose engine call failed asks again after this long.
WATCH_RETRY_S = 1.0

# An engine's create request: the SDK's keyword arguments or libpod's JSON.
Request = dict[str, object]
T = TypeVar("T")


class Refused(BackendError):
    """The engine answered a call with an error; the message is its reason."""


class NameConflict(BackendError):
    """The wanted container name is taken."""


class ImageMissing(BackendError):
    """The engine has no such image to create the container from."""


@dataclass(frozen=True, slots=True)
class State:
    running: bool
    exit_code: int
    stop_signal: str | None  # as the engine reports it: a name or a number
    labels: dict[str, str]

    @classmethod
    def parse(cls, info: object) -> State:
        """From an inspect answer; Docker's and libpod's share these fields."""
        state = _dict(_dict(info).get("State"))
        config = _dict(_dict(info).get("Config"))
        stop_signal = config.get("StopSignal")
        code = state.get("ExitCode")
        return cls(
            running=bool(state.get("Running")),
            exit_code=code if isinstance(code, int) else 0,
            stop_signal=str(stop_signal) if stop_signal else None,
            labels={str(k): str(v) for k, v in _dict(config.get("Labels")).items()},
        )


@dataclass(frozen=True, slots=True)
class Stopped:
    code: int | None  # None: the container is gone


@dataclass(frozen=True, slots=True)
class Summary:
    id: str
    name: str
    labels: dict[str, str]

    @classmethod
    def parse_list(cls, rows: object) -> list[Summary]:
        """From a listing answer; Docker names carry a leading slash."""
        out: list[Summary] = []
        for row in rows if isinstance(rows, list) else []:
            names = row.get("Names") or [row.get("Id", "")]
            labels = {str(k): str(v) for k, v in _dict(row.get("Labels")).items()}
            out.append(
                cls(id=str(row["Id"]), name=str(names[0]).lstrip("/"), labels=labels)
            )
        return out


class Engine(Protocol):
    """One engine endpoint as async calls; built by ``ContainerBackend._connect``.

    No method blocks the event loop. Unless a method says otherwise, an
    unreachable engine raises ``BackendUnavailable`` naming the URL, and an
    error answer raises ``Refused`` with the engine's reason.
    """

    where: str  # how messages name it: "Docker engine at unix:///…"

    async def ping(self, timeout_s: float) -> None:
        """Return once the engine answers; ``BackendUnavailable`` naming it
        when it does not within ``timeout_s``."""
        ...

    def create_request(
        self, spec: LaunchSpec, cspec: ContainerSpec, name: str, labels: dict[str, str]
    ) -> Request:
        """The create request for this engine's API; pure, no I/O."""
        ...

    async def image_present(self, image: str) -> bool:
        """Whether the image is in the engine's store."""
        ...

    async def pull(self, image: str) -> None:
        """Pull the image; ``Refused`` also for a failure reported in a 200."""
        ...

    async def create(self, request: Request) -> str:
        """Create (not start) the container; its id. Raises ``NameConflict``,
        ``ImageMissing``, ``Refused``, or ``BackendStartError`` for a request
        the API cannot even express."""
        ...

    async def start(self, ref: str) -> None:
        """Start the created container; ``Refused`` says why it would not."""
        ...

    async def inspect(self, ref: str) -> State | None:
        """The container's state, None if it does not exist; an error answer
        raises ``BackendUnavailable``."""
        ...

    async def kill(self, ref: str, sig: str) -> None:
        """Send ``sig`` (a name); a container that is gone is fine."""
        ...

    async def remove(self, ref: str) -> None:
        """Remove the container and its anonymous volumes, killing it at once
        if it runs. Idempotent: a container that is gone is fine."""
        ...

    async def wait_stopped(self, ref: str, timeout_s: float) -> Stopped | None:
        """Wait until the container is not running; None if it still runs
        after ``timeout_s``. Short waits (a stop's grace): poll briskly."""
        ...

    async def watch(self, ref: str) -> None:
        """Return once the container is not running or gone; for a wait as
        long as the container's life, so it may be gentle. May return early
        or raise ``BackendError`` when the engine drops the call."""
        ...

    async def list_owned(self, instance: str) -> list[Summary]:
        """Every container labelled with ``instance``, running or not."""
        ...

    async def processes(self, ref: str) -> frozenset[int]:
        """The container's processes as pids of the engine's host (those NVML
        reports there); empty when it does not run or is gone."""
        ...

    async def memory_usage(self, ref: str) -> int | None:
        """The container cgroup's memory in use, in bytes, from the engine's
        stats (as ``docker stats`` shows it, where the answer has the page
        cache the kernel can drop at once; libpod 4.3's ``MemUsage`` keeps
        it in); None when the engine does not say (not running, gone). The
        fallback for a container whose cgroup cannot be read on this host."""
        ...

    def follow_logs(self, ref: str) -> AsyncIterator[bytes]:
        """stdout and stderr from the start, following, as payload bytes.

        Ends quietly when the container or the engine goes away; closing or
        cancelling the iterator stops following at once.
        """
        ...

    async def all_logs(self, ref: str) -> bytes:
        """Everything written so far; empty if the engine will not say."""
        ...

    async def aclose(self) -> None:
        """Release the client; never raises."""
        ...


def stop_signal_of(state: State) -> str | None:
    """The engine's stop signal as a name, None if it has none we know."""
    if state.stop_signal is None:
        return None
    try:
        return signal_name(state.stop_signal)
    except ValueError:
        return None


@dataclass(slots=True)
class _Container:
    ref: str
    name: str
    engine: Engine
    stop_signal: str | None
    feed: LogFeed = field(default_factory=LogFeed)
    exited: bool = False
    exit_code: int | None = None
    reader: asyncio.Task[None] | None = None
    follower: asyncio.Task[None] | None = None

    def read_logs(self, task_name: str) -> None:
        """Follow the log until the container exits (or ``stop_following``),
        then read the whole log once and feed what following missed: engines
        deliver followed output late (libpod's k8s-file driver polls every
        250 ms), and nothing once the container is removed."""
        self.reader = asyncio.create_task(self._read(), name=task_name)

    async def _read(self) -> None:
        delivered = 0

        async def follow() -> None:
            nonlocal delivered
            async for payload in self.engine.follow_logs(self.ref):
                # Counted here, on the loop, so the final read's offset is
                # exactly what the feed has seen.
                delivered += len(payload)
                self.feed.feed(payload)

        self.follower = asyncio.create_task(follow())
        try:
            await asyncio.wait([self.follower])
            rest = (await self.engine.all_logs(self.ref))[delivered:]
            if rest:
                self.feed.feed(rest)
        except BackendError:
            pass  # the engine went away: the output ends here
        finally:
            self.follower.cancel()
            self.feed.close()
            await asyncio.wait([self.follower])

    def stop_following(self) -> None:
        if self.follower is not None:
            self.follower.cancel()


class ContainerBackend(ABC):
    """Runs ``LaunchSpec.container`` on a container engine through an ``Engine``.

    ``instance`` names this swapvisor in every container's labels and default
    name; keep it stable across restarts so ``reap_orphans`` finds what an
    earlier run left. ``engine_url`` is the default engine (None: the
    adapter's default, from the environment); a spec's own ``engine_url``
    wins. ``engines`` lists further engines for ``reap_orphans`` to clean.

    Ownership: every container carries ``swapvisor.instance``/``model``/
    ``config-hash``/``run`` labels, a stale container of this instance that
    holds the wanted name is removed before creating, and stop always removes
    (llama-swap #130, #220: containers that outlived their model, and name
    conflicts). All of it is per engine: each call goes to the engine the
    model's spec names.

    Engines may be other hosts (``tcp://``, ``ssh://``), down or hung: every
    start and reap first pings its engine for at most ``ping_timeout_s``, so
    an engine that never answers costs seconds, not ``api_timeout_s``, and an
    engine that comes back is used again (a failed connect is retried).
    """

    kind: ClassVar[str]

    def __init__(
        self,
        instance: str,
        *,
        engine_url: str | None = None,
        engines: Iterable[str] = (),
        api_timeout_s: float = API_TIMEOUT_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        self.instance = check_instance(instance)
        self._default_url = engine_url
        self._reap_urls: set[str | None] = {engine_url, *engines}
        self._timeout_s = api_timeout_s
        self._ping_s = ping_timeout_s
        # One connecting task per URL, shared by concurrent callers; it
        # finishes even if they are cancelled, so no client is left unclosed.
        self._engines: dict[str | None, asyncio.Future[Engine]] = {}
        # Set once an engine's reap is over; a start on that engine waits for
        # it, so an orphan holding the model's port is gone before it binds.
        self._reaped: dict[str | None, asyncio.Event] = {}
        self._containers: dict[str, _Container] = {}
        self._exits = ExitLog()
        self._probe = HttpProbe()
        self._closed = False

    @abstractmethod
    async def _connect(self, url: str | None, timeout_s: float) -> Engine:
        """Build this backend's adapter for ``url`` (None: its default);
        ``timeout_s`` bounds any call the building makes."""

    async def _engine(self, url: str | None) -> Engine:
        """The engine at ``url``, connected and answering a ping."""
        connecting = self._engines.get(url)
        if connecting is None or _failed(connecting):
            # First use, or the engine was unreachable last time: try again.
            connecting = asyncio.ensure_future(self._connect(url, self._ping_s))
            self._engines[url] = connecting
        engine = await asyncio.shield(connecting)
        # Every time, not only at connect: an engine may hang or go away
        # after it connected (a remote host, a daemon restarting).
        await engine.ping(self._ping_s)
        self._reap_urls.add(url)
        return engine

    async def check_engine(self, spec: LaunchSpec) -> None:
        """Raise ``BackendUnavailable`` naming the spec's engine unless it
        answers a ping within ``ping_timeout_s``; for a caller about to act
        (stop other models) for a start that cannot happen. Never starts
        anything."""
        cspec = container_spec(spec, self.kind)
        await self._engine(cspec.engine_url or self._default_url)

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        cspec = container_spec(spec, self.kind)
        url = cspec.engine_url or self._default_url
        # Connect first: a start during a reap shares the reap's connect, and
        # so its failure, rather than waiting for it and then trying anew.
        engine = await self._engine(url)
        reaping = self._reaped.get(url)
        if reaping is not None:
            await reaping.wait()
        # Nothing exists yet while the image is checked or pulled, so a
        # cancellation here needs no cleanup.
        await self._ensure_image(engine, cspec)
        name = container_name(self.instance, model, cspec)
        labels = ownership_labels(self.instance, model, cspec)
        request = engine.create_request(spec, cspec, name, labels)
        ref = await self._launch_shielded(engine, request, name, cspec.image)
        rec = self._containers[ref] = _Container(ref, name, engine, cspec.stop_signal)
        rec.read_logs(f"{self.kind} logs {name}")
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def _ensure_image(self, engine: Engine, cspec: ContainerSpec) -> None:
        image, policy = cspec.image, cspec.pull
        present = await engine.image_present(image)
        if present and policy != "always":
            return
        if not present and policy == "never":
            raise image_error(image, policy, "")
        try:
            await engine.pull(image)
        except Refused as exc:
            raise image_error(image, policy, str(exc)) from exc
        # Some engines end a failed pull without an error event.
        if not await engine.image_present(image):
            raise image_error(image, policy, "the engine reported no error")

    async def _launch_shielded(
        self, engine: Engine, request: Request, name: str, image: str
    ) -> str:
        """Launch to the end even if cancelled, then remove what it made."""
        cancelled = asyncio.Event()
        launch = asyncio.ensure_future(
            self._launch(engine, request, name, image, cancelled)
        )
        try:
            return await asyncio.shield(launch)
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(Exception):
                await self._remove(engine, await launch)
            raise

    async def _launch(
        self,
        engine: Engine,
        request: Request,
        name: str,
        image: str,
        cancelled: asyncio.Event,
    ) -> str:
        """Create and start; whatever goes wrong, nothing half-made is left."""
        ref = await self._create(engine, request, name, image)
        try:
            if cancelled.is_set():
                raise BackendStartError("start cancelled")
            await engine.start(ref)
        except BaseException as exc:
            with contextlib.suppress(BackendError):
                await self._remove(engine, ref)
            if isinstance(exc, Refused):
                raise BackendStartError(
                    f"container {name} ({image}) failed to start: {exc}"
                ) from exc
            raise
        return ref

    async def _create(
        self, engine: Engine, request: Request, name: str, image: str
    ) -> str:
        """Create; a stale container of ours holding the name is replaced."""
        try:
            return await _create_once(engine, request, name, image)
        except NameConflict:
            await self._remove_stale(engine, name)
        try:
            return await _create_once(engine, request, name, image)
        except NameConflict:
            raise BackendStartError(
                f"container name {name} is still in use after removing the stale "
                "container"
            ) from None

    async def _remove_stale(self, engine: Engine, name: str) -> None:
        state = await engine.inspect(name)
        if state is None:
            return  # removed meanwhile
        owner = state.labels.get(LABEL_INSTANCE)
        if owner != self.instance:
            raise BackendStartError(
                f"container name {name} is taken by a container that swapvisor "
                f"instance {self.instance} does not own"
                + (f" (it belongs to instance {owner})" if owner else "")
                + "; remove it or choose another name"
            )
        await self._remove(engine, name)

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        rec = self._containers.get(handle.ref)
        if rec is not None and not rec.exited:
            await _observe_exit(rec)
        return await self._probe.health(
            handle, spec, exited=lambda: rec is None or rec.exited
        )

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        rec = self._containers.pop(handle.ref, None)
        if rec is None:
            return self._exits.get(handle.ref) or ExitInfo(code=None, forced=False)
        try:
            info = await self._terminate(rec, grace)
            # Let the reader collect the last output before it is removed.
            rec.stop_following()
            if rec.reader is not None:
                await asyncio.wait([rec.reader], timeout=LOG_DRAIN_S)
        finally:
            # Always remove, after a crash too: a leftover holds the name and,
            # with host networking, maybe the port.
            rec.stop_following()
            await self._remove(rec.engine, rec.ref)
        self._exits.put(rec.ref, info)
        return info

    async def _terminate(self, rec: _Container, grace: float) -> ExitInfo:
        """Stop signal, wait ``grace``, SIGKILL. Done here rather than with the
        engine's stop, whose timeout is whole seconds and which does not say
        whether it had to kill."""
        state = await rec.engine.inspect(rec.ref)
        if state is None:
            return ExitInfo(code=rec.exit_code, forced=False)
        if not state.running:
            return exit_info(state.exit_code, forced=False)
        await _signal(rec, rec.stop_signal or stop_signal_of(state) or "SIGTERM")
        stopped = await rec.engine.wait_stopped(rec.ref, max(grace, 0.0))
        if stopped is not None:
            return exit_info(stopped.code, forced=False)
        await _signal(rec, "SIGKILL")
        stopped = await rec.engine.wait_stopped(rec.ref, WAIT_SLACK_S)
        if stopped is None:
            raise BackendError(
                f"container {rec.name} still runs {WAIT_SLACK_S:g} s after SIGKILL"
            )
        return exit_info(stopped.code, forced=True)

    async def _remove(self, engine: Engine, ref: str) -> None:
        try:
            await engine.remove(ref)
        except Refused as exc:
            raise BackendError(f"could not remove container {ref[:12]}: {exc}") from exc

    async def wait(self, handle: Handle) -> None:
        """Return once the container has stopped; never raises for that.

        For ``controller.upstream``'s exit watch; an engine that drops the
        call is asked again. While the engine cannot be reached, a server that
        no longer accepts connections counts as stopped: its engine may have
        taken it down on the way (a daemon stopping), and the model must not
        stay ready with nothing behind it until the engine is back.
        """
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        while True:
            if self._closed:
                await _forever()  # closed: exits can no longer be seen
            try:
                await rec.engine.watch(rec.ref)
                state = await rec.engine.inspect(rec.ref)
                if state is None or not state.running:
                    return
            except BackendUnavailable:
                if not await _listening(handle.base_url, self._ping_s):
                    return
                await asyncio.sleep(WATCH_RETRY_S)
            except BackendError:
                await asyncio.sleep(WATCH_RETRY_S)

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        async for line in rec.feed.lines():
            yield line

    async def footprint(self, handle: Handle) -> Footprint:
        """The container's host pids (the engine's ``top``) and its memory
        cgroup's usage: read here when the container runs on this host, else
        the engine's stats."""
        rec = self._containers.get(handle.ref)
        if rec is None or rec.exited:
            return Footprint()
        # A refused call (an engine without ps, an odd answer) leaves its half
        # unknown rather than failing the other's figure.
        pids = await _unless_refused(rec.engine.processes(rec.ref))
        if pids is not None and not pids:
            return Footprint()  # no process left: it has exited
        used = (
            await asyncio.to_thread(container_memory, pids, rec.ref) if pids else None
        )
        if used is None:
            used = await _unless_refused(rec.engine.memory_usage(rec.ref))
        return Footprint(pids=pids or frozenset(), host_bytes=used)

    async def reap_orphans(self) -> list[str]:
        reaped: list[str] = []
        for url in sorted(self._reap_urls, key=lambda u: u or ""):
            reaped.extend(await self._reap(url))
        return reaped

    async def _reap(self, url: str | None) -> list[str]:
        """Remove this instance's containers on one engine that another run
        made; a start on that engine waits until this is over."""
        done = self._reaped[url] = asyncio.Event()
        reaped: list[str] = []
        try:
            engine = await self._engine(url)
            for row in await self._list_owned(engine):
                # This process's, whichever backend object started it (two
                # engine URLs may reach one engine): not an orphan.
                if row.labels.get(LABEL_RUN) == RUN_ID or row.id in self._containers:
                    continue
                await self._remove(engine, row.id)
                reaped.append(row.name)
        finally:
            done.set()
        return reaped

    async def _list_owned(self, engine: Engine) -> list[Summary]:
        # Podman fails a whole listing when a container vanishes while it is
        # being listed ("container not known"); ask again.
        for _ in range(LIST_ATTEMPTS - 1):
            with contextlib.suppress(Refused):
                return await engine.list_owned(self.instance)
            await asyncio.sleep(LIST_RETRY_S)
        try:
            return await engine.list_owned(self.instance)
        except Refused as exc:
            raise BackendUnavailable(f"{engine.where}: list failed: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        readers = [r.reader for r in self._containers.values() if r.reader]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
        engines, self._engines = list(self._engines.values()), {}
        for connecting in engines:
            with contextlib.suppress(Exception):
                await (await connecting).aclose()
        await self._probe.aclose()


async def _create_once(engine: Engine, request: Request, name: str, image: str) -> str:
    try:
        return await engine.create(request)
    except ImageMissing as exc:
        raise BackendStartError(f"image {image} not found: {exc}") from exc
    except Refused as exc:
        raise BackendStartError(f"could not create container {name}: {exc}") from exc


async def _observe_exit(rec: _Container) -> None:
    """Ask the engine whether the container still runs; note it if not."""
    state = await rec.engine.inspect(rec.ref)
    if state is None or not state.running:
        # Seen from the engine: a crash while starting or while serving.
        rec.exited = True
        rec.exit_code = state.exit_code if state is not None else None


async def _signal(rec: _Container, sig: str) -> None:
    """Send ``sig``; a container that has stopped meanwhile is fine."""
    try:
        await rec.engine.kill(rec.ref, sig)
    except Refused as exc:
        state = await rec.engine.inspect(rec.ref)
        if state is not None and state.running:
            raise BackendError(
                f"could not signal container {rec.ref[:12]}: {exc}"
            ) from exc


async def _unless_refused(call: Awaitable[T]) -> T | None:
    """The answer, None if the engine refused the call."""
    try:
        return await call
    except Refused:
        return None


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _failed(connecting: asyncio.Future[Engine]) -> bool:
    return (
        connecting.done()
        and not connecting.cancelled()
        and connecting.exception() is not None
    )


async def _listening(base_url: str, timeout_s: float) -> bool:
    """Whether something accepts TCP connections at ``base_url``'s address."""
    url = yarl.URL(base_url)
    if url.host is None or url.port is None:
        return True  # cannot tell: assume it still runs
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(url.host, url.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _forever() -> None:
    """Park an exit watch whose backend was closed until it is cancelled."""
    await asyncio.get_running_loop().create_future()
