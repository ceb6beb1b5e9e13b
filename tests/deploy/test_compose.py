"""The compose/ deployments, brought up for real as a user would.

The files in compose/ are used as they are, with one override file for what
this machine cannot have: the published swapvisor image (no registry: the
locally built ``localhost/swapvisor:test`` stands in), a free port, the test's
engine socket, and a config derived from the shipped one whose models run the
fake upstream image instead of llama.cpp/vLLM on a GPU (same keys, groups and
timeouts; ``${env.SWAPVISOR_KEY}`` as shipped). The API key reaches the
compose tool through its environment, as the compose file's header says.

docker-compose (Debian, compose v1) drives real dockerd; podman-compose (PyPI,
``scripts/setup-podman``) drives Podman. Each test: swapvisor healthy in its
container, a request through its port starts a model as a sibling container,
another swaps it for the second one, and ``down`` leaves no container behind
even though one model takes longer to stop than the engines' default 10 s.

The static checks at the top need no engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from controller.cli.main import SHUTDOWN_GRACE_S
from controller.config.loader import load_config
from tests.backends.conftest import DOCKER, FAKE_IMAGE, PODMAN, Engine, Engines, Site
from tests.conftest import free_port, port_block

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
IMAGE = "localhost/swapvisor:test"
PODMAN_COMPOSE = os.environ.get(
    "PODMAN_COMPOSE", "/var/tmp/swapvisor-podman/compose/bin/podman-compose"
)
# Longer than the engines' default stop timeout (10 s): a model this slow to
# stop is what a compose file without stop_grace_period leaves running.
SLOW_STOP_S = 12
# Removing a container after its stop (kill, wait, remove) takes well under this.
REMOVE_SLACK_S = 10
SLOW_STOP = f"""
import signal, subprocess, sys, time
server = subprocess.Popen(sys.argv[1:])
def stop(*_):
    time.sleep({SLOW_STOP_S})  # a server that takes a while to shut down
    server.terminate()
signal.signal(signal.SIGTERM, stop)
sys.exit(server.wait())
"""
SLOW_MODEL = "coder"  # the example's model with unloadTimeout: 60
_ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^(?:(\d+)m)?(?:(\d+)s)?$")


@dataclass(frozen=True)
class Deployment:
    """One compose file, the config it mounts, and the engine it drives."""

    id: str
    compose_file: str
    config_file: str
    kind: str  # the models' block: docker: or podman:
    socket_in: str  # where the compose file mounts the engine socket
    site: Site

    def service(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((COMPOSE / self.compose_file).read_text())
        service: dict[str, Any] = doc["services"]["swapvisor"]
        return service

    def tool(self) -> list[str]:
        """The compose command line, or a skip saying how to get it."""
        if self.id == "docker":
            found = shutil.which("docker-compose")
            if found is None:
                pytest.skip("docker-compose is missing: run scripts/setup-docker")
            return [found]
        if not os.access(PODMAN_COMPOSE, os.X_OK):
            pytest.skip(f"{PODMAN_COMPOSE} is missing: run scripts/setup-podman")
        return [PODMAN_COMPOSE]


DEPLOYMENTS = {
    d.id: d
    for d in (
        Deployment(
            "docker",
            "docker-compose.yml",
            "config.docker.yaml",
            "docker",
            "/var/run/docker.sock",
            DOCKER,
        ),
        Deployment(
            "podman",
            "podman-compose.yml",
            "config.podman.yaml",
            "podman",
            "/run/podman/podman.sock",
            PODMAN,
        ),
    )
}


def seconds(duration: str) -> int:
    """A compose duration such as ``90s`` or ``1m30s``."""
    match = _DURATION.match(str(duration))
    assert match and any(match.groups()), f"unreadable duration {duration!r}"
    minutes, secs = (int(g or 0) for g in match.groups())
    return minutes * 60 + secs


# -- the files, statically ---------------------------------------------------


@pytest.mark.parametrize("dep_id", sorted(DEPLOYMENTS))
def test_compose_passes_every_variable_its_config_reads(dep_id: str) -> None:
    """A variable the mounted config reads but the container never gets makes
    swapvisor exit at start (and the engine restart it forever)."""
    dep = DEPLOYMENTS[dep_id]
    wanted = set(_ENV_REF.findall((COMPOSE / dep.config_file).read_text()))
    assert wanted, "the example reads its API key from the environment"
    given = set(dep.service()["environment"])
    assert wanted <= given, f"{dep.compose_file} does not pass {wanted - given}"


@pytest.mark.parametrize("dep_id", sorted(DEPLOYMENTS))
def test_compose_stop_grace_outlasts_swapvisors_shutdown(
    dep_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ``down`` the engine kills swapvisor after stop_grace_period: it must
    cover the requests' grace, the slowest model's unloadTimeout and the
    removal, or that model's container is left running."""
    dep = DEPLOYMENTS[dep_id]
    monkeypatch.setenv("SWAPVISOR_KEY", "sk-compose-test")
    config = load_config(COMPOSE / dep.config_file).config
    slowest = max(config.unload_grace_s(mid) for mid in config.models)
    assert slowest >= SLOW_STOP_S  # the example does have a slow model
    grace = seconds(dep.service().get("stop_grace_period", "10s"))
    assert grace >= SHUTDOWN_GRACE_S + slowest + REMOVE_SLACK_S, grace


# -- the deployments, for real -------------------------------------------------


def local_config(dep: Deployment, start_port: int) -> str:
    """The shipped config with every model on the local fake image: same
    models, groups, timeouts and ``${env.SWAPVISOR_KEY}``; no GPUs or host
    model directories (none here), ports from ``start_port``."""
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / dep.config_file).read_text())
    doc["startPort"] = start_port
    for mid, model in doc["models"].items():
        block = model[dep.kind]
        for key in ("gpus", "volumes"):
            block.pop(key, None)
        block["image"] = FAKE_IMAGE
        block["pull"] = "never"
        server = ["python3", "/srv/fake_upstream.py", "--host", "127.0.0.1"]
        server += ["--port", "${PORT}", "--model", mid]
        block["command"] = (
            ["python3", "-c", SLOW_STOP, *server] if mid == SLOW_MODEL else server
        )
    return yaml.safe_dump(doc, sort_keys=False)


def override(dep: Deployment, port: int, instance: str, config: Path) -> str:
    """What this machine swaps in; written as text for podman-compose's
    ``!reset`` (it merges lists, so a GPU device cannot be dropped otherwise;
    dockerd accepts the reservation through setup-docker's hook stand-in)."""
    command = [
        "--config",
        "/etc/swapvisor/config.yaml",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    lines = [
        "services:",
        "  swapvisor:",
        f"    image: {IMAGE}",
        f"    command: {json.dumps(command)}",
        "    environment:",
        f"      SWAPVISOR_INSTANCE: {instance}",
        "    volumes:",
        f"      - {dep.site.socket}:{dep.socket_in}",
        f"      - {config}:/etc/swapvisor/config.yaml:ro",
    ]
    if dep.id == "podman":
        lines.append("    devices: !reset []")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    with Engines() as opened:  # tests/backends/conftest.py's, for this folder
        yield opened


@pytest.fixture(scope="session")
def swapvisor_image(engines: Engines) -> str:
    """``localhost/swapvisor:test`` in Podman, and in Docker when it runs."""
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    try:
        engines.get(DOCKER)
    except pytest.skip.Exception:
        pass
    else:
        env["DOCKER_HOST"] = DOCKER.url
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-swapvisor-image")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        pytest.fail(f"build-swapvisor-image failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Stack:
    """One ``compose up``: its project, instance, port and engine view."""

    dep: Deployment
    engine: Engine
    tool: list[str]
    files: list[Path]
    project: str
    instance: str
    port: int
    key: str = field(default_factory=lambda: f"sk-{uuid.uuid4().hex}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 120) -> str:
        env = {**os.environ, "SWAPVISOR_KEY": self.key}
        if self.dep.id == "docker":
            env["DOCKER_HOST"] = self.dep.site.url
            env["DOCKER_GID"] = str(os.stat(self.dep.site.socket).st_gid)
        argv = [*self.tool, "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        done = subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def containers(self) -> list[dict[str, Any]]:
        """The project's containers (swapvisor's), running or not."""
        rows: list[dict[str, Any]] = self.engine.client.api.containers(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}
        )
        return rows

    def siblings(self) -> list[str]:
        """The model containers swapvisor started, by model id."""
        prefix = f"swapvisor-{self.instance}-"
        return sorted(n.removeprefix(prefix) for n in self.engine.owned(self.instance))

    def logs(self) -> str:
        out = []
        for row in self.containers():
            logs = self.engine.client.api.logs(row["Id"], stdout=True, stderr=True)
            out.append(logs.decode(errors="replace"))
        return "\n".join(out)

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode(errors="replace")

    def chat(self, model: str, text: str) -> str:
        status, body = self.request(
            "/v1/chat/completions",
            {
                "model": model,
                "messages": [{"role": "user", "content": f"echo: {text}"}],
            },
        )
        assert status == 200, f"{model}: {status} {body}\n{self.logs()}"
        return str(body["choices"][0]["message"]["content"])

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until /health answers; fails at once if swapvisor's container
        exits or restarts (a crash loop), with its logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            for row in self.containers():
                info = self.engine.client.api.inspect_container(row["Id"])
                state = info["State"]
                if info.get("RestartCount") or state["Status"] in ("exited", "dead"):
                    pytest.fail(
                        f"swapvisor's container is {state['Status']} after "
                        f"{info.get('RestartCount')} restarts:\n{self.logs()}"
                    )
            time.sleep(0.1)
        pytest.fail(f"swapvisor never became healthy:\n{self.logs()}")

    def cleanup(self) -> None:
        """Whatever a failed test left: the project, then the models."""
        for row in self.containers():
            self.engine.client.api.remove_container(row["Id"], force=True)
        self.engine.remove_owned(self.instance)
        if self.dep.id == "podman":
            subprocess.run(
                ["podman", "pod", "rm", "-f", f"pod_{self.project}"],
                capture_output=True,
                timeout=60,
                check=False,
            )


@pytest.fixture(params=sorted(DEPLOYMENTS))
def stack(
    request: pytest.FixtureRequest,
    engines: Engines,
    swapvisor_image: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    dep = DEPLOYMENTS[str(request.param)]
    tool = dep.tool()
    engine = engines.get(dep.site)
    instance = f"compose{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(local_config(dep, port_block(3)))
    extra = tmp_path / "override.yml"
    extra.write_text(override(dep, port, instance, config))
    box = Stack(
        dep,
        engine,
        tool,
        [COMPOSE / dep.compose_file, extra],
        f"sv{instance}",
        instance,
        port,
    )
    try:
        yield box
    finally:
        box.cleanup()


@pytest.mark.container
def test_compose_serves_swaps_siblings_and_down_leaves_nothing(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy()
    # The key came from the compose tool's environment: no key, no answer.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.url + "/v1/models", timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    assert stack.siblings() == []  # nothing starts before a request

    assert stack.chat("qwen3-8b", "to qwen") == "to qwen"
    assert stack.siblings() == ["qwen3-8b"]
    # The gpu group swaps: qwen's container is removed, coder's started.
    assert stack.chat("coder", "to coder") == "to coder"
    assert stack.siblings() == ["coder"]
    # The cpu group is persistent beside it.
    assert stack.chat("embed", "to embed") == "to embed"
    assert stack.siblings() == ["coder", "embed"]
    swapvisor = stack.containers()
    assert len(swapvisor) == 1 and swapvisor[0]["State"] == "running"

    began = time.monotonic()
    stack.compose("down", timeout=180)
    took = time.monotonic() - began
    # swapvisor waited for coder's slow stop, then removed every model.
    assert stack.siblings() == [], f"left behind after {took:.1f} s"
    assert stack.containers() == []
    print(f"{stack.dep.id} compose down: {took:.1f} s")
