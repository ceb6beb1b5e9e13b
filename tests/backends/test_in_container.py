"""swapvisor running inside a container manages sibling containers through the
mounted Podman socket.

``scripts/build-swapvisor-image`` builds ``localhost/swapvisor:test`` (swapvisor
on the fake image's Debian python, no registry). The test runs it with the host
network and the host's Podman socket mounted, serves a chat completion from a
``podman:`` model (a sibling container the contained swapvisor starts),
unloads it (the sibling goes away), and stops swapvisor. Every container the
test made, swapvisor's and any with its instance label, is removed even when
it fails.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from backends.containers import LABEL_INSTANCE
from tests.backends.conftest import FAKE_IMAGE, SOCK, new_instance, podman_unreachable
from tests.conftest import free_port, port_block, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Iterator

if (_unreachable := podman_unreachable()) is not None:
    pytest.skip(_unreachable, allow_module_level=True)

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/swapvisor:test"
IN_SOCK = "/run/podman/podman.sock"  # where the socket is mounted inside


def podman(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def siblings(instance: str) -> list[str]:
    """Names of the containers labelled with ``instance``, running or not."""
    out = podman(
        "ps",
        "-a",
        "--filter",
        f"label={LABEL_INSTANCE}={instance}",
        "--format",
        "{{.Names}}",
    )
    return sorted(out.split())


def http(
    method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="session")
def swapvisor_image() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-swapvisor-image")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"build-swapvisor-image failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Contained:
    instance: str
    name: str
    url: str
    made: list[str] = field(default_factory=list)

    def logs(self) -> str:
        done = subprocess.run(
            ["podman", "logs", self.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout + done.stderr


@pytest.fixture
def contained(swapvisor_image: str, tmp_path: Path) -> Iterator[Contained]:
    """swapvisor:test running with the host network and the socket mounted."""
    instance = new_instance()
    port = free_port()
    config = tmp_path / "config.yaml"
    model = {
        "podman": {
            "engine": f"unix://{IN_SOCK}",
            "image": FAKE_IMAGE,
            "network": "host",
            "command": [
                "python3",
                "/srv/fake_upstream.py",
                "--host",
                "127.0.0.1",
                "--port",
                "${PORT}",
                "--model",
                "sib",
            ],
        },
        "healthCheckTimeout": 20,
    }
    doc = {"startPort": port_block(1), "models": {"sib": model}}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    box = Contained(instance, f"swapvisor-test-{instance}", f"http://127.0.0.1:{port}")
    try:
        podman(
            "run",
            "-d",
            "--name",
            box.name,
            "--network",
            "host",
            "-v",
            f"{SOCK}:{IN_SOCK}",
            "-v",
            f"{config}:/etc/swapvisor/config.yaml:ro",
            "-e",
            f"SWAPVISOR_INSTANCE={instance}",
            swapvisor_image,
            "--config",
            "/etc/swapvisor/config.yaml",
            "--listen",
            f"127.0.0.1:{port}",
        )
        box.made.append(box.name)
        yield box
    finally:
        for name in [*box.made, *siblings(instance)]:
            subprocess.run(
                ["podman", "rm", "-f", "-t", "0", name],
                capture_output=True,
                timeout=60,
                check=False,
            )
        assert siblings(instance) == []


def wait_healthy(box: Contained, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{box.url}/health")[0] == 200:
                return
        except OSError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", box.name).strip()
        if state not in ("running", "created", "configured"):
            pytest.fail(f"swapvisor container is {state}:\n{box.logs()}")
        time.sleep(0.1)
    pytest.fail(f"swapvisor in its container never became healthy:\n{box.logs()}")


def test_contained_swapvisor_manages_sibling_containers(contained: Contained) -> None:
    box = contained
    wait_healthy(box)
    assert siblings(box.instance) == []  # nothing starts before a request

    status, body = http(
        "POST",
        f"{box.url}/v1/chat/completions",
        {"model": "sib", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200, f"{body!r}\n{box.logs()}"
    reply = json.loads(body)["choices"][0]["message"]["content"]
    assert "hello from sib" in reply

    # The model runs in a sibling container, not inside swapvisor's.
    sibs = siblings(box.instance)
    assert len(sibs) == 1, sibs
    assert box.name not in sibs
    running = podman(
        "ps",
        "--filter",
        f"label={LABEL_INSTANCE}={box.instance}",
        "--format",
        "{{.Names}}",
    )
    assert running.split() == sibs

    status, body = http("POST", f"{box.url}/api/models/unload")
    assert status == 200, body
    wait_until_sync(lambda: siblings(box.instance) == [], timeout=20)

    podman("stop", "-t", "10", box.name)
    state = podman(
        "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", box.name
    ).split()
    assert state == ["exited", "0"], f"{state}\n{box.logs()}"
    podman("rm", box.name)
    box.made.remove(box.name)
    assert siblings(box.instance) == []
