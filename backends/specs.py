"""What to run, for the container and mock backends: ``ContainerSpec`` and ``MockSpec``.

Plain frozen dataclasses with no pydantic and no engine SDK, so the config layer
can build them and every backend can read them; ``LaunchSpec`` carries them.
Values are checked and normalised when a spec is built (lists become tuples,
``"host:ctr:ro"`` strings become ``VolumeMount``), so a bad spec fails at
config time with a message rather than inside an engine call.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import ClassVar, Literal, get_args

PullPolicy = Literal["missing", "always", "never"]
PULL_POLICIES: tuple[str, ...] = get_args(PullPolicy)
ENGINE_SCHEMES = ("unix", "tcp", "ssh", "http", "https")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"16g"`` → bytes, as ``docker run --shm-size`` reads it (powers of 1024)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512m, 16g)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def signal_name(value: str | int) -> str:
    """``"TERM"``, ``"sigterm"``, ``15`` or ``"15"`` → ``"SIGTERM"``."""
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text)).name
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text].name
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal: {value!r}") from None


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """One mount: a host path (absolute) or a named volume, at ``target``."""

    source: str
    target: str
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.source or not self.target.startswith("/"):
            raise ValueError(
                f"volume {self.source}:{self.target}: the container path must be "
                "absolute and the source non-empty"
            )
        if self.source.startswith("."):
            raise ValueError(
                f"volume {self.source}:{self.target}: the host path must be absolute"
            )

    @property
    def is_bind(self) -> bool:
        """A host path (bind mount) rather than a named volume."""
        return self.source.startswith("/")

    @classmethod
    def parse(cls, text: str) -> VolumeMount:
        """``"host:container"``, ``"host:container:ro"`` or ``"...:rw"``."""
        parts = text.split(":")
        read_only = False
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            read_only = parts[2] == "ro"
            parts = parts[:2]
        if len(parts) != 2:
            raise ValueError(f"volume {text!r}: expected host:container[:ro]")
        return cls(source=parts[0], target=parts[1], read_only=read_only)

    def as_text(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One model server as a container.

    ``command`` is the container's command (Docker's ``Cmd``); empty means
    ``LaunchSpec.argv``, and when that is empty too, the image's own CMD.
    ``ports`` maps container port → host port, always published on 127.0.0.1,
    and needs a network other than ``"host"``. ``gpus`` is ``None``, ``"all"``,
    a count, or device ids (indices or UUIDs; a full CDI name such as
    ``nvidia.com/gpu=0`` passes through to podman unchanged). ``extra`` is
    passed as is to the engine's create call (Docker SDK ``containers.create``
    keyword arguments, or libpod create-body keys), and wins over everything
    else. ``engine_url`` ``None`` means the backend's default engine.
    ``init`` runs a minimal init as PID 1 (``docker run --init``): a server
    that is PID 1 ignores SIGTERM until it installs a handler, so a stop
    early in its start would wait out the whole grace; the init also reaps
    the zombies of servers that fork.
    """

    image: str
    command: Sequence[str] = ()
    entrypoint: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: Sequence[str | VolumeMount] = ()
    ports: Mapping[int, int] = field(default_factory=dict)
    network: str = "host"
    gpus: str | int | Sequence[str] | None = None
    shm_size: str | None = None
    ipc: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)
    pull: PullPolicy = "missing"
    engine_url: str | None = None
    stop_signal: str | None = None
    name: str | None = None
    init: bool = True

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__, once, at build time.
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not self.image or not self.image.strip():
            raise ValueError("container image must not be empty")
        if isinstance(self.command, str) or isinstance(self.entrypoint, str):
            raise ValueError("command and entrypoint are lists of arguments")
        put("command", tuple(str(a) for a in self.command))
        if self.entrypoint is not None:
            put("entrypoint", tuple(str(a) for a in self.entrypoint))
        put("env", MappingProxyType({str(k): str(v) for k, v in self.env.items()}))
        if isinstance(self.volumes, str):
            raise ValueError("volumes is a list of host:container[:ro] strings")
        put(
            "volumes",
            tuple(
                v if isinstance(v, VolumeMount) else VolumeMount.parse(v)
                for v in self.volumes
            ),
        )
        ports = {int(c): int(h) for c, h in self.ports.items()}
        if any(not 0 < p < 65536 for p in (*ports, *ports.values())):
            raise ValueError(f"ports out of range: {ports}")
        if ports and self.network == "host":
            raise ValueError(
                "ports need a bridge or named network; with network 'host' the "
                "server binds the host's port directly"
            )
        put("ports", MappingProxyType(ports))
        put("gpus", _normalise_gpus(self.gpus))
        if self.shm_size is not None:
            parse_bytes(self.shm_size)
            if self.ipc == "host":
                raise ValueError("shm_size cannot be set with ipc 'host'")
        reserved = [k for k in self.labels if k.startswith("swapvisor.")]
        if reserved:
            raise ValueError(f"labels {reserved} are reserved for swapvisor")
        put(
            "labels", MappingProxyType({str(k): str(v) for k, v in self.labels.items()})
        )
        put("extra", MappingProxyType(dict(self.extra)))
        if self.pull not in PULL_POLICIES:
            raise ValueError(f"pull must be one of {PULL_POLICIES}, not {self.pull!r}")
        if self.engine_url is not None:
            scheme = self.engine_url.partition("://")[0]
            if "://" not in self.engine_url or scheme not in ENGINE_SCHEMES:
                raise ValueError(
                    f"engine_url {self.engine_url!r}: expected one of "
                    + ", ".join(f"{s}://" for s in ENGINE_SCHEMES)
                )
        if self.stop_signal is not None:
            put("stop_signal", signal_name(self.stop_signal))
        if self.name is not None and not _NAME_RE.match(self.name):
            raise ValueError(f"container name {self.name!r}: use [a-zA-Z0-9_.-]")

    @property
    def mounts(self) -> tuple[VolumeMount, ...]:
        return tuple(
            v if isinstance(v, VolumeMount) else VolumeMount.parse(v)
            for v in self.volumes
        )

    @property
    def gpu_request(self) -> Literal["all"] | int | tuple[str, ...] | None:
        """``gpus`` as normalised at build time."""
        return _normalise_gpus(self.gpus)

    def config_hash(self) -> str:
        """A stable digest of every field: the ``swapvisor.config-hash`` label.

        Equal specs hash equal across processes, so a container found on the
        engine can be matched to the config that made it.
        """
        doc: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {str(k): value[k] for k in sorted(value, key=str)}
            elif isinstance(value, tuple):
                value = [
                    v.as_text() if isinstance(v, VolumeMount) else v for v in value
                ]
            doc[f.name] = value
        raw = json.dumps(doc, sort_keys=True, default=repr).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def _normalise_gpus(
    value: str | int | Sequence[str] | None,
) -> Literal["all"] | int | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("gpus: use 'all', a count or a list of device ids")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("gpus: a count must be at least 1 (or leave it unset)")
        return value
    if isinstance(value, str):
        if value == "all":
            return "all"
        if value.isdigit():  # as `docker run --gpus 2`: a count
            return _normalise_gpus(int(value))
        if value.startswith("device="):  # as `docker run --gpus device=0,1`
            return _normalise_gpus(value.removeprefix("device=").split(","))
        raise ValueError(f"gpus: {value!r} (expected 'all', a count or a list of ids)")
    ids = tuple(str(v) for v in value)
    if not ids or any(not i for i in ids):
        raise ValueError("gpus: the list of device ids must not be empty")
    return ids


@dataclass(frozen=True, slots=True)
class MockSpec:
    """How the mock backend's simulated server behaves (``models.<id>.mock``).

    ``healthFailures``: failing ``/health`` probes before it is ready (-1:
    never ready). ``crashAfterRequests``: it exits with ``exitCode`` once it
    has answered that many inference requests. ``startupExit``: it exits with
    ``exitCode`` right after launch, before listening. ``ignoreStop``: like a
    server ignoring SIGTERM, stop waits the whole grace and then kills it.
    ``startDelay``, ``stopDelay``, ``chunkDelay``: seconds before it listens,
    that a graceful shutdown takes, between streamed chunks. ``memory``: the
    host memory its footprint reports while it runs (bytes, or a size such as
    ``2GiB``), so memory-aware scheduling can be tried without real servers;
    unset, the footprint's memory is unknown.
    """

    # The config block ``models.<id>.mock`` is this dataclass, validated by
    # pydantic in the config layer under these key spellings (``startDelay``,
    # ``healthFailures``...): one definition of the mock's settings.
    __pydantic_config__: ClassVar[dict[str, object]] = {
        "alias_generator": lambda name: _camel(name.removesuffix("_s")),
        "populate_by_name": True,
        "extra": "forbid",
    }

    start_delay_s: float = 0.0
    health_failures: int = 0
    crash_after_requests: int | None = None
    exit_code: int = 1
    startup_exit: bool = False
    reply: str = "Hello from the swapvisor mock."
    ignore_stop: bool = False
    stop_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    memory: int | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.memory, bool) or (
            self.memory is not None and (self.memory_bytes or 0) < 0  # parses it
        ):
            raise ValueError("memory: bytes, or a size such as 2GiB")
        if self.start_delay_s < 0 or self.stop_delay_s < 0 or self.chunk_delay_s < 0:
            raise ValueError("mock delays must not be negative")
        if self.health_failures < -1:
            raise ValueError("health_failures: a count, or -1 for never ready")
        if self.crash_after_requests is not None and self.crash_after_requests < 1:
            raise ValueError("crash_after_requests must be at least 1")

    @property
    def memory_bytes(self) -> int | None:
        """``memory`` in bytes (sizes in powers of 1024), None when unset."""
        if self.memory is None or isinstance(self.memory, int):
            return self.memory
        return parse_bytes(self.memory)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)
