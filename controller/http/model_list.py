"""How models look to clients: the ``/v1/models`` records llama-swap clients
parse (llama-swap.md §5.7) and the ``modelStatus`` event the UI reads (§5.3).

Local models, their aliases (with ``includeAliasesInList``), selectors, peer
models and active-profile pins, each with ``meta.llamaswap`` saying what it is.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from controller.errors import SRC

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from controller.config.model import Config, ModelConfig
    from controller.config.sections import Capabilities
    from controller.engine.runtime import Runtime
    from controller.engine.states import Quarantine

# metadata keys the capability renderer owns when capabilities are set
_RENDERED = ("architecture", "capabilities", "supported_parameters", "context_length")


def model_records(
    config: Config,
    status: Callable[[str], str],
    now: int,
    active_pins: dict[str, str | None] | None = None,
    quarantined: Mapping[str, Quarantine] | None = None,
) -> list[dict[str, Any]]:
    """Every listed record, sorted by id."""
    records: list[dict[str, Any]] = []
    for mid, model in config.models.items():
        if model.unlisted:
            continue
        record = local_record(mid, model, status(mid), now)
        q = (quarantined or {}).get(mid)
        if q is not None:
            record["meta"]["llamaswap"]["quarantine"] = quarantine_json(q)
        records.append(record)
        if config.include_aliases_in_list:
            records.extend(
                _alias_record(alias, mid, model, status(mid), now)
                for alias in aliases_of(mid, model)
            )
    for sid, sel in config.selectors.items():
        if not sel.unlisted:
            records.append(_selector_record(sid, config, status, now))
    records.extend(
        _peer_record(pid, name, now)
        for pid, peer in config.peers.items()
        for name in dict.fromkeys(peer.models)
    )
    taken = {r["id"] for r in records} | set(config.models) | set(config.peers)
    records.extend(
        _base(pin, now)
        | {"meta": {"llamaswap": {"type": "profile"}}, "status": {"value": "unloaded"}}
        for pin in active_pins or {}
        if pin and pin not in taken and config.resolve(pin) is None
    )
    return sorted(records, key=lambda r: str(r["id"]))


def aliases_of(mid: str, model: ModelConfig) -> list[str]:
    """The model's aliases, then every ``setParamsByID`` key other than its
    own id: llama-swap registers those as aliases too."""
    names = [*model.aliases, *model.filters.set_params_by_id]
    return [a for a in dict.fromkeys(names) if a != mid]


def _base(record_id: str, now: int) -> dict[str, Any]:
    return {"id": record_id, "object": "model", "created": now, "owned_by": SRC}


def _status(value: str) -> dict[str, str]:
    """``loaded``, ``sleeping`` or ``unloaded``."""
    return {"value": value}


def local_record(mid: str, model: ModelConfig, status: str, now: int) -> dict[str, Any]:
    record = _base(mid, now)
    if model.name.strip():
        record["name"] = model.name.strip()
    if model.description:
        record["description"] = model.description
    meta: dict[str, Any] = dict(model.metadata)
    caps = model.capabilities
    if caps.configured:
        for key in _RENDERED:
            meta.pop(key, None)
        record.update(render_capabilities(caps))
    meta["type"] = "model"
    if aliases := aliases_of(mid, model):
        meta["aliases"] = aliases
    record["meta"] = {"llamaswap": meta}
    if caps.context > 0:
        record["meta"]["n_ctx"] = caps.context
    record["status"] = _status(status)
    return record


def _alias_record(
    alias: str, mid: str, model: ModelConfig, status: str, now: int
) -> dict[str, Any]:
    record = local_record(mid, model, status, now)
    record["id"] = alias
    record["meta"]["llamaswap"] = {"type": "alias", "modelID": mid}
    return record


def _selector_record(
    sid: str, config: Config, status: Callable[[str], str], now: int
) -> dict[str, Any]:
    sel = config.selectors[sid]
    record = _base(sid, now)
    if sel.name.strip():
        record["name"] = sel.name.strip()
    if sel.description:
        record["description"] = sel.description
    meta: dict[str, Any] = dict(sel.metadata)
    meta.update(
        {"type": "selector", "strategy": sel.strategy, "targets": list(sel.targets)}
    )
    if sel.strategy == "spillover":
        meta["spillover"] = sel.settings.spillover
    record["meta"] = {"llamaswap": meta}
    targets = sel.targets[:1] if sel.strategy == "pin" else sel.targets
    local = [config.resolve(t) for t in targets]
    up = any(m is not None and status(m) == "loaded" for m in local)
    record["status"] = _status("loaded" if up else "unloaded")
    return record


def _peer_record(pid: str, name: str, now: int) -> dict[str, Any]:
    record = _base(f"{pid}/{name}", now)
    record["name"] = f"{pid}: {name}"
    record["meta"] = {"llamaswap": {"type": "peer", "peerID": pid}}
    record["status"] = _status("unloaded")
    return record


def render_capabilities(caps: Capabilities) -> dict[str, Any]:
    """OpenRouter-style fields llama-swap derives from ``capabilities``."""
    out: dict[str, Any] = {}
    if caps.in_ or caps.out:
        arch: dict[str, Any] = {
            "input_modalities": list(caps.in_),
            "output_modalities": list(caps.out),
        }
        if caps.in_ and caps.out:
            arch["modality"] = f"{'+'.join(caps.in_)}->{'+'.join(caps.out)}"
        out["architecture"] = arch
    flags = {
        "vision": "image" in caps.in_,
        "audio_transcriptions": "audio" in caps.in_ and "text" in caps.out,
        "audio_speech": "text" in caps.in_ and "audio" in caps.out,
        "image_generation": "text" in caps.in_ and "image" in caps.out,
        "image_to_image": "image" in caps.in_ and "image" in caps.out,
        "function_calling": caps.tools,
        "reranker": caps.reranker,
    }
    if any(flags.values()):
        out["capabilities"] = {k: True for k, v in flags.items() if v}
    if caps.tools:
        out["supported_parameters"] = ["tools", "tool_choice"]
    if caps.context > 0:
        out["context_length"] = caps.context
    return out


def quarantine_json(q: Quarantine) -> dict[str, Any]:
    """A crash-loop quarantine as the API shows it."""
    until = datetime.fromtimestamp(q.until, UTC).isoformat(timespec="seconds")
    return {
        "reason": q.reason,
        "failures": q.failures,
        "until": until.replace("+00:00", "Z"),
        "retry_after": max(1, math.ceil(q.until - time.time())),
    }


def model_status(rt: Runtime) -> list[dict[str, Any]]:
    """Every local model with its state, then every peer model (llama-swap §5.3)."""
    out: list[dict[str, Any]] = []
    states = rt.router.status()
    saved = rt.router.saved_slots()
    for mid, model in sorted(rt.config.models.items()):
        entry: dict[str, Any] = {
            "id": mid,
            "name": model.name,
            "description": model.description,
            "state": states[mid].state.value,
            "unlisted": model.unlisted,
            "peerID": "",
        }
        quarantine = states[mid].quarantine
        if quarantine is not None:
            entry["quarantine"] = quarantine_json(quarantine)
        slots = saved.get(mid)
        if slots is not None and slots.count:
            entry["slots"] = {
                "count": slots.count,
                "tokens": slots.tokens,
                "bytes": slots.bytes,
            }
        if aliases := aliases_of(mid, model):
            entry["aliases"] = aliases
        if model.capabilities.configured:
            entry["capabilities"] = render_capabilities(model.capabilities).get(
                "capabilities", {}
            )
            if model.capabilities.context:
                entry["context_length"] = model.capabilities.context
        out.append(entry)
    for pid, peer in sorted(rt.config.peers.items()):
        out.extend(
            {
                "id": f"{pid}/{m}",
                "name": "",
                "description": "",
                "state": "",
                "unlisted": False,
                "peerID": pid,
            }
            for m in dict.fromkeys(peer.models)
        )
    return out
