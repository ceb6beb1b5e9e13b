"""``swapvisor check CONFIG``: validate a config and show what it resolves to;
``swapvisor schema``: the config's JSON Schema, generated from the pydantic
models (``config.schema.json`` in the repository is this output)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

from controller.config.loader import load_config
from controller.config.model import Config
from controller.engine.eviction import matrix_policy
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from controller.engine.matrix import MatrixPolicy


def check_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="swapvisor check", description="validate a config and show it"
    )
    parser.add_argument("config", nargs="?", help="config file")
    parser.add_argument("--config-dir", "-config-dir", dest="config_dir")
    args = parser.parse_args(argv)
    if not args.config and not args.config_dir:
        parser.error("a config file (or --config-dir) is required")
    try:
        loaded = load_config(args.config, args.config_dir)
    except ConfigError as exc:
        message = " ".join(exc.message.split())
        source = args.config or args.config_dir
        if source not in message:
            message = f"{source}: {message}"
        print(f"invalid: {message}", file=sys.stderr)  # noqa: T201
        return 1
    for line in describe(loaded.config, loaded.warnings):
        print(line)  # noqa: T201
    return 0


def describe(config: Config, warnings: Sequence[str]) -> list[str]:
    """Human-readable lines: each model's command, proxy and routing membership."""
    engine, groups, _ = config.routing_engine()
    lines = [f"config OK: {len(config.models)} models, router: {engine}"]
    membership = _membership(config, engine, groups)
    for mid, model in sorted(config.models.items()):
        lines.append(f"model {mid}")
        lines.append(f"  cmd:   {shlex.join(model.argv())}")
        if model.cmd_stop:
            lines.append(f"  stop:  {model.cmd_stop}")
        lines.append(f"  proxy: {model.proxy}")
        lines.append(f"  {membership[mid]}")
        # setParamsByID keys other than the model's own ID are aliases too.
        aliases = list(
            dict.fromkeys(model.aliases + list(model.filters.set_params_by_id))
        )
        aliases = [a for a in aliases if a != mid]
        if aliases:
            lines.append(f"  aliases: {', '.join(aliases)}")
    for pid, peer in sorted(config.peers.items()):
        lines.append(f"peer {pid}: {peer.proxy} ({', '.join(peer.models)})")
    lines.extend(f"warning: {w}" for w in warnings)
    return lines


def _membership(config: Config, engine: str, groups: dict[str, Any]) -> dict[str, str]:
    if engine == "matrix":
        policy = matrix_policy(config)
        return {
            m: "matrix sets: " + (", ".join(_sets_of(policy, m)) or "none (runs alone)")
            for m in config.models
        }
    out = dict.fromkeys(config.models, "group: (default)")
    for gid, group in groups.items():
        flags = (
            f"swap={group.swap} exclusive={group.exclusive} "
            f"persistent={group.persistent}"
        )
        for member in group.members:
            out[member] = f"group: {gid} ({flags})"
    return out


def _sets_of(policy: MatrixPolicy, model: str) -> list[str]:
    return [
        name
        for name in policy.evaluation_order
        if any(model in combo for combo in policy.expand(name, {model}))
    ]


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "swapvisor / llama-swap config.yaml"
    _drop_property_titles(schema)
    defs = schema["$defs"]
    # Hand-written descriptions and enums for the observability keys; the
    # generated property keeps its types.
    for key, spec in _OBSERVABILITY_PROPERTIES.items():
        prop = schema["properties"].setdefault(key, spec)
        for extra in ("description", "enum", "deprecated"):
            if extra in spec:
                prop.setdefault(extra, spec[extra])
    defs["Filters"]["properties"].setdefault("strip_params", _LEGACY_STRIP_PARAMS)
    for where, texts in _DESCRIPTIONS.items():
        props = schema["properties"] if where == "Config" else defs[where]["properties"]
        for key, text in texts.items():
            props[key].setdefault("description", text)
    for where, key, values in _ENUMS:
        defs[where]["properties"][key].setdefault("enum", list(values))
    for key in ("in", "out"):
        items = defs["Capabilities"]["properties"][key]["items"]
        items.setdefault("enum", ["text", "audio", "image"])
    return schema


def _drop_property_titles(node: Any) -> None:
    """pydantic titles each property from its Python name ("Setparamsbyid");
    editors show the key and its description instead."""
    if isinstance(node, dict):
        for prop in (node.get("properties") or {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        for value in node.values():
            _drop_property_titles(value)
    elif isinstance(node, list):
        for value in node:
            _drop_property_titles(value)


_LEGACY_STRIP_PARAMS: dict[str, Any] = {
    "type": "string",
    "deprecated": True,
    "description": "Legacy spelling of stripParams, used when stripParams is empty.",
}
_OBSERVABILITY_PROPERTIES: dict[str, dict[str, Any]] = {
    "logTimeFormat": {
        "type": "string",
        "description": "Timestamp layout of log lines (e.g. rfc3339).",
    },
    "logToStdout": {
        "type": "string",
        "enum": ["proxy", "upstream", "both", "none"],
        "description": "Which logs are copied to stdout.",
    },
    "logRequests": {
        "type": "boolean",
        "deprecated": True,
        "description": "Deprecated and ignored by llama-swap.",
    },
    "metricsMaxInMemory": {
        "type": "integer",
        "description": "Activity rows kept in memory (default 1000).",
    },
    "captureBuffer": {
        "type": "integer",
        "description": "Capture cache size in MB; 0 disables captures.",
    },
    "store": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "description": "path: SQLite file for the activity log.",
    },
    "ui": {
        "type": "object",
        "properties": {
            "activity": {
                "type": "object",
                "properties": {
                    "session_id": {"type": "array", "items": {"type": "string"}}
                },
            }
        },
        "description": "activity.session_id: session id header names.",
    },
    "performance": {
        "type": "object",
        "properties": {
            "disabled": {"type": "boolean"},
            "every": {"type": "string"},
        },
        "description": "CPU/RAM/GPU sampling (every: Go duration, >= 5s).",
    },
}
_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Config": {
        "models": "Model definitions; the key is the model ID used in requests.",
        "healthCheckTimeout": "Seconds a start may take to pass its health check "
        "(minimum 15).",
        "startPort": "First port handed out to models whose cmd uses ${PORT}.",
        "globalTTL": "Default idle seconds before a model is unloaded (0: never).",
        "unloadTimeout": "Seconds a model gets to stop before it is killed.",
        "logLevel": "debug, info, warn or error.",
        "macros": "${name} substitutions usable in every model and top-level key.",
        "apiKeys": "When set, every API request must carry one of these keys.",
        "sendLoadingState": "Stream loading progress as reasoning content.",
        "includeAliasesInList": "Also list each alias in /v1/models.",
        "hooks": "on_startup.preload: models loaded at startup and after reload.",
        "upstream": "ignorePaths: /upstream/<model>/ paths that never load a model.",
        "routing": "router (group or matrix swap engine) and scheduler (fifo).",
        "groups": "Legacy spelling of routing.router.settings.groups.",
        "matrix": "Legacy spelling of routing.router.settings.matrix.",
        "peers": "Remote OpenAI-compatible servers, addressed as <peer>/<model>.",
        "profiles": "Runtime-switchable model ID rewrites (pins).",
        "selectors": "Virtual model IDs that pick a target per request.",
    },
    "ModelConfig": {
        "docker": "swapvisor: run the model as a container through the Docker API.",
        "podman": "swapvisor: run the model as a container through the Podman API.",
        "mock": "swapvisor: a simulated model server for CI (no engine, no GPU).",
        "cmd": "Command line; # comment lines dropped, trailing \\ continues.",
        "cmdStop": "Command run instead of SIGTERM to stop; ${PID} is the process.",
        "proxy": "Base URL requests are forwarded to.",
        "checkEndpoint": "Path polled until HTTP 200; none skips the check.",
        "ttl": "Idle seconds before unload; -1 uses globalTTL, 0 never.",
        "unloadTimeout": "Seconds to stop before kill; 0 uses the global value.",
        "env": "NAME=value entries added to the environment.",
        "aliases": "Other names for this model.",
        "useModelName": "Model name sent upstream instead of the requested one.",
        "name": "Display name in /v1/models.",
        "description": "Description in /v1/models.",
        "unlisted": "Hidden from /v1/models but still requestable.",
        "concurrencyLimit": "Admitted requests at once (0: 10); more get 429.",
        "macros": "Model-scoped macros; override globals of the same name.",
        "sendLoadingState": "Overrides the top-level sendLoadingState.",
        "filters": "stripParams, setParams, setParamsByID request rewrites.",
        "metadata": "Free-form data shown under meta.llamaswap in /v1/models.",
        "capabilities": "Modalities, tools, reranker and context length.",
        "timeouts": "Upstream HTTP timeouts in seconds (0: none).",
        "compat": "ignoreWebsockets: websockets never load this model.",
        "healthCheckTimeout": "swapvisor extension: this model's start deadline "
        "in seconds (no 15 s floor).",
    },
}
_ENUMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("RouterBlock", "use", ("group", "matrix")),
    ("SchedulerBlock", "use", ("fifo",)),
    ("SelectorConfig", "strategy", ("warm", "pin", "spillover")),
)


def schema_main(argv: Sequence[str]) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))  # noqa: T201
    return 0
