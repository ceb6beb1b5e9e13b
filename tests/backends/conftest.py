"""Fixtures for the backend contract suite: one ``Target`` per backend kind
(native, mock, docker, podman) that knows how to build each scenario's
``LaunchSpec`` and how to list what a test left on the engine.

The docker and podman targets need Podman's API socket (``scripts/setup-podman``
starts it; ``PODMAN_SOCK`` picks another path). Without it they skip, saying
why; native and mock always run. The Docker SDK reaches the same socket through
Podman's Docker-compatible API, which is also how real Docker is driven.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import pytest

from backends.base import LaunchSpec
from backends.containers import LABEL_INSTANCE
from backends.specs import ContainerSpec, MockSpec
from tests.conftest import FAKE, PY

if TYPE_CHECKING:
    from collections.abc import Iterator

    from backends.base import Backend

SOCK = os.environ.get("PODMAN_SOCK", "/run/podman/podman.sock").removeprefix("unix://")
PODMAN_URL = f"unix://{SOCK}"
FAKE_IMAGE = "localhost/swapvisor-fake:latest"
LLM_IMAGE = "localhost/swapvisor-llm:latest"
KINDS = ("native", "mock", "docker", "podman")
ENGINE_KINDS = ("docker", "podman")

# Scenario → fake_upstream flags (native and containers) or MockSpec (mock).
SCENARIO_FLAGS: dict[str, tuple[str, ...]] = {
    "ok": (),
    "exit3": ("--exit-on-start", "3"),
    "ignore_term": ("--ignore-sigterm",),
    "crash9": (),  # crashes on a request carrying "fake_crash_midstream"
}
SCENARIO_MOCK: dict[str, MockSpec] = {
    "ok": MockSpec(),
    "exit3": MockSpec(startup_exit=True, exit_code=3),
    "ignore_term": MockSpec(ignore_stop=True),
    "crash9": MockSpec(crash_after_requests=1, exit_code=9),
}


@cache
def podman_unreachable() -> str | None:
    """Why the Podman API cannot be used here, or None when it answers."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(SOCK)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            answer = s.recv(64)
    except OSError as exc:
        return (
            f"the Podman API socket {PODMAN_URL} is not reachable ({exc}); "
            "run scripts/setup-podman as root to enable the container tests"
        )
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        return f"the Podman API socket {PODMAN_URL} answered {answer[:40]!r}"
    return None


def require_podman() -> None:
    reason = podman_unreachable()
    if reason is not None:
        pytest.skip(reason)


def new_instance() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Engine:
    """The test's own view of the engine, through the Docker SDK: list, make and
    remove containers behind the backends' backs."""

    def __init__(self) -> None:
        import docker

        self.client: Any = docker.DockerClient(base_url=PODMAN_URL)

    def owned(self, instance: str) -> list[str]:
        import docker.errors

        for _ in range(20):
            try:
                rows = self.client.api.containers(
                    all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
                )
                return [str(r["Names"][0]).lstrip("/") for r in rows]
            except docker.errors.APIError as exc:
                # Podman fails a listing when a container vanishes meanwhile.
                if "not known" not in str(exc):
                    raise
                time.sleep(0.05)
        raise AssertionError("could not list containers")

    def exists(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return False
        return True

    def remove_owned(self, instance: str) -> None:
        for name in self.owned(instance):
            self.client.api.remove_container(name, force=True)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    require_podman()
    eng = Engine()
    images = {t for img in eng.client.api.images() for t in img.get("RepoTags") or []}
    missing = [i for i in (FAKE_IMAGE, LLM_IMAGE) if i not in images]
    if missing:
        pytest.fail(f"images {missing} are missing: run scripts/setup-podman")
    yield eng
    eng.close()


@dataclass
class Target:
    """One backend kind under test."""

    kind: str
    instance: str
    engine: Engine | None
    made: list[Backend] = field(default_factory=list)

    def backend(self, instance: str | None = None) -> Backend:
        from backends.registry import load_backend

        kwargs: dict[str, object] = {}
        if self.kind in ENGINE_KINDS:
            kwargs = {"instance": instance or self.instance, "engine_url": PODMAN_URL}
        elif self.kind == "mock":
            kwargs = {"instance": instance or self.instance}
        backend = load_backend(self.kind, **kwargs)
        self.made.append(backend)
        return backend

    def spec(self, port: int, scenario: str = "ok", **container: Any) -> LaunchSpec:
        flags = SCENARIO_FLAGS[scenario]
        base_url = f"http://127.0.0.1:{port}"
        if self.kind == "mock":
            return LaunchSpec(argv=(), base_url=base_url, mock=SCENARIO_MOCK[scenario])
        if self.kind == "native":
            argv = (PY, str(FAKE), "--port", str(port), "--model", "m", *flags)
            return LaunchSpec(argv=argv, base_url=base_url, probe_timeout_s=1.0)
        # The launch argv runs inside the image (ContainerSpec.command empty).
        argv = ("python3", "/srv/fake_upstream.py", "--port", str(port), "--model", "m")
        return LaunchSpec(
            argv=(*argv, *flags),
            base_url=base_url,
            probe_timeout_s=1.0,
            container=ContainerSpec(**{"image": FAKE_IMAGE, **container}),
        )

    def leftovers(self) -> list[str]:
        """Containers this test's instance still has on the engine."""
        return self.engine.owned(self.instance) if self.engine else []


@pytest.fixture(params=KINDS)
async def target(request: pytest.FixtureRequest) -> Any:
    kind = str(request.param)
    eng: Engine | None = None
    if kind in ENGINE_KINDS:
        eng = request.getfixturevalue("engine")
    t = Target(kind=kind, instance=new_instance(), engine=eng)
    yield t
    for backend in t.made:
        await backend.aclose()
    if eng is not None:
        eng.remove_owned(t.instance)


@pytest.fixture(params=ENGINE_KINDS)
async def engine_target(request: pytest.FixtureRequest, engine: Engine) -> Any:
    t = Target(kind=str(request.param), instance=new_instance(), engine=engine)
    yield t
    for backend in t.made:
        await backend.aclose()
    engine.remove_owned(t.instance)
