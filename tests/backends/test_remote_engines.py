"""Models on other hosts: a model's ``engine: tcp://host:port``. A second engine
daemon listening on another loopback port stands in for the second host (a
second dockerd with its own data; a second ``podman system service`` on the
same store), and is stopped and started again while swapvisor runs.

What must hold: each engine has its own containers, labels, names and orphans;
a model whose engine is unreachable gets a 503 at once naming the engine while
models on other engines keep serving; the model works again once its engine is
back, without restarting swapvisor; and an engine that accepts connections but
never answers delays neither swapvisor's start-up nor, beyond a few seconds,
the 503 of a request for its model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
import yaml
from openai import OpenAI

from backends.base import BackendUnavailable, LaunchSpec
from backends.containers import LABEL_INSTANCE
from backends.registry import load_backend
from backends.specs import ContainerSpec
from tests.backends.conftest import (
    DOCKER,
    FAKE_IMAGE,
    REAL_SITES,
    SITES,
    Engine,
    Engines,
    Site,
    new_instance,
)
from tests.conftest import free_port, port_block, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import Swapvisor

# A socket to a second engine, left unclosed somewhere in the Docker SDK's
# client while engines come and go in this module, was once finalised by the
# garbage collector in the middle of a later test here (1 CI run in 7, the
# warning raised from docker's APIClient.logs). Until its origin is found,
# only that warning, only in this module, is not an error.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket"
    r":pytest.PytestUnraisableExceptionWarning"
)

# What swapvisor waits for an engine's ping (backends.container.PING_TIMEOUT_S)
# plus room for a loaded 2-core machine.
PROMPT_503_S = 8.0


# -- a second engine ------------------------------------------------------------


@dataclass
class SecondEngine:
    """A second engine API on tcp://127.0.0.1:<port> that the test can stop
    and start again."""

    site: Site  # which engine it is a second one of
    port: int
    work: Path
    proc: subprocess.Popen[bytes] | None = None
    client: Engine | None = None
    log: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.site.kind == "podman":
            return [
                "podman",
                "system",
                "service",
                "--time=0",
                f"tcp:127.0.0.1:{self.port}",
            ]
        return [
            "/usr/sbin/dockerd",
            "--host",
            self.url,
            "--data-root",
            str(self.work / "data"),
            # containerd's sockets live here: a short path (108 bytes max).
            "--exec-root",
            f"/run/svd-{self.port}",
            "--pidfile",
            str(self.work / "dockerd.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--bridge=none",
        ]

    def start(self) -> None:
        log = self.work / f"engine-{len(self.log)}.log"
        self.log.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_sync(self.answers, timeout=30)
        if self.client is None:
            self.client = Engine(f"tcp://127.0.0.1:{self.port}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the engine exited: {self.log[-1].read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait: dockerd stops its containers on the way down;
        Podman's containers do not depend on the API service."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self.client is not None:
            self.client.close()


@pytest.fixture(params=REAL_SITES)
def second(request: pytest.FixtureRequest, engines: Engines) -> Iterator[SecondEngine]:
    site = SITES[str(request.param)]
    primary = engines.get(site)
    binary = "podman" if site.kind == "podman" else "/usr/sbin/dockerd"
    if os.geteuid() != 0 or shutil.which(binary) is None:
        pytest.skip(f"a second {site.id} engine needs root and {binary}")
    work = Path(tempfile.mkdtemp(prefix="sv-engine-", dir="/var/tmp"))
    eng = SecondEngine(site, free_port(), work)
    try:
        eng.start()
        if site.kind == "docker":
            _copy_image(primary, eng.url)
        yield eng
    finally:
        eng.close()
        shutil.rmtree(work, ignore_errors=True)
        if site.kind == "docker":
            # dockerd leaves its bind mount of the host's network namespace.
            exec_root = f"/run/svd-{eng.port}"
            subprocess.run(
                ["umount", f"{exec_root}/netns/default"],
                capture_output=True,
                check=False,
            )
            shutil.rmtree(exec_root, ignore_errors=True)


def _copy_image(primary: Engine, url: str) -> None:
    """The fake image from the primary engine into a second dockerd."""
    with subprocess.Popen(
        ["/usr/bin/docker", "-H", primary.url, "save", FAKE_IMAGE],
        stdout=subprocess.PIPE,
    ) as save:
        subprocess.run(
            ["/usr/bin/docker", "-H", url, "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            timeout=120,
            check=True,
        )
    assert save.returncode == 0


# -- backends on two engines ----------------------------------------------------


@pytest.mark.container
@pytest.mark.parametrize("second", [DOCKER.id], indirect=True)
async def test_each_docker_engine_keeps_its_own_names_and_orphans(
    engines: Engines, second: SecondEngine
) -> None:
    """Two dockerds, one instance: the same container name on both, each
    container labelled on its own engine, and an orphan on one engine reaped
    by that engine's backend only. (A second Podman API shares the first
    one's store: nothing of this differs there.)"""
    primary = engines.get(DOCKER)
    assert second.client is not None
    instance = new_instance()
    here = load_backend("docker", instance=instance, engine_url=DOCKER.url)
    there = load_backend("docker", instance=instance, engine_url=second.url)
    orphan = second.client.client.api.create_container(
        FAKE_IMAGE,
        command=["true"],
        labels={LABEL_INSTANCE: instance},
        name=f"o-{instance}",
    )["Id"]
    try:
        assert await here.reap_orphans() == []  # type: ignore[attr-defined]
        assert second.client.exists(orphan)
        assert await there.reap_orphans() == [f"o-{instance}"]  # type: ignore[attr-defined]
        assert not second.client.exists(orphan)

        specs = []
        for backend in (here, there):
            port = free_port()
            spec = LaunchSpec(
                argv=("python3", "/srv/fake_upstream.py", "--port", str(port)),
                base_url=f"http://127.0.0.1:{port}",
                container=ContainerSpec(image=FAKE_IMAGE, name=f"same-{instance}"),
            )
            specs.append((backend, await backend.start("m", spec), spec))
        assert primary.owned(instance) == [f"same-{instance}"]
        assert second.client.owned(instance) == [f"same-{instance}"]
        for backend, handle, spec in specs:
            await backend.stop(handle, spec, grace=5)
        assert primary.owned(instance) == second.client.owned(instance) == []
    finally:
        await here.aclose()
        await there.aclose()
        primary.remove_owned(instance)
        second.client.remove_owned(instance)


# -- swapvisor with a second engine going away and coming back -------------------


def no_swap(members: list[str]) -> dict[str, Any]:
    """A group whose members all run at once: a start never stops another."""
    return {"swap": False, "exclusive": False, "members": members}


def model(kind: str, mid: str, engine: str) -> dict[str, Any]:
    command = ["python3", "/srv/fake_upstream.py", "--host", "127.0.0.1"]
    command += ["--port", "${PORT}", "--model", mid]
    block = {
        "image": FAKE_IMAGE,
        "engine": engine,
        "network": "host",
        "command": command,
    }
    return {kind: block, "healthCheckTimeout": 20}


def running(sv: Swapvisor) -> list[str]:
    """The models swapvisor's /running lists."""
    with urllib.request.urlopen(f"{sv.url}/running", timeout=5) as r:
        return [str(m["model"]) for m in json.load(r)["running"]]


def client(sv: Swapvisor) -> OpenAI:
    return OpenAI(base_url=f"{sv.url}/v1", api_key="x", max_retries=0, timeout=30)


def say(c: OpenAI, mid: str) -> str:
    reply = c.chat.completions.create(
        model=mid, messages=[{"role": "user", "content": f"echo: hi {mid}"}]
    )
    return reply.choices[0].message.content or ""


def refusal(c: OpenAI, mid: str) -> tuple[openai.APIStatusError, float]:
    """The error a request for ``mid`` gets, and how long it took."""
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        say(c, mid)
    return caught.value, time.monotonic() - began


def unavailable_at_once(c: OpenAI, mid: str, url: str) -> bool:
    err, took = refusal(c, mid)
    assert took < PROMPT_503_S, f"{took:.1f} s for {err.message}"
    return err.status_code == 503 and url in err.message


@pytest.mark.container
def test_an_engine_going_away_spares_the_others_and_comes_back(
    engines: Engines,
    second: SecondEngine,
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
) -> None:
    site = second.site
    primary = engines.get(site)
    assert second.client is not None
    instance = new_instance()
    members = ["local", "remote", "later"]
    doc = {
        "startPort": port_block(3),
        "models": {
            "local": model(site.kind, "local", site.url),
            "remote": model(site.kind, "remote", second.url),
            "later": model(site.kind, "later", second.url),
        },
        "routing": {"router": {"settings": {"groups": {"all": no_swap(members)}}}},
    }
    sv = swapvisor(
        write_config(yaml.safe_dump(doc)), env={"SWAPVISOR_INSTANCE": instance}
    )
    try:
        with client(sv) as c:
            assert say(c, "local") == "hi local"
            assert say(c, "remote") == "hi remote"
            local, remote = (f"swapvisor-{instance}-{m}" for m in ("local", "remote"))
            if site.kind == "docker":
                # Each model's container is on its own engine, labelled.
                assert primary.owned(instance) == [local]
                assert second.client.owned(instance) == [remote]
            else:  # one store behind both APIs: each sees both
                assert sorted(primary.owned(instance)) == [local, remote]
                assert sorted(second.client.owned(instance)) == [local, remote]

            second.stop()
            # Never started: its start finds the engine gone, at once.
            assert unavailable_at_once(c, "later", second.url)
            assert say(c, "local") == "hi local"
            if site.kind == "docker":
                # dockerd took the container down with it: swapvisor notices
                # with no request (the model leaves /running rather than
                # stay ready in front of nothing), and the next request is
                # told why it cannot be served.
                wait_until_sync(lambda: "remote" not in running(sv), timeout=15)
                assert unavailable_at_once(c, "remote", second.url)
            else:
                # Podman's containers outlive its API: the server still answers.
                assert say(c, "remote") == "hi remote"
                # Until it dies while its API is away: swapvisor cannot ask
                # the engine, sees nothing listen any more, and lets the
                # model go rather than keep it ready in front of nothing.
                subprocess.run(
                    ["podman", "kill", remote],
                    capture_output=True,
                    timeout=30,
                    check=True,
                )
                wait_until_sync(lambda: "remote" not in running(sv), timeout=15)
                assert unavailable_at_once(c, "remote", second.url)
            assert say(c, "local") == "hi local"

            second.start()  # the same engine, back: no restart of swapvisor
            assert say(c, "later") == "hi later"
            assert say(c, "remote") == "hi remote"
            assert say(c, "local") == "hi local"
        assert sv.stop(signal.SIGTERM) == 0, sv.output()
        assert primary.owned(instance) == [], sv.output()
        assert second.client.owned(instance) == [], sv.output()
    finally:
        primary.remove_owned(instance)
        if second.running():
            second.client.remove_owned(instance)


# -- an engine that accepts connections and never answers -------------------------


class SilentEngine:
    """A TCP listener on 127.0.0.1 that accepts and then says nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentEngine]:
    eng = SilentEngine()
    yield eng
    eng.close()


@pytest.mark.parametrize("kind", ["docker", "podman"])
async def test_a_silent_engine_is_unavailable_within_the_ping_timeout(
    kind: str, silent: SilentEngine
) -> None:
    backend = load_backend(
        kind, instance="t", engine_url=silent.url, ping_timeout_s=0.5
    )
    spec = LaunchSpec(
        argv=("true",),
        base_url="http://127.0.0.1:1",
        container=ContainerSpec(image=FAKE_IMAGE),
    )
    silent_error = pytest.raises(
        BackendUnavailable, match=f"{silent.url} is not answering"
    )
    try:
        began = time.monotonic()
        with silent_error:
            await backend.check_engine(spec)  # type: ignore[attr-defined]
        with silent_error:
            await backend.start("m", spec)
        with silent_error:
            await backend.reap_orphans()  # type: ignore[attr-defined]
        assert time.monotonic() - began < 5
    finally:
        await backend.aclose()


def test_a_silent_engine_delays_neither_start_up_nor_its_503(
    silent: SilentEngine,
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
) -> None:
    """Start-up reaps in the background: swapvisor listens and serves the
    other models at once; the silent engine's models get their 503 naming it
    within a few seconds, not the SDK's 60, and the others serve meanwhile."""
    doc = {
        "startPort": port_block(3),
        "models": {
            "d": model("docker", "d", silent.url),
            "p": model("podman", "p", silent.url),
            "m": {"mock": {"reply": "still here"}},
        },
        "routing": {
            "router": {"settings": {"groups": {"all": no_swap(["d", "p", "m"])}}}
        },
    }
    config = write_config(yaml.safe_dump(doc))
    began = time.monotonic()
    sv = swapvisor(config, env={"SWAPVISOR_INSTANCE": new_instance()})
    assert time.monotonic() - began < 5, "start-up waited on the engine"
    with client(sv) as c, ThreadPoolExecutor(2) as pool:
        assert say(c, "m") == "still here"
        pending = [pool.submit(refusal, c, mid) for mid in ("d", "p")]
        assert say(c, "m") == "still here"  # while both wait on the engine
        for waiting in pending:
            err, took = waiting.result(timeout=30)
            assert err.status_code == 503, err.message
            assert silent.url in err.message and "not answering" in err.message
            assert took < PROMPT_503_S, f"{took:.1f} s"
        assert say(c, "m") == "still here"
    began = time.monotonic()
    assert sv.stop(signal.SIGTERM) == 0, sv.output()
    assert time.monotonic() - began < 15
