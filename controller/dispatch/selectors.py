"""Selectors: one requested name, several targets; pick one per request
(llama-swap.md §1.9). ``warm`` and ``spillover`` read model states, which is
an advisory read: it chooses a name, it never starts or stops anything."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.engine.states import UpstreamState
from controller.errors import ControllerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.config.model import Config

S = UpstreamState


class SelectorUnavailable(ControllerError):
    status = 503
    code = "selector_unavailable"
    retry_after = 1


@dataclass(slots=True)
class Choice:
    """A selector's pick for one request; ``release()`` when the request ends."""

    target: str
    selector: str | None = None
    _counts: Counter[str] | None = None

    def release(self) -> None:
        if self._counts is not None:
            self._counts[self.target] -= 1
            self._counts = None


class Selectors:
    def __init__(
        self, config: Config, state_of: Callable[[str], UpstreamState]
    ) -> None:
        self.config = config
        self._state_of = state_of
        self._reserved: dict[str, Counter[str]] = {}
        self._turn = itertools.count()

    def choose(self, name: str) -> Choice:
        sel = self.config.selectors.get(name)
        if sel is None:
            return Choice(name)
        if sel.strategy == "pin":
            return Choice(sel.targets[0], name)
        if sel.strategy == "warm":
            return Choice(self._warm(sel.targets), name)
        counts = self._reserved.setdefault(name, Counter())
        target = self._spillover(name, sel.targets, sel.settings.spillover, counts)
        counts[target] += 1
        return Choice(target, name, counts)

    def _local_state(self, target: str) -> UpstreamState | None:
        local = self.config.resolve(target)
        return None if local is None else self._state_of(local)

    def _warm(self, targets: list[str]) -> str:
        for wanted in (S.READY, S.STARTING):
            for target in targets:
                if self._local_state(target) is wanted:
                    return target
        return targets[0]

    def _spillover(
        self, sid: str, targets: list[str], limit: int, counts: Counter[str]
    ) -> str:
        def active(t: str) -> bool:
            state = self._local_state(t)
            if state is S.STOPPING:
                return False
            return counts[t] > 0 or state in (S.READY, S.STARTING)

        live = [t for t in targets if active(t)]
        cold = [
            t
            for t in targets
            if not active(t) and self._local_state(t) is not S.STOPPING
        ]
        if not live:
            if cold:
                return cold[0]
            raise SelectorUnavailable(
                f'selector "{sid}" has no available spillover targets'
            )
        least = min(counts[t] for t in live)
        if least < limit or not cold:
            tied = [t for t in live if counts[t] == least]
            return tied[next(self._turn) % len(tied)]
        return cold[0]
