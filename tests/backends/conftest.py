"""Fixtures for the backend contract suite: one ``Target`` per backend kind and
engine (native, mock, and the container engines below) that knows how to
build each scenario's ``LaunchSpec`` and how to list what a test left on the
engine.

Container engines (``SITES``):
  docker          the Docker SDK against real dockerd (``scripts/setup-docker``
                  starts it on ``DOCKER_SOCK``)
  podman          libpod's API on rootful Podman (``scripts/setup-podman``;
                  ``PODMAN_SOCK`` picks another path)
  docker@podman   the Docker SDK against Podman's Docker-compatible API: the
                  adapter's compatibility branches (Podman answers a name
                  conflict with 500 "already in use", a forced remove waits the
                  stop timeout) run only here
Without an engine its targets skip, saying why (and fail the run under
``SWAPVISOR_REQUIRE_ALL=1``); native and mock always run.
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
DOCKER_SOCK = os.environ.get(
    "DOCKER_SOCK", "/run/swapvisor-docker/docker.sock"
).removeprefix("unix://")
DOCKER_URL = f"unix://{DOCKER_SOCK}"
FAKE_IMAGE = "localhost/swapvisor-fake:latest"
LLM_IMAGE = "localhost/swapvisor-llm:latest"


@dataclass(frozen=True)
class Site:
    """One engine as a backend reaches it: the backend kind and its URL."""

    id: str
    kind: str  # the backend: "docker" (Docker SDK) or "podman" (libpod)
    url: str
    setup: str  # the script that provides the engine

    @property
    def socket(self) -> str:
        return self.url.removeprefix("unix://")


DOCKER = Site("docker", "docker", DOCKER_URL, "scripts/setup-docker")
PODMAN = Site("podman", "podman", PODMAN_URL, "scripts/setup-podman")
DOCKER_ON_PODMAN = Site("docker@podman", "docker", PODMAN_URL, "scripts/setup-podman")
SITES = {s.id: s for s in (DOCKER, PODMAN, DOCKER_ON_PODMAN)}
# The engines themselves, each driven by its own API (the SDK-over-Podman
# case adds nothing where the adapter's compatibility branches are not hit).
REAL_SITES = ("docker", "podman")
KINDS = ("native", "mock", *SITES)

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
def unreachable(socket_path: str, setup: str) -> str | None:
    """Why the engine API on ``socket_path`` cannot be used, or None."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(socket_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
            answer = s.recv(64)
    except OSError as exc:
        return (
            f"the engine API socket unix://{socket_path} is not reachable ({exc}); "
            f"run {setup} as root to enable the container tests"
        )
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        return f"the engine API socket unix://{socket_path} answered {answer[:40]!r}"
    return None


def podman_unreachable() -> str | None:
    return unreachable(PODMAN.socket, PODMAN.setup)


def docker_unreachable() -> str | None:
    return unreachable(DOCKER.socket, DOCKER.setup)


def require(site: Site) -> None:
    reason = unreachable(site.socket, site.setup)
    if reason is not None:
        pytest.skip(reason)


def new_instance() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Engine:
    """The test's own view of an engine, through the Docker SDK (real Docker
    or Podman's compatible API): list, make and remove containers behind the
    backends' backs."""

    def __init__(self, url: str) -> None:
        import docker

        self.url = url
        self.client: Any = docker.DockerClient(base_url=url)

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
        import docker.errors

        for name in self.owned(instance):
            try:
                self.client.api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass

    def close(self) -> None:
        self.client.close()


class Engines:
    """One ``Engine`` per engine socket, opened on first use, each checked
    once for the images the tests run."""

    def __init__(self) -> None:
        self._open: dict[str, Engine] = {}

    def get(self, site: Site) -> Engine:
        require(site)
        eng = self._open.get(site.url)
        if eng is None:
            eng = self._open[site.url] = Engine(site.url)
            images = {
                t for img in eng.client.api.images() for t in img.get("RepoTags") or []
            }
            if FAKE_IMAGE not in images:
                pytest.fail(f"{FAKE_IMAGE} is missing on {site.url}: run {site.setup}")
        return eng

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        for eng in self._open.values():
            eng.close()


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    with Engines() as opened:
        yield opened


@pytest.fixture(scope="session")
def engine(engines: Engines) -> Engine:
    """Podman, seen through its Docker-compatible API."""
    eng = engines.get(PODMAN)
    images = {t for img in eng.client.api.images() for t in img.get("RepoTags") or []}
    if LLM_IMAGE not in images:
        pytest.fail(f"{LLM_IMAGE} is missing: run scripts/setup-podman")
    return eng


@pytest.fixture(scope="session")
def docker_engine(engines: Engines) -> Engine:
    """Real dockerd."""
    return engines.get(DOCKER)


@dataclass
class Target:
    """One backend kind (and, for containers, one engine) under test."""

    kind: str
    instance: str
    engine: Engine | None
    site: Site | None = None
    made: list[Backend] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.site is not None
        return self.site.url

    def backend(self, instance: str | None = None) -> Backend:
        from backends.registry import load_backend

        kwargs: dict[str, object] = {}
        if self.site is not None:
            kwargs = {"instance": instance or self.instance, "engine_url": self.url}
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


def _target(engines: Engines, which: str) -> Target:
    site = SITES.get(which)
    if site is None:
        return Target(kind=which, instance=new_instance(), engine=None)
    return Target(
        kind=site.kind, instance=new_instance(), engine=engines.get(site), site=site
    )


async def _teardown(t: Target) -> None:
    for backend in t.made:
        await backend.aclose()
    if t.engine is not None:
        t.engine.remove_owned(t.instance)


@pytest.fixture(params=KINDS)
async def target(request: pytest.FixtureRequest, engines: Engines) -> Any:
    t = _target(engines, str(request.param))
    yield t
    await _teardown(t)


@pytest.fixture(params=list(SITES))
async def engine_target(request: pytest.FixtureRequest, engines: Engines) -> Any:
    t = _target(engines, str(request.param))
    yield t
    await _teardown(t)


@pytest.fixture(params=REAL_SITES)
async def real_target(request: pytest.FixtureRequest, engines: Engines) -> Any:
    """Each engine through its own API only."""
    t = _target(engines, str(request.param))
    yield t
    await _teardown(t)
