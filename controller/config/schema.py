"""The config's JSON Schema, generated from the pydantic models and completed
with what they cannot say (llama-swap's legacy shapes, descriptions, enums).
``config.schema.json`` in the repository is ``swapvisor schema``'s output."""

from __future__ import annotations

from typing import Any

from controller.config.model import Config


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
        "routing": "router (group, matrix or resources swap engine) and "
        "scheduler (fifo).",
        "groups": "Legacy spelling of routing.router.settings.groups.",
        "matrix": "Legacy spelling of routing.router.settings.matrix.",
        "peers": "Remote OpenAI-compatible servers, addressed as <peer>/<model>.",
        "profiles": "Runtime-switchable model ID rewrites (pins).",
        "selectors": "Virtual model IDs that pick a target per request.",
        "livenessInterval": "swapvisor: seconds between health probes of a ready, "
        "idle model; one that died or stopped answering becomes failed (0: off).",
        "crashLoop": "swapvisor: after failures failed starts in a row, refuse "
        "the model for backoff seconds (doubling, up to 300) with 503 crash_loop.",
        "maxStartTime": "swapvisor: hard cap in seconds on a start that keeps "
        "logging; healthCheckTimeout then counts from the last log line "
        "(default 4 x healthCheckTimeout).",
        "slotCache": "swapvisor: dir (default <user cache>/swapvisor/slots) and "
        "maxSize (default 20GiB) of keepSlots models' saved KV cache files.",
    },
    "ModelConfig": {
        "docker": "swapvisor: run the model as a container through the Docker API.",
        "podman": "swapvisor: run the model as a container through the Podman API.",
        "mock": "swapvisor: a simulated model server for CI (no engine, no GPU).",
        "livenessInterval": "swapvisor: overrides the top-level livenessInterval.",
        "crashLoop": "swapvisor: overrides the top-level crashLoop.",
        "maxStartTime": "swapvisor: overrides the top-level maxStartTime.",
        "keepSlots": "swapvisor: save llama.cpp KV slots before every stop and "
        "restore them on the next start (pass --slot-save-path ${SLOT_DIR}).",
        "sleep": "swapvisor: vllm, {mode: vllm, level: 1|2}, or {sleep, wake, "
        "check} calls; a swap puts the model to sleep instead of stopping it.",
        "sleepTTL": "swapvisor: seconds asleep before the process is stopped "
        "(0: never).",
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
        "needs": "swapvisor (use: resources): {vram, ram} the model holds, e.g. "
        "{vram: 18GiB, ram: 2GiB}; learned from measurement when absent, and a "
        "learned figure above it wins.",
        "gpus": "swapvisor (use: resources): GPU indices the model must run on "
        "(else placed where there is room).",
    },
    "ResourcesConfig": {
        "gpus": "auto (every GPU NVML reports, at its full memory) or a list of "
        "{index, memory}.",
        "ram": "Host memory swapvisor may plan with: bytes (12GiB, 800MiB) or a "
        "percentage of the host's RAM (default 80%).",
        "reserve": "{vram, ram} never planned: vram per GPU, ram on the host.",
        "learnedFile": "Where learned figures are kept across restarts (default "
        "<user cache>/swapvisor/learned-memory.json).",
    },
    "RouterSettings": {
        "resources": "The memory budget of use: resources.",
    },
    "FifoSettings": {
        "maxWait": "swapvisor: seconds a queued request waits before the models "
        "blocking it get no new requests, so its swap happens once they drain "
        "(0: no bound; default 30; llama-swap has no bound).",
        "minResidency": "swapvisor: seconds a model just loaded is kept before a "
        "swap may evict it (default 0).",
    },
}
_ENUMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("RouterBlock", "use", ("group", "matrix", "resources")),
    ("SchedulerBlock", "use", ("fifo",)),
    ("SelectorConfig", "strategy", ("warm", "pin", "spillover")),
)
