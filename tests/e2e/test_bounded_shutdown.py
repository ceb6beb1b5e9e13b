"""``SWAPVISOR_SHUTDOWN_TIMEOUT`` bounds shutdown, so a deployment's grace
period (compose's stop_grace_period) is never outlasted: a model that ignores
SIGTERM with a long unloadTimeout is killed in time, and nothing is left."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
import yaml

from controller.cli.main import SHUTDOWN_GRACE_S, shutdown_budget
from tests.conftest import port_block

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet


def test_the_budget_splits_into_drain_and_model_grace() -> None:
    assert shutdown_budget(None) == (SHUTDOWN_GRACE_S, None)
    assert shutdown_budget("80") == (10.0, 65.0)
    assert shutdown_budget("8") == (2.0, 1.0)
    assert shutdown_budget("nonsense") == (SHUTDOWN_GRACE_S, None)


@pytest.mark.e2e
def test_a_stubborn_model_is_killed_within_the_budget(
    swapvisor: Callable[..., Swapvisor],
    write_config: Callable[[str], Path],
    fleet: FakeFleet,
) -> None:
    config = {
        "startPort": port_block(1),
        "models": {
            "a": {"cmd": fleet.cmd("a", "--ignore-sigterm"), "unloadTimeout": 60}
        },
    }
    sv = swapvisor(
        write_config(yaml.safe_dump(config)), env={"SWAPVISOR_SHUTDOWN_TIMEOUT": "8"}
    )
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(
        sv.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).close()
    began = time.monotonic()
    assert sv.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - began < 8
    assert fleet.pids("a") == []
