"""The memory engine (``routing.router.use: resources``): what each model
needs, where it runs, and which idle models make room for it.

Owns the ``Ledger``: the budget (each GPU's memory and the host RAM swapvisor
may plan with, after ``reserve``), every model's declared, learned and
measured figures, what each loaded, starting or sleeping model holds (its
*allocation*), the least-recently-used order, and the last decision that
touched each model, in words. ``ResourcePolicy`` is the scheduler's
``EvictionPolicy`` over it. Everything here is synchronous and does no I/O
except ``LearnedStore``'s small JSON file: the router measures (through the
backends and ``backends.memory``) and reports, the ledger decides.

Planning a start (``Ledger.plan``):

1. The target's estimate: ``max(declared needs, learned peak)`` per kind; a
   model neither declared nor learned is *unknown* and runs alone the first
   time (it may take everything not held by a model that stays loaded).
2. Place it on the room left: its pinned GPUs (split as it was measured,
   else evenly), else the GPU whose room fits it most tightly, else spread
   over the GPUs with most room. RAM must fit too.
3. If it does not fit, add models to evict, least recently used first, idle
   before busy (a busy one makes the scheduler wait for it to drain), never a
   persistent one or a ``pin`` selector's model, until it does.
4. A model that does not fit even then can never start: ``InsufficientMemory``.

Committing a plan (``Ledger.commit``, when the swap starts) reserves the
target's allocation and marks the evicted models as leaving: their memory is
the target's from now on, so concurrent decisions never count it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from controller.config.sections import ram_fraction_or_bytes
from controller.engine.scheduler import MustWait
from controller.engine.slots import launch_fingerprint
from controller.errors import InsufficientMemory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Set
    from pathlib import Path

    from backends.base import LaunchSpec
    from backends.memory import DeviceMemory, HostMemory
    from controller.config.sections import Needs, ResourcesConfig

log = logging.getLogger("swapvisor.resources")

GIB = 1 << 30
RECENT_LOADS = 5  # learned figure: the largest of this many recent loads


RETIRED = "\0retired:"


def retired_key(model: str) -> str:
    """The ledger key of a reload-replaced server that still holds memory."""
    return RETIRED + model


def memory_fingerprint(spec: LaunchSpec) -> str:
    """``launch_fingerprint`` with the model's port taken out: what a server
    holds does not depend on the port ``${PORT}`` handed it this time."""
    port = urlsplit(spec.base_url).port
    if port is None:
        return launch_fingerprint(spec)
    pattern = re.compile(rf"(?<!\d){port}(?!\d)")
    argv = tuple(pattern.sub("${PORT}", a) for a in spec.argv)
    env = {k: pattern.sub("${PORT}", v) for k, v in spec.env.items()}
    return launch_fingerprint(replace(spec, argv=argv, env=env))


def fmt_bytes(n: int) -> str:
    """``9.5 GiB``, ``800 MiB``: sizes as people read them."""
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


@dataclass(frozen=True, slots=True)
class Need:
    """Memory in all: ``vram`` over every GPU the model uses, host ``ram``."""

    vram: int = 0
    ram: int = 0


@dataclass(frozen=True, slots=True)
class Measured:
    """One measurement: host memory of the process tree (None: unreadable)
    and accelerator memory per GPU index."""

    ram: int | None
    vram: Mapping[int, int] = field(default_factory=dict)
    at: float = 0.0  # wall-clock time
    # False: GPU memory could not be attributed (no pids for NVML to match):
    # unknown, which is not zero.
    vram_known: bool = True

    @property
    def vram_total(self) -> int:
        return sum(self.vram.values())


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a model holds (or is planned to hold): bytes per GPU, host RAM."""

    devices: Mapping[int, int]
    ram: int

    def covering(self, measured: Measured) -> Allocation:
        """The larger of this plan and what was measured, per GPU and RAM
        (the planned GPU part stays as it is when it could not be measured)."""
        devices = dict(self.devices)
        for index, used in measured.vram.items():
            devices[index] = max(devices.get(index, 0), used)
        return Allocation(devices, max(self.ram, measured.ram or 0))


@dataclass(frozen=True, slots=True)
class Budget:
    """Capacity after ``reserve``: host RAM and each GPU's memory."""

    ram: int
    gpus: Mapping[int, int]
    reserve_ram: int = 0
    reserve_vram: int = 0

    def describe(self) -> str:
        gpus = ", ".join(
            f"GPU {i}: {fmt_bytes(b)}" for i, b in sorted(self.gpus.items())
        )
        return f"RAM {fmt_bytes(self.ram)}" + (f", {gpus}" if gpus else "")


def budget_of(
    resources: ResourcesConfig, host_total: int, devices: Iterable[DeviceMemory]
) -> Budget:
    """The budget from the config, the host's RAM and NVML's GPUs."""
    fraction, fixed = ram_fraction_or_bytes(resources.ram)
    ram = int(host_total * fraction) if fraction is not None else (fixed or 0)
    reserve = resources.reserve
    if isinstance(resources.gpus, str):  # auto: every GPU NVML reports
        gpus = {d.index: d.total for d in devices}
    else:
        gpus = {g.index: g.memory for g in resources.gpus}
    return Budget(
        ram=max(0, ram - reserve.ram),
        gpus={i: max(0, b - reserve.vram) for i, b in gpus.items()},
        reserve_ram=reserve.ram,
        reserve_vram=reserve.vram,
    )


class LearnedStore:
    """Peak measured figures per launch fingerprint, kept across restarts.

    A JSON file; each fingerprint keeps the peaks of its last few loads, and
    its learned figure is their maximum (a model's footprint grows with
    context: the largest recent one is the safe estimate). ``path`` None:
    in memory only.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._data: dict[str, dict[str, object]] = self._read()

    def _read(self) -> dict[str, dict[str, object]]:
        if self._path is None:
            return {}
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("learned memory figures unreadable (%s): starting afresh", exc)
            return {}
        return raw if isinstance(raw, dict) else {}

    def peak(self, fingerprint: str) -> Measured | None:
        """The largest of the recent loads' peaks, per GPU and RAM."""
        loads = self._loads(fingerprint)
        if not loads:
            return None
        devices: dict[int, int] = {}
        for load in loads:
            for index, used in load.vram.items():
                devices[index] = max(devices.get(index, 0), used)
        ram = max((load.ram or 0) for load in loads)
        total = max(load.vram_total for load in loads)
        # Placement may differ between loads; the total is the largest one.
        if sum(devices.values()) > total and devices:
            devices = dict(max(loads, key=lambda m: m.vram_total).vram)
        known = any(load.vram_known for load in loads)
        return Measured(ram, devices, max(load.at for load in loads), known)

    def _loads(self, fingerprint: str) -> list[Measured]:
        entry = self._data.get(fingerprint)
        loads = entry.get("loads") if isinstance(entry, dict) else None
        out = []
        for load in loads if isinstance(loads, list) else []:
            try:
                vram = {int(k): int(v) for k, v in load.get("vram", {}).items()}
                ram = load.get("ram")
                out.append(
                    Measured(
                        None if ram is None else int(ram),
                        vram,
                        float(load.get("at", 0)),
                        bool(load.get("vram_known", True)),
                    )
                )
            except (AttributeError, TypeError, ValueError):
                continue  # a hand-edited entry: skip it
        return out

    def record(
        self, fingerprint: str, model: str, load_id: int, measured: Measured
    ) -> None:
        """Fold ``measured`` into this load's peak (``load_id`` names the
        load: unique across restarts). ``save`` writes it out."""
        entry = self._data.setdefault(fingerprint, {})
        entry["model"] = model
        loads = entry.get("loads")
        if not isinstance(loads, list):
            loads = []
        current = next(
            (x for x in loads if isinstance(x, dict) and x.get("load") == load_id), None
        )
        if current is None:
            current = {"load": load_id, "ram": None, "vram": {}, "at": measured.at}
            current["vram_known"] = False
            loads.append(current)
        if measured.ram is not None:
            current["ram"] = max(int(current.get("ram") or 0), measured.ram)
        vram = current.setdefault("vram", {})
        for index, used in measured.vram.items():
            vram[str(index)] = max(int(vram.get(str(index), 0)), used)
        current["vram_known"] = bool(current.get("vram_known")) or measured.vram_known
        current["at"] = measured.at
        entry["loads"] = loads[-RECENT_LOADS:]

    def snapshot(self) -> str:
        """The figures as the file holds them (taken on the loop, written by
        ``save`` in a thread)."""
        return json.dumps(self._data, indent=1, sort_keys=True)

    def save(self, text: str | None = None) -> None:
        """Write the figures out atomically (blocking: call it in a thread)."""
        if self._path is None:
            return
        text = self.snapshot() if text is None else text
        tmp = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".learned-")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot save learned memory figures to %s: %s", self._path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


@dataclass(frozen=True, slots=True)
class Plan:
    evict: frozenset[str]
    placement: Mapping[int, int]  # bytes per GPU for the target
    ram: int
    unknown: bool  # neither declared nor learned: it runs alone this time


@dataclass(slots=True)
class Decision:
    at: float  # wall-clock time
    text: str

    def as_json(self) -> dict[str, object]:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        return {"at": at, "text": self.text}


@dataclass(slots=True)
class ModelFacts:
    """What the ledger knows of one model."""

    declared: Needs | None = None
    learned: Measured | None = None
    measured: Measured | None = None
    pins: tuple[int, ...] | None = None
    fingerprint: str = ""
    warned_above: bool = False  # "learned above declared" logged once


class Ledger:
    """The memory accounting behind ``use: resources`` (see the module doc).

    ``busy(model)``: requests in flight (or a residency hold) on it;
    ``state(model)``: its state's name; ``protected``: never evicted.
    """

    def __init__(
        self,
        budget: Budget,
        store: LearnedStore,
        busy: Callable[[str], bool],
        decisions: dict[str, Decision] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budget = budget
        self.store = store
        self._busy = busy
        self._clock = clock
        self.facts: dict[str, ModelFacts] = {}
        self.protected: frozenset[str] = frozenset()
        self.allocations: dict[str, Allocation] = {}
        self.leaving: set[str] = set()
        # GPU memory a sleeping model gave back, per GPU: a wake takes it again.
        self.slept: dict[str, dict[int, int]] = {}
        # Started or adopted, not measured yet this load.
        self.unmeasured: set[str] = set()
        self.decisions = {} if decisions is None else decisions
        self._used = 0
        self._lru: dict[str, int] = {}

    # -- configuration -------------------------------------------------------------

    def configure(
        self,
        models: Mapping[str, tuple[Needs | None, tuple[int, ...] | None, str]],
        protected: Set[str],
    ) -> None:
        """The models: (declared needs, pinned GPUs, launch fingerprint) each."""
        old = self.facts
        self.facts = {}
        for mid, (declared, pins, fingerprint) in models.items():
            facts = old.get(mid) or ModelFacts()
            if facts.fingerprint != fingerprint:
                facts = ModelFacts(measured=facts.measured)
            facts.declared, facts.pins, facts.fingerprint = declared, pins, fingerprint
            facts.learned = self.store.peak(fingerprint)
            self.facts[mid] = facts
        self.protected = frozenset(protected)

    # -- what the router reports ---------------------------------------------------

    def used(self, model: str) -> None:
        """A request was granted to or finished on ``model`` (LRU order)."""
        self._used += 1
        self._lru[model] = self._used

    def stopped(self, model: str) -> None:
        """It holds nothing any more (stopped, failed, or its start was abandoned)."""
        self.allocations.pop(model, None)
        self.leaving.discard(model)
        self.slept.pop(model, None)
        self.unmeasured.discard(model)

    def retire(self, model: str) -> None:
        """A reload replaced or removed ``model``: what its old server holds
        stays counted (under ``retired_key``) until that server stops, and
        the new one is planned afresh."""
        held = self.allocations.pop(model, None)
        self.slept.pop(model, None)
        leaving = model in self.leaving
        self.leaving.discard(model)
        if held is not None:
            key = retired_key(model)
            self.allocations[key] = held
            if leaving:
                self.leaving.add(key)

    def abandon(self, target: str, evict: Iterable[str], still_held: Set[str]) -> None:
        """A swap failed: its target's reservation is void (unless it still
        runs) and evicted models that still run count again."""
        if target not in still_held:
            self.stopped(target)
        for m in evict:
            if m in still_held:
                self.leaving.discard(m)

    def adopt(self, model: str) -> None:
        """A model found running (the engine was switched on by a reload):
        it holds its estimate, or everything left when it has none, until
        it is measured. Never raises: it already runs."""
        self.unmeasured.add(model)
        need = self.estimate(model)
        pins = self._pins(model)
        holders = self.holders(model)
        if need is None:
            plan = self._plan_unknown(model, holders, [], pins)
            self.allocations[model] = Allocation(dict(plan.placement), plan.ram)
            return
        ram, gpus = self.room(holders)
        placement = self.place(model, need, ram, gpus, pins)
        if placement is None:  # overcommitted already: count it where it may be
            placement = _split(need.vram, list(pins), None) if need.vram else {}
        self.allocations[model] = Allocation(placement, need.ram)

    def asleep(self, model: str) -> None:
        """It fell asleep: its GPU memory is free, its RAM it keeps (until
        measured again); a wake takes the same GPUs again."""
        self.leaving.discard(model)
        held = self.allocations.get(model)
        if held is not None:
            if held.devices:
                self.slept[model] = dict(held.devices)
            self.allocations[model] = Allocation({}, held.ram)

    def measured(self, model: str, measured: Measured, load_id: int) -> None:
        """A measurement of a loaded model: its allocation covers it from now
        on, and its fingerprint learns it."""
        facts = self.facts.get(model)
        if facts is None:
            return
        facts.measured = measured
        self.unmeasured.discard(model)
        held = self.allocations.get(model)
        if held is not None and model not in self.leaving:
            unknown = self.estimate(model) is None
            base = Allocation({}, 0) if unknown else held
            if not measured.vram_known:  # keep what was planned on the GPUs
                base = Allocation(held.devices, base.ram)
            self.allocations[model] = base.covering(measured)
        self.store.record(facts.fingerprint, model, load_id, measured)
        facts.learned = self.store.peak(facts.fingerprint)
        self._warn_above(model, facts)

    def measured_asleep(self, model: str, measured: Measured) -> None:
        facts = self.facts.get(model)
        if facts is not None:
            facts.measured = measured
        if model in self.allocations:
            self.allocations[model] = Allocation(dict(measured.vram), measured.ram or 0)

    def _warn_above(self, model: str, facts: ModelFacts) -> None:
        declared, learned = facts.declared, facts.learned
        if declared is None or learned is None or facts.warned_above:
            return
        over = []
        if declared.vram is not None and learned.vram_total > declared.vram:
            over.append(
                f"VRAM {fmt_bytes(learned.vram_total)} > "
                f"declared {fmt_bytes(declared.vram)}"
            )
        if declared.ram is not None and (learned.ram or 0) > declared.ram:
            over.append(
                f"RAM {fmt_bytes(learned.ram or 0)} > "
                f"declared {fmt_bytes(declared.ram)}"
            )
        if over:
            facts.warned_above = True
            log.warning(
                "%s: measured above its declared needs (%s); "
                "using the measured figures",
                model,
                ", ".join(over),
            )

    def note(self, model: str, text: str) -> None:
        self.decisions[model] = Decision(self._clock(), text)

    # -- estimates -------------------------------------------------------------------

    def estimate(self, model: str) -> Need | None:
        """``max(declared, learned)`` per kind; None when neither is known."""
        facts = self.facts.get(model)
        if facts is None:
            return None
        declared, learned = facts.declared, facts.learned
        if declared is not None and declared.vram is None and declared.ram is None:
            declared = None  # needs: {} declares nothing
        if declared is None and learned is None:
            return None
        if (
            learned is not None
            and not learned.vram_known
            and (declared is None or declared.vram is None)
            and self.budget.gpus
        ):
            return None  # its GPU memory was never measured: it runs alone
        vram = max(
            (declared.vram or 0) if declared else 0,
            learned.vram_total if learned else 0,
        )
        ram = max(
            (declared.ram or 0) if declared else 0, (learned.ram or 0) if learned else 0
        )
        return Need(vram, ram)

    # -- planning --------------------------------------------------------------------

    def holders(self, excluding: str) -> list[str]:
        """Models whose memory counts now: allocated and not leaving."""
        return [m for m in self.allocations if m != excluding and m not in self.leaving]

    def room(self, holders: Iterable[str]) -> tuple[int, dict[int, int]]:
        """RAM and per-GPU room left by ``holders``."""
        ram = self.budget.ram
        gpus = dict(self.budget.gpus)
        for m in holders:
            held = self.allocations[m]
            ram -= held.ram
            for index, used in held.devices.items():
                if index in gpus:
                    gpus[index] -= used
        return ram, gpus

    def plan(self, target: str) -> Plan:
        """Where ``target`` goes and what must stop first (see the module
        doc). Raises InsufficientMemory when it can never fit."""
        if target in self.allocations and target not in self.leaving:
            held = self.allocations[target]
            if target not in self.slept:
                return Plan(frozenset(), held.devices, held.ram, False)
        return self._plan_fresh(target)

    def _plan_fresh(self, target: str) -> Plan:
        need = self.estimate(target)
        pins = self._pins(target)
        slept = self.slept.get(target)
        if slept is not None:  # a wake: the GPU memory it gave back, there
            pins = tuple(sorted(slept))
            held = self.allocations[target]
            vram = max(sum(slept.values()), need.vram if need else 0)
            need = Need(vram, held.ram)
        holders = self.holders(target)
        candidates = self._candidates(holders)
        if need is None:
            return self._plan_unknown(target, holders, candidates, pins)
        self._check_ever_fits(target, need, pins, holders)
        evicted: list[str] = []
        while True:
            left = [m for m in holders if m not in evicted]
            ram, gpus = self.room(left)
            placement = self.place(target, need, ram, gpus, pins)
            if placement is not None:
                return Plan(frozenset(evicted), placement, need.ram, False)
            helper = self._next_helper(need, ram, pins, candidates, evicted)
            if helper is None:  # only protected models hold what it needs
                unmeasured = sorted(
                    m for m in holders if m in self.protected and self._unmeasured(m)
                )
                if unmeasured:  # they hold all that was left until measured
                    raise MustWait(f"{', '.join(unmeasured)} not measured yet")
                retired = sorted(
                    m.removeprefix(RETIRED) for m in holders if m.startswith(RETIRED)
                )
                if retired:  # a reload replaced them: they stop on their own
                    raise MustWait(
                        f"the replaced server of {', '.join(retired)} is stopping"
                    )
                raise self._insufficient(target, need, pins, holders, protected=True)
            evicted.append(helper)

    def _unmeasured(self, model: str) -> bool:
        """A model planned as unknown whose measurement is still to come."""
        return model in self.unmeasured and self.estimate(model) is None

    def unmeasurable(self, model: str) -> None:
        """Its measurement failed for good: others stop waiting for it."""
        self.unmeasured.discard(model)

    def _plan_unknown(
        self,
        target: str,
        holders: list[str],
        candidates: list[str],
        pins: tuple[int, ...],
    ) -> Plan:
        """Never measured, nothing declared: it runs beside nothing but the
        models that stay loaded, and may take all they leave."""
        left = [m for m in holders if m not in candidates]
        ram, gpus = self.room(left)
        placement = {i: max(0, gpus[i]) for i in pins if i in gpus}
        return Plan(frozenset(candidates), placement, max(0, ram), True)

    def _pins(self, target: str) -> tuple[int, ...]:
        facts = self.facts.get(target)
        if facts is not None and facts.pins is not None:
            return facts.pins
        return tuple(sorted(self.budget.gpus))

    def _candidates(self, holders: list[str]) -> list[str]:
        """Evictable holders: idle before busy, least recently used first
        (a retired server is not a model: it leaves on its own)."""
        movable = [m for m in holders if m in self.facts and m not in self.protected]
        return sorted(movable, key=lambda m: (self._busy(m), self._lru.get(m, 0), m))

    def _next_helper(
        self,
        need: Need,
        ram: int,
        pins: tuple[int, ...],
        candidates: list[str],
        evicted: list[str],
    ) -> str | None:
        """The next candidate whose memory the target needs."""
        ram_short = need.ram > ram
        for m in candidates:
            if m in evicted:
                continue
            held = self.allocations[m]
            if (ram_short and held.ram > 0) or (
                need.vram > 0 and any(held.devices.get(i, 0) > 0 for i in pins)
            ):
                return m
        return None

    def place(
        self,
        target: str,
        need: Need,
        ram: int,
        gpus: Mapping[int, int],
        pins: tuple[int, ...],
    ) -> dict[int, int] | None:
        """Bytes per GPU for ``need`` in the room given, or None if it does
        not fit. ``{}``: it needs no GPU memory."""
        if need.ram > ram:
            return None
        if need.vram <= 0:
            return {}
        usable = [i for i in pins if i in gpus]
        if not usable:
            return None
        facts = self.facts.get(target)
        pinned = facts is not None and facts.pins is not None
        if pinned:
            shares = _split(need.vram, usable, facts.learned if facts else None)
            fits = all(shares[i] <= gpus[i] for i in usable)
            return shares if fits else None
        fitting = [i for i in usable if gpus[i] >= need.vram]
        if fitting:  # the tightest fit leaves the biggest holes for big models
            best = min(fitting, key=lambda i: (gpus[i], i))
            return {best: need.vram}
        return _spread(need.vram, {i: gpus[i] for i in usable})

    def _check_ever_fits(
        self, target: str, need: Need, pins: tuple[int, ...], holders: list[str]
    ) -> None:
        if self.place(target, need, self.budget.ram, self.budget.gpus, pins) is None:
            raise self._insufficient(target, need, pins, holders, protected=False)

    def _insufficient(
        self,
        target: str,
        need: Need,
        pins: tuple[int, ...],
        holders: list[str],
        *,
        protected: bool,
    ) -> InsufficientMemory:
        wants = []
        if need.vram:
            where = (
                f"GPU {', '.join(map(str, pins))}" if pins else "no GPU in the budget"
            )
            wants.append(f"{fmt_bytes(need.vram)} VRAM on {where}")
        if need.ram:
            wants.append(f"{fmt_bytes(need.ram)} RAM")
        text = f"model {target} needs {' and '.join(wants) or 'nothing'}, but "
        if protected:
            kept = sorted(m for m in holders if m in self.protected)
            ram, gpus = self.room(kept)
            has = Budget(ram, {i: gpus[i] for i in pins if i in gpus}).describe()
            text += (
                f"only {has} is left beside the models that stay loaded "
                f"({', '.join(kept)})"
            )
        else:
            text += f"the budget has {self.budget.describe()}"
        return InsufficientMemory(text)

    # -- carrying a plan out -----------------------------------------------------------

    def commit(self, target: str, evict: frozenset[str]) -> Plan:
        """A swap starts: reserve the target's memory, mark ``evict`` leaving,
        and say so in the models' decisions."""
        plan = self.plan(target)
        freed = self._describe_freed(evict)
        self.leaving.update(evict)
        self.leaving.discard(target)
        self.slept.pop(target, None)
        self.unmeasured.add(target)
        self.allocations[target] = Allocation(dict(plan.placement), plan.ram)
        when = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        where = self._describe_placement(plan)
        needed = (
            "never measured, it runs alone to learn its needs"
            if plan.unknown
            else f"needed {where}"
        )
        for m in sorted(evict):
            self.note(m, f"evicted at {when} to fit {target}: {needed}, freed {freed}")
        if plan.unknown:
            self.note(
                target,
                f"loading at {when}, never measured: runs alone to learn its needs",
            )
        else:
            self.note(
                target,
                f"loading at {when} on {where}"
                + (f" after evicting {', '.join(sorted(evict))}" if evict else ""),
            )
        return plan

    def _describe_freed(self, evict: Iterable[str]) -> str:
        devices: dict[int, int] = {}
        ram = 0
        for m in evict:
            held = self.allocations.get(m)
            if held is None:
                continue
            ram += held.ram
            for i, b in held.devices.items():
                devices[i] = devices.get(i, 0) + b
        parts = [f"{fmt_bytes(b)} on GPU {i}" for i, b in sorted(devices.items()) if b]
        if ram:
            parts.append(f"{fmt_bytes(ram)} RAM")
        return ", ".join(parts) or "nothing measured"

    def _describe_placement(self, plan: Plan) -> str:
        parts = [
            f"{fmt_bytes(b)} on GPU {i}" for i, b in sorted(plan.placement.items())
        ]
        if plan.ram:
            parts.append(f"{fmt_bytes(plan.ram)} RAM")
        return ", ".join(parts) or "no memory"

    def eviction_stops(self, evict: Iterable[str], target: str) -> dict[str, bool]:
        """For each evicted model, whether it must stop rather than sleep:
        sleeping frees its GPU memory, not its RAM, so it stops when it holds
        no GPU memory or when ``target``'s RAM would not fit beside what the
        models already chosen to sleep keep. Decided for the set at once."""
        need = self.estimate(target)
        keeping = [m for m in self.allocations if m != target and m not in self.leaving]
        out: dict[str, bool] = {}
        for m in sorted(evict):
            held = self.allocations.get(m)
            if held is None or not held.devices or need is None:
                out[m] = True
                continue
            ram, _ = self.room([*keeping, m])
            out[m] = need.ram > ram
            if not out[m]:
                keeping.append(m)
        return out

    def devices_for(self, model: str) -> tuple[int, ...] | None:
        """The GPUs a start of ``model`` is placed on, or None when it needs no
        GPU (no CUDA_VISIBLE_DEVICES is set for it)."""
        held = self.allocations.get(model)
        if held is None or not held.devices:
            return None
        return tuple(sorted(held.devices))

    def describe_budget(
        self, host: HostMemory, devices: Iterable[DeviceMemory]
    ) -> dict[str, object]:
        """The budget with what is planned on it and what is free now."""
        holders = [m for m in self.allocations if m not in self.leaving]
        ram, gpus = self.room(holders)
        free = {d.index: d.free for d in devices}
        return {
            "ram": {
                "capacity": self.budget.ram,
                "reserve": self.budget.reserve_ram,
                "planned": self.budget.ram - ram,
                "available": host.available,
            },
            "gpus": [
                {
                    "index": i,
                    "capacity": cap,
                    "reserve": self.budget.reserve_vram,
                    "planned": cap - gpus[i],
                    "free": free.get(i),
                }
                for i, cap in sorted(self.budget.gpus.items())
            ],
        }


def _split(total: int, devices: list[int], learned: Measured | None) -> dict[int, int]:
    """``total`` over pinned GPUs: as it was measured there, else evenly."""
    if learned is not None and learned.vram_total and set(learned.vram) == set(devices):
        scale = total / learned.vram_total
        return {i: int(learned.vram[i] * scale) for i in devices}
    share, extra = divmod(total, len(devices))
    return {i: share + (1 if n < extra else 0) for n, i in enumerate(devices)}


def _spread(total: int, room: Mapping[int, int]) -> dict[int, int] | None:
    """Over the GPUs with most room, in proportion to it (llama.cpp splits
    layers by free memory); None if all of them together are too small."""
    chosen: list[int] = []
    have = 0
    for i in sorted(room, key=lambda i: (-room[i], i)):
        if room[i] <= 0:
            break
        chosen.append(i)
        have += room[i]
        if have >= total:
            shares = {j: total * room[j] // have for j in chosen}
            shares[chosen[0]] += total - sum(shares.values())
            return shares
    return None


def _need_json(need: Need | Needs | None) -> dict[str, int | None] | None:
    return None if need is None else {"vram": need.vram, "ram": need.ram}


def _measured_json(m: Measured | None) -> dict[str, object] | None:
    if m is None:
        return None
    return {"ram": m.ram, "vram": {str(i): b for i, b in sorted(m.vram.items())}}


def explain_model(ledger: Ledger | None, model: str) -> dict[str, object]:
    """One model's memory facts for ``/api/explain``."""
    empty: dict[str, object] = {"needs": None, "measured": None, "placement": None}
    facts = None if ledger is None else ledger.facts.get(model)
    if ledger is None or facts is None:
        return empty
    held = ledger.allocations.get(model)
    learned = facts.learned
    return {
        "needs": {
            "declared": _need_json(facts.declared),
            "learned": None
            if learned is None
            else {"vram": learned.vram_total, "ram": learned.ram},
            "estimate": _need_json(ledger.estimate(model)),
        },
        "measured": _measured_json(facts.measured),
        "placement": None if held is None else sorted(held.devices),
        "pinned": None if facts.pins is None else list(facts.pins),
        "holds": None
        if held is None
        else {
            "ram": held.ram,
            "vram": {str(i): b for i, b in sorted(held.devices.items())},
        },
        "protected": model in ledger.protected,
    }


def memory_needed(
    ledger: Ledger, target: str, evict: Iterable[str]
) -> tuple[int, dict[int, int]]:
    """What must show up as free before ``target`` starts: its planned RAM
    and GPU memory, or for a model never measured what the evicted models
    held (all that can be expected back)."""
    if ledger.estimate(target) is not None:
        held = ledger.allocations.get(target)
        if held is None:
            return 0, {}
        return held.ram, dict(held.devices)
    ram = 0
    devices: dict[int, int] = {}
    for m in evict:
        held = ledger.allocations.get(m)
        if held is None:
            continue
        ram += held.ram
        for i, b in held.devices.items():
            devices[i] = devices.get(i, 0) + b
    return ram, devices


class ResourcePolicy:
    """``EvictionPolicy`` for ``use: resources``: the ledger's plan."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def evict(self, target: str, running: Set[str]) -> frozenset[str]:
        return self.ledger.plan(target).evict
