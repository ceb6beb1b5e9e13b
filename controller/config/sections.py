"""Typed config sections below the top level: filters, capabilities, timeouts,
routing, peers, profiles, selectors, hooks (llama-swap.md §1.2–§1.10).

Each section checks only itself; rules that span sections (group members
exist, names do not collide) live in ``controller.crosscheck``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from backends.specs import ContainerSpec, parse_bytes
from controller.config.rules import check_every, validate_store_path

# llama-swap's default for upstream.ignorePaths (static assets never load a model).
DEFAULT_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)


class Worded(ValueError):
    """A validation message worded as llama-swap words it.

    ``controller.config`` places it: ``at="path"`` follows the YAML path after
    a space (``selectors.s.strategy is required``), ``at="model"`` follows
    ``model <id>: `` (``model m: invalid TTL value -2``), and ``at=""`` is the
    whole message. Any other ValueError is shown as ``<path>: <message>``.
    """

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.at = at


class Section(BaseModel):
    """Base of every config section: camelCase keys, unknown keys kept for
    warnings, numbers accepted where text is expected (yaml.v3 reads ``name:
    7`` into a string field).

    A YAML null means "not set", as it does for llama-swap's Go structs (a nil
    map, slice or pointer; a scalar keeps its default): a key whose value is
    null is dropped when the field has a default, and a section given as null
    is an empty one (``profiles: {p: }`` is a profile without pins).
    """

    model_config = ConfigDict(
        extra="allow",
        alias_generator=to_camel,
        frozen=True,
        coerce_numbers_to_str=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            return data
        optional = {
            key
            for name, info in cls.model_fields.items()
            if not info.is_required()
            for key in (name, info.alias)
        }
        return {k: v for k, v in data.items() if v is not None or k not in optional}


class Filters(Section):
    strip_params: str = ""
    set_params: dict[str, Any] = Field(default_factory=dict)
    set_params_by_id: dict[str, dict[str, Any]] = Field(
        default_factory=dict, alias="setParamsByID"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_strip_params(cls, data: Any) -> Any:
        # The legacy spelling strip_params counts when stripParams is empty.
        if isinstance(data, dict) and "strip_params" in data:
            data = dict(data)
            legacy = data.pop("strip_params")
            data["stripParams"] = data.get("stripParams") or legacy
        by_id = data.get("setParamsByID") if isinstance(data, dict) else None
        if isinstance(by_id, dict) and None in by_id.values():
            # An id with nothing under it sets nothing (a nil map in Go).
            by_id = {k: {} if v is None else v for k, v in by_id.items()}
            data = {**data, "setParamsByID": by_id}
        return data

    def strip(self) -> tuple[str, ...]:
        return _strip_keys(self.strip_params)

    @property
    def active(self) -> bool:
        return bool(self.strip() or self.set_params or self.set_params_by_id)


@functools.lru_cache(maxsize=64)
def _strip_keys(strip_params: str) -> tuple[str, ...]:
    # Asked on every proxied request: parsed once per distinct setting.
    keys = {k.strip() for k in strip_params.split(",")} - {"", "model"}
    return tuple(sorted(keys))


class Capabilities(Section):
    in_: list[str] = Field(default_factory=list, alias="in")
    out: list[str] = Field(default_factory=list)
    tools: bool = False
    reranker: bool = False
    context: int = 0

    @field_validator("in_", "out")
    @classmethod
    def _modalities(cls, v: list[str], info: ValidationInfo) -> list[str]:
        key = "in" if info.field_name == "in_" else "out"
        for item in v:
            if item not in ("text", "audio", "image"):
                raise Worded(
                    f'capabilities.{key}: invalid modality "{item}", '
                    "must be one of: text, audio, image",
                    at="model",
                )
        return v

    @field_validator("context")
    @classmethod
    def _context(cls, v: int) -> int:
        if v < 0:
            raise Worded("capabilities.context: must be >= 0", at="model")
        return v

    @property
    def configured(self) -> bool:
        return bool(self.in_ or self.out or self.tools or self.reranker or self.context)


class Timeouts(Section):
    """Upstream HTTP timeouts in seconds; 0 means none."""

    connect: int = 30
    keepalive: int = 30
    response_header: int = 0
    tls_handshake: int = 10
    expect_continue: int = 1
    idle_conn: int = 90


class Compat(Section):
    ignore_websockets: bool = False


_CALL = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) /\S*$")


class SleepBlock(Section):
    """``sleep:`` as a mapping: ``{mode: vllm, level: 1|2}``, or the server's
    own endpoints ``{sleep: "POST /path", wake: "POST /path", check: "GET
    /path"}`` (swapvisor extension; the string ``vllm`` is ``{mode: vllm}``)."""

    mode: str = ""
    level: int = 1
    sleep: str = ""
    wake: str = ""
    check: str = ""

    @model_validator(mode="after")
    def _shape(self) -> SleepBlock:
        if self.mode not in ("", "vllm"):
            raise ValueError(f"sleep.mode: unknown mode {self.mode!r} (valid: vllm)")
        if self.level not in (1, 2):
            raise ValueError(f"sleep.level must be 1 or 2, got {self.level}")
        if self.mode:
            return self
        if not self.sleep or not self.wake:
            raise ValueError("sleep: give mode: vllm, or both sleep and wake calls")
        for key in ("sleep", "wake", "check"):
            value = getattr(self, key)
            if value and not _CALL.match(value.strip()):
                raise ValueError(
                    f'sleep.{key}: expected "METHOD /path" (e.g. "POST /sleep"), '
                    f"got {value!r}"
                )
        return self


def slot_root(configured: str) -> Path:
    """The slot cache directory: ``slotCache.dir``, else the user's cache."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "swapvisor" / "slots"


def slot_dir_name(model_id: str) -> str:
    """A model's directory under the slot cache (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_id).lstrip(".") or "_"


class SlotCache(Section):
    """``slotCache``: where ``keepSlots`` models' KV cache files live and how
    much disk they may take (oldest evicted first). swapvisor extension."""

    dir: str = ""  # default: <user cache dir>/swapvisor/slots
    max_size: str | int = "20GiB"

    @field_validator("max_size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        if parse_bytes(str(v)) <= 0:
            raise ValueError(f"must be a size above zero, got {v!r}")
        return v

    def directory(self) -> Path:
        return slot_root(self.dir)

    def max_bytes(self) -> int:
        return parse_bytes(str(self.max_size))


class CrashLoop(Section):
    """``crashLoop``: after ``failures`` failed starts in a row a model is
    quarantined for ``backoff`` seconds, doubling with each further failure
    up to 300 s (swapvisor extension)."""

    failures: int = 3
    backoff: float = 5.0

    @field_validator("failures")
    @classmethod
    def _failures(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0 (0 turns quarantine off)")
        return v

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0 seconds, got {v}")
        return v


class GroupConfig(Section):
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False
    # Checked against the models (and for duplicates) in controller.crosscheck,
    # for the active engine only, as llama-swap does.
    members: list[str] = Field(default_factory=list)


class MatrixConfig(Section):
    vars: dict[str, str] = Field(default_factory=dict)
    evict_costs: dict[str, int] = Field(default_factory=dict, alias="evict_costs")
    sets: dict[str, str] = Field(default_factory=dict)


def _size(value: object, what: str) -> int:
    """A byte size: an integer, or text such as ``12GiB``, ``800MiB``, ``1g``."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: not a size: {value!r}")
    if isinstance(value, int):
        size = value
    else:
        size = parse_bytes(str(value))
    if size < 0:
        raise ValueError(f"{what}: must not be negative")
    return size


class Needs(Section):
    """``models.<id>.needs``: what a model holds, declared (swapvisor extension).

    ``vram`` is the accelerator memory it needs in all (split over its
    devices), ``ram`` the host memory. Unset: learned from measurement.
    """

    vram: int | None = None
    ram: int | None = None

    @field_validator("vram", "ram", mode="before")
    @classmethod
    def _bytes(cls, v: object, info: ValidationInfo) -> int | None:
        return None if v is None else _size(v, str(info.field_name))


class GpuBudget(Section):
    """One GPU the resources engine may fill, and how much of it."""

    index: int = Field(validate_default=True, default=-1)
    memory: int = Field(validate_default=True, default=-1)

    @field_validator("index")
    @classmethod
    def _index(cls, v: int) -> int:
        if v < 0:
            raise ValueError("index is required (a GPU index >= 0)")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int:
        if v == -1:
            raise ValueError("memory is required (e.g. 24GiB)")
        return _size(v, "memory")


class Reserve(Section):
    """Memory the resources engine never plans to use: ``vram`` per GPU."""

    vram: int = 0
    ram: int = 0

    @field_validator("vram", "ram", mode="before")
    @classmethod
    def _bytes(cls, v: object, info: ValidationInfo) -> int:
        return _size(v, str(info.field_name))


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class ResourcesConfig(Section):
    """``routing.router.settings.resources`` (swapvisor's memory engine).

    ``gpus: auto`` takes every GPU NVML reports, at its full memory; a list
    names the GPUs and their memory. ``ram`` is bytes or a percentage of the
    host's memory.
    """

    gpus: str | list[GpuBudget] = "auto"
    ram: str | int = "80%"
    reserve: Reserve = Field(default_factory=Reserve)
    # Where learned figures are kept across restarts (default: beside the
    # slot cache, <user cache dir>/swapvisor/learned-memory.json).
    learned_file: str = ""

    def learned_path(self) -> Path:
        if self.learned_file:
            return Path(self.learned_file).expanduser()
        return slot_root("").parent / "learned-memory.json"

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: object) -> str | list[GpuBudget]:
        # One message for either shape (a plain union reports both failures).
        if isinstance(v, str) and v.strip() == "auto":
            return "auto"
        if not isinstance(v, list):
            raise ValueError(
                f'must be "auto" or a list of {{index, memory}}, got {v!r}'
            )
        out = []
        for i, item in enumerate(v):
            try:
                out.append(GpuBudget.model_validate(item))
            except ValidationError as exc:
                msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
                raise ValueError(f"[{i}]: {msg}") from None
        indices = [g.index for g in out]
        if len(set(indices)) != len(indices):
            raise ValueError(f"GPU indices must be unique, got {indices}")
        return out

    @field_validator("ram")
    @classmethod
    def _ram(cls, v: str | int) -> str | int:
        ram_fraction_or_bytes(v)
        return v


def ram_fraction_or_bytes(value: str | int) -> tuple[float | None, int | None]:
    """``"80%"`` → (0.8, None); ``"12GiB"`` or 12884901888 → (None, bytes)."""
    if isinstance(value, str) and (m := _PERCENT.match(value)):
        fraction = float(m.group(1)) / 100
        if not 0 < fraction <= 1:
            raise ValueError(f"a percentage must be in (0%, 100%], got {value}")
        return fraction, None
    return None, _size(value, "ram")


class RouterSettings(Section):
    groups: dict[str, GroupConfig] = Field(default_factory=dict)
    matrix: MatrixConfig | None = None
    resources: ResourcesConfig | None = None


class RouterBlock(Section):
    use: str = ""
    settings: RouterSettings = Field(default_factory=RouterSettings)


class FifoSettings(Section):
    priority: dict[str, int] = Field(default_factory=dict)
    # swapvisor: a request queued this long stops new grants to the models
    # blocking it, so its swap happens once they drain (0: no bound).
    max_wait: float = 30.0
    # swapvisor: a model just made ready is not evicted for this long.
    min_residency: float = 0.0

    @field_validator("max_wait", "min_residency")
    @classmethod
    def _seconds(cls, v: float, info: ValidationInfo) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0 seconds, got {v}")
        return v


class SchedulerSettings(Section):
    fifo: FifoSettings = Field(default_factory=FifoSettings)


class SchedulerBlock(Section):
    use: str = "fifo"
    settings: SchedulerSettings = Field(default_factory=SchedulerSettings)

    @field_validator("use")
    @classmethod
    def _fifo(cls, v: str) -> str:
        if v.strip() not in ("", "fifo"):
            raise ValueError(f'unknown scheduler "{v}" (valid: fifo)')
        return "fifo"


class Routing(Section):
    router: RouterBlock = Field(default_factory=RouterBlock)
    scheduler: SchedulerBlock = Field(default_factory=SchedulerBlock)


class PeerConfig(Section):
    # validate_default: a missing key is as wrong as an empty one.
    proxy: str = Field("", validate_default=True)
    api_key: str = ""
    models: list[str] = Field(default_factory=list, validate_default=True)
    filters: Filters = Field(default_factory=Filters)
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts(responseHeader=60))

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("proxy is required")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                f"invalid peer proxy URL ({v}): must be http(s)://host[:port]"
            )
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("peer models can not be empty")
        return v


class ProfileConfig(Section):
    description: str = Field("", max_length=1024)
    pins: dict[str, str | None] = Field(default_factory=dict)


class SpilloverSettings(Section):
    spillover: int = 1

    @field_validator("spillover")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise Worded("must be >= 1", at="path")
        return v


class SelectorConfig(Section):
    strategy: str = Field("", validate_default=True)
    targets: list[str] = Field(default_factory=list, validate_default=True)
    settings: SpilloverSettings = Field(default_factory=SpilloverSettings)
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if not v.strip():
            raise Worded("is required", at="path")
        if v not in ("warm", "pin", "spillover"):
            raise ValueError(f'unknown strategy "{v}" (valid: warm, pin, spillover)')
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise Worded("must contain at least one entry", at="path")
        return v


class OnStartup(Section):
    preload: list[str] = Field(default_factory=list)


class Hooks(Section):
    on_startup: OnStartup = Field(default_factory=OnStartup, alias="on_startup")


class UpstreamSettings(Section):
    ignore_paths: list[str] = Field(default_factory=list)

    @field_validator("ignore_paths")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f'invalid regular expression "{pattern}": {exc}'
                ) from exc
        return v

    def patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in (self.ignore_paths or DEFAULT_IGNORE_PATHS))


class StoreSettings(Section):
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_store_path(v)
            except ValueError as exc:
                raise Worded(str(exc)) from None
        return v


class UiActivity(Section):
    session_id: list[str] = Field(
        default_factory=lambda: ["X-Session-ID", "X-Litellm-Session-Id"],
        alias="session_id",
    )

    @field_validator("session_id")
    @classmethod
    def _normalise(cls, v: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for name in (n.strip() for n in v):
            if name and name.lower() not in seen:
                seen[name.lower()] = name
        return list(seen.values())


class UiSettings(Section):
    activity: UiActivity = Field(default_factory=UiActivity)


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")


def go_duration_s(text: str) -> float:
    """Seconds in a Go duration string such as ``5s``, ``1m30s`` or ``500ms``."""
    if not _DURATION.match(text.strip()):
        raise ValueError(f'invalid duration "{text}"')
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(
        float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    )


class PerformanceSettings(Section):
    disabled: bool = False
    every: str = "5s"

    @field_validator("every")
    @classmethod
    def _every(cls, v: str) -> str:
        try:
            check_every(go_duration_s(v))
        except ValueError as exc:
            raise Worded(
                f"performance: {exc}".replace(
                    "performance: performance: ", "performance: "
                )
            ) from None
        return v

    @property
    def every_s(self) -> float:
        return go_duration_s(self.every)


class ContainerBlock(Section):
    """``models.<id>.docker`` / ``.podman``: the model as a container the
    engine's API owns (swapvisor's extension of llama-swap's config)."""

    image: str
    # Numbers allowed: a lone ${PORT} macro substitutes as an integer.
    command: list[str | int | float] = Field(default_factory=list)
    entrypoint: list[str | int | float] | None = None
    env: dict[str, str | int | float | bool] | list[str] = Field(default_factory=dict)
    volumes: list[str] = Field(default_factory=list)
    ports: dict[int, int] = Field(default_factory=dict)
    network: str = "host"
    gpus: str | int | list[str | int] | None = None
    shm_size: str | None = None
    ipc: str | None = None
    user: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    pull: str = "missing"
    engine: str | None = None
    stop_signal: str | None = None
    name: str | None = None
    init: bool = True

    @model_validator(mode="after")
    def _buildable(self) -> ContainerBlock:
        self.spec()  # raises ValueError naming the problem
        return self

    def spec(self) -> ContainerSpec:
        env = (
            {k: str(v) for k, v in self.env.items()}
            if isinstance(self.env, dict)
            else {k: v for k, _, v in (item.partition("=") for item in self.env)}
        )
        gpus: str | int | list[str] | None = (
            [str(g) for g in self.gpus] if isinstance(self.gpus, list) else self.gpus
        )
        if self.pull not in ("missing", "always", "never"):
            raise ValueError(
                f'pull must be one of missing, always, never, got "{self.pull}"'
            )
        return ContainerSpec(
            image=self.image,
            command=[str(a) for a in self.command],
            entrypoint=None
            if self.entrypoint is None
            else [str(a) for a in self.entrypoint],
            env=env,
            volumes=self.volumes,
            ports=self.ports,
            network=self.network,
            gpus=gpus,
            shm_size=self.shm_size,
            ipc=self.ipc,
            user=self.user,
            labels=self.labels,
            extra=self.extra,
            pull=self.pull,  # type: ignore[arg-type]
            engine_url=self.engine,
            stop_signal=self.stop_signal,
            name=self.name,
            init=self.init,
        )
