"""The configuration's shape: llama-swap's ``config.yaml`` as typed pydantic
models (``Config``, ``ModelConfig``), their per-field validation, and the
derived views the engine reads (``resolve``, ``routing_engine``, ``ttl_s``,
``launch_spec``...). Reading and expanding a file is ``controller.config.loader``;
rules spanning sections are ``controller.config.crosscheck``.
"""

from __future__ import annotations

import logging
import shlex
import urllib.parse
from functools import cached_property
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from backends.base import LaunchSpec
from backends.specs import MockSpec
from controller.config.macros import (
    strip_cmd_comments,
)
from controller.config.sections import (
    Capabilities,
    Compat,
    ContainerBlock,
    CrashLoop,
    Filters,
    GroupConfig,
    Hooks,
    MatrixConfig,
    Needs,
    PeerConfig,
    PerformanceSettings,
    ProfileConfig,
    ResourcesConfig,
    Routing,
    Section,
    SelectorConfig,
    SleepBlock,
    SlotCache,
    StoreSettings,
    Timeouts,
    UiSettings,
    UpstreamSettings,
    Worded,
)

log = logging.getLogger("swapvisor.config")

DEFAULT_CONCURRENCY_LIMIT = 10
COMFYUI_MODEL = "comfyui_auto"
MIN_HEALTH_CHECK_TIMEOUT = 15
# llama-swap's default is http://localhost:${PORT}; 127.0.0.1 avoids a wasted
# IPv6 connect attempt per request when the server binds IPv4 only.
DEFAULT_PROXY = "http://127.0.0.1:${PORT}"
# The ports ${PORT} handed out: model id -> (the model's launch settings before
# ${PORT} was put in, as text; the port). A reload keeps a model's port while
# those settings are unchanged, so adding a model does not move the others.
PortPlan = dict[str, tuple[str, int]]

# llama-swap keys that later swapvisor work implements; accepted with a warning
# that says they are not applied yet (rather than an "unknown key" warning).
NOT_YET_TOP_KEYS: frozenset[str] = frozenset()


def _seconds(v: float, zero_means: str) -> float:
    """A duration in seconds where 0 has a meaning and negatives have none."""
    if v < 0:
        raise ValueError(f"must be >= 0 seconds ({zero_means}), got {v}")
    return v


def _above_zero(v: float | None) -> float | None:
    if v is not None and v <= 0:
        raise ValueError(f"must be > 0, got {v}")
    return v


class ModelConfig(Section):
    """``models.<id>`` (llama-swap.md §1.3)."""

    cmd: str = ""
    cmd_stop: str = ""
    proxy: str = DEFAULT_PROXY
    check_endpoint: str = "/health"
    ttl: int = -1
    unload_timeout: int = 0
    env: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    use_model_name: str = ""
    name: str = ""
    description: str = ""
    unlisted: bool = False
    concurrency_limit: int = 0
    macros: dict[str, Any] = Field(default_factory=dict)
    send_loading_state: bool | None = None
    filters: Filters = Field(default_factory=Filters)
    metadata: dict[str, Any] = Field(default_factory=dict)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    compat: Compat = Field(default_factory=Compat)
    # swapvisor extension: a per-model start deadline in seconds, with no 15 s
    # floor, so a small model that hangs fails fast.
    health_check_timeout: float | None = None
    # swapvisor extensions, overriding the top-level settings of the same name.
    liveness_interval: float | None = None
    crash_loop: CrashLoop | None = None
    max_start_time: float | None = None
    # Save llama.cpp KV slots before a stop, restore them on the next start.
    keep_slots: bool = False
    # Put the server to sleep instead of stopping it when a swap evicts it.
    sleep: str | SleepBlock | None = None
    sleep_ttl: float = Field(0.0, alias="sleepTTL")  # asleep this long: stop
    # swapvisor extensions: run the model through a container engine's API, or
    # simulate it in-process (at most one of the three).
    docker: ContainerBlock | None = None
    podman: ContainerBlock | None = None
    mock: MockSpec | None = None
    # The resources engine: what the model holds (else learned) and the GPUs
    # it must run on (else placed where there is room).
    needs: Needs | None = None
    gpus: list[int] | None = None

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or any(i < 0 for i in v) or len(set(v)) != len(v):
                raise ValueError(
                    f"must be a non-empty list of distinct GPU indices, got {v}"
                )
        return v

    @model_validator(mode="after")
    def _one_backend(self) -> ModelConfig:
        chosen = [k for k in ("docker", "podman", "mock") if getattr(self, k)]
        if len(chosen) > 1:
            raise ValueError(f"choose one of docker, podman or mock, not {chosen}")
        if self.podman is not None and (self.podman.engine or "").startswith("ssh://"):
            raise ValueError(
                "podman.engine: ssh:// is not supported for Podman; "
                "use unix:// or tcp:// (the Docker backend takes ssh://)"
            )
        return self

    @property
    def backend_kind(self) -> str:
        for kind in ("docker", "podman", "mock"):
            if getattr(self, kind) is not None:
                return kind
        return "native"

    @property
    def engine_url(self) -> str | None:
        block = self.docker or self.podman
        return block.engine if block is not None else None

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: int) -> int:
        if v < -1:
            raise Worded(f"invalid TTL value {v}", at="model")
        return v

    @field_validator("unload_timeout")
    @classmethod
    def _unload_timeout(cls, v: int) -> int:
        if v < 0:
            raise Worded(f"invalid unloadTimeout value {v}", at="model")
        return v

    @field_validator("concurrency_limit")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        try:
            _ = urllib.parse.urlsplit(v).port  # checks brackets and the port
        except ValueError as exc:
            raise Worded(f"invalid proxy URL: {exc}", at="model") from exc
        return v

    @field_validator("sleep")
    @classmethod
    def _sleep(cls, v: str | SleepBlock | None) -> str | SleepBlock | None:
        if isinstance(v, str) and v != "vllm":
            raise ValueError(f"unknown sleep mode {v!r} (valid: vllm, or a mapping)")
        return v

    @field_validator("sleep_ttl")
    @classmethod
    def _sleep_ttl(cls, v: float) -> float:
        return _seconds(v, "0: never stopped")

    @field_validator("liveness_interval")
    @classmethod
    def _liveness(cls, v: float | None) -> float | None:
        return None if v is None else _seconds(v, "0 turns it off")

    @field_validator("health_check_timeout", "max_start_time")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        return _above_zero(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            if "=" not in item or not item.split("=", 1)[0]:
                raise ValueError(f"env[{i}] {item!r} must look like NAME=value")
        return v

    @field_validator("cmd", "cmd_stop")
    @classmethod
    def _splittable(cls, v: str) -> str:
        split_command(v)  # raises ValueError naming the problem
        return v

    def argv(self) -> tuple[str, ...]:
        return split_command(self.cmd)

    def env_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.env)


class Config(Section):
    """The whole file (llama-swap.md §1.2)."""

    models: dict[str, ModelConfig] = Field(default_factory=dict)
    _port_plan: PortPlan = PrivateAttr(default_factory=dict)
    health_check_timeout: int = 120
    start_port: int = 5800
    global_ttl: int = Field(0, alias="globalTTL")
    unload_timeout: int = 10
    log_level: str = "info"
    macros: dict[str, Any] = Field(default_factory=dict)
    api_keys: list[str] = Field(default_factory=list)
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    hooks: Hooks = Field(default_factory=Hooks)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    routing: Routing = Field(default_factory=Routing)
    groups: dict[str, GroupConfig] = Field(default_factory=dict)  # legacy spelling
    matrix: MatrixConfig | None = None  # legacy spelling
    peers: dict[str, PeerConfig] = Field(default_factory=dict)
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    selectors: dict[str, SelectorConfig] = Field(default_factory=dict)
    log_to_stdout: str = "proxy"
    log_time_format: str = ""
    log_requests: bool = False  # deprecated in llama-swap; accepted, ignored
    metrics_max_in_memory: int = 1000
    capture_buffer: int = 5  # MB; 0 disables captures
    store: StoreSettings = Field(default_factory=StoreSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    # swapvisor extensions (each also per model): probe a ready, idle model
    # this often (seconds; 0: off); quarantine a model that keeps failing to
    # start; a start that keeps logging may run up to maxStartTime (default
    # 4 x healthCheckTimeout), the deadline counting from its last log line.
    liveness_interval: float = 10.0
    crash_loop: CrashLoop = Field(default_factory=CrashLoop)
    max_start_time: float | None = None
    slot_cache: SlotCache = Field(default_factory=SlotCache)

    @field_validator("log_to_stdout")
    @classmethod
    def _log_to_stdout(cls, v: str) -> str:
        if v not in ("proxy", "upstream", "both", "none"):
            raise Worded("logToStdout must be one of: proxy, upstream, both, none")
        return v

    @field_validator("metrics_max_in_memory")
    @classmethod
    def _max_in_memory(cls, v: int) -> int:
        return v if v > 0 else 1000

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles_shape(cls, v: Any) -> Any:
        for name, profile in (v or {}).items():
            if not str(name).strip():
                raise ValueError("profile names cannot be empty")
            if isinstance(profile, list):
                raise Worded(
                    f"profiles.{name}: profile must be a mapping with description "
                    "and pins; the legacy list syntax is no longer supported"
                )
        return v

    @field_validator("store", mode="before")
    @classmethod
    def _store_has_path(cls, v: Any) -> Any:
        # llama-swap checks a store block that is present: a path is required.
        if isinstance(v, dict) and v.get("path") is None:
            raise Worded("store.path must not be empty")
        return v

    @field_validator("liveness_interval")
    @classmethod
    def _liveness(cls, v: float) -> float:
        return _seconds(v, "0 turns it off")

    @field_validator("max_start_time")
    @classmethod
    def _max_start(cls, v: float | None) -> float | None:
        return _above_zero(v)

    @field_validator("global_ttl")
    @classmethod
    def _global_ttl(cls, v: int) -> int:
        if v < 0:
            raise Worded("must be >= 0", at="path")
        return v

    @field_validator("unload_timeout")
    @classmethod
    def _unload_timeout(cls, v: int) -> int:
        if v < 0:
            raise Worded("must be >= 0", at="path")
        return v or 10

    @field_validator("start_port")
    @classmethod
    def _start_port(cls, v: int) -> int:
        if v < 1:
            raise Worded("must be greater than 1", at="path")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        v = v.strip().lower()
        return v if v in ("debug", "info", "warn", "error") else "info"

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: list[str]) -> list[str]:
        for i, key in enumerate(v):
            if not key:
                raise Worded("empty api key found in apiKeys")
            if any(c.isspace() for c in key):
                raise Worded(f"apiKeys[{i}]: api key cannot contain spaces")
        return v

    # -- derived views -------------------------------------------------------

    @property
    def port_plan(self) -> PortPlan:
        return dict(self._port_plan)

    def remember_ports(self, plan: PortPlan) -> None:
        """Record the ports the loader handed out (see ``PortPlan``)."""
        self._port_plan = dict(plan)

    @property
    def health_deadline_s(self) -> float:
        return float(max(self.health_check_timeout, MIN_HEALTH_CHECK_TIMEOUT))

    def resolve(self, name: str) -> str | None:
        """The model id that ``name`` (an id, alias or setParamsByID key) names."""
        if name in self.models:
            return name
        return self._alias_map.get(name)

    def alias_owner(self, name: str) -> str | None:
        return self._alias_map.get(name)

    @cached_property
    def _alias_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for mid, model in sorted(self.models.items()):
            for alias in model.aliases:
                out.setdefault(alias, mid)
            for key in model.filters.set_params_by_id:
                if key != mid:
                    out.setdefault(key, mid)
        return out

    def peer_of(self, name: str) -> tuple[str, str] | None:
        """(peer id, peer model) that ``name`` routes to, or None.

        ``peer/model`` (either part may contain ``/``) wins over a bare model
        name, which must be listed by exactly one peer; a local model id or
        alias wins over both (llama-swap.md §6).
        """
        if self.resolve(name) is not None:
            return None
        for pid, peer in sorted(self.peers.items()):
            for model in peer.models:
                if f"{pid}/{model}" == name:
                    return pid, model
        owners = [p for p, peer in sorted(self.peers.items()) if name in peer.models]
        return (owners[0], name) if len(owners) == 1 else None

    def routing_engine(
        self,
    ) -> tuple[str, dict[str, GroupConfig], MatrixConfig | None]:
        """The active swap engine: ("group", groups, None), ("matrix", {}, m)
        or ("resources", groups, None), where the groups only mark persistent
        models."""
        block = self.routing.router
        if self.matrix is not None:
            return "matrix", {}, self.matrix
        if self.groups:
            return "group", self.groups, None
        if block.use == "matrix":
            return "matrix", {}, block.settings.matrix
        if block.use == "resources":
            return "resources", block.settings.groups, None
        return "group", block.settings.groups, None

    @property
    def resources(self) -> ResourcesConfig | None:
        """The memory engine's budget, when ``use: resources`` is active."""
        if self.routing_engine()[0] != "resources":
            return None
        return self.routing.router.settings.resources or ResourcesConfig()

    @property
    def max_wait_s(self) -> float:
        """fifo ``maxWait``: 0 means queued requests never stop new grants."""
        return self.routing.scheduler.settings.fifo.max_wait

    @property
    def min_residency_s(self) -> float:
        return self.routing.scheduler.settings.fifo.min_residency

    def never_evicted(self) -> frozenset[str]:
        """Under ``use: resources``: members of persistent groups and the
        first target of every ``pin`` selector stay loaded once started."""
        engine, groups, _ = self.routing_engine()
        kept = {m for g in groups.values() if g.persistent for m in g.members}
        if engine == "resources":
            for selector in self.selectors.values():
                if selector.strategy == "pin" and selector.targets:
                    if (mid := self.resolve(selector.targets[0])) is not None:
                        kept.add(mid)
        return frozenset(kept & set(self.models))

    def needs_of(self, model_id: str) -> Needs | None:
        return self.models[model_id].needs

    def pinned_gpus(self, model_id: str) -> tuple[int, ...] | None:
        """The GPUs a model must run on: its ``gpus``, else a numeric
        ``CUDA_VISIBLE_DEVICES`` in its env (the user already placed it)."""
        m = self.models[model_id]
        if m.gpus is not None:
            return tuple(m.gpus)
        for entry in m.env:
            key, _, value = entry.partition("=")
            if key.strip() == "CUDA_VISIBLE_DEVICES":
                parts = [p.strip() for p in value.split(",") if p.strip()]
                if parts and all(p.isdigit() for p in parts):
                    return tuple(int(p) for p in parts)
        return None

    def priority(self, model_id: str) -> int:
        """fifo priority of a model id; a key may also be one of its aliases
        (llama-swap accepts an alias key but never matches it)."""
        return self._priorities.get(model_id, 0)

    @cached_property
    def _priorities(self) -> dict[str, int]:
        table = self.routing.scheduler.settings.fifo.priority
        out = {
            self.resolve(k) or k: v for k, v in table.items() if k not in self.models
        }
        out.update({k: v for k, v in table.items() if k in self.models})
        return out

    def ttl_s(self, model_id: str) -> float:
        ttl = self.models[model_id].ttl
        return float(self.global_ttl if ttl == -1 else ttl)

    def unload_grace_s(self, model_id: str) -> float:
        return float(self.models[model_id].unload_timeout or self.unload_timeout)

    def start_deadline_s(self, model_id: str) -> float:
        own = self.models[model_id].health_check_timeout
        return own if own is not None else self.health_deadline_s

    def liveness_s(self, model_id: str) -> float:
        own = self.models[model_id].liveness_interval
        return self.liveness_interval if own is None else own

    def crash_loop_of(self, model_id: str) -> CrashLoop:
        return self.models[model_id].crash_loop or self.crash_loop

    def max_start_s(self, model_id: str) -> float:
        own = self.models[model_id].max_start_time
        cap = own if own is not None else self.max_start_time
        deadline = self.start_deadline_s(model_id)
        return max(cap, deadline) if cap is not None else 4 * deadline

    def kept_loaded(self) -> frozenset[str]:
        """Models that should be up whenever possible: preloaded ones and the
        members of persistent groups."""
        kept = {
            mid
            for name in self.hooks.on_startup.preload
            if (mid := self.resolve(name.strip())) is not None
        }
        _, groups, _ = self.routing_engine()
        kept.update(m for g in groups.values() if g.persistent for m in g.members)
        return frozenset(kept)

    def concurrency_limit(self, model_id: str) -> int:
        limit = self.models[model_id].concurrency_limit or DEFAULT_CONCURRENCY_LIMIT
        # llama-swap's comfyui_auto backs /comfyui/ and its many websockets.
        return max(limit, 50) if model_id == COMFYUI_MODEL else limit

    def launch_spec(self, model_id: str) -> LaunchSpec:
        m = self.models[model_id]
        check = m.check_endpoint.strip()
        return LaunchSpec(
            argv=m.argv(),
            base_url=m.proxy,
            check_endpoint=None if check == "none" else check or "/health",
            env=m.env_map(),
            cmd_stop=split_command(m.cmd_stop),
            container=block.spec() if (block := m.docker or m.podman) else None,
            mock=m.mock,
        )


def split_command(cmd: str) -> tuple[str, ...]:
    """Split ``cmd`` as a POSIX shell would, without running one.

    Whole-line ``#`` comments are dropped and a trailing ``\\`` continues a line.
    """
    text = strip_cmd_comments(cmd).replace("\\\r\n", " ").replace("\\\n", " ")
    try:
        return tuple(shlex.split(text, posix=True))
    except ValueError as exc:
        raise ValueError(f"cannot split command: {exc}") from exc
