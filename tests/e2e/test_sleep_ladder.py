"""The sleep ladder end to end: swapvisor as a subprocess over a vLLM-shaped
fake server (``tests/fakes/fake_vllm.py``) with ``sleep: vllm``: a swap puts
it to sleep (the process stays), every view says ``sleeping``, a request wakes
it with no new process, and an unload stops it."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import FAKE, PY, ROOT, pids_of, port_block

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Swapvisor

pytestmark = pytest.mark.e2e
VLLM = ROOT / "tests" / "fakes" / "fake_vllm.py"


def get(sv: Swapvisor, path: str) -> Any:
    with urllib.request.urlopen(sv.url + path, timeout=30) as r:
        raw = r.read().decode()
    return json.loads(raw) if raw.startswith(("{", "[")) else raw


def chat(sv: Swapvisor, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(
        sv.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return int(r.status)


def test_the_ladder_ready_sleeping_ready_stopped(
    swapvisor: Callable[..., Swapvisor],
    write_config: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    marker = str(tmp_path)
    vllm = tmp_path / "fake_vllm.py"  # the path marks this test's processes
    vllm.symlink_to(VLLM)
    fake = tmp_path / "fake_upstream.py"
    fake.symlink_to(FAKE)
    config = {
        "startPort": port_block(2),
        "models": {
            "v": {
                "cmd": f"{PY} {vllm} --port ${{PORT}} --model v --load-seconds 1 "
                "--wake-seconds 0.2",
                "sleep": "vllm",
            },
            "b": {"cmd": f"{PY} {fake} --port ${{PORT}} --model b"},
        },
    }
    sv = swapvisor(write_config(yaml.safe_dump(config)), marker=marker)
    assert chat(sv, "v") == 200
    (pid,) = pids_of(f"{vllm} --port")
    assert chat(sv, "b") == 200  # the swap puts v to sleep
    running = {r["model"]: r["state"] for r in get(sv, "/running")["running"]}
    assert running == {"v": "sleeping", "b": "ready"}
    listed = {m["id"]: m["status"]["value"] for m in get(sv, "/v1/models")["data"]}
    assert listed == {"v": "sleeping", "b": "loaded"}
    metrics = get(sv, "/metrics")
    assert re.search(
        r'swapvisor_model_state\{model="v",state="sleeping"\} 1\.0', metrics
    )
    assert chat(sv, "v") == 200  # woken, the same process
    assert pids_of(f"{vllm} --port") == [pid]
    req = urllib.request.Request(sv.url + "/api/models/unload/v", method="POST")
    urllib.request.urlopen(req, timeout=30).close()
    assert pids_of(f"{vllm} --port") == []
