"""The scheduler: for every request, serve now, join a start, queue, or swap.

Synchronous on purpose: no method awaits, so asyncio serialises it for free and
no state can change between a decision and its effect (llama-swap #790, #949).
It acts only through ``Effects``; it does no I/O, reads no clock and never logs.

Rules (llama-swap.md §3.5): a request joins a swap already starting its model;
a ready model whose start evicts nothing is served at once; a swap never evicts
a model that still has requests in flight, and never collides with another
swap; otherwise the request queues. Queued requests are re-examined in order
after every swap and every drain, so A B A B is served A A B B.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from controller.errors import ControllerError, ModelUnloaded, Overloaded, ShuttingDown

if TYPE_CHECKING:
    from collections.abc import Callable, Set


class TicketState(enum.Enum):
    NEW = "new"
    QUEUED = "queued"  # waiting for a swap it may not start yet
    JOINED = "joined"  # waiting on a swap that starts its model
    SERVING = "serving"  # granted: counted in flight on its model
    DONE = "done"  # rejected or released


_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted request's place in the scheduler."""

    model: str
    priority: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    state: TicketState = TicketState.NEW
    # Counted in concurrencyLimit and in flight; attached sessions only keep
    # their model from being swapped out.
    counted: bool = True
    # Queued longer than fifo maxWait: the models blocking it get no new grants.
    overdue: bool = False


class Effects(Protocol):
    """What the scheduler may do and see. Every method returns at once."""

    def running(self) -> Set[str]:
        """Models that are starting, ready or stopping."""
        ...

    def is_ready(self, model: str) -> bool: ...

    def start_swap(self, target: str, evict: frozenset[str]) -> None:
        """Begin stopping ``evict`` then starting ``target``; report via swap_done."""
        ...

    def grant(self, ticket: Ticket) -> None:
        """The request may be proxied now; it counts as in flight."""
        ...

    def reject(self, ticket: Ticket, error: ControllerError) -> None: ...

    def finished(self, ticket: Ticket) -> None:
        """A granted request finished; it no longer counts as in flight."""
        ...


class MustWait(Exception):
    """Raised by a policy: ``target`` cannot be planned yet, but may be once
    something changes (a model that stays loaded was not measured yet); the
    request queues and is decided again on the next drain."""


class EvictionPolicy(Protocol):
    def evict(self, target: str, running: Set[str]) -> frozenset[str]:
        """The running models that must stop before ``target`` starts. May
        raise a ControllerError when ``target`` can never start (the memory
        engine's insufficient_memory): its request is refused; or MustWait."""
        ...


@dataclass(slots=True)
class _Swap:
    evict: frozenset[str]
    waiters: list[Ticket]
    doomed: bool = False


class Scheduler:
    def __init__(
        self,
        effects: Effects,
        policy: EvictionPolicy,
        limit: Callable[[str], int],
        on_queued: Callable[[Ticket], None] | None = None,
    ) -> None:
        self._effects = effects
        self._policy = policy
        self._limit = limit
        # Told when a ticket first queues (the router arms its maxWait timer).
        self._on_queued = on_queued
        self._overdue = 0  # queued tickets past maxWait
        # Ready models the policy evicted nothing for, since the running set
        # last changed (``invalidate``): the common request skips the policy.
        self._clear: set[str] = set()
        self._reserved: Counter[str] = Counter()  # admitted and not finished
        self._serving: Counter[str] = Counter()  # granted and not finished
        self._requests: Counter[str] = Counter()  # of those, counted requests
        self._queue: list[Ticket] = []
        self._swaps: dict[str, _Swap] = {}
        self._closed = False

    # -- events ----------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Admit a request or raise Overloaded / ShuttingDown."""
        if self._closed:
            raise ShuttingDown("swapvisor is shutting down")
        limit = self._limit(ticket.model)
        if self._reserved[ticket.model] >= limit:
            raise Overloaded(
                f"too many requests for model {ticket.model}: concurrencyLimit "
                f"{limit} reached (waiting plus running)"
            )
        self._reserved[ticket.model] += 1
        if not self._decide(ticket):
            self._enqueue(ticket)

    def release(self, ticket: Ticket) -> None:
        """The request finished, failed or its client left. Idempotent."""
        state, ticket.state = ticket.state, TicketState.DONE
        if state in (TicketState.DONE, TicketState.NEW):
            return  # never admitted (429, shutting down), or already released
        if ticket.counted:
            self._reserved[ticket.model] -= 1
        if state is TicketState.QUEUED:
            self._dequeue(ticket)
        elif state is TicketState.JOINED:
            self._swaps[ticket.model].waiters.remove(ticket)
        elif state is TicketState.SERVING:
            self._serving[ticket.model] -= 1
            if ticket.counted:
                self._requests[ticket.model] -= 1
            self._effects.finished(ticket)
            if self._serving[ticket.model] == 0:
                self.drain()

    def attach(self, ticket: Ticket) -> bool:
        """Serve ``ticket`` only if its model is ready now and no swap is about
        to stop it; never queues, starts anything or counts against the limit.
        False: nothing was admitted."""
        if self._closed:
            raise ShuttingDown("swapvisor is shutting down")
        target = ticket.model
        threatened = any(target in s.evict for s in self._swaps.values())
        if threatened or target in self._swaps or not self._effects.is_ready(target):
            return False
        ticket.counted = False
        self._grant(ticket)
        return True

    def swap_done(
        self, target: str, error: ControllerError | None, hold: Ticket | None = None
    ) -> None:
        """The swap to ``target`` ended. ``hold``: on success, an uncounted
        ticket granted before anything else is decided (fifo minResidency:
        while it is held, no swap evicts the model just loaded)."""
        swap = self._swaps.pop(target)
        if hold is not None and error is None:
            hold.counted = False
            self._grant(hold)
        for ticket in swap.waiters:
            if error is None:
                self._grant(ticket)
            else:
                self._reject(ticket, error)
        self.drain()

    def unload(self, models: Set[str]) -> None:
        """Fail the requests waiting for ``models`` (they are being unloaded)."""
        self._fail_waiting(models, lambda m: ModelUnloaded(f"model {m} was unloaded"))

    def shutdown(self) -> None:
        """Refuse new requests and fail every waiting one."""
        self._closed = True
        self._fail_waiting(
            set(self._reserved), lambda m: ShuttingDown("swapvisor is shutting down")
        )

    def _fail_waiting(
        self, models: Set[str], error: Callable[[str], ControllerError]
    ) -> None:
        for ticket in [t for t in self._queue if t.model in models]:
            self._dequeue(ticket)
            self._reject(ticket, error(ticket.model))
        for target in models & self._swaps.keys():
            swap = self._swaps[target]
            # The start is being aborted: later requests must not join it, they
            # queue until it is reported done and then start afresh.
            swap.doomed = True
            waiters, swap.waiters = swap.waiters, []
            for ticket in waiters:
                self._reject(ticket, error(target))

    def invalidate(self) -> None:
        """A model's state changed: what the policy said may no longer hold."""
        self._clear.clear()

    def reconfigure(
        self, policy: EvictionPolicy, limit: Callable[[str], int], models: Set[str]
    ) -> None:
        """A reloaded config: new rules; requests for removed models fail."""
        self._clear.clear()
        self._policy = policy
        self._limit = limit
        gone = {t.model for t in self._queue} - set(models)
        gone |= self._swaps.keys() - set(models)
        self._fail_waiting(
            gone, lambda m: ModelUnloaded(f"model {m} was removed from the config")
        )
        self.drain()

    def drain(self) -> None:
        """Re-examine queued requests in order (after any change)."""
        for ticket in list(self._queue):
            if ticket.state is TicketState.QUEUED and self._decide(ticket):
                self._dequeue(ticket)

    def overdue(self, ticket: Ticket) -> None:
        """``ticket`` has waited fifo ``maxWait``: from now on the models whose
        eviction it waits for get no new grants, so they drain and its swap
        happens (one busy model can no longer starve it)."""
        if ticket.state is not TicketState.QUEUED or ticket.overdue:
            return
        ticket.overdue = True
        self._overdue += 1
        self.drain()

    # -- introspection (advisory only) -------------------------------------------

    def queued(self) -> list[Ticket]:
        return list(self._queue)

    def position(self, ticket: Ticket) -> int | None:
        if ticket.state is not TicketState.QUEUED:
            return None
        return self._queue.index(ticket) + 1

    def in_flight(self, model: str) -> int:
        return self._serving[model]

    def doomed(self, target: str) -> bool:
        """Whether the swap to ``target`` must not start it: it was unloaded,
        or shutdown began, while the swap was stopping other models."""
        swap = self._swaps.get(target)
        return self._closed or swap is None or swap.doomed

    def swapping(self) -> dict[str, frozenset[str]]:
        return {t: s.evict for t, s in self._swaps.items()}

    def held(self) -> dict[str, str]:
        """Models that get no new grants, each with the overdue model it
        waits to make room for."""
        held: dict[str, str] = {}
        if not self._overdue:
            return held
        for ticket in self._queue:
            if ticket.overdue:
                for model in self._blocking(ticket):
                    held.setdefault(model, ticket.model)
        return held

    # -- the decision ------------------------------------------------------------

    def _decide(self, ticket: Ticket) -> bool:
        """Serve, join or start a swap; False means the request must wait."""
        target = ticket.model
        if target in self._swaps:
            if self._swaps[target].doomed:
                return False
            ticket.state = TicketState.JOINED
            self._swaps[target].waiters.append(ticket)
            return True
        if (
            target in self._clear
            and not self._swaps
            and not self._overdue
            and self._effects.is_ready(target)
        ):
            self._grant(ticket)  # as below, without asking the policy again
            return True
        try:
            evict = self.evictions(target)
        except ControllerError as error:  # it can never start: refuse, stop nothing
            self._reject(ticket, error)
            return True
        except MustWait:
            return False
        threatened = any(target in s.evict for s in self._swaps.values())
        if not evict and not threatened and self._effects.is_ready(target):
            if self._overdue and target in self.held():
                return False  # an older request waits for this model to drain
            if not self._swaps:
                self._clear.add(target)
            self._grant(ticket)
            return True
        if threatened or self._collides(evict):
            return False
        if any(self._serving[m] for m in evict):
            return False  # never swap out a model mid-request: wait for it to drain
        ticket.state = TicketState.JOINED
        self._swaps[target] = _Swap(evict, [ticket])
        self._effects.start_swap(target, evict)
        return True

    def evictions(self, target: str) -> frozenset[str]:
        """What the policy would evict to start ``target`` now (may raise)."""
        # The target itself is left out: a matrix solver treats a running target
        # as "evict nothing", which is wrong while that target is still stopping.
        running = (set(self._effects.running()) | self._swaps.keys()) - {target}
        return self._policy.evict(target, running)

    def _blocking(self, ticket: Ticket) -> frozenset[str]:
        """The models with requests in flight that ``ticket``'s swap waits
        for (a residency hold or a websocket is not held off: no new grant
        would make either end sooner)."""
        try:
            evict = self.evictions(ticket.model)
        except (ControllerError, MustWait):
            return frozenset()
        return frozenset(m for m in evict if self._requests[m])

    def _collides(self, evict: frozenset[str]) -> bool:
        return any(
            target in evict or evict & swap.evict
            for target, swap in self._swaps.items()
        )

    def _enqueue(self, ticket: Ticket) -> None:
        ticket.state = TicketState.QUEUED
        index = next(
            (i for i, t in enumerate(self._queue) if t.priority < ticket.priority),
            len(self._queue),
        )
        self._queue.insert(index, ticket)
        if self._on_queued is not None:
            self._on_queued(ticket)

    def _dequeue(self, ticket: Ticket) -> None:
        self._queue.remove(ticket)
        if ticket.overdue:
            self._overdue -= 1

    def _grant(self, ticket: Ticket) -> None:
        ticket.state = TicketState.SERVING
        self._serving[ticket.model] += 1
        if ticket.counted:
            self._requests[ticket.model] += 1
        self._effects.grant(ticket)

    def _reject(self, ticket: Ticket, error: ControllerError) -> None:
        ticket.state = TicketState.DONE
        self._reserved[ticket.model] -= 1
        self._effects.reject(ticket, error)
