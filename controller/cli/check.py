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
from controller.config.schema import config_schema
from controller.engine.eviction import matrix_policy
from controller.engine.pool import check_backends
from controller.engine.resources import (
    LearnedStore,
    Ledger,
    budget_of,
    fmt_bytes,
    memory_fingerprint,
)
from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from controller.config.model import Config
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
        check_backends(loaded.config)
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
    if engine == "resources":
        budget_lines, membership = _resources(config, membership)
        lines.extend(budget_lines)
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


def _resources(
    config: Config, membership: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The budget on this machine, and each model's needs: declared, learned
    (from the learned-figures file), and whether it can ever fit."""
    from backends.memory import SystemMemory

    resources = config.resources
    assert resources is not None
    probe = SystemMemory.open()
    try:
        host, devices = probe.host(), probe.devices()
    finally:
        probe.close()
    budget = budget_of(resources, host.total, devices)
    store = LearnedStore(resources.learned_path())
    ledger = Ledger(budget, store, lambda _m: False)
    ledger.configure(
        {
            mid: (
                m.needs,
                config.pinned_gpus(mid),
                memory_fingerprint(config.launch_spec(mid)),
            )
            for mid, m in config.models.items()
        },
        config.never_evicted(),
    )
    reserve = (
        f"RAM {fmt_bytes(budget.reserve_ram)}, VRAM {fmt_bytes(budget.reserve_vram)}"
    )
    lines = [f"budget: {budget.describe()} (reserve: {reserve} per GPU)"]
    out = {}
    for mid in config.models:
        out[mid] = membership[mid].replace("group: (default)", "").strip()
        facts = ledger.facts[mid]
        parts = []
        if facts.declared is not None:
            parts.append(
                "declared " + _need_text(facts.declared.vram, facts.declared.ram)
            )
        if facts.learned is not None:
            parts.append(
                "learned " + _need_text(facts.learned.vram_total, facts.learned.ram)
            )
        if not parts:
            parts.append("unknown (runs alone on its first load, then learned)")
        if facts.pins is not None:
            parts.append(f"gpus {list(facts.pins)}")
        if mid in ledger.protected:
            parts.append("stays loaded")
        text = "needs: " + "; ".join(parts)
        need = ledger.estimate(mid)
        if need is not None:
            pins = facts.pins or tuple(sorted(budget.gpus))
            if ledger.place(mid, need, budget.ram, budget.gpus, pins) is None:
                text += " -- can never fit this budget (insufficient_memory)"
        out[mid] = f"{out[mid]}\n  {text}".strip() if out[mid] else text
    return lines, out


def _need_text(vram: int | None, ram: int | None) -> str:
    parts = []
    if vram:
        parts.append(f"VRAM {fmt_bytes(vram)}")
    if ram:
        parts.append(f"RAM {fmt_bytes(ram)}")
    return ", ".join(parts) or "nothing"


def _sets_of(policy: MatrixPolicy, model: str) -> list[str]:
    return [
        name
        for name in policy.evaluation_order
        if any(model in combo for combo in policy.expand(name, {model}))
    ]


def schema_main(argv: Sequence[str]) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))  # noqa: T201
    return 0
