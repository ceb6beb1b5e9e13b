"""Loading a config: read the sources, ``${env.X}``-expand, parse YAML, expand
macros and ``${PORT}``, validate into ``controller.config.model.Config``, then
check the rules that span sections (``controller.config.crosscheck``).

Every error names the YAML path. Keys swapvisor does not know, or does not
implement yet, are reported as warnings that name each one, never silently
ignored.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from controller.config.crosscheck import crosscheck
from controller.config.macros import (
    expand_env,
    leftover_macros,
    strip_cmd_comments,
    substitute,
    validate_macros,
)
from controller.config.merge import load_sources
from controller.config.model import DEFAULT_PROXY, NOT_YET_TOP_KEYS, Config
from controller.config.sections import (
    Timeouts,
    Worded,
)
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator


log = logging.getLogger("swapvisor.config")


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
    try:
        crosscheck(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
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
