"""Router: the scheduler's real effects, over one Upstream per model.

Owns the Upstreams, the Scheduler and the swap tasks. Handlers use ``lease``:
it admits the request, waits for its grant, and releases it however the
request ends (served, failed, or the client left).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from backends.base import BackendUnavailable
from controller.engine.eviction import build_policy
from controller.engine.resources import (
    Budget,
    Decision,
    LearnedStore,
    Ledger,
    Measured,
    ResourcePolicy,
    budget_of,
    explain_model,
    memory_fingerprint,
    memory_needed,
    retired_key,
)
from controller.engine.scheduler import MustWait, Scheduler, Ticket
from controller.engine.sleep import sleep_spec
from controller.engine.slots import (
    SlotFiles,
    SlotKeeper,
    SlotReport,
    SlotStore,
    launch_fingerprint,
)
from controller.engine.states import ModelStatus, StateChange, UpstreamState
from controller.engine.upstream import LogSink, Supervision, TailBuffer, Upstream
from controller.errors import (
    ControllerError,
    ModelUnloaded,
    ShuttingDown,
    UpstreamStartError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Set

    from backends.base import LaunchSpec
    from backends.memory import MemoryProbe
    from controller.config.model import Config
    from controller.engine.pool import BackendPool
    from controller.engine.scheduler import EvictionPolicy

log = logging.getLogger("swapvisor.router")

# Measure a model again after each of its first requests (what it holds grows
# once its KV cache and compute buffers are used).
MEASURED_REQUESTS = 3
# A measurement the backend cannot give yet is tried again this many times,
# after 0.5, 1, 2... s.
MEASURE_TRIES = 4
MEASURE_RETRY_S = 0.5
# How long a start waits for freed memory to show up (drivers release lazily),
# and how often it looks.
MEMORY_WAIT_S = 10.0
MEMORY_POLL_S = 0.1


def slot_store(config: Config) -> SlotStore:
    cache = config.slot_cache
    return SlotStore(cache.directory(), cache.max_bytes())


def supervision(config: Config, mid: str) -> Supervision:
    """A model's liveness, crash-loop and start-cap settings from the config."""
    crash = config.crash_loop_of(mid)
    return Supervision(
        liveness_s=config.liveness_s(mid),
        crash_failures=crash.failures,
        crash_backoff_s=crash.backoff,
        max_start_s=config.max_start_s(mid),
    )


class Admission:
    """One admitted request: await ``granted()``, always ``release()``."""

    def __init__(
        self,
        ticket: Ticket,
        granted: asyncio.Future[Upstream],
        scheduler: Scheduler,
        on_release: Callable[[Ticket], None],
        on_granted: Callable[[str, float], None],
    ) -> None:
        self.ticket = ticket
        self._granted = granted
        self._scheduler = scheduler
        self._on_release = on_release
        self._on_granted = on_granted

    @property
    def ready_now(self) -> bool:
        """Granted at admission: the model was ready and nothing had to move."""
        return self._granted.done() and not self._granted.cancelled()

    def position(self) -> int | None:
        """1-based place in the queue, or None when not queued (advisory)."""
        return self._scheduler.position(self.ticket)

    async def granted(self) -> Upstream:
        began = time.monotonic()
        upstream = await self._granted
        self._on_granted(self.ticket.model, time.monotonic() - began)
        return upstream

    def release(self) -> None:
        self._on_release(self.ticket)


class Router:
    def __init__(
        self,
        config: Config,
        backends: BackendPool,
        model_logs: Callable[[str], LogSink] | None = None,
        memory: MemoryProbe | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        # use: resources — the machine's memory, and the accounting over it.
        self._memory = memory
        self.ledger: Ledger | None = None
        # The last decision that touched each model, in words (/api/explain).
        self.decisions: dict[str, Decision] = {}
        # (model, what it holds; None once it holds nothing): metrics.
        self.memory_listeners: list[Callable[[str, Measured | None], None]] = []
        # (model, seconds a start waited for freed memory to show up)
        self.memory_wait_listeners: list[Callable[[str, float], None]] = []
        self._requests_since_load: dict[str, int] = {}
        self._slot_store = slot_store(config)
        # (model, save or restore report): metrics; called synchronously.
        self.slot_listeners: list[Callable[[str, SlotReport], None]] = []
        # Each model's output sink (observability's per-model log monitor).
        self._model_logs = model_logs or (lambda _mid: TailBuffer())
        self.upstreams: dict[str, Upstream] = {
            mid: self._new_upstream(config, mid) for mid in sorted(config.models)
        }
        # Upstreams a reload removed or changed, still draining their requests.
        self._retiring: set[asyncio.Task[None]] = set()
        policy = self._policy(config, self._budget(config))
        self.scheduler = Scheduler(self, policy, config.concurrency_limit, self._queued)
        self._grants: dict[int, asyncio.Future[Upstream]] = {}
        # Per model: the upstream a swap is making ready, and that wait.
        self._starting: dict[str, tuple[Upstream, asyncio.Task[None]]] = {}
        self._serving: dict[int, Upstream] = {}
        # Observers (events, metrics): called synchronously, must not block.
        self.state_listeners: list[Callable[[StateChange], None]] = []
        self.swap_listeners: list[Callable[[str, float], None]] = []
        # (model, seconds from admission to grant): queue and load wait
        self.grant_listeners: list[Callable[[str, float], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- the memory engine ------------------------------------------------------------

    def _budget(self, config: Config) -> Budget | None:
        """The memory budget ``config`` asks for (None: not the memory
        engine). May fail; changes nothing."""
        resources = config.resources
        if resources is None:
            return None
        probe = self._memory_probe()
        return budget_of(resources, probe.host().total, probe.devices())

    def _policy(self, config: Config, budget: Budget | None) -> EvictionPolicy:
        """The config's eviction policy, put in place; for ``use: resources``
        the ledger's, kept across reloads (what it learned and what models
        hold stays). Never raises: called once a reload can no longer fail."""
        resources = config.resources
        if resources is None or budget is None:
            self.ledger = None
            return build_policy(config)
        if self.ledger is None:
            path = resources.learned_path()
            self.ledger = Ledger(budget, LearnedStore(path), self._busy, self.decisions)
        ledger = self.ledger
        ledger.budget = budget
        ledger.configure(
            {
                mid: (
                    config.models[mid].needs,
                    config.pinned_gpus(mid),
                    memory_fingerprint(config.launch_spec(mid)),
                )
                for mid in config.models
            },
            config.never_evicted(),
        )
        for mid, upstream in self.upstreams.items():
            # Switched to this engine while models run: they hold their
            # estimate (or all that is left) until measured, at once.
            held = upstream.running or upstream.state is UpstreamState.SLEEPING
            if held and mid not in ledger.allocations:
                ledger.adopt(mid)
                self._requests_since_load[mid] = 0
                self._measure_soon(upstream)
        log.info("memory budget: %s", budget.describe())
        return ResourcePolicy(ledger)

    def _memory_probe(self) -> MemoryProbe:
        if self._memory is None:
            from backends.memory import SystemMemory  # NVML only for this engine

            self._memory = SystemMemory.open()
        return self._memory

    def _busy(self, model: str) -> bool:
        return self.scheduler.in_flight(model) > 0

    def _queued(self, ticket: Ticket) -> None:
        """A request had to wait: after fifo maxWait the models blocking it
        get no new grants."""
        wait = self.config.max_wait_s
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self.scheduler.overdue, ticket)

    def _measure_soon(self, upstream: Upstream) -> None:
        if self.ledger is None or self._closing:
            return
        task = asyncio.create_task(
            self._measure(upstream), name=f"measure {upstream.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _measure(self, upstream: Upstream) -> None:
        """What ``upstream``'s workload holds now: host memory from its
        backend, GPU memory from NVML for its processes. Reported to the
        ledger (which learns it) and to the memory listeners. A backend that
        cannot tell yet is asked again a few times; then the model counts as
        unmeasurable (nobody waits for it)."""
        measured = None
        for attempt in range(MEASURE_TRIES):
            measured = await self._footprint(upstream)
            if measured is not None or self._closing:
                break
            if upstream.state is not UpstreamState.READY:
                return
            await asyncio.sleep(MEASURE_RETRY_S * 2**attempt)
        ledger = self.ledger
        if ledger is None or self.upstreams.get(upstream.id) is not upstream:
            return  # another engine, or replaced by a reload meanwhile
        if measured is None:
            log.warning("%s: its memory could not be measured", upstream.id)
            ledger.unmeasurable(upstream.id)
        elif upstream.state is UpstreamState.SLEEPING:
            ledger.measured_asleep(upstream.id, measured)
        elif upstream.state is UpstreamState.READY:
            ledger.measured(upstream.id, measured, upstream.load_id)
        else:
            return
        for listener in self.memory_listeners:
            listener(upstream.id, measured)
        # What it holds may have shrunk (a model never measured held all
        # that was left): a request queued behind it may fit beside it now.
        self.scheduler.drain()
        if upstream.state is UpstreamState.READY:
            await asyncio.to_thread(ledger.store.save, ledger.store.snapshot())

    async def _footprint(self, upstream: Upstream) -> Measured | None:
        footprint = await upstream.footprint()
        probe = self._memory
        if footprint is None or probe is None:
            return None
        devices = await asyncio.to_thread(probe.devices)
        per_pid = await asyncio.to_thread(probe.processes) if footprint.pids else {}
        vram: dict[int, int] = {}
        for pid in footprint.pids:
            for index, used in per_pid.get(pid, {}).items():
                vram[index] = vram.get(index, 0) + used
        # Without its pids (or NVML) GPU memory cannot be attributed to it:
        # unknown, not zero.
        known = bool(footprint.pids) and bool(devices)
        return Measured(footprint.host_bytes, vram, time.time(), known)

    async def _memory_settled(
        self, target: str, needed: tuple[int, dict[int, int]] | None
    ) -> None:
        """Wait (bounded) until the memory ``target`` needs shows up as free
        (``needed``: RAM and bytes per GPU): drivers release a stopped
        process's memory lazily."""
        probe = self._memory
        if needed is None or probe is None:
            return
        ram, devices = needed
        if not ram and not any(devices.values()):
            return
        began = time.monotonic()
        while True:
            host = await asyncio.to_thread(probe.host)
            free = {d.index: d.free for d in await asyncio.to_thread(probe.devices)}
            short = [
                f"GPU {i}" for i, b in devices.items() if b and free.get(i, b) < b
            ] + (["RAM"] if ram and host.available < ram else [])
            waited = time.monotonic() - began
            if not short or waited >= MEMORY_WAIT_S or self.scheduler.doomed(target):
                break
            await asyncio.sleep(MEMORY_POLL_S)
        for listener in self.memory_wait_listeners:
            listener(target, waited)
        if short:
            log.warning(
                "%s: memory on %s did not show up as free within %g s; starting anyway",
                target,
                ", ".join(short),
                MEMORY_WAIT_S,
            )
            self._note(
                target,
                f"started although {', '.join(short)} still showed too little "
                f"free memory after {MEMORY_WAIT_S:g} s",
            )

    def _note(self, model: str, text: str) -> None:
        self.decisions[model] = Decision(time.time(), text)

    async def explain(self) -> dict[str, object]:
        """Per model: state, needs (declared, learned, estimate), placement,
        what it holds and the last decision that touched it, in words; and
        the budget (``GET /api/explain``; advisory)."""
        ledger = self.ledger
        budget: dict[str, object] | None = None
        if ledger is not None:
            probe = self._memory_probe()
            host = await asyncio.to_thread(probe.host)
            devices = await asyncio.to_thread(probe.devices)
            budget = ledger.describe_budget(host, devices)
        waiting = self._waiting_reasons()
        models = []
        for mid, st in self.status().items():
            entry: dict[str, object] = {
                "id": mid,
                "state": st.state.value,
                "in_flight": st.in_flight,
            }
            entry.update(explain_model(ledger, mid))
            decision = self.decisions.get(mid)
            entry["decision"] = None if decision is None else decision.as_json()
            entry["waiting"] = waiting.get(mid)
            models.append(entry)
        engine = self.config.routing_engine()[0]
        return {"engine": engine, "budget": budget, "models": models}

    def _waiting_reasons(self) -> dict[str, str]:
        """Why each model with queued requests waits, in words."""
        out: dict[str, str] = {}
        swapping = self.scheduler.swapping()
        for ticket in self.scheduler.queued():
            mid = ticket.model
            if mid in out:
                continue
            if any(mid in evict for evict in swapping.values()):
                out[mid] = "waiting: a swap is stopping it"
                continue
            try:
                evict = self.scheduler.evictions(mid)
            except ControllerError as exc:
                out[mid] = f"refused: {exc.message}"
                continue
            except MustWait as exc:
                out[mid] = f"waiting: {exc}"
                continue
            busy = sorted(m for m in evict if self.scheduler.in_flight(m))
            if busy:
                out[mid] = "waiting: " + ", ".join(
                    f"{m} draining {self.scheduler.in_flight(m)} request(s)"
                    for m in busy
                )
            elif swapping:
                out[mid] = (
                    "waiting: another swap ("
                    + ", ".join(sorted(swapping))
                    + ") must finish"
                )
            else:
                out[mid] = "waiting"
        for held, blocked in self.scheduler.held().items():
            out.setdefault(
                held,
                f"held: no new requests until {blocked} (waiting longer than "
                "maxWait) gets its turn",
            )
        return out

    # -- what handlers use ------------------------------------------------------------

    def admit(self, model_id: str, priority: int | None = None) -> Admission:
        """Admit one request for ``model_id`` or raise (Overloaded, ShuttingDown).

        The caller must ``release()`` the admission however the request ends.
        """
        if priority is None:
            priority = self.config.priority(model_id)
        # A quarantined model answers at once: no swap evicts others for it.
        self.upstreams[model_id].check_startable()
        ticket = Ticket(model_id, priority)
        granted = self._expect_grant(ticket)
        try:
            self.scheduler.submit(ticket)
        except BaseException:
            self._grants.pop(ticket.id, None)
            raise
        return self._admission(ticket, granted)

    def attach(self, model_id: str) -> Admission | None:
        """Hold ``model_id`` only if it is ready now and nothing is about to
        stop it (ignored websockets: they never load, queue or count against
        ``concurrencyLimit``, but the model stays up while they are open).
        None when it is not ready; otherwise ``release()`` it as any request."""
        ticket = Ticket(model_id, counted=False)
        granted = self._expect_grant(ticket)
        if not self.scheduler.attach(ticket):
            self._grants.pop(ticket.id, None)
            return None
        return self._admission(ticket, granted)

    def _expect_grant(self, ticket: Ticket) -> asyncio.Future[Upstream]:
        granted: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        self._grants[ticket.id] = granted
        return granted

    def _admission(
        self, ticket: Ticket, granted: asyncio.Future[Upstream]
    ) -> Admission:
        return Admission(
            ticket, granted, self.scheduler, self._release, self._granted_after
        )

    def _granted_after(self, model: str, waited_s: float) -> None:
        for listener in self.grant_listeners:
            listener(model, waited_s)

    @asynccontextmanager
    async def lease(
        self, model_id: str, priority: int | None = None
    ) -> AsyncIterator[Upstream]:
        """Hold a grant to proxy one request to ``model_id``'s ready server."""
        admission = self.admit(model_id, priority)
        try:
            yield await admission.granted()
        finally:
            admission.release()

    def _release(self, ticket: Ticket) -> None:
        self._grants.pop(ticket.id, None)
        self.scheduler.release(ticket)

    def _new_upstream(self, config: Config, mid: str) -> Upstream:
        spec = config.launch_spec(mid)
        keeper = self._keeper(config, mid, spec)
        return Upstream(
            mid,
            spec,
            self.backends.get(
                config.models[mid].backend_kind, config.models[mid].engine_url
            ),
            start_deadline_s=config.start_deadline_s(mid),
            unload_grace_s=config.unload_grace_s(mid),
            ttl_s=config.ttl_s(mid),
            on_change=self._on_state_change,
            logs=self._model_logs(mid),
            supervision=supervision(config, mid),
            slots=keeper,
            on_slots=self._slots_done,
            sleep=sleep_spec(config.models[mid].sleep),
            sleep_ttl_s=config.models[mid].sleep_ttl,
        )

    def _keeper(self, config: Config, mid: str, spec: LaunchSpec) -> SlotKeeper | None:
        if not config.models[mid].keep_slots:
            return None
        return SlotKeeper(self._slot_store, mid, launch_fingerprint(spec))

    def _slots_done(self, model: str, report: SlotReport) -> None:
        for listener in self.slot_listeners:
            listener(model, report)

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a reloaded config; returns the ids of models that will restart.

        Models whose launch settings are unchanged keep running and keep their
        requests. Changed and removed ones are stopped once their requests
        drain; no model starts until they have stopped (they may hold the
        port, or the GPU memory, the new one needs).
        """
        old = self.config
        budget = self._budget(config)
        self._slot_store = slot_store(config)
        # Everything that can fail (a backend that cannot be made) happens
        # before anything changes: a failed reload leaves the old one whole.
        kept = {
            mid: current
            for mid in config.models
            if (current := self.upstreams.get(mid)) is not None
            and old.launch_spec(mid) == config.launch_spec(mid)
        }
        upstreams = {
            mid: kept.get(mid) or self._new_upstream(config, mid)
            for mid in sorted(config.models)
        }
        for mid, current in kept.items():
            current.update(
                ttl_s=config.ttl_s(mid),
                unload_grace_s=config.unload_grace_s(mid),
                start_deadline_s=config.start_deadline_s(mid),
                supervision=supervision(config, mid),
            )
            current.sleep_spec = sleep_spec(config.models[mid].sleep)
            current.sleep_ttl_s = config.models[mid].sleep_ttl
            current.slots = self._keeper(config, mid, current.spec)
            if old.models[mid] != config.models[mid]:
                current.clear_quarantine()  # its config changed: try again
        retired: list[str] = []
        for mid, upstream in self.upstreams.items():
            if upstreams.get(mid) is not upstream:
                retired.append(mid)
                starting = self._starting.get(mid)
                if starting is not None and starting[0] is upstream:
                    # A swap is waiting for this one's start: it switches to
                    # the replacement (never restarting a retired upstream).
                    starting[1].cancel()
                if self.ledger is not None:
                    self.ledger.retire(mid)
                self._retire(upstream)
        self.config = config
        self.upstreams = upstreams
        policy = self._policy(config, budget)
        self.scheduler.reconfigure(policy, config.concurrency_limit, set(config.models))
        return retired

    def _retire(self, upstream: Upstream) -> None:
        task = asyncio.create_task(upstream.retire(), name=f"retire {upstream.id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def unload(self, model_ids: Set[str] | None = None) -> None:
        """Stop these models (all when None), failing requests waiting for them."""
        ids = set(self.upstreams) if model_ids is None else set(model_ids)
        self.scheduler.unload(ids)
        for mid in ids:
            self.upstreams[mid].clear_quarantine()
        await asyncio.gather(*(self.upstreams[m].stop() for m in sorted(ids)))
        self.scheduler.drain()

    async def aclose(self, grace_cap: float | None = None) -> None:
        """Shutdown: fail waiting requests, let nothing start again, wait for
        every start and stop in progress, stop what exists (each with at most
        ``grace_cap`` seconds before the kill), close the backends. One
        failure never skips the rest."""
        self._closing = True
        self.scheduler.shutdown()
        closing = [u.close(grace_cap) for u in self.upstreams.values()]
        results = await asyncio.gather(*closing, return_exceptions=True)
        # Swaps end on their own now: a doomed swap never starts its target.
        results += await asyncio.gather(*self._tasks, return_exceptions=True)
        results += await asyncio.gather(*self._retiring, return_exceptions=True)
        for failed in results:
            if isinstance(failed, BaseException):
                log.error("shutdown: %r", failed)
        await self.backends.aclose()

    # -- Effects (called synchronously by the scheduler) ----------------------

    def state_of(self, model_id: str) -> UpstreamState:
        """Advisory: for choosing and reporting, never for deciding a start."""
        return self.upstreams[model_id].state

    def status(self) -> dict[str, ModelStatus]:
        """Every current model's state and in-flight count, by id (advisory)."""
        return {
            m: ModelStatus(u.state, u.in_flight, u.active_quarantine(), u.asleep_since)
            for m, u in self.upstreams.items()
        }

    def saved_slots(self) -> dict[str, SlotFiles]:
        """What each keepSlots model has saved on disk (reads the disk)."""
        return {m: u.slots.saved() for m, u in self.upstreams.items() if u.slots}

    def queue_depth(self) -> int:
        """Requests waiting for a swap they may not start yet (advisory)."""
        return len(self.scheduler.queued())

    def refuse_waiting(self) -> None:
        """Shutdown begins: refuse new requests and fail every waiting one;
        requests being served may finish."""
        self.scheduler.shutdown()

    def ready_urls(self) -> dict[str, str]:
        """Each ready model's server address, in model order (advisory)."""
        return {
            m: u.base_url
            for m, u in self.upstreams.items()
            if u.state is UpstreamState.READY
        }

    def running(self) -> Set[str]:
        return {m for m, u in self.upstreams.items() if u.running}

    def is_ready(self, model: str) -> bool:
        return self.upstreams[model].state is UpstreamState.READY

    def start_swap(self, target: str, evict: frozenset[str]) -> None:
        if self.ledger is not None:
            self.ledger.commit(target, evict)
            self.upstreams[target].devices = self.ledger.devices_for(target)
        else:
            when = time.strftime("%H:%M:%S")
            rules = self.config.routing_engine()[0]
            for m in evict:
                self._note(m, f"evicted at {when} to start {target} ({rules} rules)")
        task = asyncio.create_task(self._swap(target, evict), name=f"swap to {target}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def grant(self, ticket: Ticket) -> None:
        upstream = self.upstreams[ticket.model]
        if self.ledger is not None:
            self.ledger.used(ticket.model)
        if ticket.counted:
            upstream.acquire()
        # Remembered so the release reaches this Upstream even if a config
        # reload has put a new one under the same id meanwhile.
        self._serving[ticket.id] = upstream
        granted = self._grants.get(ticket.id)
        if granted is not None and not granted.done():
            granted.set_result(upstream)

    def reject(self, ticket: Ticket, error: ControllerError) -> None:
        granted = self._grants.get(ticket.id)
        if granted is not None and not granted.done():
            granted.set_exception(error)

    def finished(self, ticket: Ticket) -> None:
        upstream = self._serving.pop(ticket.id)
        if ticket.counted:
            upstream.release()
            if self.ledger is not None:
                self._after_request(upstream)

    def _after_request(self, upstream: Upstream) -> None:
        assert self.ledger is not None
        self.ledger.used(upstream.id)
        seen = self._requests_since_load.get(upstream.id, MEASURED_REQUESTS)
        if seen < MEASURED_REQUESTS:
            self._requests_since_load[upstream.id] = seen + 1
            self._measure_soon(upstream)

    # -- internals ------------------------------------------------------------------

    async def _swap(self, target: str, evict: frozenset[str]) -> None:
        error: ControllerError | None = None
        began = time.monotonic()
        try:
            if evict:
                log.info(
                    "swap: stopping %s to start %s", ", ".join(sorted(evict)), target
                )
            # Stop nothing for a start that cannot happen.
            await self._check_engine(target)
            # What must come back, known before the evicted models let go.
            needed = memory_needed(self.ledger, target, evict) if self.ledger else None
            # Each evicted model sleeps if it can, else stops.
            stops = self.ledger.eviction_stops(evict, target) if self.ledger else {}
            await asyncio.gather(
                *(
                    self._make_room(u, stops.get(m))
                    for m in evict
                    if (u := self.upstreams.get(m)) is not None
                )
            )
            await self._memory_settled(target, needed)
            await self._ensure_current(target)
        except ControllerError as exc:
            error = exc
        except Exception as exc:  # a task's top level: log, then report
            log.exception("swap to %s failed", target)
            error = UpstreamStartError(f"model {target} failed to start: {exc!r}")
        if error is None:
            for listener in self.swap_listeners:
                listener(target, time.monotonic() - began)
        elif self.ledger is not None:
            # Its reservation is void unless it runs; evicted models that
            # still run (the swap failed before stopping them) count again.
            self.ledger.abandon(target, evict, self._holding({target, *evict}))
            self._note(target, f"start failed: {error.message}")
        self.scheduler.swap_done(target, error, self._residency_hold(target, error))

    def _make_room(self, upstream: Upstream, stop: bool | None) -> Awaitable[None]:
        """Evict one model; ``stop`` None: as the group and matrix engines do
        (sleep if it can); else the memory engine's choice."""
        if stop is None:
            return upstream.make_room()
        return upstream.make_room(stop=stop, reason="memory")

    def _holding(self, models: Set[str]) -> set[str]:
        """Those of ``models`` whose servers still exist (running or asleep)."""
        return {
            m
            for m in models
            if (u := self.upstreams.get(m)) is not None
            and (u.running or u.state is UpstreamState.SLEEPING)
        }

    def _residency_hold(
        self, target: str, error: ControllerError | None
    ) -> Ticket | None:
        """fifo minResidency: a model just loaded is held (as if busy) that
        long, so the next swap cannot evict it at once."""
        seconds = self.config.min_residency_s
        if error is not None or seconds <= 0 or self._closing:
            return None
        hold = Ticket(target, counted=False)
        asyncio.get_running_loop().call_later(seconds, self.scheduler.release, hold)
        return hold

    async def _check_engine(self, target: str) -> None:
        """A container model whose engine is unreachable: 503 naming the
        engine before any other model is stopped for it."""
        upstream = self.upstreams.get(target)
        check = getattr(upstream.backend, "check_engine", None) if upstream else None
        if upstream is None or check is None:
            return
        try:
            await check(upstream.spec)
        except BackendUnavailable as exc:
            raise UpstreamStartError(f"model {target} failed to start: {exc}") from exc

    async def _ensure_current(self, target: str) -> None:
        """Make ``target``'s current upstream ready.

        A reload may replace the upstream meanwhile: then the wait for the old
        one is abandoned (it is retired, and must not be started again) and,
        once every retired upstream has stopped, the replacement is started.
        Returns only while the upstream it made ready is still the current one.
        """
        while True:
            if self._retiring:
                await asyncio.wait(list(self._retiring))
            upstream = self.upstreams.get(target)
            if upstream is None:
                raise ModelUnloaded(f"model {target} was removed from the config")
            if self.scheduler.doomed(target):
                # Unloaded (or shutdown began) while the swap stopped others.
                if self._closing:
                    raise ShuttingDown("swapvisor is shutting down")
                raise ModelUnloaded(f"model {target} was unloaded")
            wait = asyncio.create_task(upstream.ensure_ready(), name=f"ready {target}")
            self._starting[target] = (upstream, wait)
            try:
                await asyncio.wait([wait])
            except asyncio.CancelledError:
                wait.cancel()
                raise
            finally:
                if self._starting.get(target, (None,))[0] is upstream:
                    del self._starting[target]
            if wait.cancelled():
                continue
            if self.upstreams.get(target) is upstream:
                wait.result()  # raises if the start failed
                return
            wait.exception()  # a replaced upstream's outcome no longer matters

    def _on_state_change(
        self, upstream: Upstream, old: UpstreamState, new: UpstreamState
    ) -> None:
        log.debug("%s: %s -> %s", upstream.id, old.value, new.value)
        self.scheduler.invalidate()
        if self.state_listeners:
            change = StateChange(
                upstream.id,
                old,
                new,
                reason=upstream.stop_reason if new is UpstreamState.STOPPING else "",
                load_s=upstream.last_start_s if old is UpstreamState.STARTING else None,
            )
            for listener in self.state_listeners:
                listener(change)
        if self.ledger is not None:
            self._account(upstream, new)
        if new in (UpstreamState.STOPPED, UpstreamState.FAILED):
            self.scheduler.drain()
        if old is UpstreamState.STOPPING and new is UpstreamState.FAILED:
            self._restart_if_kept(upstream)

    def _account(self, upstream: Upstream, new: UpstreamState) -> None:
        """Keep the ledger's allocations true to the model's state."""
        ledger = self.ledger
        assert ledger is not None
        mid = upstream.id
        current = self.upstreams.get(mid)
        if new in (UpstreamState.STOPPED, UpstreamState.FAILED):
            if current is not upstream:  # a server a reload retired
                ledger.stopped(retired_key(mid))
            elif mid not in self.scheduler.swapping():
                # (a swap that will start it again keeps what it reserved)
                ledger.stopped(mid)
                for listener in self.memory_listeners:
                    listener(mid, None)
            return
        if current is not upstream:
            return  # a retired upstream: its replacement owns the entry
        if new is UpstreamState.READY:
            self._requests_since_load[mid] = 0
            self._measure_soon(upstream)
        elif new is UpstreamState.SLEEPING:
            ledger.asleep(mid)
            self._measure_soon(upstream)

    def _restart_if_kept(self, upstream: Upstream) -> None:
        """A preloaded or persistent model that died while idle starts again
        at once (a crash loop ends in quarantine, which refuses the lease)."""
        mid = upstream.id
        if self._closing or self.upstreams.get(mid) is not upstream:
            return
        if mid not in self.config.kept_loaded():
            return
        task = asyncio.create_task(self._restart(mid), name=f"restart {mid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, mid: str) -> None:
        try:
            async with self.lease(mid):
                log.info("%s restarted after it died", mid)
        except ControllerError as exc:
            log.warning("%s: restart failed: %s", mid, exc.message)
