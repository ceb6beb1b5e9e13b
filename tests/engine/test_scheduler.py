"""controller.engine.scheduler driven synchronously through a recording Effects fake
(llama-swap.md §3.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from controller.engine.eviction import Group, GroupPolicy
from controller.engine.scheduler import Effects, Scheduler, Ticket, TicketState
from controller.errors import (
    ControllerError,
    ModelUnloaded,
    Overloaded,
    ShuttingDown,
    UpstreamStartError,
)

if TYPE_CHECKING:
    from collections.abc import Set


@dataclass
class RecordingEffects:
    """An Effects whose world the test controls, recording every call."""

    running_models: set[str] = field(default_factory=set)
    ready_models: set[str] = field(default_factory=set)
    swaps: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    granted: list[Ticket] = field(default_factory=list)
    rejected: list[tuple[Ticket, ControllerError]] = field(default_factory=list)
    finished_tickets: list[Ticket] = field(default_factory=list)

    def running(self) -> Set[str]:
        return frozenset(self.running_models)

    def is_ready(self, model: str) -> bool:
        return model in self.ready_models

    def start_swap(self, target: str, evict: frozenset[str]) -> None:
        self.swaps.append((target, evict))

    def grant(self, ticket: Ticket) -> None:
        self.granted.append(ticket)

    def reject(self, ticket: Ticket, error: ControllerError) -> None:
        self.rejected.append((ticket, error))

    def finished(self, ticket: Ticket) -> None:
        self.finished_tickets.append(ticket)


def _check_protocol(fx: RecordingEffects) -> Effects:
    return fx  # mypy checks RecordingEffects against the Effects protocol


def make(
    models: tuple[str, ...] = ("a", "b", "c"),
    limit: int = 10,
    groups: tuple[Group, ...] = (),
) -> tuple[Scheduler, RecordingEffects]:
    fx = RecordingEffects()
    sched = Scheduler(
        _check_protocol(fx), GroupPolicy(groups, models), lambda _m: limit
    )
    return sched, fx


def finish_swap(
    sched: Scheduler,
    fx: RecordingEffects,
    error: ControllerError | None = None,
    target: str | None = None,
) -> None:
    """Complete a swap (the oldest by default) as a real Router would."""
    target = target or next(iter(sched.swapping()))
    evict = sched.swapping()[target]
    fx.running_models -= evict
    fx.ready_models -= evict
    if error is None:
        fx.running_models.add(target)
        fx.ready_models.add(target)
    sched.swap_done(target, error)


def submit(sched: Scheduler, model: str, priority: int = 0) -> Ticket:
    t = Ticket(model, priority)
    sched.submit(t)
    return t


def state_of(ticket: Ticket) -> TicketState:
    """Read the state afresh (mypy would otherwise keep an earlier narrowing)."""
    return ticket.state


def ready(fx: RecordingEffects, *models: str) -> None:
    fx.running_models |= set(models)
    fx.ready_models |= set(models)


# -- swaps and joins ---------------------------------------------------------------------


def test_scheduler_first_request_for_stopped_model_starts_swap() -> None:
    sched, fx = make()
    t = submit(sched, "a")
    assert fx.swaps == [("a", frozenset())]
    assert t.state is TicketState.JOINED
    assert fx.granted == []
    assert sched.swapping() == {"a": frozenset()}


def test_scheduler_second_request_joins_the_swap() -> None:
    sched, fx = make()
    t1, t2 = submit(sched, "a"), submit(sched, "a")
    assert fx.swaps == [("a", frozenset())]
    assert (t1.state, t2.state) == (TicketState.JOINED, TicketState.JOINED)
    finish_swap(sched, fx)
    assert fx.granted == [t1, t2]
    assert sched.in_flight("a") == 2
    assert sched.swapping() == {}


def test_scheduler_swap_evicts_the_running_model() -> None:
    sched, fx = make()
    ready(fx, "a")
    submit(sched, "b")
    assert fx.swaps == [("b", frozenset({"a"}))]


def test_scheduler_ready_model_with_nothing_to_evict_is_granted_at_once() -> None:
    sched, fx = make()
    ready(fx, "a")
    t = submit(sched, "a")
    assert fx.granted == [t]
    assert fx.swaps == []
    assert t.state is TicketState.SERVING
    assert sched.in_flight("a") == 1


def test_scheduler_abab_while_a_starts_is_served_aabb() -> None:
    sched, fx = make()
    a1, b1, a2, b2 = (submit(sched, m) for m in "abab")
    assert fx.swaps == [("a", frozenset())]
    assert sched.queued() == [b1, b2]
    assert a2.state is TicketState.JOINED
    finish_swap(sched, fx)
    assert fx.granted == [a1, a2]
    assert sched.queued() == [b1, b2]  # a is busy: b may not evict it yet
    sched.release(a1)
    assert len(fx.swaps) == 1
    sched.release(a2)
    assert fx.swaps == [("a", frozenset()), ("b", frozenset({"a"}))]
    assert (b1.state, b2.state) == (TicketState.JOINED, TicketState.JOINED)
    assert sched.queued() == []
    finish_swap(sched, fx)
    assert fx.granted == [a1, a2, b1, b2]


def test_scheduler_never_evicts_a_model_with_requests_in_flight() -> None:
    sched, fx = make()
    ready(fx, "a")
    a = submit(sched, "a")
    b = submit(sched, "b")
    assert fx.swaps == []
    assert sched.queued() == [b]
    sched.drain()
    assert fx.swaps == []
    sched.release(a)
    assert fx.swaps == [("b", frozenset({"a"}))]
    assert fx.finished_tickets == [a]


def test_scheduler_new_request_for_busy_ready_model_is_served_while_other_queues() -> (
    None
):
    sched, fx = make()
    ready(fx, "a")
    submit(sched, "a")
    b = submit(sched, "b")
    a2 = submit(sched, "a")
    assert fx.granted[-1] is a2
    assert sched.queued() == [b]


def test_scheduler_request_for_model_being_evicted_queues() -> None:
    sched, fx = make()
    ready(fx, "a")
    submit(sched, "b")  # swap b evicting a
    a = submit(sched, "a")
    assert sched.queued() == [a]
    assert fx.swaps == [("b", frozenset({"a"}))]


def test_scheduler_non_conflicting_swaps_run_in_parallel() -> None:
    g = Group("g", frozenset({"a", "b"}), swap=False)
    sched, fx = make(models=("a", "b"), groups=(g,))
    submit(sched, "a")
    submit(sched, "b")
    assert fx.swaps == [("a", frozenset()), ("b", frozenset())]
    assert sched.swapping() == {"a": frozenset(), "b": frozenset()}


# -- concurrency limit -------------------------------------------------------------------


def test_scheduler_concurrency_limit_counts_running() -> None:
    sched, fx = make(limit=2)
    ready(fx, "a")
    submit(sched, "a")
    submit(sched, "a")
    with pytest.raises(Overloaded) as info:
        submit(sched, "a")
    err = info.value
    assert (err.status, err.code, err.retry_after) == (429, "concurrency_limit", 1)
    assert err.message == (
        "too many requests for model a: concurrencyLimit 2 reached "
        "(waiting plus running)"
    )


def test_scheduler_concurrency_limit_counts_queued_per_model() -> None:
    sched, fx = make(limit=2)
    ready(fx, "a")
    submit(sched, "a")
    b1, b2 = submit(sched, "b"), submit(sched, "b")
    assert (b1.state, b2.state) == (TicketState.QUEUED, TicketState.QUEUED)
    with pytest.raises(Overloaded):
        submit(sched, "b")
    submit(sched, "a")  # a's own count is 1: still admitted


def test_scheduler_concurrency_limit_counts_joined_waiters() -> None:
    sched, _fx = make(limit=1)
    submit(sched, "a")
    with pytest.raises(Overloaded):
        submit(sched, "a")


def test_scheduler_concurrency_slot_freed_on_release() -> None:
    sched, fx = make(limit=1)
    ready(fx, "a")
    t = submit(sched, "a")
    with pytest.raises(Overloaded):
        submit(sched, "a")
    sched.release(t)
    t2 = submit(sched, "a")
    assert fx.granted == [t, t2]


def test_scheduler_concurrency_slot_freed_on_reject() -> None:
    sched, fx = make(limit=1)
    submit(sched, "a")
    finish_swap(sched, fx, UpstreamStartError("boom"))
    t = submit(sched, "a")
    assert t.state is TicketState.JOINED


def test_scheduler_release_of_a_rejected_submit_frees_no_slot() -> None:
    sched, _fx = make(limit=1)
    submit(sched, "a")
    over = Ticket("a")
    with pytest.raises(Overloaded):
        sched.submit(over)
    sched.release(over)  # what Router.lease's finally does
    with pytest.raises(Overloaded):
        submit(sched, "a")


# -- release / cancellation ------------------------------------------------------------


def test_scheduler_release_queued_ticket_leaves_the_queue() -> None:
    sched, fx = make()
    ready(fx, "a")
    submit(sched, "a")
    b1, b2 = submit(sched, "b"), submit(sched, "b")
    sched.release(b1)
    assert sched.queued() == [b2]
    assert b1.state is TicketState.DONE
    assert fx.rejected == []
    assert fx.finished_tickets == []


def test_scheduler_release_joined_ticket_leaves_the_swap() -> None:
    sched, fx = make()
    t1, t2 = submit(sched, "a"), submit(sched, "a")
    sched.release(t1)
    finish_swap(sched, fx)
    assert fx.granted == [t2]
    assert sched.in_flight("a") == 1
    assert fx.finished_tickets == []


def test_scheduler_swap_finishes_even_if_every_waiter_left() -> None:
    sched, fx = make()
    t = submit(sched, "a")
    sched.release(t)
    assert sched.swapping() == {"a": frozenset()}
    finish_swap(sched, fx)
    assert fx.granted == []
    assert sched.in_flight("a") == 0


def test_scheduler_release_serving_ticket_calls_finished() -> None:
    sched, fx = make()
    ready(fx, "a")
    t = submit(sched, "a")
    sched.release(t)
    assert fx.finished_tickets == [t]
    assert sched.in_flight("a") == 0
    assert t.state is TicketState.DONE


def test_scheduler_release_is_idempotent() -> None:
    sched, fx = make(limit=1)
    ready(fx, "a")
    t = submit(sched, "a")
    sched.release(t)
    sched.release(t)
    assert fx.finished_tickets == [t]
    assert sched.in_flight("a") == 0
    submit(sched, "a")
    with pytest.raises(Overloaded):  # the double release freed only one slot
        submit(sched, "a")


def test_scheduler_release_after_reject_is_a_no_op() -> None:
    sched, fx = make(limit=1)
    t = submit(sched, "a")
    finish_swap(sched, fx, UpstreamStartError("boom"))
    sched.release(t)
    assert fx.finished_tickets == []
    submit(sched, "a")
    with pytest.raises(Overloaded):
        submit(sched, "a")


# -- errors, unload, shutdown ----------------------------------------------------------------


def test_scheduler_swap_error_rejects_every_waiter() -> None:
    sched, fx = make()
    t1, t2 = submit(sched, "a"), submit(sched, "a")
    err = UpstreamStartError("exited")
    finish_swap(sched, fx, err)
    assert fx.rejected == [(t1, err), (t2, err)]
    assert fx.granted == []
    assert (t1.state, t2.state) == (TicketState.DONE, TicketState.DONE)


def test_scheduler_swap_error_drains_the_queue() -> None:
    sched, fx = make()
    submit(sched, "a")
    b = submit(sched, "b")
    finish_swap(sched, fx, UpstreamStartError("exited"))
    assert fx.swaps == [("a", frozenset()), ("b", frozenset())]
    assert b.state is TicketState.JOINED


def test_scheduler_no_automatic_retry_after_swap_error() -> None:
    sched, fx = make()
    submit(sched, "a")
    finish_swap(sched, fx, UpstreamStartError("exited"))
    assert fx.swaps == [("a", frozenset())]
    submit(sched, "a")
    assert fx.swaps == [("a", frozenset()), ("a", frozenset())]


def test_scheduler_unload_rejects_queued_and_joined_tickets() -> None:
    sched, fx = make()
    ready(fx, "c")
    c = submit(sched, "c")  # serving, blocks everyone else
    a = submit(sched, "a")  # queued
    sched.release(c)  # a's swap starts
    b = submit(sched, "b")  # queued behind a's swap
    assert (a.state, b.state) == (TicketState.JOINED, TicketState.QUEUED)
    sched.unload({"a", "b"})
    assert [t for t, _ in fx.rejected] == [b, a]
    assert all(isinstance(e, ModelUnloaded) for _, e in fx.rejected)
    assert [e.message for _, e in fx.rejected] == [
        "model b was unloaded",
        "model a was unloaded",
    ]
    assert sched.queued() == []


def test_scheduler_request_after_unload_does_not_join_the_aborted_start() -> None:
    sched, fx = make()
    first = submit(sched, "a")
    sched.unload({"a"})
    second = submit(sched, "a")  # arrives while the aborted start winds down
    assert second.state is TicketState.QUEUED
    assert [t for t, _ in fx.rejected] == [first]
    finish_swap(sched, fx, error=ModelUnloaded("model a was unloaded while starting"))
    assert state_of(second) is TicketState.JOINED  # a fresh start, not the aborted one
    assert [t for t, _ in fx.swaps] == ["a", "a"]


def test_scheduler_unload_leaves_other_models_alone() -> None:
    sched, fx = make()
    ready(fx, "a")
    a = submit(sched, "a")
    b = submit(sched, "b")
    sched.unload({"c"})
    assert fx.rejected == []
    assert sched.queued() == [b]
    assert a.state is TicketState.SERVING


def test_scheduler_unload_frees_concurrency_slots() -> None:
    sched, _fx = make(limit=1)
    submit(sched, "a")
    sched.unload({"a"})
    submit(sched, "a")  # no Overloaded


def test_scheduler_shutdown_rejects_every_waiter() -> None:
    sched, fx = make()
    ready(fx, "c")
    c = submit(sched, "c")
    a = submit(sched, "a")
    b = submit(sched, "b")
    sched.shutdown()
    assert {t.id for t, _ in fx.rejected} == {a.id, b.id}
    assert all(isinstance(e, ShuttingDown) for _, e in fx.rejected)
    assert sched.queued() == []
    assert c.state is TicketState.SERVING  # in-flight requests are not cut here


def test_scheduler_shutdown_rejects_joined_waiters() -> None:
    sched, fx = make()
    a = submit(sched, "a")
    sched.shutdown()
    assert [t for t, _ in fx.rejected] == [a]


def test_scheduler_submit_after_shutdown_raises() -> None:
    sched, _fx = make()
    sched.shutdown()
    with pytest.raises(ShuttingDown) as info:
        submit(sched, "a")
    assert (info.value.status, info.value.code) == (503, "shutting_down")


# -- priority ------------------------------------------------------------------------------


def test_scheduler_higher_priority_queues_first_fifo_among_equals() -> None:
    sched, fx = make()
    ready(fx, "a")
    submit(sched, "a")
    low1 = submit(sched, "b", priority=0)
    high1 = submit(sched, "c", priority=5)
    low2 = submit(sched, "b", priority=0)
    high2 = submit(sched, "b", priority=5)
    mid = submit(sched, "c", priority=1)
    assert sched.queued() == [high1, high2, mid, low1, low2]


def test_scheduler_priority_decides_which_swap_starts_first() -> None:
    sched, fx = make()
    ready(fx, "a")
    a = submit(sched, "a")
    submit(sched, "b", priority=0)
    submit(sched, "c", priority=9)
    sched.release(a)
    assert fx.swaps == [("c", frozenset({"a"}))]


# -- fifo maxWait, policy refusals and residency holds ---------------------------------


def test_an_overdue_request_stops_new_grants_to_the_model_blocking_it() -> None:
    sched, fx = make(("a", "b"))
    ready(fx, "a")
    busy = submit(sched, "a")
    waiting = submit(sched, "b")  # a must go first, and a is busy
    assert state_of(waiting) is TicketState.QUEUED
    later = submit(sched, "a")
    assert state_of(later) is TicketState.SERVING  # no bound yet: served at once
    sched.overdue(waiting)
    assert sched.held() == {"a": "b"}
    held = submit(sched, "a")
    assert state_of(held) is TicketState.QUEUED  # a gets nothing new now
    sched.release(busy)
    assert fx.swaps == []  # later is still in flight on a
    sched.release(later)
    assert fx.swaps == [("b", frozenset({"a"}))]  # b's turn, before held
    assert state_of(held) is TicketState.QUEUED
    finish_swap(sched, fx)
    assert state_of(waiting) is TicketState.SERVING
    assert sched.held() == {}
    sched.release(waiting)
    assert fx.swaps[-1] == ("a", frozenset({"b"}))  # then held's model again


def test_overdue_after_the_ticket_left_the_queue_changes_nothing() -> None:
    sched, fx = make(("a", "b"))
    ready(fx, "a")
    t = submit(sched, "a")
    sched.overdue(t)  # granted at once: never queued
    assert sched.held() == {}
    assert state_of(submit(sched, "a")) is TicketState.SERVING


class Refusing:
    """A policy that refuses one model (as the memory engine refuses a model
    that can never fit)."""

    def evict(self, target: str, running: Set[str]) -> frozenset[str]:
        if target == "huge":
            raise UpstreamStartError("model huge can never fit")
        return frozenset(running)


def test_a_policy_refusal_rejects_the_request_and_starts_nothing() -> None:
    fx = RecordingEffects()
    sched = Scheduler(fx, Refusing(), lambda _m: 10)
    ready(fx, "a")
    t = submit(sched, "huge")
    assert state_of(t) is TicketState.DONE
    assert [(x.model, e.message) for x, e in fx.rejected] == [
        ("huge", "model huge can never fit")
    ]
    assert fx.swaps == []
    assert sched.queued() == []
    # Its slot in concurrencyLimit was given back.
    for _ in range(10):
        submit(sched, "huge")


def test_a_residency_hold_keeps_the_new_model_from_being_swapped_out() -> None:
    sched, fx = make(("a", "b"))
    submit(sched, "a")
    hold = Ticket("a")
    target = next(iter(sched.swapping()))
    fx.running_models.add(target)
    fx.ready_models.add(target)
    sched.swap_done(target, None, hold)
    assert hold.counted is False and state_of(hold) is TicketState.SERVING
    for t in list(fx.granted):
        if t is not hold:
            sched.release(t)
    b = submit(sched, "b")
    assert state_of(b) is TicketState.QUEUED  # a is held
    sched.release(hold)
    assert fx.swaps[-1] == ("b", frozenset({"a"}))


def test_a_residency_hold_is_not_held_off_by_an_overdue_request() -> None:
    sched, fx = make(("a", "b"))
    submit(sched, "a")
    hold = Ticket("a")
    target = next(iter(sched.swapping()))
    ready(fx, target)
    sched.swap_done(target, None, hold)
    for t in list(fx.granted):
        if t is not hold:
            sched.release(t)
    b = submit(sched, "b")
    sched.overdue(b)
    # Only the hold keeps a: holding a's grants could not make b sooner.
    assert sched.held() == {}
    assert state_of(submit(sched, "a")) is TicketState.SERVING
