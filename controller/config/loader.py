"""Loading a config: read the sources, ``${env.X}``-expand, parse YAML, expand
macros and ``${PORT}``, validate into ``controller.config.model.Config``, then
check the rules that span sections (``controller.config.crosscheck``).

Every error names the YAML path. Keys swapvisor does not know, or does not
implement yet, are reported as warnings that name each one, never silently
ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import re
import urllib.parse
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
    go_float,
    leftover_macros,
    strip_cmd_comments,
    substitute,
    validate_macros,
)
from controller.config.merge import load_sources
from controller.config.model import DEFAULT_PROXY, NOT_YET_TOP_KEYS, Config, PortPlan
from controller.config.sections import (
    Timeouts,
    Worded,
    slot_dir_name,
    slot_root,
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
    path: str | Path | None,
    config_dir: str | Path | None = None,
    *,
    ports: PortPlan | None = None,
) -> LoadedConfig:
    """Read ``--config`` and/or ``--config-dir``, merge, expand and validate.

    On a reload ``ports`` is the running config's ``port_plan``: unchanged
    models keep their ``${PORT}`` (see ``expand_with_ports``). Raises
    ConfigError naming the file or the YAML path.
    """
    p = Path(path) if path is not None else None
    d = Path(config_dir) if config_dir is not None else None
    raw = load_sources(p, d, expand_env, parse_yaml)
    loaded = validate(raw, ports)
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


def validate(raw: dict[str, Any], ports: PortPlan | None = None) -> LoadedConfig:
    """Macro-expand and validate one merged YAML document; ``ports`` as in
    ``expand_with_ports``."""
    data, plan = expand_with_ports(raw, ports)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    config.remember_ports(plan)
    try:
        crosscheck(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    warnings = (*_unknown_key_warnings(config), *_remote_engine_warnings(config))
    return LoadedConfig(config, warnings)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads plain scalars as llama-swap's yaml.v3 does (YAML
    1.2: only true/false are booleans, so ``--flash-attn on`` stays ``on``;
    ``1e3`` is a number; dates stay text) and refuses a key repeated in one
    mapping, as yaml.v3 does."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return go_scalar(value)[0]
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, "", set())
        return super().construct_document(node)

    def construct_go_number(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value)
        tag, value = go_scalar(text)
        if node.tag == _FLOAT and tag == _INT:
            return float(value)
        if tag != node.tag:  # an explicit !!int or !!float that is not one
            raise ConfigError(
                f"line {node.start_mark.line + 1}: cannot decode {text!r} as "
                f"{node.tag.removeprefix(_TAG)}"
            )
        return value


_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR = (
    _TAG + t for t in ("null", "bool", "int", "float", "str")
)
_Loader.add_constructor(_INT, _Loader.construct_go_number)
_Loader.add_constructor(_FLOAT, _Loader.construct_go_number)
_GO_CONSTANTS: dict[str, tuple[str, Any]] = {
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), (_NULL, None)),
    **dict.fromkeys(("true", "True", "TRUE"), (_BOOL, True)),
    **dict.fromkeys(("false", "False", "FALSE"), (_BOOL, False)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), (_FLOAT, math.nan)),
    **{
        sign + k: (_FLOAT, -math.inf if sign == "-" else math.inf)
        for sign in ("", "+", "-")
        for k in (".inf", ".Inf", ".INF")
    },
    "<<": (_TAG + "merge", "<<"),
}
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")
_LONE_UNDERSCORE = re.compile(r"(?<![0-9])_|_(?![0-9])")


def go_scalar(text: str) -> tuple[str, Any]:
    """yaml.v3's reading of a plain scalar (its resolve.go): tag and value.

    Ints as Go's ``ParseInt(s, 0, 64)`` reads them once underscores are
    dropped (``0x1F``, ``0o17``, ``017``, ``0b101``; uint64 too); floats by
    YAML 1.2's pattern (``1e3``, ``.5``); out of range is text, as are dates.
    """
    if text in _GO_CONSTANTS:
        return _GO_CONSTANTS[text]
    if text[:1] == ".":
        plain = text.replace("_", "")
        valid = _DOT_FLOAT.fullmatch(plain) and not _LONE_UNDERSCORE.search(text)
        if valid and math.isfinite(value := float(plain)):
            return _FLOAT, value
    elif text[:1] in set("+-0123456789"):
        plain = text.replace("_", "")
        if (number := _go_int(plain, 0)) is not None:
            return _INT, number
        if _YAML_FLOAT.fullmatch(plain) and math.isfinite(value := float(plain)):
            return _FLOAT, value
        for prefix, base in (("0b", 2), ("0o", 8)):
            if plain.startswith(prefix):
                number = _go_int(plain[2:], base)
            elif plain.startswith("-" + prefix):
                number = _go_int("-" + plain[3:], base, unsigned=False)
            else:
                continue
            if number is not None:
                return _INT, number
    return _STR, text


def _go_int(text: str, base: int, *, unsigned: bool = True) -> int | None:
    """Go's ``ParseInt(text, base, 64)``, then (if ``unsigned``) its
    ``ParseUint``; None where both fail."""
    sign, digits = (text[0], text[1:]) if text[:1] in ("-", "+") else ("", text)
    if base == 0:
        prefix = digits[1:2].lower() if digits[:1] == "0" else ""
        base = {"x": 16, "o": 8, "b": 2}.get(prefix, 8 if prefix else 10)
        digits = digits[2:] if prefix in ("x", "o", "b") else digits
    try:
        value = int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        value = None
    if value is None:
        return None
    value = -value if sign == "-" else value
    if -(2**63) <= value < 2**63 or (unsigned and not sign and value < 2**64):
        return value
    return None


def _check_unique_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    """yaml.v3's "mapping key already defined", with the YAML path."""
    if id(node) in seen:
        return  # an alias of a node already checked
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", seen)
    if not isinstance(node, yaml.MappingNode):
        return
    names = [
        str(k.value) if isinstance(k, yaml.ScalarNode) else "?" for k, _ in node.value
    ]
    first: dict[str, yaml.Node] = {}
    for name, (key, _) in zip(names, node.value, strict=True):
        if name in first and isinstance(key, yaml.ScalarNode):
            where = f"{path}: " if path else ""
            raise ConfigError(
                f"{where}mapping key {json.dumps(name, ensure_ascii=False)} already "
                f"defined at line {first[name].start_mark.line + 1} "
                f"(again at line {key.start_mark.line + 1})"
            )
        first.setdefault(name, key)
    for name, (_, value) in zip(names, node.value, strict=True):  # then inside
        _check_unique_keys(value, f"{path}.{name}" if path else name, seen)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = first["loc"]
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc
    ).removeprefix(".")
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
    if first["type"] in _EXPECTED:
        msg = f"expected {_EXPECTED[first['type']]}, got {_kind(first['input'])}"
    elif first["type"] == "missing":
        return f"{where} is required{more}"
    return f"{where}: {msg}{more}" if where else msg + more


# pydantic's error types, in the config's words.
_EXPECTED = {
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _kind(value: Any) -> str:
    """What a YAML value is, as a person reading the config would say it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the text {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, float):
        return f"the number {go_float(value)}"
    return f"the number {value}"


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


def expand_config_macros(
    raw: dict[str, Any], ports: PortPlan | None = None
) -> dict[str, Any]:
    """Apply global and model macros and allocate ``${PORT}`` (llama-swap §1.1);
    see ``expand_with_ports``."""
    return expand_with_ports(raw, ports)[0]


def expand_with_ports(
    raw: dict[str, Any], ports: PortPlan | None = None
) -> tuple[dict[str, Any], PortPlan]:
    """The expanded tree and the ports handed out.

    With no ``ports`` (a fresh start, ``swapvisor check``) models that use
    ``${PORT}`` get ``startPort``, ``startPort + 1``... in sorted id order, as
    llama-swap hands them out. On a reload ``ports`` is the running config's
    plan: a model whose launch settings are unchanged keeps its port, and the
    others take the lowest free ones, so a new model does not move the rest.
    """
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
    start_port = _start_port(out.get("startPort"))
    slots = _slot_root(out.get("slotCache"))
    templates = {
        str(mid): _expand_model(str(mid), models[mid], global_macros, slots)
        for mid in sorted(models, key=str)
    }
    plan = _allocate_ports(templates, start_port, ports or {})
    port_of = {mid: port for mid, (_, port) in plan.items()}
    out["models"] = {
        mid: _put_port(mid, model, port_of.get(mid)) for mid, model in templates.items()
    }
    return out, plan


def _start_port(value: Any) -> int:
    if value is None:
        return 5800
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"startPort: must be an integer, got {value!r}")
    return value


def _slot_root(block: Any) -> str:
    configured = block.get("dir") if isinstance(block, dict) else None
    return str(slot_root(configured if isinstance(configured, str) else ""))


def _expand_model(
    mid: str, model: Any, global_macros: dict[str, Any], slots: str
) -> dict[str, Any]:
    """The model with every macro but ``${PORT}`` substituted."""
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise ConfigError(f"models.{mid}: must be a mapping of settings")
    model = dict(model)
    for key in ("cmd", "cmdStop"):
        if isinstance(model.get(key), str):
            model[key] = strip_cmd_comments(model[key])
    if model.get("proxy") is None:
        model["proxy"] = DEFAULT_PROXY
    local = validate_macros(model.get("macros"), f"model {mid}")
    # MODEL_ID first, then globals, then model macros replacing globals in place.
    # ${SLOT_DIR} ends with "/": llama.cpp appends the file name to it as is.
    slot_dir = f"{slots}/{slot_dir_name(mid)}/"
    scope: dict[str, Any] = {"MODEL_ID": mid, "SLOT_DIR": slot_dir, **global_macros}
    scope.update(local)
    out = {k: v if k == "macros" else substitute(v, scope) for k, v in model.items()}
    _substitute_by_id_keys(mid, out, scope)
    return out


def _allocate_ports(
    models: dict[str, dict[str, Any]], start: int, previous: PortPlan
) -> PortPlan:
    wanting = {mid: _launch_template(m) for mid, m in models.items() if _wants_port(m)}
    plan = {
        mid: (template, previous[mid][1])
        for mid, template in wanting.items()
        if mid in previous and previous[mid][0] == template
    }
    taken = {port for _, port in plan.values()}
    port = start
    for mid, template in wanting.items():  # sorted by id
        if mid not in plan:
            while port in taken:
                port += 1
            plan[mid] = (template, port)
            taken.add(port)
    return plan


def _launch_template(model: dict[str, Any]) -> str:
    """What decides how a model is launched, before ``${PORT}`` is put in."""
    launch = {k: model.get(k) for k in _LAUNCH_KEYS}
    return json.dumps(launch, sort_keys=True, default=str)


_LAUNCH_KEYS = (
    "cmd",
    "cmdStop",
    "proxy",
    "checkEndpoint",
    "env",
    "docker",
    "podman",
    "mock",
)


def _put_port(mid: str, model: dict[str, Any], port: int | None) -> dict[str, Any]:
    if port is not None:
        with_port: dict[str, Any] = substitute(model, {"PORT": port})
        _substitute_by_id_keys(mid, with_port, {"PORT": port})
        model = with_port
    elif isinstance(model.get("proxy"), str) and "${PORT}" in model["proxy"]:
        raise ConfigError(
            f"model {mid}: proxy uses ${{PORT}} but cmd does not - ${{PORT}} is only "
            "available when used in cmd"
        )
    _check_model_leftovers(mid, model)
    return model


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


def _remote_engine_warnings(config: Config) -> Iterator[str]:
    """A model on another host's engine whose proxy still names this host."""
    for mid, model in sorted(config.models.items()):
        engine = urllib.parse.urlsplit(model.engine_url or "")
        if engine.scheme not in ("tcp", "ssh", "http", "https"):
            continue
        host = engine.hostname or ""
        if _loopback(host):
            continue  # another daemon on this very host
        if _loopback(urllib.parse.urlsplit(model.proxy).hostname or ""):
            yield (
                f"models.{mid}.proxy: {model.proxy} is this host but engine "
                f"{model.engine_url} runs the model on {host}; set proxy to "
                f"http://{host}:<port> with the server listening there"
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        hint = _hint(str(key), known)
        yield f"{prefix}{key}: unknown key, ignored{f' ({hint})' if hint else ''}"
    for name, info in fields.items():
        yield from _nested_extras(
            getattr(section, name), f"{prefix}{info.alias or name}."
        )


def _hint(key: str, known: list[str]) -> str:
    """What the writer of an unknown ``key`` most likely meant, or ""."""
    folded = key.lower().replace("_", "").replace("-", "")
    for meant in _MEANT.get(folded, ()):
        if meant.startswith("--"):
            return f"that is the command-line flag {meant}, not a config key"
        if meant.split(".")[0] in known:
            return f"did you mean '{meant}'?"
    same = [k for k in known if k.lower().replace("_", "") == folded]
    close = same or difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f"did you mean '{close[0]}'?" if close else ""


# Common mistakes whose spelling is closer to a wrong key than to the right one
# (``timeout`` is nearer ``unloadTimeout`` than ``healthCheckTimeout``); the
# first candidate the section has wins.
_MEANT: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "timeout",
            "readytimeout",
            "starttimeout",
            "startuptimeout",
            "loadtimeout",
            "healthtimeout",
        ),
        ("healthCheckTimeout",),
    ),
    **dict.fromkeys(("stoptimeout", "killtimeout", "gracetimeout"), ("unloadTimeout",)),
    **dict.fromkeys(("idletimeout", "unloadafter", "ttl"), ("ttl", "globalTTL")),
    **dict.fromkeys(
        ("health", "healthcheck", "healthendpoint", "healthpath"), ("checkEndpoint",)
    ),
    **dict.fromkeys(("stop", "stopcmd", "stopcommand"), ("cmdStop",)),
    **dict.fromkeys(("command", "run", "exec"), ("cmd",)),
    **dict.fromkeys(("alias", "names"), ("aliases",)),
    **dict.fromkeys(("environment", "envs", "envvars"), ("env",)),
    **dict.fromkeys(("url", "upstreamurl"), ("proxy",)),
    **dict.fromkeys(("apikey", "keys", "key"), ("apiKey", "apiKeys")),
    **dict.fromkeys(("preload", "onstartup"), ("hooks.on_startup.preload",)),
    **dict.fromkeys(("host", "listen", "address", "bind"), ("--listen",)),
    "port": ("proxy", "startPort", "--listen"),
    "group": ("groups",),
    "model": ("models",),
}


def _nested_extras(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from _extras(value, prefix)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield from _extras(item, f"{prefix}{key}.")
