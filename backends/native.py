"""Native backend: each model server is a child process in its own process group.

Stop escalates as llama-swap and Supervisor do: ``cmdStop`` (with ``${PID}``) or
SIGTERM to the whole group, then SIGKILL to the group after the grace period.
Children die with swapvisor even when it is SIGKILLed, through the kernel's
parent-death signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from backends.base import (
    BackendStartError,
    ExitInfo,
    Handle,
    Health,
    LaunchSpec,
)
from backends.probe import HttpProbe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from backends.base import Backend

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
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._process = transport

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
        if shutil.which(spec.argv[0], path=spec.env.get("PATH")) is None:
            raise BackendStartError(
                f"failed to start command {list(spec.argv)!r}: {spec.argv[0]}: "
                "No such file or directory (or not executable)"
            )
        parent = os.getpid()
        env = {**os.environ, **spec.env}
        argv, preexec = _die_with_parent_argv(spec.argv, parent)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()
        try:
            # create_subprocess_exec, with a protocol that reports the exit itself
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitAwareProtocol(exited, loop),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=preexec,
            )
        except OSError as exc:
            raise BackendStartError(
                f"failed to start command {list(spec.argv)!r}: {exc.strerror or exc}"
            ) from exc
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        self._children[str(proc.pid)] = _Child(proc, exited)
        return Handle(
            model=model, kind=self.kind, ref=str(proc.pid), base_url=spec.base_url
        )

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        child = self._children.get(handle.ref)
        return await self._probe.health(
            handle, spec, exited=lambda: child is None or child.exited.done()
        )

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        child = self._children.get(handle.ref)
        if child is None:
            return ExitInfo(code=None, forced=False)
        if child.exit is None:
            child.exit = await self._terminate(child, spec, grace)
        # The group may hold grandchildren that outlived the leader.
        _signal_group(child.proc.pid, signal.SIGKILL)
        del self._children[handle.ref]
        return child.exit

    async def _terminate(
        self, child: _Child, spec: LaunchSpec, grace: float
    ) -> ExitInfo:
        proc = child.proc
        if child.exited.done():
            return ExitInfo(code=child.exited.result(), forced=False)
        if spec.cmd_stop:
            await self._run_cmd_stop(proc.pid, spec)
        else:
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.wait_for(child.wait_exit(), timeout=max(grace, 0.0))
            return ExitInfo(code=code, forced=False)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            return ExitInfo(code=await child.wait_exit(), forced=True)

    async def _run_cmd_stop(self, pid: int, spec: LaunchSpec) -> None:
        argv = [arg.replace("${PID}", str(pid)) for arg in spec.cmd_stop]
        try:
            stopper = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, **spec.env},
            )
        except OSError:
            # As llama-swap: a cmdStop that cannot run falls back to SIGTERM.
            _signal_group(pid, signal.SIGTERM)
            return
        await stopper.wait()

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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


if TYPE_CHECKING:
    _check: type[Backend] = NativeBackend
