"""Upstream: one per model, the only owner of that model's lifecycle state.

Nothing outside this class branches a start or stop on ``state``; callers ask
(``ensure_ready``, ``stop``) and await. Each check-and-change happens with no
``await`` in between, so concurrent callers share one start and one stop, and
a request that arrives during a TTL unload waits for it and then starts the
model again (llama-swap #946).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from backends.base import (
    Backend,
    BackendError,
    BackendStartError,
    BackendUnavailable,
    ExitInfo,
    Handle,
    Health,
    LaunchSpec,
)
from controller.engine.states import ALLOWED, RUNNING, UpstreamState
from controller.errors import (
    ControllerError,
    ModelUnloaded,
    UpstreamStartError,
    UpstreamStartTimeout,
)

log = logging.getLogger("swapvisor.upstream")

S = UpstreamState
# Health polling: the first probe right after launch, then short intervals so
# swapvisor adds ~20 ms at most to a server's own start time; slower once a
# start has taken a while (big models), to keep probe traffic negligible.
FIRST_INTERVAL_S = 0.002
FAST_CAP_S = 0.005  # a refused connect costs ~50 µs: cheap enough at 200 Hz
MEDIUM_CAP_S = 0.02
SLOW_CAP_S = 0.1
FAST_PHASE_S = 2.0
MEDIUM_PHASE_S = 10.0
# Grace for killing a start that missed its deadline (as llama-swap: 5 s).
ABORT_GRACE_S = 5.0
LOG_TAIL_LINES = 8
EXIT_POLL_S = 0.02

StateListener = Callable[["Upstream", UpstreamState, UpstreamState], None]


class LogSink(Protocol):
    """Where a model server's output goes (observability's ``LogMonitor``);
    the engine only writes to it and reads the tail for error messages."""

    def write(self, data: bytes) -> None: ...

    def tail(self, n: int) -> list[str]:
        """The last ``n`` non-empty lines as text."""
        ...


class TailBuffer:
    """The sink an Upstream keeps when nobody watches its logs: just enough
    output to explain a failed start."""

    def __init__(self, chunks: int = 64) -> None:
        self._chunks: deque[bytes] = deque(maxlen=chunks)

    def write(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)

    def tail(self, n: int) -> list[str]:
        text = b"".join(list(self._chunks)[-n:]).decode("utf-8", "replace")
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-n:]


@runtime_checkable
class SupportsWait(Protocol):
    """A backend that can tell when a workload exits (the native one can)."""

    async def wait(self, handle: Handle) -> None:
        """Return once the workload has exited; never raises for that reason."""
        ...


class Upstream:
    """One model's server: its state, backend handle, in-flight count and TTL."""

    def __init__(
        self,
        model_id: str,
        spec: LaunchSpec,
        backend: Backend,
        *,
        start_deadline_s: float,
        unload_grace_s: float,
        ttl_s: float,
        on_change: StateListener | None = None,
        logs: LogSink | None = None,
    ) -> None:
        self.id = model_id
        self.spec = spec
        self.start_deadline_s = start_deadline_s
        self.unload_grace_s = unload_grace_s
        self.ttl_s = ttl_s
        self.logs: LogSink = logs or TailBuffer()
        self.state = S.STOPPED
        self.failure: ControllerError | None = None
        self.last_exit: ExitInfo | None = None
        self.in_flight = 0
        self.stop_reason = ""  # why the current or last stop happened
        self.started_at: float | None = None
        self.last_start_s: float | None = None
        self._backend = backend
        self._on_change = on_change
        self._handle: Handle | None = None
        self._ready: asyncio.Future[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._ttl_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # replaced by a fresh one on every change
        self._idle = asyncio.Event()  # set while no request is in flight
        self._idle.set()

    # -- public contract ----------------------------------------------------------

    async def ensure_ready(self) -> None:
        """Return once the server is ready; start it if needed. Idempotent.

        Concurrent callers share one start. Raises UpstreamStartError,
        UpstreamStartTimeout or ModelUnloaded when the start fails or is aborted.
        """
        while True:
            if self.state is S.READY:
                return
            if self.state is S.STOPPING:
                assert self._stop_task is not None
                await asyncio.shield(self._stop_task)
                continue
            if self.state is not S.STARTING:
                self._begin_start()
            assert self._ready is not None
            await asyncio.shield(self._ready)

    async def stop(self, grace: float | None = None, reason: str = "unload") -> None:
        """Stop the server (abort a start in progress). Idempotent; waits.

        ``reason`` (swap, unload, ttl, reload, shutdown) is kept for metrics.
        """
        if self.state in (S.STARTING, S.READY):
            self.stop_reason = reason
            self._begin_stop(self.unload_grace_s if grace is None else grace)
        if self.state is S.STOPPING:
            assert self._stop_task is not None
            await asyncio.shield(self._stop_task)

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    def acquire(self) -> None:
        """A request is being served: hold off the TTL."""
        self.in_flight += 1
        self._idle.clear()
        self._cancel_ttl()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
            self._arm_ttl()

    def update(
        self, *, ttl_s: float, unload_grace_s: float, start_deadline_s: float
    ) -> None:
        """Take settings from a reloaded config that do not need a restart."""
        self.ttl_s = ttl_s
        self.unload_grace_s = unload_grace_s
        self.start_deadline_s = start_deadline_s
        if self._ttl_task is not None or self.in_flight == 0:
            self._arm_ttl()

    async def retire(self) -> None:
        """Removed or changed by a reload: stop once its requests have drained."""
        self._cancel_ttl()
        await self._idle.wait()
        await self.stop(reason="reload")

    async def exit_reason(self, wait_s: float) -> str | None:
        """If the server has exited (or does within ``wait_s``), how it ended and
        its last log lines; None if it is still alive.

        Called when a connection to the server dropped, to explain why; a dead
        server is reaped here rather than left for the next request to find.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._confirm_exit()
        if self.state is S.READY or self.last_exit is None:
            return None
        return f"{self.last_exit.describe()}{self._tail_text()}"

    async def _confirm_exit(self) -> None:
        while self.state is S.READY and self._handle is not None:
            handle = self._handle
            if await self._backend.health(handle, self.spec) is Health.EXITED:
                self._exited_while_serving(handle)
                break
            await asyncio.sleep(EXIT_POLL_S)
        if self.state is S.STOPPING and self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    # -- start ---------------------------------------------------------------------

    def _begin_start(self) -> None:
        self._set_state(S.STARTING)
        self.failure = None
        self._ready = asyncio.get_running_loop().create_future()
        # Mark the exception retrieved: a failed start with no waiter left
        # (all clients gone) must not warn at garbage collection.
        self._ready.add_done_callback(
            lambda f: None if f.cancelled() else f.exception()
        )
        self._start_task = asyncio.create_task(
            self._run_start(self._ready), name=f"start {self.id}"
        )

    async def _run_start(self, ready: asyncio.Future[None]) -> None:
        began = time.monotonic()
        try:
            await self._launch_and_wait()
        except asyncio.CancelledError:
            _settle(
                ready, ModelUnloaded(f"model {self.id} was unloaded while starting")
            )
            raise
        except ControllerError as exc:
            self._fail(ready, exc)
            return
        except Exception as exc:  # a task's top level: never leave waiters hanging
            log.exception("%s: start failed unexpectedly", self.id)
            await self._reap_after_crash()
            self._fail(
                ready,
                UpstreamStartError(
                    f"model {self.id} failed to start: {type(exc).__name__}: {exc}"
                ),
            )
            return
        self.last_start_s = time.monotonic() - began
        self.started_at = time.time()
        self._set_state(S.READY)
        _settle(ready, None)
        log.info("%s ready in %.3f s", self.id, self.last_start_s)
        self._arm_ttl()

    def _fail(self, ready: asyncio.Future[None], error: ControllerError) -> None:
        self.failure = error
        self._set_state(S.FAILED)
        _settle(ready, error)
        log.warning("%s", error.message)

    async def _reap_after_crash(self) -> None:
        if self._handle is not None:
            await self._reap(self._handle, 0)

    async def _launch_and_wait(self) -> None:
        try:
            self._handle = await self._backend.start(self.id, self.spec)
        except (BackendStartError, BackendUnavailable) as exc:
            raise UpstreamStartError(f"model {self.id} failed to start: {exc}") from exc
        handle = self._handle
        self._log_task = asyncio.create_task(self._pump_logs(handle))
        if isinstance(self._backend, SupportsWait):
            self._watch_task = asyncio.create_task(
                self._watch_exit(handle, self._backend), name=f"watch {self.id}"
            )
        try:
            async with asyncio.timeout(self.start_deadline_s):
                healthy = await self._wait_healthy(handle)
        except TimeoutError:
            await self._reap(handle, ABORT_GRACE_S)
            raise UpstreamStartTimeout(
                f"model {self.id} did not become healthy within "
                f"{self.start_deadline_s:g} s (health check "
                f"{self.spec.check_endpoint} on {self.spec.base_url})"
                f"{self._tail_text()}"
            ) from None
        except asyncio.CancelledError:
            # Aborted by stop(): the stop task reaps the process.
            raise
        if not healthy:
            info = await self._reap(handle, 0)
            raise UpstreamStartError(
                f"model {self.id} exited while starting ({info.describe()})"
                f"{self._tail_text()}"
            )

    async def _wait_healthy(self, handle: Handle) -> bool:
        """True once ready, False if the server exited first."""
        began = time.monotonic()
        interval = FIRST_INTERVAL_S
        while True:
            try:
                health = await self._backend.health(handle, self.spec)
            except BackendError as exc:
                raise UpstreamStartError(f"model {self.id}: {exc}") from exc
            if health is Health.READY:
                return True
            if health is Health.EXITED:
                return False
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, _poll_cap(time.monotonic() - began))

    # -- stop ----------------------------------------------------------------------

    def _begin_stop(self, grace: float) -> None:
        start_task = self._start_task if self.state is S.STARTING else None
        self._cancel_ttl()
        self._set_state(S.STOPPING)
        self._stop_task = asyncio.create_task(
            self._run_stop(grace, start_task), name=f"stop {self.id}"
        )

    async def _run_stop(
        self, grace: float, start_task: asyncio.Task[None] | None
    ) -> None:
        if start_task is not None:
            start_task.cancel()
            await asyncio.wait([start_task])
        if self._handle is not None:
            info = await self._reap(self._handle, grace)
            log.info("%s stopped (%s)", self.id, info.describe())
        self._set_state(S.STOPPED)

    async def _reap(self, handle: Handle, grace: float) -> ExitInfo:
        """Stop the workload, collect its remaining output, forget the handle."""
        try:
            info = await self._backend.stop(handle, self.spec, grace=grace)
        except BackendError as exc:
            log.error("%s: stopping failed: %s", self.id, exc)
            info = ExitInfo(code=None, forced=False)
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if self._log_task is not None:
            # Grandchildren may hold the pipe open; don't wait on them forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._log_task), 1.0)
            self._log_task.cancel()
        self.last_exit = info
        if self._handle is handle:
            self._handle = None
        return info

    # -- output and unexpected exits --------------------------------------------------

    async def _pump_logs(self, handle: Handle) -> None:
        try:
            async for line in self._backend.logs(handle):
                self.logs.write(line)
        except BackendError as exc:
            log.warning("%s: log stream ended: %s", self.id, exc)
        # Output closed: the server most likely exited. If it was serving, notice
        # now rather than on the next failed request.
        if self.state is S.READY and self._handle is handle:
            if await self._backend.health(handle, self.spec) is Health.EXITED:
                self._log_task = None  # this task is finishing; don't await itself
                self._exited_while_serving(handle)

    async def _watch_exit(self, handle: Handle, backend: SupportsWait) -> None:
        """Notice a server that dies while ready even if a child of it still
        holds its output pipe open (so the log stream never ends)."""
        await backend.wait(handle)
        if self._watch_task is asyncio.current_task():
            self._watch_task = None  # finishing; a stop must not await itself
        self._exited_while_serving(handle)

    def _exited_while_serving(self, handle: Handle) -> None:
        """The server died on its own: reap it (no automatic restart)."""
        if self.state is S.READY and self._handle is handle:
            log.warning("%s upstream process exited unexpectedly", self.id)
            self.stop_reason = "crash"
            self._begin_stop(0)

    def _tail_text(self) -> str:
        tail = self.logs.tail(LOG_TAIL_LINES)
        return "; last log lines:\n" + "\n".join(tail) if tail else ""

    # -- TTL -------------------------------------------------------------------------

    def _arm_ttl(self) -> None:
        self._cancel_ttl()
        if self.ttl_s > 0 and self.state is S.READY and self.in_flight == 0:
            self._ttl_task = asyncio.create_task(
                self._ttl_expire(), name=f"ttl {self.id}"
            )

    def _cancel_ttl(self) -> None:
        if self._ttl_task is not None:
            self._ttl_task.cancel()
            self._ttl_task = None

    async def _ttl_expire(self) -> None:
        await asyncio.sleep(self.ttl_s)
        if self.state is S.READY and self.in_flight == 0:
            log.info("%s Unloading model, TTL of %gs reached", self.id, self.ttl_s)
            self._ttl_task = None
            self.stop_reason = "ttl"
            self._begin_stop(self.unload_grace_s)

    # -- state -----------------------------------------------------------------------

    def _set_state(self, new: UpstreamState) -> None:
        old = self.state
        if (old, new) not in ALLOWED:
            raise RuntimeError(
                f"{self.id}: illegal transition {old.value} -> {new.value}"
            )
        self.state = new
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(self, old, new)


def _poll_cap(elapsed_s: float) -> float:
    if elapsed_s < FAST_PHASE_S:
        return FAST_CAP_S
    return MEDIUM_CAP_S if elapsed_s < MEDIUM_PHASE_S else SLOW_CAP_S


def _settle(fut: asyncio.Future[None], error: ControllerError | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
