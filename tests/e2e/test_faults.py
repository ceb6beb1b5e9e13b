"""Faults end to end: swapvisor as a subprocess over real fake-upstream
processes. Unload and shutdown while a swap waits for a slow stop, liveness
of idle models, crash-loop quarantine, and slow-but-progressing starts."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet

pytestmark = pytest.mark.e2e


def call(
    sv: Swapvisor, path: str, body: dict[str, Any] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        sv.url + path,
        data=data,
        headers={"Content-Type": "application/json"} if data else {},
        method="POST" if data is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status, headers = r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode()


def chat(
    sv: Swapvisor, model: str, timeout: float = 30
) -> tuple[int, dict[str, str], Any]:
    return call(
        sv,
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout,
    )


def model_state(sv: Swapvisor, model: str) -> str:
    """The model's state from /metrics (the one state gauge set to 1)."""
    _, _, text = call(sv, "/metrics")
    for state in ("stopped", "starting", "ready", "stopping", "failed"):
        if re.search(
            rf'swapvisor_model_state{{model="{model}",state="{state}"}} 1\.0', text
        ):
            return state
    raise AssertionError(f"no state for {model}")


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


SLOW_A = {"flags": ["--ignore-sigterm"], "unloadTimeout": 2}


def swap_waiting_for_a(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> tuple[Swapvisor, threading.Thread, list[Any]]:
    """``a`` ignores SIGTERM (2 s to stop); a request for ``b`` waits on it."""
    sv = start_fakes({"a": SLOW_A, "b": {}}, livenessInterval=0, logToStdout="both")
    assert chat(sv, "a")[0] == 200
    thread, out = in_background(lambda: chat(sv, "b"))
    wait_until_sync(lambda: "ignoring SIGTERM" in sv.output(), 10)
    return sv, thread, out


def test_unload_while_a_swap_stops_the_old_model_never_starts_the_new_one(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv, thread, out = swap_waiting_for_a(start_fakes, fleet)
    status, _, text = call(sv, "/api/models/unload/b", {})
    assert status == 200
    thread.join(15)
    status, _, body = out[0]
    assert status == 503 and "unloaded" in body["error"]["message"]
    wait_until_sync(lambda: not fleet.pids("a"), 10)  # a is gone at last
    # The stop ends a moment after the process: it still looks for strays.
    wait_until_sync(lambda: call(sv, "/running")[2]["running"] == [], 10)
    assert fleet.pids("b") == []
    assert "b ready" not in sv.output()


def test_shutdown_while_a_swap_stops_the_old_model_leaves_nothing(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv, thread, out = swap_waiting_for_a(start_fakes, fleet)
    assert sv.stop(signal.SIGTERM, timeout=30) == 0
    thread.join(15)
    assert out and out[0][0] == 503
    assert fleet.all_pids() == []
    assert "b ready" not in sv.output()


def test_an_idle_server_that_stops_answering_becomes_failed_then_restarts(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {"a": {"flags": ["--hang-health-after", "1"]}},
        livenessInterval=0.3,
    )
    assert chat(sv, "a")[0] == 200
    wait_until_sync(lambda: model_state(sv, "a") == "failed", 15)
    assert "stopped answering /health while idle" in sv.output()
    assert fleet.pids("a") == []  # reaped, holding nothing
    assert call(sv, "/running")[2]["running"] == []
    assert chat(sv, "a")[0] == 200  # the next request starts it again


def test_an_idle_server_that_dies_becomes_failed_with_its_exit_code(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes({"a": {"flags": ["--exit-after", "1"]}})
    assert chat(sv, "a")[0] == 200
    wait_until_sync(lambda: model_state(sv, "a") == "failed", 15)
    assert re.search(r"model a exited while idle \(exit code 3\)", sv.output())


def test_a_preloaded_model_that_dies_is_started_again_at_once(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {"a": {"flags": ["--exit-after", "1.5"]}},
        hooks={"on_startup": {"preload": ["a"]}},
        crashLoop={"failures": 0},
    )
    wait_until_sync(lambda: sv.output().count("a ready in") >= 2, 20)


def test_a_crash_looping_model_is_quarantined_and_refused_at_once(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {"a": {"flags": ["--exit-on-start", "3"]}},
        crashLoop={"failures": 2, "backoff": 30},
        logToStdout="both",
    )
    for _ in range(2):
        status, _, body = chat(sv, "a")
        assert status == 503 and body["error"]["code"] == "upstream_start_failed"
    began = time.monotonic()
    status, headers, body = chat(sv, "a")
    assert time.monotonic() - began < 1
    assert status == 503 and body["error"]["code"] == "crash_loop"
    assert 25 <= int(headers["Retry-After"]) <= 30
    assert "exit code 3" in body["error"]["message"]
    started = set(re.findall(r"fake-upstream starting model=a pid=(\d+)", sv.output()))
    assert len(started) == 2  # no third start
    running = call(sv, "/running")[2]["running"]
    assert [(r["model"], r["quarantine"]["failures"]) for r in running] == [("a", 2)]
    listed = {m["id"]: m for m in call(sv, "/v1/models")[2]["data"]}
    assert listed["a"]["meta"]["llamaswap"]["quarantine"]["failures"] == 2
    _, _, metrics = call(sv, "/metrics")
    left = re.search(
        r'swapvisor_model_quarantined_seconds{model="a"} ([\d.]+)', metrics
    )
    assert left is not None and float(left.group(1)) > 20
    assert call(sv, "/api/models/unload/a", {})[0] == 200  # clears it
    status, _, body = chat(sv, "a")
    assert body["error"]["code"] == "upstream_start_failed"  # tried again


def test_a_start_that_keeps_logging_is_not_killed_at_the_health_check_timeout(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    # 1 s of silence would fail it, yet it loads for 2.5 s, printing progress.
    sv = start_fakes(
        {
            "a": {
                "flags": ["--health-delay", "2.5", "--log-every", "0.2"],
                "healthCheckTimeout": 1,
            }
        }
    )
    status, _, _ = chat(sv, "a")
    assert status == 200


def test_a_silent_start_fails_at_the_health_check_timeout_and_says_so(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {"a": {"flags": ["--health-delay", "30"], "healthCheckTimeout": 1}}
    )
    began = time.monotonic()
    status, _, body = chat(sv, "a")
    assert time.monotonic() - began < 5
    assert status == 504
    assert "healthCheckTimeout with no new log line" in body["error"]["message"]
    assert fleet.pids("a") == []


def test_a_start_that_logs_forever_fails_at_max_start_time(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {
            "a": {
                "flags": ["--health-delay", "60", "--log-every", "0.2"],
                "healthCheckTimeout": 1,
                "maxStartTime": 2,
            }
        }
    )
    status, _, body = chat(sv, "a")
    assert status == 504
    assert "maxStartTime" in body["error"]["message"]
