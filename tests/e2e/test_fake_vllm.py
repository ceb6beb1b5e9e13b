"""The fake vLLM server (``tests/fakes/fake_vllm.py``) as a real process: its
load delay, sleep and wake (vLLM's endpoints and the custom ones), and the
failure flags the warm-swap tests rely on."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import PY, ROOT, free_port, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.e2e

FAKE_VLLM = ROOT / "tests" / "fakes" / "fake_vllm.py"
GIB = 1024**3


@dataclass
class Vllm:
    """One running fake vLLM process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        if method == "POST" and data is None:
            data = b""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, raw = self.call(method, path, body)
        return status, json.loads(raw) if raw else None

    def chat(self, *, stream: bool = False) -> tuple[int, bytes]:
        body = {"model": "v", "messages": [{"role": "user", "content": "hi"}]}
        return self.call("POST", "/v1/chat/completions", {**body, "stream": stream})

    def sleeping(self) -> bool:
        return bool(self.json("GET", "/is_sleeping")[1]["is_sleeping"])

    def metric(self, name: str) -> int:
        text = self.call("GET", "/metrics")[1].decode()
        match = re.search(rf"^{name}\{{[^}}]*\}} (\d+)$", text, re.M)
        assert match is not None, text
        return int(match.group(1))

    def gpu_bytes(self) -> int:
        return self.metric("fake_vllm_gpu_memory_bytes")

    def output(self) -> str:
        return self.log_path.read_text()

    def answers(self) -> bool:
        try:
            self.call("GET", "/health")
        except OSError:
            return False
        return True


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Iterator[Callable[..., Vllm]]:
    """Factory: start the fake with flags; wait until it answers (any
    status); kill it afterwards."""
    started: list[tuple[Vllm, Any]] = []

    def start(*flags: str) -> Vllm:
        port = free_port()
        log_path = tmp_path / f"fake-vllm-{port}.log"
        log = log_path.open("wb")
        argv = [PY, str(FAKE_VLLM), "--port", str(port), "--model", "v", *flags]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        fake = Vllm(proc, port, log_path)
        started.append((fake, log))
        wait_until_sync(fake.answers, timeout=10)
        return fake

    yield start
    for fake, log in started:
        fake.proc.kill()
        fake.proc.wait(10)
        log.close()


def test_fake_vllm_load_delay(fake_vllm: Callable[..., Vllm]) -> None:
    began = time.monotonic()
    fake = fake_vllm("--load-seconds", "2.5")
    assert fake.call("GET", "/health")[0] == 503
    assert fake.chat()[0] == 503
    wait_until_sync(lambda: fake.call("GET", "/health")[0] == 200, timeout=10)
    assert time.monotonic() - began >= 2.5
    assert fake.chat()[0] == 200
    assert "Loading weights:" in fake.output()
    assert "model loaded in" in fake.output()


def test_fake_vllm_sleep_then_wake(fake_vllm: Callable[..., Vllm]) -> None:
    fake = fake_vllm("--gpu-mib", "4096", "--wake-seconds", "0.3")
    assert not fake.sleeping()
    assert fake.gpu_bytes() == 4 * GIB

    assert fake.call("POST", "/sleep?level=1") == (200, b"")
    assert fake.sleeping()
    assert fake.gpu_bytes() < 0.05 * 4 * GIB
    status, raw = fake.chat()
    assert status == 503
    assert "error" in json.loads(raw)
    assert fake.call("GET", "/health")[0] == 200  # asleep is not unhealthy

    began = time.monotonic()
    assert fake.call("POST", "/wake_up") == (200, b"")
    assert time.monotonic() - began >= 0.3
    assert not fake.sleeping()
    assert fake.gpu_bytes() == 4 * GIB
    status, raw = fake.chat()
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == "hello from v"
    status, raw = fake.chat(stream=True)
    assert status == 200
    assert raw.rstrip().endswith(b"data: [DONE]")
    out = fake.output()
    assert "state: awake -> falling asleep (level 1)" in out
    assert "state: waking -> awake" in out


def test_fake_vllm_level2_wake_is_slower(fake_vllm: Callable[..., Vllm]) -> None:
    fake = fake_vllm("--wake-seconds", "0.1")
    assert fake.call("POST", "/sleep?level=2")[0] == 200
    assert fake.metric("fake_vllm_sleep_level") == 2
    began = time.monotonic()
    assert fake.call("POST", "/wake_up")[0] == 200
    assert time.monotonic() - began >= 0.5  # 5 x --wake-seconds
    assert fake.call("POST", "/sleep?level=3")[0] == 400


def test_fake_vllm_custom_endpoints(fake_vllm: Callable[..., Vllm]) -> None:
    fake = fake_vllm("--wake-seconds", "0")
    assert fake.json("GET", "/custom/status") == (200, {"sleeping": False})
    assert fake.json("POST", "/custom/sleep") == (200, {"sleeping": True})
    assert fake.json("GET", "/custom/status") == (200, {"sleeping": True})
    assert fake.chat()[0] == 503
    assert fake.json("POST", "/custom/wake") == (200, {"sleeping": False})
    assert fake.chat()[0] == 200


def test_fake_vllm_fail_flags(fake_vllm: Callable[..., Vllm]) -> None:
    no_sleep = fake_vllm("--fail-sleep")
    assert no_sleep.call("POST", "/sleep?level=1")[0] == 500
    assert not no_sleep.sleeping()
    assert no_sleep.chat()[0] == 200

    no_wake = fake_vllm("--fail-wake")
    assert no_wake.call("POST", "/sleep?level=1")[0] == 200
    assert no_wake.call("POST", "/wake_up")[0] == 500
    assert no_wake.sleeping()
    assert no_wake.chat()[0] == 503
