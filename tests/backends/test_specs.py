"""ContainerSpec checking and normalisation, how a spec becomes each engine's
create request, the shared helpers (names, labels, lines, frames), and the
registry. No engine needed."""

from __future__ import annotations

import signal
import sys

import pytest

from backends.base import (
    BackendError,
    BackendNotInstalled,
    LaunchSpec,
    SupportsOrphanCleanup,
)
from backends.containers import (
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MODEL,
    LABEL_RUN,
    MAX_LINE,
    RUN_ID,
    FrameDecoder,
    LineSplitter,
    LogFeed,
    check_instance,
    container_name,
    exit_info,
    ownership_labels,
)
from backends.specs import ContainerSpec, VolumeMount, parse_bytes, signal_name

pytestmark = pytest.mark.container


def test_container_spec_normalises_what_config_gives() -> None:
    spec = ContainerSpec(
        image="ghcr.io/ggml-org/llama.cpp:server-cuda",
        command=["--port", "8080"],
        entrypoint=["/app/llama-server"],
        env={"A": 1},  # type: ignore[dict-item]
        volumes=["/models:/models:ro", VolumeMount("hf-cache", "/root/.cache")],
        ports={"8080": "18080"},  # type: ignore[dict-item]
        network="bridge",
        gpus=["0", "1"],
        shm_size="16g",
        stop_signal="int",
    )
    assert spec.command == ("--port", "8080")
    assert spec.entrypoint == ("/app/llama-server",)
    assert spec.env == {"A": "1"}
    assert spec.mounts == (
        VolumeMount("/models", "/models", read_only=True),
        VolumeMount("hf-cache", "/root/.cache"),
    )
    assert [m.is_bind for m in spec.mounts] == [True, False]
    assert spec.ports == {8080: 18080}
    assert spec.gpu_request == ("0", "1")
    assert spec.stop_signal == "SIGINT"
    assert spec.init is True and spec.pull == "missing" and spec.network == "bridge"
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("gpus", "want"),
    [
        (None, None),
        ("all", "all"),
        (2, 2),
        ("2", 2),
        ("device=0,2", ("0", "2")),
        (["GPU-abc"], ("GPU-abc",)),
    ],
)
def test_gpu_forms(gpus: object, want: object) -> None:
    assert ContainerSpec(image="i", gpus=gpus).gpu_request == want  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": ""}, "image"),
        ({"command": "llama-server --port 1"}, "list"),
        ({"volumes": ["models:/m"] * 1 + ["./rel:/x"]}, "absolute"),
        ({"volumes": ["/a"]}, "host:container"),
        ({"ports": {8080: 18080}}, "bridge"),
        ({"ports": {0: 1}, "network": "bridge"}, "range"),
        ({"gpus": 0}, "at least 1"),
        ({"gpus": True}, "gpus"),
        ({"gpus": "some"}, "gpus"),
        ({"gpus": []}, "empty"),
        ({"shm_size": "lots"}, "size"),
        ({"shm_size": "1g", "ipc": "host"}, "ipc"),
        ({"labels": {"swapvisor.instance": "x"}}, "reserved"),
        ({"pull": "sometimes"}, "pull"),
        ({"engine_url": "/run/docker.sock"}, "engine_url"),
        ({"engine_url": "npipe:////./pipe/docker"}, "engine_url"),
        ({"stop_signal": "SIGNOPE"}, "signal"),
        ({"name": "has space"}, "name"),
    ],
)
def test_bad_container_specs_fail_at_build_time(
    kwargs: dict[str, object], message: str
) -> None:
    kwargs = {"image": "i", **kwargs}
    with pytest.raises(ValueError, match=message):
        ContainerSpec(**kwargs)  # type: ignore[arg-type]


def test_config_hash_is_stable_and_sensitive() -> None:
    a = ContainerSpec(image="i", command=["a", "b"], env={"X": "1", "Y": "2"})
    b = ContainerSpec(image="i", command=("a", "b"), env={"Y": "2", "X": "1"})
    assert a == b and a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16
    assert (
        ContainerSpec(image="j").config_hash() != ContainerSpec(image="i").config_hash()
    )
    assert (
        ContainerSpec(image="i", gpus=1).config_hash()
        != ContainerSpec(image="i", gpus=2).config_hash()
    )


def test_sizes_and_signals() -> None:
    assert parse_bytes("16g") == 16 << 30
    assert parse_bytes("512M") == 512 << 20
    assert parse_bytes("1.5gb") == 3 << 29
    assert parse_bytes("100") == 100
    assert signal_name("term") == signal_name(15) == signal_name("SIGTERM") == "SIGTERM"


def test_names_and_labels() -> None:
    spec = ContainerSpec(image="i", labels={"team": "ml"})
    assert container_name("prod", "qwen-7b", spec) == "swapvisor-prod-qwen-7b"
    odd = container_name("prod", "org/Model:Q4_K_M", spec)
    assert odd.startswith("swapvisor-prod-org-Model-Q4_K_M-") and len(odd) == 40
    assert odd != container_name("prod", "org-Model-Q4_K_M", spec)
    assert container_name("prod", "m", ContainerSpec(image="i", name="mine")) == "mine"
    labels = ownership_labels("prod", "org/m", spec)
    assert labels == {
        "team": "ml",
        LABEL_INSTANCE: "prod",
        LABEL_MODEL: "org/m",
        LABEL_HASH: spec.config_hash(),
        LABEL_RUN: RUN_ID,
    }
    assert check_instance("host-1_a.b") == "host-1_a.b"
    for bad in ("", "-x", "a b", "x" * 64):
        with pytest.raises(ValueError, match="instance"):
            check_instance(bad)


def test_docker_create_args() -> None:
    pytest.importorskip("docker")
    from backends.docker import create_args

    spec = LaunchSpec(
        argv=("llama-server", "--port", "8080"),
        base_url="http://127.0.0.1:18080",
        env={"FROM_SPEC": "1", "BOTH": "spec"},
    )
    cspec = ContainerSpec(
        image="img",
        env={"BOTH": "container"},
        volumes=["/models:/models:ro"],
        ports={8080: 18080},
        network="bridge",
        gpus="all",
        shm_size="1g",
        ipc="private",
        user="1000:1000",
        stop_signal="SIGINT",
        extra={"cap_add": ["SYS_NICE"], "user": "0"},
    )
    args = create_args(spec, cspec, "n", {"l": "v"})
    requests = args.pop("device_requests")
    assert args == {
        "image": "img",
        "name": "n",
        "labels": {"l": "v"},
        "environment": {"FROM_SPEC": "1", "BOTH": "container"},
        "command": ["llama-server", "--port", "8080"],
        "network_mode": "bridge",
        "ports": {"8080/tcp": ("127.0.0.1", 18080)},
        "volumes": ["/models:/models:ro"],
        "shm_size": 1 << 30,
        "ipc_mode": "private",
        "user": "0",  # extra wins
        "stop_signal": "SIGINT",
        "init": True,
        "cap_add": ["SYS_NICE"],
    }
    assert [dict(r) for r in requests] == [  # type: ignore[attr-defined]
        {
            "Driver": "",
            "Count": -1,
            "DeviceIDs": [],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    host = create_args(
        LaunchSpec(argv=(), base_url="x"),
        ContainerSpec(image="img", network="mynet", init=False),
        "n",
        {},
    )
    assert host == {
        "image": "img",
        "name": "n",
        "labels": {},
        "environment": {},
        "network": "mynet",
    }


def test_podman_create_body() -> None:
    from backends.podman import cdi_devices, create_body

    spec = LaunchSpec(argv=("srv",), base_url="http://127.0.0.1:1")
    cspec = ContainerSpec(
        image="img",
        entrypoint=["/bin/sh", "-c"],
        command=["exec srv"],
        volumes=["/models:/models:ro", "cache:/cache"],
        ports={8080: 18080},
        network="mynet",
        gpus=2,
        shm_size="64m",
        ipc="shareable",
        user="1000",
        stop_signal="SIGINT",
        extra={"privileged": True},
    )
    body = create_body(spec, cspec, "n", {"l": "v"})
    assert body == {
        "name": "n",
        "image": "img",
        "labels": {"l": "v"},
        "env": {},
        "command": ["exec srv"],
        "entrypoint": ["/bin/sh", "-c"],
        "netns": {"nsmode": "bridge"},
        "networks": {"mynet": {}},
        "portmappings": [
            {
                "host_ip": "127.0.0.1",
                "host_port": 18080,
                "container_port": 8080,
                "protocol": "tcp",
            }
        ],
        "mounts": [
            {
                "type": "bind",
                "source": "/models",
                "destination": "/models",
                "options": ["ro"],
            }
        ],
        "volumes": [{"Name": "cache", "Dest": "/cache", "Options": []}],
        "devices": [{"path": "nvidia.com/gpu=0"}, {"path": "nvidia.com/gpu=1"}],
        "shm_size": 64 << 20,
        "ipcns": {"nsmode": "shareable"},
        "user": "1000",
        "stop_signal": int(signal.SIGINT),
        "init": True,
        "privileged": True,
    }
    assert create_body(spec, ContainerSpec(image="i"), "n", {})["netns"] == {
        "nsmode": "host"
    }
    assert cdi_devices("all") == ["nvidia.com/gpu=all"]
    assert cdi_devices(("GPU-1", "amd.com/gpu=0")) == [
        "nvidia.com/gpu=GPU-1",
        "amd.com/gpu=0",
    ]
    assert cdi_devices(None) == []


def test_line_splitter_and_frames() -> None:
    split = LineSplitter()
    assert split.feed(b"a\nb") == [b"a\n"]
    assert split.feed(b"c\n\nd") == [b"bc\n", b"\n"]
    assert split.flush() == b"d"
    assert split.flush() is None
    long = split.feed(b"x" * (MAX_LINE + 5) + b"\n")
    assert [len(p) for p in long] == [MAX_LINE, 6]

    frames = FrameDecoder()
    data = b"\x01\0\0\0\0\0\0\x03hi\n" + b"\x02\0\0\0\0\0\0\x04err\n"
    assert frames.feed(data[:5]) == []
    assert frames.feed(data[5:13]) == [b"hi\n"]
    assert frames.feed(data[13:]) == [b"err\n"]
    raw = FrameDecoder()  # a TTY container: no frames
    assert raw.feed(b"plain text\n") == [b"plain text\n"]
    assert raw.feed(b"more") == [b"more"]


async def test_log_feed_delivers_in_order_and_ends() -> None:
    feed = LogFeed(max_lines=3)
    feed.feed(b"1\n2\n3\n4\n")  # nobody reading: the oldest is dropped
    feed.feed(b"tail")
    feed.close()
    assert [line async for line in feed.lines()] == [b"3\n", b"4\n", b"tail"]


def test_exit_info_for_killed_containers() -> None:
    assert exit_info(137, forced=True).describe() == "killed by signal 9"
    assert exit_info(137, forced=False).describe() == "exit code 137"
    assert exit_info(0, forced=False).code == 0


def test_registry_loads_lazily_and_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backends.registry import load_backend

    mock = load_backend("mock", instance="x")
    assert mock.kind == "mock"
    assert isinstance(mock, SupportsOrphanCleanup)
    native = load_backend("native")
    assert native.kind == "native" and not isinstance(native, SupportsOrphanCleanup)
    with pytest.raises(BackendError, match="unknown backend 'k8s'.*docker, mock"):
        load_backend("k8s")
    # Without the Docker SDK: the error says what to install.
    monkeypatch.delitem(sys.modules, "backends.docker", raising=False)
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(BackendNotInstalled, match=r"pip install 'swapvisor\[docker\]'"):
        load_backend("docker", instance="x")
