"""Native backend: each model server is a child process in its own process group.

Stop escalates as llama-swap and Supervisor do: ``cmdStop`` (with ``${PID}``) or
SIGTERM to the whole group, then SIGKILL to the group after the grace period;
``cmdStop`` runs beside the grace timer, so one that hangs is killed with it.
Everything started here dies with swapvisor even when it is SIGKILLed: the
direct child through the kernel's parent-death signal, its whole group through
the lifeline (``backends/lifeline.py``).

A process that left the group (``setsid``: a daemonizing server, a worker
started in its own session) is found by the ``SWAPVISOR_SERVER`` mark every
server's environment carries and its descendants inherit
(``backends.procfs.marked``): it gets the SIGTERM with the group and, if it
outlives the server, a SIGKILL; the lifeline looks for the marks too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import itertools
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypedDict, cast

from backends.base import (
    BackendStartError,
    ExitInfo,
    Footprint,
    Handle,
    Health,
    LaunchSpec,
)
from backends.lifeline import LIFELINE
from backends.probe import HttpProbe
from backends.procfs import MARK, marked, process_tree, tree_memory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from backends.base import Backend

log = logging.getLogger("swapvisor.native")
_PR_SET_PDEATHSIG = 1
EXIT_REAP_S = 1.0
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


SETPRIV = shutil.which("setpriv")


def _die_with_parent_argv(
    argv: tuple[str, ...], parent: int
) -> tuple[tuple[str, ...], Callable[[], None] | None]:
    """How to make the child die with swapvisor.

    util-linux's ``setpriv --pdeathsig`` sets the signal and execs the command,
    so Python can spawn with vfork; a ``preexec_fn`` forces a full fork of the
    swapvisor process, which blocked the event loop 6-11 ms per start (bench/).
    """
    if SETPRIV is not None:
        return (SETPRIV, "--pdeathsig", "KILL", "--", *argv), None
    return argv, lambda: _die_with_parent(parent)


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: SIGKILL me when swapvisor dies."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect; then nobody would ever
    # deliver the signal.
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass(slots=True)
class _Child:
    proc: asyncio.subprocess.Process
    # Resolved when the process itself exits. Process.wait() is not enough: on
    # CPython 3.11.7 it also waits for the output pipes to close, which a
    # grandchild holding them open can delay forever.
    exited: asyncio.Future[int]
    mark: str = ""  # its SWAPVISOR_SERVER value
    exit: ExitInfo | None = None

    async def wait_exit(self) -> int:
        return await asyncio.shield(self.exited)


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    def __init__(self, exited: asyncio.Future[int], loop: asyncio.AbstractEventLoop):
        super().__init__(limit=2**16, loop=loop)
        self._exited = exited
        self._process: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop's process transport has the interface without subclassing it.
        self._process = cast("asyncio.SubprocessTransport", transport)

    def process_exited(self) -> None:
        # Read the code first: the base class may close and drop the transport.
        code = self._process.get_returncode() if self._process else None
        super().process_exited()
        if not self._exited.done():
            self._exited.set_result(-1 if code is None else code)


class NativeBackend:
    """Runs ``spec.argv`` directly (no shell), stdout and stderr merged."""

    kind: ClassVar[str] = "native"

    def __init__(self) -> None:
        self._children: dict[str, _Child] = {}
        self._probe = HttpProbe()

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        if not spec.argv:
            raise BackendStartError("empty command")
        mark = f"{os.getpid()}.{next(_STARTS)}"
        env = {**_placed_env(spec), MARK: mark}
        try:
            child = await _launch(spec.argv, env, capture=True)
        except OSError as exc:
            raise BackendStartError(
                f"failed to start command {list(spec.argv)!r}: {exc.strerror or exc}"
            ) from exc
        child.mark = mark
        ref = str(child.proc.pid)
        self._children[ref] = child
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        child = self._children.get(handle.ref)
        return await self._probe.health(
            handle, spec, exited=lambda: child is None or child.exited.done()
        )

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        child = self._children.get(handle.ref)
        if child is None:
            return ExitInfo(code=None, forced=False)
        pid = child.proc.pid
        # Beside the stop, on a thread: what left the group (a few ms of /proc);
        # those get the SIGTERM as soon as they are known.
        strays = asyncio.ensure_future(asyncio.to_thread(_strays, child.mark, pid))
        try:
            if child.exit is None:
                child.exit = await self._terminate(child, spec, grace, strays)
        finally:
            # The group may hold grandchildren that outlived the leader.
            _end_group(pid)
            if await _within(strays, STRAY_SCAN_S):  # again: they may have forked
                await _within(asyncio.to_thread(_kill_marked, child.mark), STRAY_SCAN_S)
        del self._children[handle.ref]
        return child.exit

    async def _terminate(
        self,
        child: _Child,
        spec: LaunchSpec,
        grace: float,
        strays: asyncio.Future[frozenset[int]],
    ) -> ExitInfo:
        if child.exited.done():
            return ExitInfo(code=child.exited.result(), forced=False)
        pid = child.proc.pid
        deadline = asyncio.get_running_loop().time() + max(grace, 0.0)
        # cmdStop runs beside the grace timer, as in llama-swap: one that hangs
        # must not hang the stop (and with it every swap) forever.
        stopper = await _start_cmd_stop(pid, spec) if spec.cmd_stop else None
        if stopper is None:
            _signal_group(pid, signal.SIGTERM)
            strays.add_done_callback(_terminate_strays)
        try:
            async with asyncio.timeout_at(deadline):
                return ExitInfo(code=await child.wait_exit(), forced=False)
        except TimeoutError:
            _signal_group(pid, signal.SIGKILL)
            return ExitInfo(code=await child.wait_exit(), forced=True)
        finally:
            if stopper is not None:
                await _reap_by(stopper, deadline)

    async def footprint(self, handle: Handle) -> Footprint:
        """The server's process tree (group and descendants) and its PSS."""
        child = self._children.get(handle.ref)
        if child is None:
            return Footprint()
        # A few hundred small /proc reads, and smaps_rollup walks the page
        # tables of a big process: off the loop.
        return await asyncio.to_thread(
            _measure, child.proc.pid, not child.exited.done()
        )

    async def wait(self, handle: Handle) -> None:
        """Return once the process has exited (used to notice a crash at once)."""
        child = self._children.get(handle.ref)
        if child is not None:
            await child.wait_exit()

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        child = self._children.get(handle.ref)
        if child is None or child.proc.stdout is None:
            return
        reader = child.proc.stdout
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the reader's limit
                line = await reader.read(65536)
            if not line:
                break
            yield line
        # Output closed: let the exit be reaped too, so a health() right after
        # the stream ends sees EXITED rather than a dying process.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait_exit(), EXIT_REAP_S)

    async def aclose(self) -> None:
        await self._probe.aclose()


def _placed_env(spec: LaunchSpec) -> dict[str, str]:
    """The server's environment; a placed one sees only its GPUs."""
    env = {**os.environ, **spec.env}
    if spec.devices is not None:
        # The placement wins over the config's own value: the engine counted
        # the memory of exactly these devices. Indices are NVML's (PCI bus
        # order); CUDA's default order is fastest-first, so ask for bus order
        # or index 0 could name another card than the one measured.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.devices)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def _measure(leader: int, alive: bool) -> Footprint:
    pids = process_tree(leader, leader_alive=alive)
    if not pids:
        return Footprint()
    return Footprint(pids=pids, host_bytes=tree_memory(pids))


async def _launch(argv: Sequence[str], env: dict[str, str], *, capture: bool) -> _Child:
    """Start ``argv`` (no shell) as the leader of a new process group that dies
    with swapvisor: the leader by the parent-death signal, the whole group by
    the lifeline. Output is merged into ``proc.stdout`` when ``capture``, else
    dropped. Raises ``OSError`` when it cannot start."""
    # Checked here: behind setpriv a missing binary would be setpriv's exit code.
    if shutil.which(argv[0], path=env.get("PATH")) is None:
        raise FileNotFoundError(
            errno.ENOENT, f"{argv[0]}: No such file or directory (or not executable)"
        )
    wrapped, preexec = _die_with_parent_argv(tuple(argv), os.getpid())
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    # create_subprocess_exec, with a protocol that reports the exit itself
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitAwareProtocol(exited, loop),
        *wrapped,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        preexec_fn=preexec,
        **_own_group(loop),
    )
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    LIFELINE.hold(proc.pid)
    return _Child(proc, exited)


class _GroupArgs(TypedDict, total=False):
    process_group: int
    start_new_session: bool


def _own_group(loop: asyncio.AbstractEventLoop) -> _GroupArgs:
    """The child leads a new process group (its pgid is its pid). uvloop
    rejects ``process_group``; a new session is also a new group there."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return {"process_group": 0}
    return {"start_new_session": True}


async def _start_cmd_stop(pid: int, spec: LaunchSpec) -> _Child | None:
    argv = [arg.replace("${PID}", str(pid)) for arg in spec.cmd_stop]
    try:
        return await _launch(argv, {**os.environ, **spec.env}, capture=False)
    except OSError:
        # As llama-swap: a cmdStop that cannot run falls back to SIGTERM.
        return None


async def _reap_by(child: _Child, deadline: float) -> None:
    """Let ``child`` run until ``deadline``, then end its group and reap it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await child.wait_exit()
    _end_group(child.proc.pid)
    await child.wait_exit()


_STARTS = itertools.count(1)
# A /proc read can block on a process stuck in the kernel (a hung mount, a
# driver): a stop never waits longer than this for the scan.
STRAY_SCAN_S = 2.0


async def _within(
    work: asyncio.Future[frozenset[int]] | Awaitable[None], limit_s: float
) -> frozenset[int]:
    """What ``work`` found (nothing for None), or nothing after ``limit_s``."""
    try:
        found = await asyncio.wait_for(asyncio.shield(work), limit_s)
    except TimeoutError:
        log.warning("reading /proc for a server's strays took over %g s", limit_s)
        return frozenset()
    return found if isinstance(found, frozenset) else frozenset()


def _terminate_strays(scan: asyncio.Future[frozenset[int]]) -> None:
    if not scan.cancelled() and scan.exception() is None:
        _signal_each(scan.result(), signal.SIGTERM)


def _strays(mark: str, pgid: int) -> frozenset[int]:
    """The server's processes outside its group (blocking: on a thread)."""
    return frozenset(p for p in marked(mark) if _group_of(p) != pgid)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _kill_marked(mark: str) -> None:
    """SIGKILL every process still carrying ``mark`` (blocking)."""
    _signal_each(marked(mark), signal.SIGKILL)


def _signal_each(pids: frozenset[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _end_group(pgid: int) -> None:
    """SIGKILL whatever is left of a group we are done with, and let it go."""
    _signal_group(pgid, signal.SIGKILL)
    LIFELINE.release(pgid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


if TYPE_CHECKING:
    _check: type[Backend] = NativeBackend
