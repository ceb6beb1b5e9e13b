"""The lifeline against real processes: the watcher takes down the groups it
holds when its pipe closes (SIGTERM, then SIGKILL), spares released ones, and
a watcher that died is replaced and told every group."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING

from backends.lifeline import GRACE_S, Lifeline, take_down
from tests.conftest import PY

if TYPE_CHECKING:
    from collections.abc import Iterator

# Says "ready" once SIGTERM is ignored, then sleeps.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(1000)"
)


def group_leader(code: str = "import time; time.sleep(1000)") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PY, "-c", code], stdout=subprocess.PIPE, text=True, process_group=0
    )
    if code == STUBBORN:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    return proc


def reaped(*procs: subprocess.Popen[str]) -> Iterator[int]:
    for proc in procs:
        with proc:
            yield proc.wait(GRACE_S + 5)


def test_lifeline_takes_down_held_groups_and_spares_released_ones() -> None:
    lifeline = Lifeline()
    stubborn, plain, released = group_leader(STUBBORN), group_leader(), group_leader()
    try:
        for proc in (stubborn, plain, released):
            lifeline.hold(proc.pid)
        lifeline.release(released.pid)
        lifeline.close()  # what swapvisor's death does
        assert list(reaped(stubborn, plain)) == [-signal.SIGKILL, -signal.SIGTERM]
        os.waitpid(lifeline.watcher_pid, 0)  # the watcher is done
        assert released.poll() is None
    finally:
        released.kill()
        list(reaped(stubborn, plain, released))


def test_lifeline_replaces_a_dead_watcher_and_tells_it_every_group() -> None:
    lifeline = Lifeline()
    first, second = group_leader(), group_leader()
    try:
        lifeline.hold(first.pid)
        dead = lifeline.watcher_pid
        os.kill(dead, signal.SIGKILL)
        os.waitpid(dead, 0)
        lifeline.hold(second.pid)
        assert lifeline.watcher_pid != dead
        lifeline.close()
        assert list(reaped(first, second)) == [-signal.SIGTERM] * 2
        os.waitpid(lifeline.watcher_pid, 0)
    finally:
        first.kill()
        second.kill()
        list(reaped(first, second))


def test_a_failing_search_for_strays_still_kills_the_groups() -> None:
    """Whatever goes wrong reading /proc, a group that ignores SIGTERM still
    gets its SIGKILL."""
    stubborn = group_leader(STUBBORN)

    def broken() -> frozenset[int]:
        raise OSError("no /proc here")

    take_down({stubborn.pid}, 0.2, strays=broken)
    assert list(reaped(stubborn)) == [-signal.SIGKILL]
