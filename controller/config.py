"""The configuration: llama-swap's ``config.yaml`` as typed pydantic models.

``load_config`` does four things: read and ``${env.X}``-expand the text, parse
YAML, expand macros (``controller.macros``), validate. Every error names the
YAML path. Keys swapvisor does not know, or does not implement yet, are
reported as warnings that name each one, never silently ignored.
"""

from __future__ import annotations

import difflib
import logging
import re
import shlex
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from backends.base import LaunchSpec
from controller.crosscheck import crosscheck
from controller.errors import ConfigError
from controller.macros import (
    expand_env,
    leftover_macros,
    strip_cmd_comments,
    substitute,
    validate_macros,
)
from controller.merge import load_sources
from controller.sections import (
    Capabilities,
    Compat,
    ContainerBlock,
    Filters,
    GroupConfig,
    Hooks,
    MatrixConfig,
    MockBlock,
    PeerConfig,
    PerformanceSettings,
    ProfileConfig,
    Routing,
    SelectorConfig,
    StoreSettings,
    Timeouts,
    UiSettings,
    UpstreamSettings,
    Worded,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("swapvisor.config")

DEFAULT_CONCURRENCY_LIMIT = 10
COMFYUI_MODEL = "comfyui_auto"
MIN_HEALTH_CHECK_TIMEOUT = 15
# llama-swap's default is http://localhost:${PORT}; 127.0.0.1 avoids a wasted
# IPv6 connect attempt per request when the server binds IPv4 only.
DEFAULT_PROXY = "http://127.0.0.1:${PORT}"

# llama-swap keys that later swapvisor work implements; accepted with a warning
# that says they are not applied yet (rather than an "unknown key" warning).
NOT_YET_TOP_KEYS: frozenset[str] = frozenset()


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        alias_generator=to_camel,
        frozen=True,
    )


class ModelConfig(_Section):
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
    # swapvisor extensions: run the model through a container engine's API, or
    # simulate it in-process (at most one of the three).
    docker: ContainerBlock | None = None
    podman: ContainerBlock | None = None
    mock: MockBlock | None = None

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

    @field_validator("health_check_timeout")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

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


class Config(_Section):
    """The whole file (llama-swap.md §1.2)."""

    models: dict[str, ModelConfig] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _crosscheck(self) -> Config:
        crosscheck(self)
        return self

    # -- derived views -------------------------------------------------------

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
        """The active swap engine: ("group", groups, None) or ("matrix", {}, m)."""
        block = self.routing.router
        if self.matrix is not None:
            return "matrix", {}, self.matrix
        if self.groups:
            return "group", self.groups, None
        if block.use == "matrix":
            return "matrix", {}, block.settings.matrix
        return "group", block.settings.groups, None

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
            mock=m.mock.spec() if m.mock is not None else None,
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


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...]
    path: Path | None = None


def load_config(
    path: str | Path | None, config_dir: str | Path | None = None
) -> LoadedConfig:
    """Read ``--config`` and/or ``--config-dir``, merge, expand and validate.

    Raises ConfigError naming the file or the YAML path.
    """
    p = Path(path) if path is not None else None
    d = Path(config_dir) if config_dir is not None else None
    raw = load_sources(p, d, expand_env, parse_yaml)
    loaded = validate(raw)
    return LoadedConfig(loaded.config, loaded.warnings, p)


def parse_config(text: str) -> LoadedConfig:
    """Validate config text; see ``load_config``."""
    raw = parse_yaml(expand_env(text))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping at the top level")
    return validate(raw)


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from exc


def validate(raw: dict[str, Any]) -> LoadedConfig:
    """Macro-expand and validate one merged YAML document."""
    data = expand_config_macros(raw)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    return LoadedConfig(config, tuple(_unknown_key_warnings(config)))


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, as llama-swap's
    yaml.v3 reads them (so ``--flash-attn on`` stays ``on``)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = first["loc"]
    where = ".".join(str(part) for part in loc)
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Worded):
        if cause.at == "model" and len(loc) >= 2 and loc[0] == "models":
            return f"model {loc[1]}: {cause}{more}"
        if cause.at == "path" and where:
            return f"{where} {cause}{more}"
        if not cause.at:
            return f"{cause}{more}"
    return f"{where}: {msg}{more}" if where else msg + more


# -- macro expansion over the YAML tree ----------------------------------------

_CHECKED_MODEL_FIELDS = (
    "cmd",
    "cmdStop",
    "proxy",
    "checkEndpoint",
    "filters.stripParams",
    "name",
    "description",
)
# Reported by their section, not the full path (llama-swap.md §1.4).
_SECTION_REPORTED = ("capabilities", "metadata")


def expand_config_macros(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply global and model macros and allocate ``${PORT}`` (llama-swap §1.1)."""
    global_macros = validate_macros(raw.get("macros"))
    out: dict[str, Any] = {
        key: value if key in ("models", "macros") else substitute(value, global_macros)
        for key, value in raw.items()
    }
    # Unknown top-level keys are substituted too but never checked: a "defs:"
    # holder of YAML anchors may hold ${PORT} and ${MODEL_ID} for the models.
    known = {f.alias or n for n, f in Config.model_fields.items()} | NOT_YET_TOP_KEYS
    for key, value in out.items():
        if key in known and key not in ("models", "macros"):
            _check_leftovers(value, key)
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError("models: must be a mapping of model id to settings")
    next_port = _start_port(out.get("startPort", 5800))
    expanded: dict[str, Any] = {}
    for mid in sorted(models, key=str):
        expanded[str(mid)], next_port = _expand_model(
            str(mid), models[mid], global_macros, next_port
        )
    out["models"] = expanded
    return out


def _start_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"startPort: must be an integer, got {value!r}")
    return value


def _expand_model(
    mid: str, model: Any, global_macros: dict[str, Any], next_port: int
) -> tuple[dict[str, Any], int]:
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise ConfigError(f"models.{mid}: must be a mapping of settings")
    model = dict(model)
    for key in ("cmd", "cmdStop"):
        if isinstance(model.get(key), str):
            model[key] = strip_cmd_comments(model[key])
    model.setdefault("proxy", DEFAULT_PROXY)
    local = validate_macros(model.get("macros"), f"model {mid}")
    # MODEL_ID first, then globals, then model macros replacing globals in place.
    scope: dict[str, Any] = {"MODEL_ID": mid, **global_macros}
    scope.update(local)
    model = {k: v if k == "macros" else substitute(v, scope) for k, v in model.items()}
    _substitute_by_id_keys(mid, model, scope)
    if _wants_port(model):
        model = substitute(model, {"PORT": next_port})
        _substitute_by_id_keys(mid, model, {"PORT": next_port})
        next_port += 1
    elif isinstance(model.get("proxy"), str) and "${PORT}" in model["proxy"]:
        raise ConfigError(
            f"model {mid}: proxy uses ${{PORT}} but cmd does not - ${{PORT}} is only "
            "available when used in cmd"
        )
    _check_model_leftovers(mid, model)
    return model, next_port


def _wants_port(model: dict[str, Any]) -> bool:
    """llama-swap gives ${PORT} to models whose cmd uses it; swapvisor also to
    container blocks that use it, and to mock models (they listen on it)."""
    cmd = model.get("cmd")
    if isinstance(cmd, str) and "${PORT}" in cmd:
        return True
    for kind in ("docker", "podman"):
        if "${PORT}" in str(model.get(kind) or ""):
            return True
    return "mock" in model and "${PORT}" in str(model.get("proxy", ""))


def _substitute_by_id_keys(
    mid: str, model: dict[str, Any], scope: dict[str, Any]
) -> None:
    """setParamsByID keys are the one place where map keys get macros."""
    filters = model.get("filters")
    if not isinstance(filters, dict) or not isinstance(
        by_id := filters.get("setParamsByID"), dict
    ):
        return
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in by_id.items():
        new = str(substitute(str(key), scope))
        if new in out:
            raise ConfigError(
                f'model {mid} filters.setParamsByID: keys "{origin[new]}" '
                f'and "{key}" resolve to the same value'
            )
        out[new], origin[new] = value, str(key)
    model["filters"] = {**filters, "setParamsByID": out}


def _check_model_leftovers(mid: str, model: dict[str, Any]) -> None:
    filters = model.get("filters")
    by_id = filters.get("setParamsByID") if isinstance(filters, dict) else None
    for key in by_id if isinstance(by_id, dict) else ():
        names = leftover_macros(str(key))
        if names:
            raise ConfigError(
                f"unknown macro '${{{names[0]}}}' found in model {mid} "
                "filters.setParamsByID key"
            )
    for key, value in model.items():
        if key == "macros":
            continue
        for path, text in _strings(value, key):
            names = [
                n
                for n in leftover_macros(text)
                if not (key == "cmdStop" and n == "PID")
            ]
            if not names:
                continue
            name = names[0]
            field = key
            if path in ("filters.stripParams", "filters.strip_params"):
                field = "filters.stripParams"
            if field in _CHECKED_MODEL_FIELDS:
                if name in ("PORT", "MODEL_ID"):
                    raise ConfigError(
                        f"macro '${{{name}}}' should have been substituted in "
                        f"{mid}.{field}"
                    )
                raise ConfigError(f"unknown macro '${{{name}}}' found in {mid}.{field}")
            where = key if key in _SECTION_REPORTED else path
            raise ConfigError(_leftover(f"model {mid} {where}", name))


def _check_leftovers(value: Any, path: str) -> None:
    for where, text in _strings(value, path):
        names = leftover_macros(text)
        if names:
            raise ConfigError(_leftover(where, names[0]))


def _leftover(where: str, name: str) -> str:
    if name.startswith("env."):
        return f"{where}: environment variable '{name[4:]}' not set"
    return f"{where}: unknown macro '${{{name}}}'"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


# -- unknown keys ----------------------------------------------------------------


def _unknown_key_warnings(config: Config) -> Iterator[str]:
    yield from _extras(config, "", NOT_YET_TOP_KEYS)
    defaults = Timeouts()
    for where, timeouts in _all_timeouts(config):
        for key in sorted(timeouts.model_fields_set & _UNAPPLIED_TIMEOUTS):
            if getattr(timeouts, key) != getattr(defaults, key):
                yield (
                    f"{where}.timeouts.{_camel(key)}: a non-default value is not "
                    "applied by swapvisor (connect and responseHeader are)"
                )
    preload = config.hooks.on_startup.preload
    for i, name in enumerate(preload):
        if name.strip() and config.resolve(name.strip()) is None:
            yield (
                f"hooks.on_startup.preload[{i}]: {name!r} is not a local model; "
                "it will not be preloaded"
            )


_UNAPPLIED_TIMEOUTS = frozenset(
    {"keepalive", "tls_handshake", "expect_continue", "idle_conn"}
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _all_timeouts(config: Config) -> Iterator[tuple[str, Timeouts]]:
    for mid, model in config.models.items():
        yield f"models.{mid}", model.timeouts
    for pid, peer in config.peers.items():
        yield f"peers.{pid}", peer.timeouts


def _extras(
    section: BaseModel, prefix: str, not_yet: frozenset[str] = frozenset()
) -> Iterator[str]:
    """Unknown keys of ``section`` and, recursively, of every section inside it."""
    fields = type(section).model_fields
    known = [f.alias or name for name, f in fields.items()]
    for key in section.model_extra or {}:
        if key in not_yet:
            yield f"{prefix}{key}: not supported by swapvisor yet; ignored"
            continue
        hint = difflib.get_close_matches(key, known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        yield f"{prefix}{key}: unknown key, ignored{suggestion}"
    for name, info in fields.items():
        yield from _nested_extras(
            getattr(section, name), f"{prefix}{info.alias or name}."
        )


def _nested_extras(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from _extras(value, prefix)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield from _extras(item, f"{prefix}{key}.")
