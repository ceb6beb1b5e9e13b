"""swapvisor end to end with container models: the real ``python -m controller``
as a subprocess, models in ``podman:`` blocks (rootful Podman) and ``docker:``
blocks (real dockerd), driven by the official ``openai`` SDK. Start, serve, swap and stop; a SIGKILLed swapvisor's
orphan reaped by the next run; a crash mid-request; name conflicts; missing
images; an engine that is down at start-up; and the real SmolLM2 in a
container.

Each test has its own ``SWAPVISOR_INSTANCE``, lists containers only by that
instance's label, and removes them (and any foreign container it made) even
when it fails.
"""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import docker.errors
import openai
import pytest
import yaml
from openai import OpenAI

from backends.containers import LABEL_INSTANCE, LABEL_MODEL
from tests.backends.conftest import (
    FAKE_IMAGE,
    LLM_IMAGE,
    PODMAN,
    REAL_SITES,
    SITES,
    Engine,
    Engines,
    new_instance,
)
from tests.conftest import port_block, wait_until_sync
from tests.e2e.conftest import in_flight

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Swapvisor

pytestmark = pytest.mark.container

KINDS = REAL_SITES  # "docker" is real dockerd here, "podman" rootful Podman
MISSING_IMAGE = "localhost/does-not-exist:latest"


def fake_block(kind: str, model: str, **extra: Any) -> dict[str, Any]:
    """A model whose server is the fake upstream in a container on the host
    network, bound to 127.0.0.1 on the model's ${PORT}, on ``kind``'s engine."""
    block = {
        "image": FAKE_IMAGE,
        "engine": SITES[kind].url,
        "network": "host",
        "command": [
            "python3",
            "/srv/fake_upstream.py",
            "--host",
            "127.0.0.1",
            "--port",
            "${PORT}",
            "--model",
            model,
        ],
        **extra,
    }
    return {kind: block, "healthCheckTimeout": 20}


@dataclass
class Box:
    """One test's swapvisor runs and containers, all under one instance id."""

    engine: Engine
    instance: str
    write_config: Callable[[str], Path]
    start_swapvisor: Callable[..., Swapvisor]
    started: list[Swapvisor] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # unlabelled, by name

    def config(self, models: dict[str, dict[str, Any]]) -> Path:
        doc = {"startPort": port_block(len(models)), "models": models}
        return self.write_config(yaml.safe_dump(doc, sort_keys=False))

    def start(self, config: Path) -> Swapvisor:
        sv = self.start_swapvisor(config, env={"SWAPVISOR_INSTANCE": self.instance})
        self.started.append(sv)
        return sv

    def owned(self) -> list[str]:
        """Names of this instance's containers, running or not."""
        return sorted(self.engine.owned(self.instance))

    def name_of(self, model: str) -> str:
        return f"swapvisor-{self.instance}-{model}"

    def inspect(self, ref: str) -> dict[str, Any]:
        info: dict[str, Any] = self.engine.client.api.inspect_container(ref)
        return info

    def labelled(self, name: str, model: str) -> str:
        """Create (not start) a container of this instance's holding ``name``."""
        return self.create(name, {LABEL_INSTANCE: self.instance, LABEL_MODEL: model})

    def create(self, name: str, labels: dict[str, str] | None = None) -> str:
        if not labels:
            self.foreign.append(name)
        made = self.engine.client.api.create_container(
            FAKE_IMAGE,
            command=["python3", "/srv/fake_upstream.py", "--port", "1"],
            name=name,
            labels=labels or {},
        )
        return str(made["Id"])

    def cleanup(self) -> None:
        for sv in self.started:
            if sv.proc.poll() is None:
                sv.proc.kill()
                sv.proc.wait(10)
        self.engine.remove_owned(self.instance)
        for name in self.foreign:
            try:
                self.engine.client.api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def box(
    request: pytest.FixtureRequest,
    engines: Engines,
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
) -> Iterator[Box]:
    """On the test's ``kind`` engine (Podman for tests without one)."""
    params = getattr(request.node, "callspec", None)
    site = SITES[params.params.get("kind", PODMAN.id)] if params else PODMAN
    b = Box(engines.get(site), new_instance(), write_config, swapvisor)
    try:
        yield b
    finally:
        b.cleanup()  # swapvisor killed first, so nothing re-creates a container


def client(sv: Swapvisor, timeout: float = 30) -> OpenAI:
    return OpenAI(base_url=f"{sv.url}/v1", api_key="x", max_retries=0, timeout=timeout)


def say(c: OpenAI, model: str, text: str, **extra: Any) -> str:
    reply = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"echo: {text}"}],
        extra_body=extra or None,
    )
    return reply.choices[0].message.content or ""


def refused(c: OpenAI, model: str, **extra: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        say(c, model, "refused", **extra)
    return caught.value


def shut_down(sv: Swapvisor, box: Box) -> None:
    """SIGTERM: exit 0 with every container of the instance removed."""
    assert sv.stop(signal.SIGTERM) == 0, sv.output()
    assert box.owned() == []


# -- 1. start, serve, swap, stop ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_start_serve_swap_back_and_stop(box: Box, kind: str) -> None:
    sv = box.start(box.config({"a": fake_block(kind, "a"), "b": fake_block(kind, "b")}))
    assert box.owned() == []  # nothing runs until a request asks
    with client(sv) as c:
        assert say(c, "a", "to a") == "to a"
        assert box.owned() == [box.name_of("a")]
        first_a = box.inspect(box.name_of("a"))
        assert first_a["State"]["Running"] is True
        assert first_a["Config"]["Labels"][LABEL_MODEL] == "a"
        assert first_a["HostConfig"]["NetworkMode"] == "host"

        assert say(c, "b", "to b") == "to b"
        # Swapped: a's container is removed, not merely stopped.
        assert box.owned() == [box.name_of("b")]
        assert not box.engine.exists(first_a["Id"])

        assert say(c, "a", "back to a") == "back to a"
        assert box.owned() == [box.name_of("a")]
        assert box.inspect(box.name_of("a"))["Id"] != first_a["Id"]
    shut_down(sv, box)


# -- 2. SIGKILL mid-request, then the next run reaps the orphan ------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_orphan_of_a_sigkilled_swapvisor_is_reaped_by_the_next_run(
    box: Box, kind: str
) -> None:
    config = box.config({"a": fake_block(kind, "a")})
    sv = box.start(config)
    with client(sv) as c, ThreadPoolExecutor(1) as pool:
        assert say(c, "a", "warm") == "warm"
        slow = pool.submit(say, c, "a", "slow", fake_delay=5)
        wait_until_sync(lambda: in_flight(sv, "a") == 1, timeout=5)
        sv.proc.kill()
        assert sv.proc.wait(10) == -signal.SIGKILL
        with pytest.raises(openai.APIConnectionError):
            slow.result(10)
    orphan = box.name_of("a")
    assert box.owned() == [orphan]
    assert box.inspect(orphan)["State"]["Running"] is True  # it outlived swapvisor

    again = box.start(config)  # same config and instance; returns once /health is 200
    # Reaped in the background, and said so.
    wait_until_sync(lambda: "left behind by an earlier run" in again.output(), 10)
    assert box.owned() == []
    assert orphan in again.output()
    with client(again) as c:
        # The port the orphan held is free again: the new container binds it.
        assert say(c, "a", "after the reap") == "after the reap"
    assert box.owned() == [orphan]
    shut_down(again, box)


# -- 3. a crash mid-request ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_crash_mid_request_is_a_502_with_the_exit_reason_then_restarts(
    box: Box, kind: str
) -> None:
    sv = box.start(box.config({"a": fake_block(kind, "a")}))
    with client(sv) as c:
        assert say(c, "a", "before") == "before"
        crashed = box.inspect(box.name_of("a"))["Id"]
        err = refused(c, "a", fake_crash_midstream=True)
        assert err.status_code == 502
        assert "exit code 9" in err.message, err.message
        # The crashed container is reaped; the next request starts a new one.
        assert say(c, "a", "after") == "after"
        assert not box.engine.exists(crashed)
        assert box.owned() == [box.name_of("a")]
    shut_down(sv, box)


# -- 4. name conflicts -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_container_of_ours_is_replaced_a_foreign_one_is_not(
    box: Box, kind: str
) -> None:
    ours = f"sv-test-{uuid.uuid4().hex[:10]}"
    theirs = f"sv-test-{uuid.uuid4().hex[:10]}"
    sv = box.start(
        box.config(
            {
                "a": fake_block(kind, "a", name=ours),
                "f": fake_block(kind, "f", name=theirs),
            }
        )
    )
    # Made after start-up (whose reaping would remove a labelled one): the
    # model's own start meets the conflict.
    stale = box.labelled(ours, "a")
    foreign = box.create(theirs)
    with client(sv) as c:
        assert say(c, "a", "replaced") == "replaced"
        assert not box.engine.exists(stale)
        assert box.inspect(ours)["State"]["Running"] is True

        err = refused(c, "f")
        assert err.status_code == 503
        assert theirs in err.message and "does not own" in err.message, err.message
        assert box.inspect(theirs)["Id"] == foreign  # left alone
        assert box.engine.exists(theirs)
        assert box.inspect(theirs)["State"]["Running"] is False
    shut_down(sv, box)
    assert box.engine.exists(foreign)  # not even shut-down touches it


# -- 5. a missing image ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_image_is_a_503_naming_it_and_others_still_serve(
    box: Box, kind: str
) -> None:
    sv = box.start(
        box.config(
            {
                "good": fake_block(kind, "good"),
                "never": fake_block(kind, "never", image=MISSING_IMAGE, pull="never"),
                "missing": fake_block(kind, "missing", image=MISSING_IMAGE),
            }
        )
    )
    with client(sv) as c:
        assert say(c, "good", "first") == "first"
        err = refused(c, "never")
        assert err.status_code == 503
        assert MISSING_IMAGE in err.message and "'never'" in err.message, err.message
        assert say(c, "good", "still") == "still"

        err = refused(c, "missing")
        assert err.status_code == 503
        assert f"image {MISSING_IMAGE} not found locally and could not be pulled" in (
            err.message
        ), err.message
        assert say(c, "good", "and still") == "and still"
        assert box.owned() == [box.name_of("good")]
    shut_down(sv, box)


# -- 6. the real SmolLM2 in a container ------------------------------------------------


@pytest.mark.llm
def test_smollm2_in_a_podman_container_answers_through_swapvisor(box: Box) -> None:
    block = {
        "image": LLM_IMAGE,
        "engine": PODMAN.url,
        "network": "host",
        "command": [
            "python3",
            "-m",
            "launchers.smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            "${PORT}",
        ],
    }
    sv = box.start(box.config({"smollm2": {"podman": block, "healthCheckTimeout": 60}}))
    began = time.monotonic()
    with client(sv, timeout=60) as c:
        reply = c.chat.completions.create(
            model="smollm2",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            temperature=0,
            max_tokens=32,
        )
    print(f"smollm2 through swapvisor: {time.monotonic() - began:.2f} s")
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert box.owned() == [box.name_of("smollm2")]
    shut_down(sv, box)


# -- an engine that is down at start-up ---------------------------------------------


def test_an_unreachable_engine_is_looked_for_once_and_others_serve(box: Box) -> None:
    """Orphans are looked for once per engine, not once per model: one warning
    each (and one wait, where an engine times out), then swapvisor serves."""
    gone = f"unix:///tmp/sv-no-engine-{uuid.uuid4().hex[:8]}.sock"
    sv = box.start(
        box.config(
            {
                "p1": fake_block("podman", "p1", engine=gone),
                "p2": fake_block("podman", "p2", engine=gone),
                "d1": fake_block("docker", "d1", engine=gone),
                "m": {"mock": {"reply": "still here"}},
            }
        )
    )

    def looked() -> list[str]:
        out = sv.output().splitlines()
        return [ln for ln in out if "could not look for leftover containers" in ln]

    # In the background: swapvisor listens before the engines have answered.
    wait_until_sync(lambda: len(looked()) >= 2, timeout=10)
    assert len(looked()) == 2, looked()  # the Podman API and the Docker API
    with client(sv) as c:
        err = refused(c, "p1")
        assert err.status_code == 503
        assert "unreachable" in err.message and gone in err.message, err.message
        reply = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "still here"
    shut_down(sv, box)
