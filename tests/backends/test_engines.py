"""What only container engines have: ownership labels, orphans left by a
SIGKILLed swapvisor, stale containers holding the name (llama-swap #220),
images that are not there, an unreachable engine, cancelled starts, GPU
requests (checked in the create request: CI has no GPU), and a real LLM
server in a container.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backends.base import BackendStartError, BackendUnavailable, Health, LaunchSpec
from backends.containers import (
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MODEL,
    LABEL_RUN,
    RUN_ID,
)
from backends.specs import ContainerSpec
from tests.backends.conftest import (
    DOCKER_URL,
    FAKE_IMAGE,
    LLM_IMAGE,
    PODMAN_URL,
    Engine,
    Target,
    new_instance,
)
from tests.backends.test_contract import until
from tests.conftest import free_port

pytestmark = pytest.mark.container
ROOT = Path(__file__).resolve().parents[2]


async def test_containers_carry_ownership_labels(engine_target: Target) -> None:
    assert engine_target.engine is not None
    backend = engine_target.backend()
    spec = engine_target.spec(free_port(), labels={"team": "ml"})
    handle = await backend.start("org/Model:Q4", spec)
    info = engine_target.engine.client.api.inspect_container(handle.ref)
    labels = info["Config"]["Labels"]
    assert labels[LABEL_INSTANCE] == engine_target.instance
    assert labels[LABEL_MODEL] == "org/Model:Q4"
    assert spec.container is not None
    assert labels[LABEL_HASH] == spec.container.config_hash()
    assert labels[LABEL_RUN] == RUN_ID
    assert labels["team"] == "ml"
    name = info["Name"].lstrip("/")
    assert name.startswith(f"swapvisor-{engine_target.instance}-org-Model-Q4-")
    if engine_target.url != PODMAN_URL:
        await backend.stop(handle, spec, grace=5)
        assert engine_target.leftovers() == []
        return
    # Podman's own API (podman-py) sees the same ownership. Its list results
    # break on `.status` (the state is a string there): read attrs instead.
    import podman

    with podman.PodmanClient(base_url=PODMAN_URL) as client:
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={engine_target.instance}"}
        )
        assert [c.id for c in found] == [handle.ref]
        assert found[0].attrs["State"] == "running"
        assert found[0].labels[LABEL_MODEL] == "org/Model:Q4"
    await backend.stop(handle, spec, grace=5)
    assert engine_target.leftovers() == []


ORPHAN_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from backends.base import LaunchSpec
from backends.registry import load_backend
from backends.specs import ContainerSpec

async def main():
    backend = load_backend({kind!r}, instance={instance!r}, engine_url={url!r})
    spec = LaunchSpec(
        argv=("python3", "/srv/fake_upstream.py", "--port", "{port}"),
        base_url="http://127.0.0.1:{port}",
        container=ContainerSpec(image={image!r}),
    )
    handle = await backend.start("m", spec)
    print(handle.ref, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_orphans_of_a_sigkilled_swapvisor_are_reaped(
    engine_target: Target, tmp_path: Path
) -> None:
    """A swapvisor SIGKILLed with a container running; the next one (same
    instance id) removes it at start-up, and leaves other instances' alone."""
    eng = engine_target.engine
    assert eng is not None
    script = tmp_path / "swapvisor.py"
    script.write_text(
        textwrap.dedent(ORPHAN_SCRIPT).format(
            root=str(ROOT),
            kind=engine_target.kind,
            instance=engine_target.instance,
            url=engine_target.url,
            port=free_port(),
            image=FAKE_IMAGE,
        )
    )
    other = new_instance()
    bystander = eng.client.api.create_container(
        FAKE_IMAGE, command=["true"], labels={LABEL_INSTANCE: other}
    )["Id"]
    try:
        parent = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE
        )
        assert parent.stdout is not None
        ref = (await asyncio.wait_for(parent.stdout.readline(), 30)).decode().strip()
        parent.kill()  # SIGKILL: no cleanup runs
        await asyncio.wait_for(parent.wait(), 10)
        assert eng.exists(ref), "the container outlived its swapvisor"
        assert engine_target.leftovers() != []

        backend = engine_target.backend()
        reaped = await backend.reap_orphans()  # type: ignore[attr-defined]
        assert reaped == [f"swapvisor-{engine_target.instance}-m"]
        assert not eng.exists(ref)
        assert engine_target.leftovers() == []
        assert eng.exists(bystander)
        assert await backend.reap_orphans() == []  # type: ignore[attr-defined]
    finally:
        eng.client.api.remove_container(bystander, force=True)


async def test_reaping_spares_what_this_process_runs(engine_target: Target) -> None:
    """Neither the backend that started a container nor another backend object
    of this process (a second URL for one engine) takes it for an orphan."""
    backend = engine_target.backend()
    spec = engine_target.spec(free_port())
    handle = await backend.start("m", spec)
    assert await backend.reap_orphans() == []  # type: ignore[attr-defined]
    other = engine_target.backend()
    assert await other.reap_orphans() == []  # type: ignore[attr-defined]
    await until(backend, handle, spec, Health.READY)
    await backend.stop(handle, spec, grace=5)


def _precreate(eng: Engine, name: str, labels: dict[str, str]) -> str:
    return str(
        eng.client.api.create_container(
            FAKE_IMAGE,
            command=["python3", "-c", "import time; time.sleep(600)"],
            name=name,
            labels=labels,
            host_config=eng.client.api.create_host_config(network_mode="host"),
        )["Id"]
    )


async def test_a_stale_container_holding_the_name_is_replaced(
    engine_target: Target,
) -> None:
    eng = engine_target.engine
    assert eng is not None
    name = f"swapvisor-{engine_target.instance}-m"
    stale = _precreate(eng, name, {LABEL_INSTANCE: engine_target.instance})
    eng.client.api.start(stale)
    backend = engine_target.backend()
    spec = engine_target.spec(free_port())
    handle = await backend.start("m", spec)
    assert handle.ref != stale
    assert not eng.exists(stale)
    await until(backend, handle, spec, Health.READY)
    # Quick swaps reuse the name: stop always removes, so no conflict (#220).
    await backend.stop(handle, spec, grace=5)
    for _ in range(2):
        handle = await backend.start("m", spec)
        await until(backend, handle, spec, Health.READY)
        await backend.stop(handle, spec, grace=5)
    assert engine_target.leftovers() == []


async def test_a_foreign_container_holding_the_name_is_left_alone(
    engine_target: Target,
) -> None:
    eng = engine_target.engine
    assert eng is not None
    name = f"swapvisor-{engine_target.instance}-m"
    foreign = _precreate(eng, name, {"owner": "someone else"})
    try:
        backend = engine_target.backend()
        with pytest.raises(BackendStartError, match="does not own"):
            await backend.start("m", engine_target.spec(free_port()))
        assert eng.exists(foreign)
    finally:
        eng.client.api.remove_container(foreign, force=True)


async def test_a_missing_image_is_a_clear_start_error(engine_target: Target) -> None:
    backend = engine_target.backend()
    port = free_port()
    with pytest.raises(BackendStartError) as failed:
        await backend.start(
            "m", engine_target.spec(port, image="localhost/nope:latest")
        )
    message = str(failed.value)
    assert message.startswith(
        "image localhost/nope:latest not found locally and could not be pulled: "
    )
    assert len(message) > 80  # the engine's reason follows
    with pytest.raises(BackendStartError, match="pull policy is 'never'"):
        await backend.start(
            "m", engine_target.spec(port, image="localhost/nope:latest", pull="never")
        )
    # "always" pulls even a local image; with no registry that fails clearly.
    with pytest.raises(BackendStartError, match=f"image {FAKE_IMAGE} not found"):
        await backend.start("m", engine_target.spec(port, pull="always"))
    assert engine_target.leftovers() == []


async def test_a_bad_command_fails_clearly_and_leaves_nothing(
    engine_target: Target,
) -> None:
    """Without an init the engine refuses to start it, naming the command;
    with one (the default), the init cannot exec it and the container exits
    while starting, non-zero, saying so in its log."""
    backend = engine_target.backend()
    for init in (False, True):
        spec = LaunchSpec(
            argv=("/nonexistent/llama-server",),
            base_url="http://127.0.0.1:1",
            container=ContainerSpec(image=FAKE_IMAGE, init=init),
        )
        if not init:
            with pytest.raises(BackendStartError, match="/nonexistent/llama-server"):
                await backend.start("m", spec)
            assert engine_target.leftovers() == []
            continue
        handle = await backend.start("m", spec)
        lines = [line async for line in backend.logs(handle)]
        await until(backend, handle, spec, Health.EXITED)
        info = await backend.stop(handle, spec, grace=1)
        assert info.code not in (0, None)
        assert b"exec" in b"".join(lines)
        assert engine_target.leftovers() == []


@pytest.mark.parametrize("kind", ["docker", "podman"])
async def test_an_unreachable_engine_is_unavailable_naming_the_url(
    kind: str, tmp_path: Path
) -> None:
    from backends.registry import load_backend

    url = f"unix://{tmp_path}/no-engine.sock"
    backend = load_backend(kind, instance="t", engine_url=url)
    spec = LaunchSpec(
        argv=("true",),
        base_url="http://127.0.0.1:1",
        container=ContainerSpec(image=FAKE_IMAGE),
    )
    try:
        with pytest.raises(BackendUnavailable, match=f"{url} is unreachable"):
            await backend.start("m", spec)
        with pytest.raises(BackendUnavailable, match=url):
            await backend.reap_orphans()  # type: ignore[attr-defined]
    finally:
        await backend.aclose()


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2])
async def test_a_cancelled_start_leaves_nothing(
    engine_target: Target, delay: float
) -> None:
    backend = engine_target.backend()
    spec = engine_target.spec(free_port())
    start = asyncio.create_task(backend.start("m", spec))
    await asyncio.sleep(delay)
    start.cancel()
    try:
        handle = await start
    except asyncio.CancelledError:
        assert engine_target.leftovers() == []
    else:  # it finished before the cancel: an ordinary stop cleans up
        await backend.stop(handle, spec, grace=5)
        assert engine_target.leftovers() == []


async def test_docker_env_default_engine(
    docker_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine_url: DOCKER_HOST picks the engine, as for the docker CLI."""
    from backends.docker import DockerBackend

    engine = docker_engine
    monkeypatch.setenv("DOCKER_HOST", DOCKER_URL)
    instance = new_instance()
    backend = DockerBackend(instance)
    port = free_port()
    spec = LaunchSpec(
        argv=("python3", "/srv/fake_upstream.py", "--port", str(port)),
        base_url=f"http://127.0.0.1:{port}",
        container=ContainerSpec(image=FAKE_IMAGE),
    )
    try:
        handle = await backend.start("m", spec)
        await until(backend, handle, spec, Health.READY)
        await backend.stop(handle, spec, grace=5)
        assert engine.owned(instance) == []
    finally:
        await backend.aclose()
        engine.remove_owned(instance)


async def test_docker_gpu_requests_reach_the_engine(
    docker_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create request carries HostConfig.DeviceRequests as `docker run
    --gpus` sends them; the container is created, never started (no GPU)."""
    engine = docker_engine
    import docker.api.client

    from backends.containers import ownership_labels
    from backends.docker import DockerBackend, DockerEngine, create_args

    sent: list[dict[str, Any]] = []
    post_json = docker.api.client.APIClient._post_json

    def recording(self: Any, url: str, data: Any, **kwargs: Any) -> Any:
        if url.endswith("/containers/create"):
            sent.append(json.loads(json.dumps(data)))
        return post_json(self, url, data, **kwargs)

    monkeypatch.setattr(docker.api.client.APIClient, "_post_json", recording)
    # As `docker run --gpus all | 2 | device=0,GPU-1234` sends them.
    expected = {
        "all": [{"Count": -1, "DeviceIDs": []}],
        2: [{"Count": 2, "DeviceIDs": []}],
        ("0", "GPU-1234"): [{"Count": 0, "DeviceIDs": ["0", "GPU-1234"]}],
    }
    instance = new_instance()
    eng = await asyncio.to_thread(DockerEngine, DOCKER_URL, 30)
    try:
        for gpus, want in expected.items():
            cspec = ContainerSpec(image=FAKE_IMAGE, gpus=gpus)  # type: ignore[arg-type]
            spec = LaunchSpec(argv=("true",), base_url="http://x", container=cspec)
            name = f"swapvisor-{instance}-gpu"
            args = create_args(
                spec, cspec, name, ownership_labels(instance, "m", cspec)
            )
            ref = await eng.create(args)  # create only
            try:
                requests = sent[-1]["HostConfig"]["DeviceRequests"]
                assert len(requests) == 1
                request = requests[0]
                assert request["Capabilities"] == [["gpu"]]
                got = {
                    "Count": request.get("Count"),
                    "DeviceIDs": request.get("DeviceIDs"),
                }
                assert [got] == want
                assert engine.exists(ref)
            finally:
                await eng.remove(ref)
    finally:
        await eng.aclose()
    assert DockerBackend.kind == "docker"
    assert engine.owned(instance) == []


async def test_podman_gpu_requests_are_cdi_devices(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The libpod create body names CDI devices; without the NVIDIA CDI spec
    (CI) the engine refuses to start it, naming them, and nothing is left."""
    from backends.podman import LibpodEngine, PodmanBackend

    sent: list[tuple[str, str, Any]] = []
    request = LibpodEngine.request

    async def recording(
        self: LibpodEngine, method: str, path: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        sent.append((method, path, kwargs.get("body")))
        return await request(self, method, path, **kwargs)

    monkeypatch.setattr(LibpodEngine, "request", recording)
    instance = new_instance()
    backend = PodmanBackend(instance, engine_url=PODMAN_URL)
    port = free_port()
    spec = LaunchSpec(
        argv=("python3", "/srv/fake_upstream.py", "--port", str(port)),
        base_url=f"http://127.0.0.1:{port}",
        container=ContainerSpec(image=FAKE_IMAGE, gpus=["0", "1"]),
    )
    try:
        try:
            handle = await backend.start("m", spec)
        except BackendStartError as exc:
            assert "nvidia.com/gpu=0" in str(exc)  # no CDI spec here
        else:  # a machine with the NVIDIA CDI spec runs it
            await backend.stop(handle, spec, grace=5)
        creates = [b for m, p, b in sent if p == "/containers/create"]
        assert creates and creates[0]["devices"] == [
            {"path": "nvidia.com/gpu=0"},
            {"path": "nvidia.com/gpu=1"},
        ]
        assert engine.owned(instance) == []
    finally:
        await backend.aclose()


@pytest.mark.llm
async def test_podman_runs_the_real_smollm2_server(engine: Engine) -> None:
    """llama.cpp's server (xllamacpp) with SmolLM2-135M inside a container:
    started, ready, a real chat completion through it, stopped."""
    from backends.podman import PodmanBackend

    instance = new_instance()
    backend = PodmanBackend(instance, engine_url=PODMAN_URL)
    port = free_port()
    spec = LaunchSpec(
        argv=("python3", "-m", "launchers.smollm2", "--port", str(port)),
        base_url=f"http://127.0.0.1:{port}",
        container=ContainerSpec(image=LLM_IMAGE),
    )
    try:
        began = time.monotonic()
        handle = await backend.start("smollm2", spec)
        ready = await until(backend, handle, spec, Health.READY, timeout=60)
        print(f"smollm2 in a container: ready {time.monotonic() - began:.2f} s")
        assert ready < 60
        question = "What is the capital of France? Answer in one word."
        chat = {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 16,
            "temperature": 0,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{spec.base_url}/v1/chat/completions", json=chat
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
        answer = body["choices"][0]["message"]["content"]
        assert "paris" in answer.lower()
        assert body["usage"]["completion_tokens"] > 0
        info = await backend.stop(handle, spec, grace=10)
        assert (info.code, info.forced) == (0, False)
        assert engine.owned(instance) == []
    finally:
        await backend.aclose()
        engine.remove_owned(instance)
