"""A stateful property test of the memory engine (``use: resources``).

"Random arrivals and sizes never exceed the budget by measured figures, never
evict a busy or persistent model, and every request is eventually served or
refused with a reason."

The router runs over the scripted backend with a budget of two 10 GiB GPUs
and 16 GiB of RAM, on a machine of two 12 GiB GPUs and 64 GiB of RAM.
Hypothesis chooses 4-6 models: each has a hidden *true* size (VRAM in all,
host RAM; now and then more than a GPU, both GPUs or the RAM budget hold),
declared ``needs`` that are absent (learned: the first load runs alone),
complete, partial, above or below the truth, and maybe pinned GPUs. ``m0``,
a small model, is the one member of a persistent group
(``routing.router.settings.groups``). A started workload of a model
holds its true size: its VRAM split over the GPUs the ledger placed it on
(``LaunchSpec.devices``) in proportion to the placement, or, when it was given
none, evenly over its pins (all GPUs when unpinned); it reports a fake pid and
its RAM through the scripted backend's footprint, and the fake memory probe
lists that pid's VRAM as NVML would.

A workload *overruns* a resource (a GPU, or RAM) when, at its start, its true
size there exceeds what the ledger planned for it there: its model's
estimate was below its truth (declared too small, or a kind left undeclared
and not yet learned), or it was unknown and bigger than the room it was given
to run alone in. Only an overrun can make swapvisor overcommit a resource,
and only until that workload stops (once measured, the ledger counts it
whole and plans around it).

Rules: request arrivals (admitted, granted and then held in flight until
finished; some arrive, alone or several at once, while earlier swaps are
still under way), completions, waiting for operations to settle, unloads
(one model or all), crashes, starts that fail, and freed VRAM that lingers
for a few readings (the driver's lazy release: a start waits for it, for
50 ms here instead of 10 s). After every step:

1. Budget, per resource (each GPU, RAM). By what swapvisor knows, at every
   step: the ledger's allocations of the models that hold memory (allocated
   and not leaving) never exceed the budget of a resource that none of their
   unreaped workloads overruns. By measured figures, once operations
   settle: the true sizes of the live workloads (what the ledger was told by
   measuring them) never exceed the budget of a resource that none of them
   overruns; every live workload belongs to a model the ledger counts, every
   model it counts is running, and every ready model's last measurement is
   its true size.
2. A model with a request in flight is never stopped by a swap (a stop with
   reason ``swap`` or ``memory``).
3. The persistent model, once loaded, is never evicted.
4. Every admitted request ends granted or refused with a ``ControllerError``
   whose code is set: once operations settle, a request that is neither
   granted nor refused waits in the queue for a model that has a request in
   flight (none waits when nothing is in flight); a refusal for memory
   (``insufficient_memory``) names the model and what it needs; and a model
   whose estimate exceeds the whole budget is never started.

Derandomized with a fixed number of examples, so CI runs the same few
seconds every time. A wider search by hand::

    SWAPVISOR_RESOURCES_EXAMPLES=2000 SWAPVISOR_RESOURCES_STEPS=50 \\
        .venv/bin/pytest --timeout 0 tests/engine/test_resources_properties.py

(``SWAPVISOR_RESOURCES_RANDOM=1`` also draws fresh random examples instead
of the derandomized ones; ``--hypothesis-show-statistics`` shows how often
models shared a resource under check, were evicted, waited or were refused.)
Asyncio timing (health polls, the probe's worker threads) can change an
interleaving between runs: a failure Hypothesis calls flaky is still a
failure of the invariant it names. Examples it found are kept below as
plain tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from backends.base import Footprint
from backends.memory import DeviceMemory, HostMemory
from controller.config.loader import parse_config
from controller.engine import router as router_module
from controller.engine.pool import BackendPool
from controller.engine.resources import GIB, Ledger
from controller.engine.router import Router
from controller.engine.states import UpstreamState
from controller.errors import ControllerError
from tests.fakes.scripted_backend import ScriptedBackend, start_error

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from backends.base import Handle, LaunchSpec
    from backends.memory import MemoryProbe
    from controller.engine.resources import Allocation
    from controller.engine.states import StateChange

S = UpstreamState
T = TypeVar("T")

UNIT = GIB // 2
GPUS = (0, 1)
BUDGET_GPU = 10 * GIB
BUDGET_RAM = 16 * GIB
MACHINE_GPU = 12 * GIB
MACHINE_RAM = 64 * GIB
# A start waits this long (instead of 10 s) for freed memory to show up.
MEMORY_WAIT_S = 0.05
MEMORY_POLL_S = 0.002
PERSISTENT = "m0"
SETTLE_S = 5.0
# What a refusal may say, by code.
CODES = {
    "insufficient_memory",  # never fits, or not beside the persistent model
    "model_unloaded",  # the unload rule
    "upstream_start_failed",  # the failing-start rule
    "concurrency_limit",  # more than concurrencyLimit (10) at once
}


@dataclass(frozen=True)
class ModelSpec:
    """One model: its hidden true size, declared needs and pins."""

    vram: int
    ram: int
    declared_vram: int | None
    declared_ram: int | None
    declared: bool  # a ``needs`` block at all
    pins: tuple[int, ...] | None

    def yaml(self, mid: str) -> str:
        parts = [f'cmd: "srv {mid}"', 'proxy: "http://127.0.0.1:9"']
        if self.pins is not None:
            parts.append(f"gpus: [{', '.join(map(str, self.pins))}]")
        if self.declared:
            needs = []
            if self.declared_vram is not None:
                needs.append(f"vram: {self.declared_vram}")
            if self.declared_ram is not None:
                needs.append(f"ram: {self.declared_ram}")
            parts.append(f"needs: {{{', '.join(needs)}}}")
        return f"  {mid}: {{{', '.join(parts)}}}"


@st.composite
def model_specs(draw: st.DrawFn, *, small: bool = False) -> ModelSpec:
    """Mostly what fits beside another model on a GPU (10 GiB) and in RAM
    (16 GiB); sometimes more than one GPU holds, or more than the RAM budget.
    ``small``: the persistent model, which everything else must fit beside."""
    if small:
        vram = draw(st.integers(0, 8)) * UNIT
        ram = draw(st.integers(0, 6)) * UNIT
    else:
        # Up to 11.5 GiB (more than one GPU holds), or 22 GiB (more than both).
        vram = draw(st.integers(0, 24).map(lambda u: 44 if u == 24 else u)) * UNIT
        # Up to 7.5 GiB, or 17 GiB (more than the RAM budget).
        ram = draw(st.integers(0, 16).map(lambda u: 34 if u == 16 else u)) * UNIT
    pins = draw(st.sampled_from((None, None, (0,), (1,), (0, 1))))
    kind = draw(
        st.sampled_from(("learned", "declared", "declared", "vram only", "ram only"))
    )

    def near(true: int) -> int:  # now and then below the truth: it overruns
        return max(0, true + draw(st.sampled_from((0, 1, 2, 4, -1, -4))) * UNIT)

    return ModelSpec(
        vram=vram,
        ram=ram,
        declared_vram=near(vram) if kind in ("declared", "vram only") else None,
        declared_ram=near(ram) if kind in ("declared", "ram only") else None,
        declared=kind != "learned",
        pins=pins,
    )


def config_text(models: dict[str, ModelSpec], learned: Path) -> str:
    gpus = ", ".join(f"{{index: {i}, memory: {BUDGET_GPU}}}" for i in GPUS)
    lines = [
        "livenessInterval: 0",
        "crashLoop: {failures: 0}",
        "routing:",
        "  router:",
        "    use: resources",
        "    settings:",
        f"      groups: {{keep: {{persistent: true, members: [{PERSISTENT}]}}}}",
        "      resources:",
        f"        gpus: [{gpus}]",
        f"        ram: {BUDGET_RAM}",
        f"        learnedFile: {learned}",
        "models:",
    ]
    lines += [spec.yaml(mid) for mid, spec in models.items()]
    return "\n".join(lines) + "\n"


# -- a machine whose memory follows the scripted workloads -------------------------


@dataclass
class Holding:
    """What one started workload holds, and whether its plan covered it."""

    model: str
    ref: str
    pid: int
    ram: int
    vram: dict[int, int]
    planned: Allocation | None
    overruns: frozenset[str]  # "RAM", "GPU <i>": true size above the plan


def split(
    total: int,
    devices: tuple[int, ...] | None,
    planned: Allocation | None,
    pins: tuple[int, ...] | None,
) -> dict[int, int]:
    """Where a workload's ``total`` VRAM lands: over the GPUs it was placed
    on, in proportion to the placement (the remainder on the largest share);
    unplaced (no CUDA_VISIBLE_DEVICES), evenly over the GPUs it can see."""
    if total <= 0:
        return {}
    weights = {i: planned.devices.get(i, 0) for i in devices or ()} if planned else {}
    if not devices or sum(weights.values()) <= 0:
        seen = devices or pins or GPUS
        share, extra = divmod(total, len(seen))
        out = {i: share + (1 if n < extra else 0) for n, i in enumerate(seen)}
    else:
        whole = sum(weights.values())
        out = {i: total * w // whole for i, w in weights.items()}
        largest = max(weights, key=lambda i: (weights[i], -i))
        out[largest] += total - sum(out.values())
    return {i: b for i, b in out.items() if b}


class MemoryBackend(ScriptedBackend):
    """The scripted backend whose workloads hold their model's true size."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        super().__init__()
        self.specs = specs
        # The ledger's allocation for a model (set once the router exists).
        self.plan_of: Callable[[str], Allocation | None] = lambda _m: None
        self.on_start: Callable[[str], None] = lambda _m: None
        self.holdings: dict[str, Holding] = {}  # by workload ref

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        handle = await super().start(model, spec)
        self.on_start(model)
        truth = self.specs[model]
        planned = self.plan_of(model)
        vram = split(truth.vram, spec.devices, planned, truth.pins)
        ram_plan = planned.ram if planned else 0
        gpu_plan = planned.devices if planned else {}
        overruns = frozenset(
            [f"GPU {i}" for i, b in vram.items() if b > gpu_plan.get(i, 0)]
            + (["RAM"] if truth.ram > ram_plan else [])
        )
        pid = 10_000 + int(handle.ref.lstrip("w"))
        self.holdings[handle.ref] = Holding(
            model, handle.ref, pid, truth.ram, vram, planned, overruns
        )
        self.footprints[model] = Footprint(frozenset({pid}), truth.ram)
        return handle

    def live(self) -> list[Holding]:
        """Workloads alive now: they hold their memory. (Snapshots: the
        probe calls this from worker threads.)"""
        workloads = dict(self.workloads)
        return [
            h
            for ref, h in list(self.holdings.items())
            if (w := workloads.get(ref)) is not None and w.alive
        ]

    def current(self) -> list[Holding]:
        """Workloads not yet stopped (alive, or dead and not yet reaped)."""
        return [h for ref, h in self.holdings.items() if ref in self.workloads]


class FakeMemory:
    """A ``MemoryProbe`` whose figures are what the live workloads hold.

    ``linger``: the driver's lazy release, as ``FakeNvml.remove_process``
    plays it: a workload that exits is no longer listed, but its VRAM still
    shows as used for that many more ``devices()`` readings. Called from
    worker threads (``asyncio.to_thread``): it reads snapshots and locks its
    own state."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.linger = 0
        self._lock = threading.Lock()
        self._seen: dict[int, dict[int, int]] = {}  # pid -> VRAM, last reading
        self._lingering: dict[int, tuple[dict[int, int], int]] = {}

    def host(self) -> HostMemory:
        used = sum(h.ram for h in self.backend.live())
        return HostMemory(MACHINE_RAM, max(0, MACHINE_RAM - used))

    def devices(self) -> list[DeviceMemory]:
        live = self.backend.live()
        with self._lock:
            now = {h.pid: h.vram for h in live if h.vram}
            for pid, vram in self._seen.items():
                if pid not in now and self.linger > 0:
                    self._lingering[pid] = (vram, self.linger)
            self._seen = now
            held = [*now.values(), *(v for v, _ in self._lingering.values())]
            self._lingering = {
                pid: (v, left - 1)
                for pid, (v, left) in self._lingering.items()
                if left > 1
            }
        return [
            DeviceMemory(i, MACHINE_GPU, sum(v.get(i, 0) for v in held)) for i in GPUS
        ]

    def processes(self) -> dict[int, dict[int, int]]:
        return {h.pid: dict(h.vram) for h in self.backend.live() if h.vram}


if TYPE_CHECKING:
    _probe: type[MemoryProbe] = FakeMemory


# -- the state machine ----------------------------------------------------------------


@dataclass
class Request:
    model: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    granted: bool = False
    error: ControllerError | None = None


def total_budget(pins: tuple[int, ...] | None) -> int:
    return BUDGET_GPU * len(pins if pins is not None else GPUS)


class ResourcesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="swapvisor-resources-"))
        self.specs: dict[str, ModelSpec] = {}
        self.models: list[str] = []
        self.backend = MemoryBackend(self.specs)
        self._router: Router | None = None
        self.requests: list[Request] = []
        self.background: list[asyncio.Task[None]] = []
        self.violations: list[str] = []
        self.settled = True
        self.probe = FakeMemory(self.backend)
        self.waited: list[float] = []  # how long starts waited for memory
        # Freed memory that lingers: starts wait briefly, not 10 s.
        self._patched = (router_module.MEMORY_WAIT_S, router_module.MEMORY_POLL_S)
        router_module.MEMORY_WAIT_S = MEMORY_WAIT_S
        router_module.MEMORY_POLL_S = MEMORY_POLL_S

    @property
    def router(self) -> Router:
        assert self._router is not None
        return self._router

    @property
    def ledger(self) -> Ledger:
        ledger = self.router.ledger
        assert ledger is not None
        return ledger

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @initialize(
        persistent=model_specs(small=True),
        others=st.lists(model_specs(), min_size=3, max_size=5),
    )
    def build(self, persistent: ModelSpec, others: list[ModelSpec]) -> None:
        specs = [persistent, *others]
        self.specs.update({f"m{n}": spec for n, spec in enumerate(specs)})
        self.models = list(self.specs)
        text = config_text(self.specs, self.tmp / "learned.json")

        async def make() -> Router:
            config = parse_config(text).config
            assert config.never_evicted() == {PERSISTENT}
            return Router(config, BackendPool(self.backend, "p"), memory=self.probe)

        self._router = self.run(make())
        self.router.state_listeners.append(self._on_change)
        self.router.memory_wait_listeners.append(lambda _m, s: self.waited.append(s))
        self.backend.plan_of = self.ledger.allocations.get
        self.backend.on_start = self._check_fits

    def _pick(self, n: int) -> str:
        return self.models[n % len(self.models)]

    # -- watching ------------------------------------------------------------------

    def _on_change(self, change: StateChange) -> None:
        if change.new is not S.STOPPING or change.reason not in ("swap", "memory"):
            return
        mid = change.model
        upstream = self.router.upstreams[mid]
        busy = self.router.scheduler.in_flight(mid)
        if upstream.in_flight or busy:
            self.violations.append(
                f"{mid} stopped by a swap with {busy} request(s) in flight"
            )
        event("a model was evicted for memory")
        if mid == PERSISTENT:
            self.violations.append(f"persistent {mid} evicted ({change.reason})")

    async def _serve(self, req: Request) -> None:
        try:
            async with self.router.lease(req.model):
                req.granted = True
                await req.done.wait()
        except ControllerError as exc:
            req.error = exc

    def _check_fits(self, mid: str) -> None:
        """A model started with an estimate fits the budget at all."""
        need = self.ledger.estimate(mid)
        if need is None:
            return
        pins = self.specs[mid].pins
        if need.ram > BUDGET_RAM or need.vram > total_budget(pins):
            self.violations.append(f"{mid} started though it never fits: {need}")

    # -- driving -------------------------------------------------------------------

    @rule(n=st.integers(0, 5), wait=st.booleans())
    def request(self, n: int, wait: bool) -> None:
        """A request arrives (and is held in flight once granted); with
        ``wait`` false the next step comes while its swap is under way."""
        req = Request(self._pick(n))
        req.task = self.loop.create_task(self._serve(req))
        self.requests.append(req)
        if wait:
            self.settle()
        else:
            self.run(self._ticks(3))
            self.settled = False

    @rule(ns=st.lists(st.integers(0, 5), min_size=2, max_size=4))
    def burst(self, ns: list[int]) -> None:
        """Several requests arrive at once; the next step comes while their
        swaps are under way."""
        for n in ns:
            req = Request(self._pick(n))
            req.task = self.loop.create_task(self._serve(req))
            self.requests.append(req)
        self.run(self._ticks(3))
        self.settled = False

    @rule(n=st.integers(0, 9))
    def finish(self, n: int) -> None:
        """A request in flight ends (none: nothing happens). Drawn by
        position, not from the list, so a replay draws the same data even if
        timing granted a different set of requests."""
        held = [r for r in self.requests if r.granted and not r.done.is_set()]
        if held:
            held[n % len(held)].done.set()
        self.settle()

    @rule()
    def finish_all(self) -> None:
        for req in self.requests:
            req.done.set()
        self.settle()
        pending = [r.model for r in self.requests if r.task and not r.task.done()]
        assert not pending, f"requests that never ended: {pending}"

    @rule()
    def wait_until_settled(self) -> None:
        self.settle()

    @rule(n=st.one_of(st.none(), st.integers(0, 5)))
    def unload(self, n: int | None) -> None:
        models = None if n is None else {self._pick(n)}
        self.background.append(self.loop.create_task(self.router.unload(models)))
        self.settle()

    @rule(n=st.integers(0, 5))
    def crash(self, n: int) -> None:
        self.backend.die(self._pick(n))
        self.settle()

    @rule(reads=st.integers(0, 4))
    def linger(self, reads: int) -> None:
        """From now on, the VRAM of a workload that exits still shows as used
        for ``reads`` more readings."""
        self.probe.linger = reads

    @rule(n=st.integers(0, 5), broken=st.booleans())
    def starts_fail(self, n: int, broken: bool) -> None:
        fail = self.backend.script(self._pick(n)).fail
        if broken:
            fail["start"] = start_error()
        else:
            fail.pop("start", None)

    # -- settling ------------------------------------------------------------------

    async def _ticks(self, n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    def _in_progress(self) -> list[str]:
        """Starts, stops, swaps, measurements and unloads not yet over."""
        out = [
            f"{u.id} {u.state.value}"
            for u in self.router.upstreams.values()
            if u.state in (S.STARTING, S.STOPPING)
        ]
        out += [f"swap to {t}" for t in self.router.scheduler.swapping()]
        out += [
            t.get_name()
            for t in self.router._tasks
            if t.get_name().startswith("measure ") and not t.done()
        ]
        out += ["unload" for t in self.background if not t.done()]
        return out

    def settle(self) -> None:
        """Run the loop until nothing is in progress for a few rounds (a
        request that waits for a busy model is a wait, not a transition)."""

        async def until_quiet() -> None:
            calm = 0
            try:
                async with asyncio.timeout(SETTLE_S):
                    while calm < 3:
                        await self._ticks(5)
                        calm = 0 if self._in_progress() else calm + 1
                        await asyncio.sleep(0.001)
            except TimeoutError:
                raise AssertionError(
                    f"still in progress after {SETTLE_S} s: {self._in_progress()}"
                ) from None

        self.run(until_quiet())
        self.settled = True

    # -- checking ------------------------------------------------------------------

    def _overrun(self, models: set[str]) -> set[str]:
        """The resources that unreaped workloads of ``models`` overrun."""
        return {
            r for h in self.backend.current() if h.model in models for r in h.overruns
        }

    @invariant()
    def allocations_fit_the_budget(self) -> None:
        if self._router is None:
            return
        ledger = self.ledger
        holders = ledger.holders("")
        overrun = self._overrun(set(holders))
        if overrun:
            event("a holder was planned below its true size")
        ram, gpus = ledger.room(holders)
        held = {m: ledger.allocations[m] for m in holders}
        if "RAM" not in overrun:
            assert ram >= 0, f"RAM overcommitted by {-ram} bytes: {held}"
        for i, left in gpus.items():
            if f"GPU {i}" not in overrun:
                assert left >= 0, f"GPU {i} overcommitted by {-left} bytes: {held}"

    @invariant()
    def measured_sizes_fit_the_budget(self) -> None:
        if self._router is None or not self.settled:
            return
        ledger = self.ledger
        live = self.backend.live()
        holders = set(ledger.holders(""))
        running = {m for m, u in self.router.upstreams.items() if u.running}
        uncounted = sorted({h.model for h in live} - holders)
        assert not uncounted, f"live workloads the ledger does not count: {uncounted}"
        assert holders <= running, f"counted but not running: {holders - running}"
        for h in live:
            if self.router.upstreams[h.model].state is not S.READY:
                continue
            measured = ledger.facts[h.model].measured
            assert measured is not None, f"{h.model} ready but never measured"
            assert (measured.ram, dict(measured.vram)) == (h.ram, h.vram), (
                f"{h.model}: measured {measured}, holds RAM {h.ram}, VRAM {h.vram}"
            )
        overrun = self._overrun({h.model for h in live})
        sizes = {h.model: (h.ram, h.vram) for h in live}
        if any(w >= MEMORY_POLL_S for w in self.waited):
            event("a start waited for freed memory")
        for r in ("RAM", *(f"GPU {i}" for i in GPUS)):
            on = [h for h in live if (h.ram if r == "RAM" else h.vram.get(int(r[4:])))]
            if len(on) > 1 and r not in overrun:
                event(f"models shared {r.split()[0]}, checked")
        ram = sum(h.ram for h in live)
        if "RAM" not in overrun:
            assert ram <= BUDGET_RAM, f"RAM {ram} > budget {BUDGET_RAM}: {sizes}"
        for i in GPUS:
            used = sum(h.vram.get(i, 0) for h in live)
            if f"GPU {i}" not in overrun:
                assert used <= BUDGET_GPU, f"GPU {i}: {used} > {BUDGET_GPU}: {sizes}"

    @invariant()
    def no_busy_or_persistent_model_evicted(self) -> None:
        assert not self.violations, self.violations
        if self._router is None:
            return
        scheduler = self.router.scheduler
        for target, evict in scheduler.swapping().items():
            assert PERSISTENT not in evict, f"swap to {target} evicts {PERSISTENT}"
            busy = [m for m in evict if scheduler.in_flight(m)]
            assert not busy, f"swap to {target} evicts busy {busy}"

    @invariant()
    def every_request_is_served_or_refused(self) -> None:
        if self._router is None:
            return
        for req in self.requests:
            assert req.task is not None
            if req.task.done():
                assert req.task.exception() is None, req.task.exception()
                assert req.granted or req.error is not None, req
            if req.error is None:
                continue
            code = req.error.code
            assert code in CODES, f"{req.model} refused with {code}: {req.error}"
            event(f"refused: {code}")
            if code == "insufficient_memory":
                assert req.error.message.startswith(f"model {req.model} needs ")
                assert (
                    "the budget has" in req.error.message
                    or f"stay loaded ({PERSISTENT})" in req.error.message
                ), req.error.message
        if not self.settled:
            return
        scheduler = self.router.scheduler
        queued = scheduler.queued()
        for ticket in queued:
            evict = scheduler.evictions(ticket.model)
            busy = [m for m in evict if scheduler.in_flight(m)]
            assert busy, f"{ticket.model} queued, waiting for nobody (evicts {evict})"
            event("a request waited for a busy model")
        waiting = {
            r.model
            for r in self.requests
            if not r.granted and r.task is not None and not r.task.done()
        }
        assert waiting <= {t.model for t in queued}, (waiting, queued)
        holding = [
            r
            for r in self.requests
            if r.granted and r.task is not None and not r.task.done()
        ]
        if not holding:
            assert not waiting, f"waiting with nothing in flight: {waiting}"

    def teardown(self) -> None:
        try:
            if self._router is not None:
                for req in self.requests:
                    req.done.set()
                self.run(asyncio.wait_for(self.router.aclose(), SETTLE_S))
            pending = [r.task for r in self.requests if r.task and not r.task.done()]
            pending += [t for t in self.background if not t.done()]
            if pending:
                self.run(asyncio.wait(pending, timeout=SETTLE_S))
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            router_module.MEMORY_WAIT_S, router_module.MEMORY_POLL_S = self._patched


ResourcesMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SWAPVISOR_RESOURCES_EXAMPLES", "60")),
    derandomize=not os.environ.get("SWAPVISOR_RESOURCES_RANDOM"),
    stateful_step_count=int(os.environ.get("SWAPVISOR_RESOURCES_STEPS", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResourcesMachine = ResourcesMachine.TestCase


# -- examples the machine found ------------------------------------------------------


async def test_a_measurement_that_frees_room_lets_a_waiting_request_in(
    tmp_path: Path,
) -> None:
    """A model never measured holds all that is left until it is measured. A
    request that arrives meanwhile queues behind it while it is busy; once
    the measurement shows it small, that request fits beside it and must not
    wait for its requests to end (the router drains the queue after a
    measurement)."""
    specs = {
        PERSISTENT: ModelSpec(0, 0, 0, 0, True, None),
        "a": ModelSpec(2 * GIB, 1 * GIB, None, None, False, None),  # learned
        "b": ModelSpec(2 * GIB, 1 * GIB, 2 * GIB, 1 * GIB, True, None),
    }
    backend = MemoryBackend(specs)
    config = parse_config(config_text(specs, tmp_path / "learned.json")).config
    router = Router(config, BackendPool(backend, "p"), memory=FakeMemory(backend))
    assert router.ledger is not None
    backend.plan_of = router.ledger.allocations.get
    measuring = backend.hold("footprint", "a")
    done = asyncio.Event()

    async def serve(model: str) -> None:
        async with router.lease(model):
            await done.wait()

    served_a = asyncio.create_task(serve("a"))
    async with asyncio.timeout(SETTLE_S):
        while router.scheduler.in_flight("a") == 0:
            await asyncio.sleep(0.001)
    served_b = asyncio.create_task(serve("b"))
    async with asyncio.timeout(SETTLE_S):
        while not router.scheduler.queued():
            await asyncio.sleep(0.001)
    assert router.scheduler.evictions("b") == {"a"}  # a holds everything, busy
    measuring.set()
    async with asyncio.timeout(SETTLE_S):
        while router.scheduler.in_flight("b") == 0:
            await asyncio.sleep(0.001)
    assert router.scheduler.in_flight("a") == 1  # a kept serving
    assert router.running() == {"a", "b"}
    done.set()
    await asyncio.gather(served_a, served_b)
    await router.aclose()
