"""What swapvisor starts never outlives its welcome: a hanging ``cmdStop`` is
killed at the unload timeout instead of hanging the swap, and a SIGKILLed
swapvisor takes its models' whole process groups (grandchildren too) with it."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import PY, alive, wait_until
from tests.e2e.conftest import children_of, group_members
from tests.e2e.test_openai_sdk import chat_text, client

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet

pytestmark = pytest.mark.e2e

# Writes its pid to argv[1], then hangs (a `docker stop` against a stuck daemon).
HANG = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(1000)"


def test_hanging_cmd_stop_does_not_hang_the_swap(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet, tmp_path: Path
) -> None:
    pidfile = tmp_path / "stopper.pid"
    stuck = {"cmdStop": f'{PY} -c "{HANG}" {pidfile} ${{PID}}', "unloadTimeout": 1}
    sv = start_fakes({"alpha": stuck, "beta": {}})
    with client(sv) as c:
        chat_text(c, "alpha", "hi")
        [alpha] = fleet.pids("alpha")
        began = time.monotonic()
        assert chat_text(c, "beta", "hi") == "hello from beta"  # the swap ends
        took = time.monotonic() - began
    assert took < 4  # 1 s of grace, then beta's start; it used to be forever
    assert group_members(alpha) == []
    assert group_members(int(pidfile.read_text())) == []
    assert "alpha stopped (killed by signal 9)" in sv.output()


async def test_sigkilled_swapvisor_leaves_no_grandchild(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes({"alpha": {"flags": ["--spawn-child"]}})
    with client(sv) as c:
        chat_text(c, "alpha", "hi")
    [server] = fleet.pids("alpha")
    kids = children_of(server)
    assert len(kids) == 1
    assert set(group_members(server)) == {server, *kids}
    try:
        sv.proc.kill()
        sv.proc.wait(10)
        await wait_until(lambda: group_members(server) == [], timeout=2)
        assert fleet.all_pids() == []
    finally:
        for k in kids:
            if alive(k):
                os.kill(k, signal.SIGKILL)
