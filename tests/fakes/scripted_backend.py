"""A scriptable in-memory Backend for unit tests of the Upstream and the router.

Every operation (start, health, logs, stop, wait) can be held at a gate the
test opens, delayed, or made to fail with a given exception, per model. The
workload it "runs" is a record: alive until stopped or ``die()``d. Nothing
listens on a port; the tests drive the controller's own state machines.

``held()`` says which workloads exist (launched and not yet stopped): the
property tests check that each is counted as running or being reaped.

``footprints[model]`` is what ``footprint()`` reports for the model's live
workload (default ``Footprint()``); a test changes it at will to play a
server whose memory grows. Measuring is not an operation the call sequence
tests follow: it is counted in ``footprint_calls``, not in ``calls``, but can
be held or failed like the others (``"footprint"``).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from backends.base import BackendStartError, ExitInfo, Footprint, Handle, Health

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.base import LaunchSpec

OPS = ("start", "health", "logs", "stop", "wait", "check", "footprint")


@dataclass
class Workload:
    model: str
    ref: str
    alive: bool = True
    exit_code: int | None = None
    lines: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    exited: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Script:
    """What one model's operations do. ``fail[op]`` raises once per call
    while set; ``gates[op]`` blocks the call until the test opens it."""

    fail: dict[str, BaseException] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    # Probes that answer STARTING before the first READY, per start.
    not_ready_probes: int = 0
    # Health answers while ready (None: READY while alive).
    health_while_ready: Health | None = None
    # An exit code with which the workload dies right after launch.
    exit_at_start: int | None = None
    ignore_stop: bool = False  # only the kill after the grace ends it
    startup_lines: tuple[bytes, ...] = ()


class ScriptedBackend:
    """A Backend whose every move the test scripts (see module docstring)."""

    kind: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.workloads: dict[str, Workload] = {}
        self.calls: list[tuple[str, str]] = []  # (op, model), in order
        # model -> what footprint() reports for its live workload
        self.footprints: dict[str, Footprint] = {}
        self.footprint_calls: list[str] = []  # models, in order
        self._ids = itertools.count(1)
        self._probes: dict[str, int] = {}

    # -- scripting ---------------------------------------------------------------

    def script(self, model: str) -> Script:
        return self.scripts.setdefault(model, Script())

    def hold(self, op: str, model: str) -> asyncio.Event:
        """Block ``op`` for ``model`` until the returned event is set."""
        assert op in OPS, op
        gate = asyncio.Event()
        self.script(model).gates[op] = gate
        return gate

    def release(self, op: str, model: str) -> None:
        gate = self.script(model).gates.pop(op, None)
        if gate is not None:
            gate.set()

    def die(self, model: str, code: int = 1) -> None:
        """The model's live workload exits on its own with ``code``."""
        for w in self.workloads.values():
            if w.model == model and w.alive:
                self._exit(w, code)

    def held(self) -> list[Workload]:
        """Workloads launched and not yet stopped (alive or not yet reaped)."""
        return list(self.workloads.values())

    def ready_now(self, model: str) -> None:
        """The model's live workload answers its health check from now on."""
        self.script(model).not_ready_probes = 0
        for w in self.workloads.values():
            if w.model == model:
                self._probes[w.ref] = 0

    def say(self, model: str, line: bytes) -> None:
        """The model's live workload prints a line."""
        for w in self.workloads.values():
            if w.model == model and w.alive:
                w.lines.put_nowait(line)

    # -- the Backend protocol ------------------------------------------------------

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        await self._enter("start", model)
        ref = f"w{next(self._ids)}"
        w = Workload(model, ref)
        self.workloads[ref] = w
        script = self.script(model)
        self._probes[ref] = script.not_ready_probes
        for line in script.startup_lines:
            w.lines.put_nowait(line)
        if script.exit_at_start is not None:
            self._exit(w, script.exit_at_start)
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        await self._enter("health", handle.model)
        w = self.workloads.get(handle.ref)
        if w is None or not w.alive:
            return Health.EXITED
        if self._probes.get(handle.ref, 0) > 0:
            self._probes[handle.ref] -= 1
            return Health.STARTING
        answer = self.script(handle.model).health_while_ready
        return Health.READY if answer is None else answer

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        await self._enter("stop", handle.model)
        w = self.workloads.pop(handle.ref, None)
        if w is None:
            return ExitInfo(code=None, forced=False)
        forced = False
        if w.alive:
            forced = self.script(handle.model).ignore_stop
            self._exit(w, -9 if forced else 0)
        return ExitInfo(code=w.exit_code, forced=forced)

    async def wait(self, handle: Handle) -> None:
        await self._enter("wait", handle.model)
        w = self.workloads.get(handle.ref)
        if w is not None:
            await w.exited.wait()

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        await self._enter("logs", handle.model)
        w = self.workloads.get(handle.ref)
        if w is None:
            return
        while (line := await w.lines.get()) is not None:
            yield line

    async def footprint(self, handle: Handle) -> Footprint:
        self.footprint_calls.append(handle.model)
        script = self.script(handle.model)
        gate = script.gates.get("footprint")
        if gate is not None:
            await gate.wait()
        error = script.fail.get("footprint")
        if error is not None:
            raise error
        w = self.workloads.get(handle.ref)
        if w is None or not w.alive:
            return Footprint()
        return self.footprints.get(handle.model, Footprint())

    async def check_engine(self, spec: LaunchSpec) -> None:
        """As container backends: raise when the model's engine is away."""
        error = self.scripts.get(_model_of(spec), Script()).fail.get("check")
        if error is not None:
            raise error

    async def aclose(self) -> None:
        self.calls.append(("aclose", ""))

    # -- internals -------------------------------------------------------------------

    async def _enter(self, op: str, model: str) -> None:
        self.calls.append((op, model))
        script = self.script(model)
        gate = script.gates.get(op)
        if gate is not None:
            await gate.wait()
        error = script.fail.get(op)
        if error is not None:
            raise error

    def _exit(self, w: Workload, code: int) -> None:
        w.alive = False
        w.exit_code = code
        w.lines.put_nowait(None)
        w.exited.set()


def _model_of(spec: LaunchSpec) -> str:
    """The model a test config's ``cmd: "srv <model>"`` launches."""
    return spec.argv[1] if len(spec.argv) > 1 else ""


def start_error(message: str = "scripted start failure") -> BackendStartError:
    return BackendStartError(message)
