"""The lifeline: whatever swapvisor started dies with it, grandchildren included.

One small watcher process per swapvisor process holds the read end of a pipe;
the native backend tells it, over that pipe, which process groups it started
(``+PGID``) and which it has stopped (``-PGID``). When swapvisor dies, even by
SIGKILL, the kernel closes the write end: the watcher reads EOF, sends SIGTERM
to every group still listed, SIGKILL after a short grace, and exits.

Why this and not a supervisor per model: the parent-death signal alone reaches
only the direct child (a wrapper's or a forking server's workers survive it),
and a supervisor between swapvisor and each server would add a process start
(6-9 ms of ``python -S``) to every model start, hide the server's PID, exit
code and output behind a relay, and have to forward all of them faithfully.
The watcher starts once, off the start path (nothing waits for it), and leaves
the server swapvisor's own child: ``${PID}``, exit codes, ``wait`` and logs are
untouched. EOF needs no signal, ``prctl`` or ``setpriv``, and cannot be missed:
the pipe is close-on-exec, so no server inherits the write end.

A process that left its group (``setsid``, ``setpgid``) is found by the
``SWAPVISOR_SERVER`` mark in its environment (``backends/native.py``): at EOF
the watcher also takes down every process whose mark names its swapvisor.

Limits: a process that left its group and cleared its environment is not
followed; a swapvisor killed between a server's exec and its ``+PGID`` (the
event loop's next few steps) leaves that group unlisted (the server itself
still gets the parent-death signal). A line written as a watcher dies is lost
until the next ``hold`` or ``release``, which starts a new one with the list.

Measured (20-30 starts of the fake upstream, start to ready): 52-70 ms before
and after, the spread being the machine's; the first ``hold`` spawns the
watcher in 0.3 ms, each later one is a 5 us pipe write. It runs as
``python -S -I lifeline.py`` and imports only small standard modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

GRACE_S = 1.0  # between SIGTERM and SIGKILL once swapvisor is gone


# -- the watcher (runs in its own process) -------------------------------------------


def watch(fd: int = 0, grace: float = GRACE_S, swapvisor: int | None = None) -> None:
    """Track ``+PGID`` / ``-PGID`` lines on ``fd``; at EOF take every group
    down, and every process marked as started by ``swapvisor`` (its pid;
    default our parent, though by then it may have died)."""
    swapvisor = os.getppid() if swapvisor is None else swapvisor
    groups: set[int] = set()
    pending = b""
    while chunk := _read(fd):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    take_down(groups, grace, strays=lambda: _marked_by(swapvisor))


def _marked_by(swapvisor: int) -> frozenset[int]:
    # Imported only now, by path: the watcher starts with -S -I and must start fast.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from procfs import marked  # type: ignore[import-not-found]

    return frozenset(marked(f"{swapvisor}.", prefix=True))


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


def take_down(
    groups: set[int],
    grace: float,
    strays: Callable[[], frozenset[int]] = frozenset,
) -> None:
    """SIGTERM each group and each of the ``strays`` (processes outside
    them), SIGKILL what is left after ``grace``."""
    left = {g for g in groups if _signal(g, signal.SIGTERM)}
    loose = {p for p in _found(strays) if _signal_one(p, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while (left or loose) and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {g for g in left if _signal(g, 0)}
        loose = {p for p in loose if _signal_one(p, 0)}
    for g in left:
        _signal(g, signal.SIGKILL)
    if loose:  # again: they may have forked meanwhile
        for p in loose | _found(strays):
            _signal_one(p, signal.SIGKILL)


def _found(strays: Callable[[], frozenset[int]]) -> frozenset[int]:
    # Whatever goes wrong looking for them, the groups still get their SIGKILL.
    try:
        return strays()
    except Exception:  # the watcher has nobody to tell
        return frozenset()


def _signal_one(pid: int, sig: int) -> bool:
    """Signal a process; False when it is gone (or not ours)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal(pgid: int, sig: int) -> bool:
    """Signal a group; False when it has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the pgid was reused by another user
        return False
    return True


# -- swapvisor's end -----------------------------------------------------------------


class Lifeline:
    """swapvisor's end of the pipe: the groups to take down if it dies.

    ``hold`` and ``release`` start the watcher on first use, never block on
    it and never raise: if it has died, a new one is started and told every
    group still held. Thread-safe, and usable from any event loop (plain
    writes to a pipe). A forked child drops its copy of the pipe at once, so
    it cannot keep the watcher waiting after swapvisor is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._fd: int | None = None
        self._pid = 0  # the watcher's
        os.register_at_fork(after_in_child=self._drop_after_fork)

    def hold(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)
            self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Let go of the pipe, as swapvisor's death does: the watcher takes
        down every group still held and exits."""
        with self._lock:
            self._close_fd()

    @property
    def watcher_pid(self) -> int:
        return self._pid

    def _live_fd(self) -> int | None:
        if self._fd is None:
            return None
        try:
            done, _ = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            done = self._pid
        return self._fd if done == 0 else None

    def _send(self, line: str) -> None:
        fd = self._live_fd()
        if fd is not None:
            try:
                os.write(fd, line.encode())
                return
            except OSError:
                pass  # it died since: a broken pipe
        try:
            self._spawn()  # tells the new watcher every group held
        except OSError:
            pass  # no lifeline; the servers still get the parent-death signal

    def _spawn(self) -> None:
        self._close_fd()
        if self._pid:  # reap the last one if it has ended (it never blocks)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, os.WNOHANG)
        read, write = os.pipe()  # both close-on-exec; dup2 makes stdin inheritable
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [
                    sys.executable,
                    "-S",
                    "-I",
                    os.path.abspath(__file__),
                    str(os.getpid()),
                ],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                ],
                # Its own session: a terminal's ^C or hang-up is for swapvisor.
                setsid=True,
            )
        except OSError:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._fd = write
        if self._groups:
            os.write(write, "".join(f"+{g}\n" for g in self._groups).encode())

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _drop_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._close_fd()
        self._groups.clear()


LIFELINE = Lifeline()


if __name__ == "__main__":
    watch(swapvisor=int(sys.argv[1]) if len(sys.argv) > 1 else None)
