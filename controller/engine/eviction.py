"""Eviction policy: which running models must stop before a target may start.

Pure: no I/O, no clock, no logging, because the scheduler asks it speculatively
on every queue drain. Implements llama-swap's groups (§1.6), including the
implicit ``(default)`` group that makes "one model at a time" the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Set


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
