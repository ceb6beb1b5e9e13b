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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from backends.base import (
    Backend,
    BackendError,
    BackendStartError,
    BackendUnavailable,
    ExitInfo,
    Footprint,
    Handle,
    Health,
    LaunchSpec,
)
from controller.engine.sleep import SleepError
from controller.engine.slots import SlotReport
from controller.engine.states import ALLOWED, RUNNING, Quarantine, UpstreamState
from controller.errors import (
    ControllerError,
    CrashLoop,
    ModelUnloaded,
    ShuttingDown,
    UpstreamStartError,
    UpstreamStartTimeout,
)

if TYPE_CHECKING:
    from controller.engine.sleep import SleepSpec
    from controller.engine.slots import SlotKeeper

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
# A ready model that fails this many liveness probes in a row is dead.
LIVENESS_MISSES = 2
MAX_BACKOFF_S = 300.0
# An idle server that dies this soon after it became ready counts as a
# failed start (crashLoop), so a preloaded one cannot restart forever.
EARLY_DEATH_S = 60.0


@dataclass(frozen=True, slots=True)
class Supervision:
    """How an Upstream watches over its server beyond one start."""

    # Probe a ready, idle server this often (seconds; 0: never).
    liveness_s: float = 0.0
    # Quarantine after this many failed starts in a row (0: never), for
    # ``crash_backoff_s``, doubling with each further failure up to 300 s.
    crash_failures: int = 0
    crash_backoff_s: float = 5.0
    # The start deadline counts from the last log line, up to this hard cap
    # (None: the deadline counts from launch, whatever the server prints).
    max_start_s: float | None = None


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
        supervision: Supervision | None = None,
        slots: SlotKeeper | None = None,
        on_slots: Callable[[str, SlotReport], None] | None = None,
        sleep: SleepSpec | None = None,
        sleep_ttl_s: float = 0.0,
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
        self.supervision = supervision or Supervision()
        self.slots = slots  # keepSlots: saved before a stop, restored on start
        self.sleep_spec = sleep  # sleep instead of stop when a swap evicts it
        self.sleep_ttl_s = sleep_ttl_s
        self.asleep_since: float | None = None  # wall-clock, while asleep
        self._sleep_task: asyncio.Task[bool] | None = None
        self._sleep_ttl_task: asyncio.Task[None] | None = None
        self._on_slots = on_slots
        self.quarantine: Quarantine | None = None
        self._failed_starts = 0  # in a row; a ready start resets it
        self._failures_at_ready = 0
        self._closed = False  # shutdown began: nothing starts again
        self._progress_at = 0.0  # monotonic time of the last log line
        # Set when an idle server died: why, for the FAILED state after the stop.
        self._died_while_idle: str | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self._backend = backend
        self._on_change = on_change
        self._handle: Handle | None = None
        # GPUs the memory engine placed the next start on (None: not placed).
        self.devices: tuple[int, ...] | None = None
        self._load_id = 0
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
            if self.state is S.SLEEPING and self._falling_asleep():
                await self._asleep()  # then wake it (or see the stop)
                continue
            if self.state is not S.STARTING:
                self.check_startable()
                if self.state is S.SLEEPING:
                    self._begin_wake()
                else:
                    self._begin_start()
            assert self._ready is not None
            await asyncio.shield(self._ready)

    async def stop(self, grace: float | None = None, reason: str = "unload") -> None:
        """Stop the server (abort a start in progress). Idempotent; waits.

        ``reason`` (swap, unload, ttl, reload, shutdown) is kept for metrics.
        """
        if self.state in (S.STARTING, S.READY, S.SLEEPING):
            self.stop_reason = reason
            self._begin_stop(self.unload_grace_s if grace is None else grace)
        if self.state is S.STOPPING:
            assert self._stop_task is not None
            await asyncio.shield(self._stop_task)

    async def make_room(self, *, stop: bool = False, reason: str = "swap") -> None:
        """A swap evicts this model: it sleeps if it can, else it stops.
        ``stop``: stop it even if it could sleep or is asleep (the memory
        engine needs what a sleeping server still holds)."""
        if self.sleep_spec is not None and not self._closed and not stop:
            if self.state is S.READY:
                self._begin_sleep()
            if self.state is S.SLEEPING:
                if not self._falling_asleep():
                    return  # already asleep
                if await self._asleep():
                    return
        await self.stop(reason=reason)

    async def _asleep(self) -> bool:
        """Wait for the sleep in progress: True once asleep. A sleep that a
        stop cancelled is False, not our cancellation."""
        task = self._sleep_task
        assert task is not None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
            return False

    def _falling_asleep(self) -> bool:
        return self._sleep_task is not None and not self._sleep_task.done()

    def _begin_sleep(self) -> None:
        self._cancel_ttl()
        self._cancel_liveness()
        self._set_state(S.SLEEPING)
        self._sleep_task = asyncio.create_task(
            self._run_sleep(), name=f"sleep {self.id}"
        )

    async def _run_sleep(self) -> bool:
        """True once asleep; on failure the model is stopped instead."""
        assert self.sleep_spec is not None
        try:
            await self.sleep_spec.fall_asleep(self.base_url)
        except Exception as exc:  # whatever went wrong: it did not sleep
            log.warning("%s: sleep failed, stopping it instead: %s", self.id, exc)
            if self.state is S.SLEEPING:
                self.stop_reason = "swap"
                self._begin_stop(self.unload_grace_s)
            return False
        self.asleep_since = time.time()
        log.info("%s is asleep", self.id)
        if self.sleep_ttl_s > 0:
            self._sleep_ttl_task = asyncio.create_task(
                self._sleep_ttl_expire(), name=f"sleep ttl {self.id}"
            )
        return True

    async def _sleep_ttl_expire(self) -> None:
        await asyncio.sleep(self.sleep_ttl_s)
        if self.state is S.SLEEPING and not self._falling_asleep():
            log.info(
                "%s asleep for %gs (sleepTTL): stopping it", self.id, self.sleep_ttl_s
            )
            self._sleep_ttl_task = None
            self.stop_reason = "ttl"
            self._begin_stop(self.unload_grace_s)

    def _end_sleep(self) -> None:
        self.asleep_since = None
        for task in (self._sleep_task, self._sleep_ttl_task):
            if (
                task is not None
                and not task.done()
                and task is not asyncio.current_task()
            ):
                task.cancel()
        self._sleep_ttl_task = None

    async def _wake_or_restart(self) -> bool:
        """Wake the sleeping server; if that fails, restart it. True when
        it was restarted (its KV cache is gone)."""
        try:
            if self.sleep_spec is None:  # a reload removed ``sleep:``
                raise SleepError("no sleep settings any more")
            await self.sleep_spec.wake_up(self.base_url)
        except Exception as exc:  # whatever went wrong: restart it
            log.warning("%s: wake failed, restarting it: %s", self.id, exc)
        else:
            log.info("%s woke up", self.id)
            return False
        if self._handle is not None:
            await self._reap(self._handle, self.unload_grace_s)
        await self._launch_and_wait()
        return True

    def check_startable(self) -> None:
        """Raise if no start may be attempted now: shutdown began, or the
        model is quarantined after repeated failed starts."""
        if self._closed:
            raise ShuttingDown("swapvisor is shutting down")
        q = self.quarantine
        if q is None:
            return
        left = q.until - time.time()
        if left > 0:
            raise CrashLoop(
                f"model {self.id} is quarantined after {q.failures} failed starts "
                f"in a row (retry in {left:.0f} s); last failure: {q.reason}",
                left,
            )

    def active_quarantine(self) -> Quarantine | None:
        """The quarantine in force now, if any."""
        q = self.quarantine
        return q if q is not None and q.until > time.time() else None

    def clear_quarantine(self) -> None:
        """Unloaded, or its config changed: the next request may start it."""
        self.quarantine = None
        self._failed_starts = 0

    async def close(self, grace_cap: float | None = None) -> None:
        """Shutdown: no start from now on; abort one in progress; stop, with
        at most ``grace_cap`` seconds before the kill when one is given."""
        self._closed = True
        grace = self.unload_grace_s
        await self.stop(
            grace if grace_cap is None else min(grace, grace_cap), "shutdown"
        )

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def load_id(self) -> int:
        """Names its current load, uniquely across restarts (learned figures)."""
        return self._load_id

    async def footprint(self) -> Footprint | None:
        """What its workload holds now; None when it has none (advisory)."""
        handle = self._handle
        if handle is None or self.state not in (S.READY, S.SLEEPING):
            return None
        try:
            return await self._backend.footprint(handle)
        except BackendError as exc:
            log.debug("%s: footprint unavailable: %s", self.id, exc)
            return None

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
        self,
        *,
        ttl_s: float,
        unload_grace_s: float,
        start_deadline_s: float,
        supervision: Supervision | None = None,
    ) -> None:
        """Take settings from a reloaded config that do not need a restart."""
        self.ttl_s = ttl_s
        self.unload_grace_s = unload_grace_s
        self.start_deadline_s = start_deadline_s
        if supervision is not None:
            self.supervision = supervision
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
            try:
                health = await self._backend.health(handle, self.spec)
            except BackendError:
                return  # the engine cannot say: no explanation, no harm
            if health is Health.EXITED:
                self._exited_while_serving(handle)
                break
            await asyncio.sleep(EXIT_POLL_S)
        if self.state is S.STOPPING and self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    # -- start ---------------------------------------------------------------------

    def _begin_start(self) -> None:
        self._launch_task(wake=False)

    def _begin_wake(self) -> None:
        self._end_sleep()
        self._launch_task(wake=True)

    def _launch_task(self, *, wake: bool) -> None:
        self._set_state(S.STARTING)
        self.failure = None
        self._ready = asyncio.get_running_loop().create_future()
        # Mark the exception retrieved: a failed start with no waiter left
        # (all clients gone) must not warn at garbage collection.
        self._ready.add_done_callback(
            lambda f: None if f.cancelled() else f.exception()
        )
        self._start_task = asyncio.create_task(
            self._run_start(self._ready, wake), name=f"start {self.id}"
        )

    async def _run_start(self, ready: asyncio.Future[None], wake: bool) -> None:
        began = time.monotonic()
        failure: ControllerError
        try:
            if wake and not await self._wake_or_restart():
                pass  # awake with its state: nothing to restore
            else:
                if not wake:
                    await self._launch_and_wait()
                await self._restore_slots()  # before any request is granted
        except asyncio.CancelledError:
            _settle(
                ready, ModelUnloaded(f"model {self.id} was unloaded while starting")
            )
            raise
        except ControllerError as exc:
            failure = exc
        except Exception as exc:  # a task's top level: never leave waiters hanging
            log.exception("%s: start failed unexpectedly", self.id)
            failure = UpstreamStartError(
                f"model {self.id} failed to start: {type(exc).__name__}: {exc}"
            )
        else:
            self._ready_now(began, ready)
            return
        # Whatever was launched is gone before the model counts as failed (a
        # failed upstream holds no memory); a stop that takes over meanwhile
        # reaps the rest.
        try:
            await self._reap_after_crash()
        finally:
            self._fail(ready, failure)

    def _ready_now(self, began: float, ready: asyncio.Future[None]) -> None:
        self.last_start_s = time.monotonic() - began
        self.started_at = time.time()
        # Remembered: a server that dies soon after this still crash-loops.
        self._failures_at_ready = self._failed_starts
        self._failed_starts = 0
        self.quarantine = None
        self._set_state(S.READY)
        _settle(ready, None)
        log.info("%s ready in %.3f s", self.id, self.last_start_s)
        self._arm_ttl()
        self._arm_liveness()

    def _fail(self, ready: asyncio.Future[None], error: ControllerError) -> None:
        self.failure = error
        self._count_failed_start(error)
        if self.state is S.STARTING:  # else a stop took over and ends it
            self._set_state(S.FAILED)
        _settle(ready, error)
        log.warning("%s", error.message)

    def _count_failed_start(self, error: ControllerError) -> None:
        if isinstance(error.__cause__, BackendUnavailable):
            return  # the engine was away, not the model: no crash loop
        sup = self.supervision
        self._failed_starts += 1
        if not sup.crash_failures or self._failed_starts < sup.crash_failures:
            return
        extra = self._failed_starts - sup.crash_failures
        backoff = min(sup.crash_backoff_s * 2**extra, MAX_BACKOFF_S)
        self.quarantine = Quarantine(
            error.message, self._failed_starts, time.time() + backoff, backoff
        )
        log.warning(
            "%s: %d failed starts in a row; quarantined for %g s",
            self.id,
            self._failed_starts,
            backoff,
        )

    async def _reap_after_crash(self) -> None:
        if self._handle is not None:
            await self._reap(self._handle, 0)

    async def _launch_and_wait(self) -> None:
        if self.slots is not None:
            self.slots.prepare()
        self._load_id = time.time_ns()
        try:
            spec = self.spec
            if self.devices is not None:
                spec = replace(spec, devices=self.devices)
            self._handle = await self._backend.start(self.id, spec)
        except (BackendStartError, BackendUnavailable) as exc:
            raise UpstreamStartError(f"model {self.id} failed to start: {exc}") from exc
        handle = self._handle
        self._log_task = asyncio.create_task(self._pump_logs(handle))
        if isinstance(self._backend, SupportsWait):
            self._watch_task = asyncio.create_task(
                self._watch_exit(handle, self._backend), name=f"watch {self.id}"
            )
        try:
            healthy = await self._until_healthy(handle)
        except _Expired as expired:
            await self._reap(handle, ABORT_GRACE_S)
            raise UpstreamStartTimeout(
                f"model {self.id} did not become healthy within "
                f"{expired.limit_s:g} s ({expired.which}; health check "
                f"{self.spec.check_endpoint} on {self.spec.base_url})"
                f"{self._tail_text()}"
            ) from None
        if not healthy:
            info = await self._reap(handle, 0)
            raise UpstreamStartError(
                f"model {self.id} exited while starting ({info.describe()})"
                f"{self._tail_text()}"
            )

    async def _until_healthy(self, handle: Handle) -> bool:
        """``_wait_healthy`` under the start deadline: ``start_deadline_s``
        from launch or, with ``max_start_s``, from the last log line (a server
        that is visibly loading is not stuck), never past ``max_start_s``."""
        began = self._progress_at = time.monotonic()
        cap = self.supervision.max_start_s
        waiting = asyncio.create_task(self._wait_healthy(handle))
        try:
            while True:
                soft = (self._progress_at if cap else began) + self.start_deadline_s
                hard = began + cap if cap else soft
                left = min(soft, hard) - time.monotonic()
                if left <= 0:
                    if cap and soft > hard:
                        raise _Expired(cap, "maxStartTime reached while still loading")
                    which = "healthCheckTimeout"
                    if cap:
                        which += " with no new log line"
                    raise _Expired(self.start_deadline_s, which)
                done, _ = await asyncio.wait([waiting], timeout=left)
                if done:
                    return waiting.result()
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.wait([waiting])

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
        # A serving server's KV cache is worth keeping; a dead one has none.
        save = (
            self.slots is not None
            and self.state in (S.READY, S.SLEEPING)
            and self.stop_reason != "crash"
        )
        if self.state is S.SLEEPING:
            self._end_sleep()
        if start_task is not None:
            # At once, not when the stop task first runs: a start that is
            # about to resume must not mark the model ready or failed. Its
            # waiters are answered here too: a task cancelled before its
            # first step never runs the code that would answer them.
            start_task.cancel()
            if self._ready is not None:
                _settle(
                    self._ready,
                    ModelUnloaded(f"model {self.id} was unloaded while starting"),
                )
        self._cancel_ttl()
        self._set_state(S.STOPPING)
        self._stop_task = asyncio.create_task(
            self._run_stop(grace, start_task, save), name=f"stop {self.id}"
        )

    async def _run_stop(
        self, grace: float, start_task: asyncio.Task[None] | None, save: bool
    ) -> None:
        # However the backend fails, the stop ends: STOPPED, or FAILED when
        # the server died on its own while idle (the reason is kept).
        try:
            if start_task is not None:
                start_task.cancel()
                await asyncio.wait([start_task])
            if save:
                await self._save_slots()
            if self._handle is not None:
                info = await self._reap(self._handle, grace)
                log.info("%s stopped (%s)", self.id, info.describe())
        finally:
            why, self._died_while_idle = self._died_while_idle, None
            if why is not None:
                how = self.last_exit.describe() if self.last_exit else "exit unknown"
                self.failure = UpstreamStartError(
                    f"model {self.id} {why} while idle ({how}){self._tail_text()}"
                )
                log.warning("%s", self.failure.message)
                up_s = time.time() - (self.started_at or 0.0)
                if up_s < EARLY_DEATH_S:  # up and down again: a crash loop
                    self._failed_starts = self._failures_at_ready
                    self._count_failed_start(self.failure)
                self._set_state(S.FAILED)
            else:
                self._set_state(S.STOPPED)

    async def _reap(self, handle: Handle, grace: float) -> ExitInfo:
        """Stop the workload, collect its remaining output, forget the handle.

        Never raises for a backend's sake: an engine that fails here is
        logged, and the handle is forgotten all the same."""
        try:
            info = await self._backend.stop(handle, self.spec, grace=grace)
        except Exception as exc:  # an engine error must not wedge the stop
            log.error("%s: stopping failed: %s", self.id, exc)
            info = ExitInfo(code=None, forced=False)
        self._cancel_liveness()
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if self._log_task is not None:
            # Grandchildren may hold the pipe open; don't wait on them forever.
            # The pump's own failure is its business, never the stop's.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._log_task), 1.0)
            self._log_task.cancel()
        self.last_exit = info
        if self._handle is handle:
            self._handle = None
        return info

    # -- KV slots ------------------------------------------------------------------

    async def _save_slots(self) -> None:
        if self.slots is None:
            return
        try:
            report = await self.slots.save(self.spec.base_url)
        except Exception as exc:  # never skip the stop for the cache's sake
            report = SlotReport("save", 0, 0, 0, 0.0, repr(exc))
        self._report_slots(report)

    async def _restore_slots(self) -> None:
        if self.slots is None:
            return
        try:
            report = await self.slots.restore(self.spec.base_url)
        except Exception as exc:  # a warm start is a bonus, never a failure
            report = SlotReport("restore", 0, 0, 0, 0.0, repr(exc))
        self._report_slots(report)

    def _report_slots(self, report: SlotReport) -> None:
        if report.error:
            log.warning(
                "%s: slot %s failed (the model still serves): %s",
                self.id,
                report.action,
                report.error,
            )
        elif report.count:
            log.info(
                "%s: %s %d slot(s), %d tokens, %d bytes in %.3f s",
                self.id,
                "saved" if report.action == "save" else "restored",
                report.count,
                report.tokens,
                report.bytes,
                report.seconds,
            )
        if self._on_slots is not None and (report.count or report.error):
            self._on_slots(self.id, report)

    # -- output and unexpected exits --------------------------------------------------

    async def _pump_logs(self, handle: Handle) -> None:
        # A line about our own health probe is no sign of progress (servers
        # log every request, and the probe is one every few milliseconds).
        probe = (self.spec.check_endpoint or "\0").encode()
        try:
            async for line in self._backend.logs(handle):
                self.logs.write(line)
                if probe not in line:
                    self._progress_at = time.monotonic()
        except BackendError as exc:
            log.warning("%s: log stream ended: %s", self.id, exc)
        # Output closed: the server most likely exited. If it was serving, notice
        # now rather than on the next failed request.
        if self.state is S.READY and self._handle is handle:
            try:
                health = await self._backend.health(handle, self.spec)
            except BackendError as exc:
                log.warning("%s: cannot tell whether it exited: %s", self.id, exc)
                return
            if health is Health.EXITED:
                self._log_task = None  # this task is finishing; don't await itself
                self._exited_while_serving(handle)

    async def _watch_exit(self, handle: Handle, backend: SupportsWait) -> None:
        """Notice a server that dies while ready even if a child of it still
        holds its output pipe open (so the log stream never ends)."""
        await backend.wait(handle)
        if self._watch_task is asyncio.current_task():
            self._watch_task = None  # finishing; a stop must not await itself
        self._exited_while_serving(handle)

    def _exited_while_serving(self, handle: Handle, why: str = "") -> None:
        """The server died on its own: reap it (no automatic restart here).

        Mid-request it ends STOPPED (the request already failed with the
        reason); while idle it ends FAILED, with its exit and last log lines,
        so listings, eviction and the next request see the truth."""
        if self.state not in (S.READY, S.SLEEPING) or self._handle is not handle:
            return
        log.warning("%s upstream process exited unexpectedly", self.id)
        self.stop_reason = "crash"
        if self.in_flight == 0:
            self._died_while_idle = why or "exited"
        self._begin_stop(0)

    def _busy(self) -> bool:
        return self.in_flight > 0

    def _serves(self, handle: Handle) -> bool:
        return self.state is S.READY and self._handle is handle

    # -- liveness --------------------------------------------------------------------

    def _arm_liveness(self) -> None:
        self._cancel_liveness()
        if self.supervision.liveness_s > 0 and self._handle is not None:
            self._liveness_task = asyncio.create_task(
                self._liveness(self._handle), name=f"liveness {self.id}"
            )

    def _cancel_liveness(self) -> None:
        task, self._liveness_task = self._liveness_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _liveness(self, handle: Handle) -> None:
        """Probe the ready server while it is idle; a probe is no activity
        (the TTL is not touched). A server that exited, or missed
        ``LIVENESS_MISSES`` probes in a row, is reaped and marked failed."""
        misses = 0
        while True:
            await asyncio.sleep(self.supervision.liveness_s)
            if not self._serves(handle):
                return
            if self.in_flight:
                misses = 0  # a busy server is watched by its requests
                continue
            try:
                health = await self._backend.health(handle, self.spec)
            except BackendError as exc:  # the engine, not the server, is down
                log.warning("%s: liveness probe failed: %s", self.id, exc)
                continue
            if self._busy() or not self._serves(handle):
                misses = 0  # a request arrived meanwhile: it watches now
                continue
            if health is Health.READY:
                misses = 0
                continue
            misses += 1
            if health is Health.EXITED or misses >= LIVENESS_MISSES:
                why = (
                    "exited"
                    if health is Health.EXITED
                    else f"stopped answering {self.spec.check_endpoint}"
                )
                self._liveness_task = None  # finishing; a stop must not await it
                self._exited_while_serving(handle, why)
                return

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


class _Expired(Exception):
    def __init__(self, limit_s: float, which: str) -> None:
        super().__init__(which)
        self.limit_s = limit_s
        self.which = which


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
