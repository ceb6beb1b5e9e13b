"""Eviction policies: which running models must stop before a target may start.

``build_policy`` picks the config's engine: llama-swap's groups (§1.6,
``GroupPolicy`` here, with the implicit ``(default)`` group that makes "one
model at a time" the default) or the matrix solver (``controller.engine.matrix``).
Pure: no I/O, no clock, no logging, because the scheduler asks a policy
speculatively on every queue drain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.engine.matrix import MatrixPolicy, policy_from_config

if TYPE_CHECKING:
    from collections.abc import Iterable, Set

    from controller.config.model import Config
    from controller.engine.scheduler import EvictionPolicy


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    members: frozenset[str]
    swap: bool = True  # only one member may run at a time
    exclusive: bool = True  # loading a member unloads other groups' models
    persistent: bool = False  # never evicted by other groups


DEFAULT_GROUP = "(default)"


class GroupPolicy:
    """llama-swap's group rules, as a pure function of (target, running)."""

    def __init__(self, groups: Iterable[Group], models: Iterable[str]) -> None:
        listed = list(groups)
        grouped = {m for g in listed for m in g.members}
        rest = frozenset(m for m in models if m not in grouped)
        if rest:
            listed.append(Group(DEFAULT_GROUP, rest))
        self._group_of = {m: g for g in listed for m in g.members}

    def evict(self, target: str, running: Set[str]) -> frozenset[str]:
        own = self._group_of[target]
        out = set()
        for model in running:
            if model == target:
                continue
            other = self._group_of.get(model)
            if other is None:
                continue
            if other is own:
                if own.swap:
                    out.add(model)
            elif own.exclusive and not other.persistent:
                out.add(model)
        return frozenset(out)


def build_policy(config: Config) -> EvictionPolicy:
    """The active swap engine: llama-swap's groups, or the matrix solver."""
    engine, groups, _ = config.routing_engine()
    if engine == "matrix":
        return matrix_policy(config)
    return GroupPolicy(
        (
            Group(gid, frozenset(g.members), g.swap, g.exclusive, g.persistent)
            for gid, g in groups.items()
        ),
        config.models,
    )


def matrix_policy(config: Config) -> MatrixPolicy:
    """The matrix solver for a config whose engine is ``matrix``."""
    engine, _, matrix = config.routing_engine()
    assert engine == "matrix" and matrix is not None
    return policy_from_config(matrix, list(config.models))
