"""A stateful property test of the router over the scripted backend.

Hypothesis drives requests (held, then finished), unloads, reloads, crashes,
failing starts, an unreachable engine and shutdown, in any order. After every
step, once the swaps, starts and stops in flight have settled, it checks:

- no upstream is left STARTING or STOPPING;
- every workload the backend holds belongs to a running upstream;
- in-flight counts are never negative and are zero once no request holds one;
- after an unload, the model is not running (a doomed swap never starts it);
- after shutdown, the backend holds nothing and nothing was started since.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from backends.base import BackendUnavailable
from controller.config.loader import parse_config
from controller.engine.pool import BackendPool
from controller.engine.router import Router
from controller.engine.states import UpstreamState
from controller.errors import ControllerError
from tests.fakes.scripted_backend import ScriptedBackend, start_error

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from controller.engine.upstream import Upstream

S = UpstreamState
T = TypeVar("T")
MODELS = ("a", "b", "c")
BASE = """
livenessInterval: 0
crashLoop: {failures: 0}
models:
  a: {cmd: "srv a", proxy: "http://127.0.0.1:9"}
  b: {cmd: "srv b", proxy: "http://127.0.0.1:9"}
  c: {cmd: "srv c", proxy: "http://127.0.0.1:9"}
"""
CONFIGS = (
    BASE,  # one model at a time
    BASE + "groups:\n  g: {swap: false, members: [a, b]}\n",  # a and b together
    BASE.replace('"srv a"', '"srv a --changed"'),  # a restarts on reload
)
SETTLE_S = 5.0


@dataclass
class Request:
    model: str
    task: asyncio.Task[None]
    done: asyncio.Event
    upstream: Upstream | None = None


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend = ScriptedBackend()
        self.router = self.run(self._make(CONFIGS[0]))
        self.requests: list[Request] = []
        self.closed = False
        self.starts_at_close = 0
        self.slow: set[str] = set()  # models whose stop is held at a gate
        self.unloaded: set[str] = set()  # unloaded, and not requested since
        self.background: list[asyncio.Task[None]] = []

    async def _make(self, text: str) -> Router:
        return Router(parse_config(text).config, BackendPool(self.backend, "p"))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # -- driving -------------------------------------------------------------------

    async def _serve(self, req: Request) -> None:
        try:
            async with self.router.lease(req.model) as upstream:
                req.upstream = upstream
                await req.done.wait()
        except ControllerError:
            pass  # refused, unloaded, failed start: an answer, not a hang

    @precondition(lambda self: not self.closed)
    @rule(model=st.sampled_from(MODELS))
    def request(self, model: str) -> None:
        self.unloaded.discard(model)
        req = Request(model, None, asyncio.Event())  # type: ignore[arg-type]
        req.task = self.loop.create_task(self._serve(req))
        self.requests.append(req)
        self.settle()

    @precondition(lambda self: any(not r.task.done() for r in self.requests))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        pending = [r for r in self.requests if not r.task.done()]
        data.draw(st.sampled_from(pending)).done.set()
        self.settle()

    @precondition(lambda self: not self.closed)
    @rule(model=st.sampled_from((*MODELS, None)))
    def unload(self, model: str | None) -> None:
        # In the background: a held stop may keep it waiting.
        unload = self.router.unload(None if model is None else {model})
        self.background.append(self.loop.create_task(unload))
        self.unloaded.update(MODELS if model is None else (model,))
        self.settle()

    @precondition(lambda self: not self.closed)
    @rule(model=st.sampled_from(MODELS))
    def slow_stop(self, model: str) -> None:
        """The model's next stops wait until ``stops_finish``."""
        if model not in self.slow:
            self.backend.hold("stop", model)
            self.slow.add(model)

    @precondition(lambda self: bool(self.slow))
    @rule()
    def stops_finish(self) -> None:
        self._release_stops()
        self.settle()

    def _release_stops(self) -> None:
        for model in self.slow:
            self.backend.release("stop", model)
        self.slow.clear()

    @precondition(lambda self: not self.closed)
    @rule(model=st.sampled_from(MODELS), code=st.integers(0, 3))
    def crash(self, model: str, code: int) -> None:
        self.backend.die(model, code)
        self.settle()

    @rule(model=st.sampled_from(MODELS), broken=st.booleans())
    def starts_fail(self, model: str, broken: bool) -> None:
        fail = self.backend.script(model).fail
        if broken:
            fail["start"] = start_error()
        else:
            fail.pop("start", None)

    @rule(model=st.sampled_from(MODELS), down=st.booleans())
    def engine_down(self, model: str, down: bool) -> None:
        fail = self.backend.script(model).fail
        if down:
            fail["health"] = BackendUnavailable("engine unreachable")
        else:
            fail.pop("health", None)

    @precondition(lambda self: not self.closed)
    @rule(which=st.integers(0, len(CONFIGS) - 1))
    def reload(self, which: int) -> None:
        self.run(self._reconfigure(CONFIGS[which]))
        self.settle()

    @precondition(lambda self: not self.closed)
    @rule()
    def shutdown(self) -> None:
        self.closed = True
        self.starts_at_close = self._starts()
        closing = self.loop.create_task(self.router.aclose())
        self.settle()  # shutdown begins while stops may be held
        self._release_stops()
        for req in self.requests:
            req.done.set()
        self.run(asyncio.wait_for(closing, SETTLE_S))
        self.settle()
        assert self.backend.held() == [], "shutdown left workloads behind"

    async def _reconfigure(self, text: str) -> None:
        self.router.reconfigure(parse_config(text).config)

    # -- checking ------------------------------------------------------------------

    def _starts(self) -> int:
        return sum(1 for op, _ in self.backend.calls if op == "start")

    def _upstreams(self) -> list[Upstream]:
        seen = {id(u): u for u in self.router.upstreams.values()}
        for req in self.requests:
            if req.upstream is not None:
                seen[id(req.upstream)] = req.upstream
        return list(seen.values())

    def _stuck(self) -> list[str]:
        """Upstreams starting or stopping, but for those whose stop is held
        at a gate (a failed start reaps its workload before it is FAILED)."""
        return [
            u.id
            for u in self._upstreams()
            if u.state in (S.STARTING, S.STOPPING) and u.id not in self.slow
        ]

    def _in_transit(self) -> bool:
        return bool(self._stuck())

    def settle(self) -> None:
        """Run the loop until no start or stop is in progress for a while. A
        swap may still wait (for a retired model that a held request keeps
        up): that is a wait, not a transition."""

        async def until_quiet() -> None:
            calm = 0
            async with asyncio.timeout(SETTLE_S):
                while calm < 3:
                    for _ in range(5):  # let callbacks and new tasks run
                        await asyncio.sleep(0)
                    calm = 0 if self._in_transit() else calm + 1
                    await asyncio.sleep(0.001)

        self.run(until_quiet())

    @invariant()
    def nothing_left_in_transit(self) -> None:
        assert not self._stuck(), f"left starting or stopping: {self._stuck()}"

    @invariant()
    def an_unloaded_model_stays_down(self) -> None:
        if self.slow:
            return  # its unload may still be waiting for a held stop
        up = [m for m in self.unloaded if self.router.upstreams[m].running]
        assert not up, f"started after an unload, with no request since: {up}"

    @invariant()
    def every_workload_is_counted(self) -> None:
        if self.slow:
            return  # a held stop keeps a workload whose upstream stops
        refs = {
            u._handle.ref
            for u in self._upstreams()
            if u._handle is not None and u.running
        }
        orphans = [w.ref for w in self.backend.held() if w.ref not in refs]
        assert not orphans, f"workloads nobody counts as running: {orphans}"

    @invariant()
    def in_flight_counts_are_sane(self) -> None:
        for u in self._upstreams():
            assert u.in_flight >= 0, f"{u.id}: in flight {u.in_flight}"
        if all(r.task.done() for r in self.requests):
            busy = {u.id: u.in_flight for u in self._upstreams() if u.in_flight}
            assert not busy, f"in flight with no request: {busy}"

    @invariant()
    def nothing_starts_after_shutdown(self) -> None:
        if self.closed:
            assert self._starts() == self.starts_at_close

    def teardown(self) -> None:
        try:
            self._release_stops()
            if not self.closed:
                for req in self.requests:
                    req.done.set()
                self.run(asyncio.wait_for(self.router.aclose(), SETTLE_S))
            pending = [r.task for r in self.requests if not r.task.done()]
            pending += [t for t in self.background if not t.done()]
            if pending:
                self.run(asyncio.wait(pending, timeout=SETTLE_S))
        finally:
            self.loop.close()


RouterMachine.TestCase.settings = settings(
    max_examples=60,
    derandomize=True,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRouterMachine = RouterMachine.TestCase
