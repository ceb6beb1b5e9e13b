"""Rules that span config sections (llama-swap.md §1.5, §1.9, §1.10), checked
once at load so a mistake is named before anything starts.

Stricter than llama-swap where it is vague: unknown group members fail at load
(llama-swap fails later, at server construction), checked after everything
llama-swap checks at load so a config with several mistakes is refused for the
same one first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.config.matrix import program_from_config

if TYPE_CHECKING:
    from controller.config.model import Config


def crosscheck(config: Config) -> None:
    """Raise ValueError naming the first inconsistency."""
    _aliases(config)
    _routing(config)
    _priority(config)
    _peers(config)
    _selectors(config)
    _profiles(config)
    _members_exist(config)


def _aliases(config: Config) -> None:
    owner: dict[str, str] = {}
    for mid, model in sorted(config.models.items()):
        for alias in model.aliases:
            if alias in owner:
                raise ValueError(f"duplicate alias {alias} found in model: {mid}")
            owner[alias] = mid
    for mid, model in sorted(config.models.items()):
        for key in model.filters.set_params_by_id:
            if key == mid:
                continue
            if key in config.models:
                raise ValueError(
                    f"model {mid} filters.setParamsByID: key '{key}' conflicts with "
                    "an existing model ID"
                )
            if key in owner and owner[key] != mid:
                raise ValueError(
                    f"duplicate alias '{key}' in model {mid} filters.setParamsByID, "
                    f"already used by model {owner[key]}"
                )
            owner[key] = mid


def _routing(config: Config) -> None:
    block = config.routing.router
    legacy = bool(config.groups) or config.matrix is not None
    modern = bool(block.use or block.settings.groups or block.settings.matrix)
    if legacy and modern:
        raise ValueError(
            "config uses both the legacy top-level 'matrix'/'groups' keys and the new "
            "'routing.router' block; please migrate the top-level keys into "
            "'routing.router' and remove them"
        )
    if config.groups and config.matrix is not None:
        raise ValueError("config cannot use both 'groups' and 'matrix'")
    if block.use not in ("", "group", "matrix", "resources"):
        raise ValueError(
            f'routing.router.use: unknown router "{block.use}" '
            "(valid: group, matrix, resources)"
        )
    if block.use == "matrix" and block.settings.matrix is None:
        raise ValueError(
            "routing.router.use is 'matrix' but "
            "routing.router.settings.matrix is not set"
        )
    engine, groups, matrix = config.routing_engine()
    if engine == "matrix":
        assert matrix is not None
        program_from_config(matrix, list(config.models))  # ConfigError names the set
        return
    if engine == "resources":
        _pins_on_budget(config)
    member_of: dict[str, str] = {}
    for gid, group in groups.items():
        for i, member in enumerate(group.members):
            if member in group.members[:i]:
                raise ValueError(
                    f"duplicate model member {member} found in group: {gid}"
                )
            if member in member_of:
                raise ValueError(
                    f"model member {member} is used in multiple groups: "
                    f"{member_of[member]} and {gid}"
                )
            member_of[member] = gid


def _pins_on_budget(config: Config) -> None:
    """A model pinned to a GPU the budget does not list can never start."""
    resources = config.resources
    if resources is None or isinstance(resources.gpus, str):
        return  # gpus: auto — checked against NVML when swapvisor starts
    listed = {g.index for g in resources.gpus}
    for mid in sorted(config.models):
        pins = config.models[mid].gpus or ()
        missing = sorted(set(pins) - listed)
        if missing:
            raise ValueError(
                f"model {mid}: gpus {missing} not in "
                f"routing.router.settings.resources.gpus (listed: {sorted(listed)})"
            )


def _members_exist(config: Config) -> None:
    """Last, as llama-swap finds an unknown member only when it builds the
    router, after every load-time check."""
    engine, groups, _ = config.routing_engine()
    for gid, group in groups.items() if engine != "matrix" else ():
        for member in group.members:
            if member not in config.models:
                raise ValueError(
                    f"group {gid}: member {member} is not a configured "
                    "model (members must be model IDs, not aliases)"
                )


def _priority(config: Config) -> None:
    for name in config.routing.scheduler.settings.fifo.priority:
        if config.resolve(name) is None:
            raise ValueError(
                "routing.scheduler.settings.fifo.priority references "
                f'unknown model "{name}"'
            )


def _peers(config: Config) -> None:
    qualified: dict[str, str] = {}
    for pid, peer in sorted(config.peers.items()):
        for model in dict.fromkeys(peer.models):  # a repeated model is ignored
            fqn = f"{pid}/{model}"
            if fqn in qualified:
                raise ValueError(
                    f'peer model name "{fqn}" is ambiguous between '
                    f'{qualified[fqn]} and peers.{pid} model "{model}"'
                )
            qualified[fqn] = f'peers.{pid} model "{model}"'
    for fqn in sorted(qualified):
        if fqn in config.models:
            raise ValueError(
                f'model ID "{fqn}" conflicts with fully qualified peer model name'
            )
        for mid, cfg in sorted(config.models.items()):
            if fqn in cfg.aliases:
                raise ValueError(
                    f'model {mid} alias "{fqn}" conflicts with fully '
                    "qualified peer model name"
                )
        if config.alias_owner(fqn) is not None:  # a setParamsByID key
            raise ValueError(
                f'model alias "{fqn}" conflicts with fully qualified peer model name'
            )
        if fqn in config.selectors:
            raise ValueError(
                f'selector ID "{fqn}" conflicts with fully qualified peer model name'
            )
        for name, profile in sorted(config.profiles.items()):
            if fqn in profile.pins:
                raise ValueError(
                    f'profile {name} pin "{fqn}" conflicts with fully '
                    "qualified peer model name"
                )


def _selectors(config: Config) -> None:
    for sid, sel in config.selectors.items():
        if sid in config.models:
            raise ValueError(f'selectors.{sid}: name conflicts with model ID "{sid}"')
        if config.alias_owner(sid) is not None:
            raise ValueError(
                f'selectors.{sid}: name conflicts with model alias "{sid}"'
            )
        resolved: list[str] = []
        for i, target in enumerate(sel.targets):
            if target in config.selectors:
                raise ValueError(
                    f"selectors.{sid}.targets[{i}] references selector "
                    f'"{target}"; selector chaining is not supported'
                )
            local = config.resolve(target)
            peer = config.peer_of(target)
            if local is None and peer is None:
                raise ValueError(
                    f'selectors.{sid}.targets[{i}] references unknown model "{target}"'
                )
            if sel.strategy == "warm" and local is None:
                raise ValueError(
                    f"selectors.{sid}.targets[{i}] must resolve to a local "
                    'model for strategy "warm"'
                )
            resolved.append(local or "/".join(peer or (target,)))
        if sel.strategy == "spillover":
            _spillover(config, sid, resolved)


def _spillover(config: Config, sid: str, resolved: list[str]) -> None:
    if len(set(resolved)) != len(resolved):
        dup = next(r for r in resolved if resolved.count(r) > 1)
        raise ValueError(
            f'selectors.{sid}.targets contains duplicate resolved model "{dup}"'
        )
    local = [r for r in resolved if r in config.models]
    if len(local) < 2:
        return
    engine, groups, matrix = config.routing_engine()
    if engine == "resources":
        return  # whether targets fit together is measured, not declared
    if engine == "matrix":
        assert matrix is not None
        if not program_from_config(matrix, list(config.models)).coexist(set(local)):
            raise ValueError(
                f"selectors.{sid}.targets must all appear together in one "
                "expanded matrix set"
            )
        return
    # llama-swap's order: the first target's group, its swap flag, the rest.
    group_of = {m: g for g, cfg in groups.items() for m in cfg.members}
    first = group_of.get(local[0])
    if first is None:
        raise ValueError(
            f'selectors.{sid} target "{local[0]}" is not in a routing group'
        )
    if groups[first].swap:
        raise ValueError(
            f"selectors.{sid} spillover targets must share a group with swap: false"
        )
    if any(group_of.get(t) != first for t in local[1:]):
        raise ValueError(
            f"selectors.{sid} spillover targets must share one routing group"
        )


def _profiles(config: Config) -> None:
    for name, profile in config.profiles.items():
        if not profile.pins:
            raise ValueError(f"profiles.{name}.pins must contain at least one entry")
        for key, target in profile.pins.items():
            if not key.strip():
                raise ValueError(f"profiles.{name}.pins: pin names cannot be empty")
            if not target:
                continue  # an empty pin disables that name
            known = (
                config.resolve(target) is not None
                or target in config.selectors
                or config.peer_of(target) is not None
            )
            if not known:
                raise ValueError(
                    f'profiles.{name}.pins.{key} references unknown model "{target}"'
                )
