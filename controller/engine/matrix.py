"""The matrix solver: llama-swap's cost-based eviction over compiled sets
(llama-swap.md §4), the scheduler's ``EvictionPolicy`` for ``use: matrix``.

The DSL, its validation and compilation are ``controller.config.matrix``; this
module answers "which running models must stop so that ``target`` may start"
(``MatrixPolicy.evict``) and explains the choice (``MatrixDecision``). Pure:
no I/O, no clock, no logging; the router logs the decision it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.config.matrix import (
    DEFAULT_EVICT_COST,
    MatrixProgram,
    Projection,
    compile_matrix,
    flatten,
    program_from_config,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Set

    from controller.config.matrix import CompiledSet, MatrixSettings, State

# -- the policy -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatrixDecision:
    """The solver's answer, with what llama-swap logs about it."""

    # The chosen set; None when the target is in no set. When the target is
    # already running: the first set holding everything running, if any.
    set_name: str | None
    dsl: str | None
    evict: frozenset[str]
    cost: int  # sum of the evicted models' costs
    # The concrete expanded set chosen (target included); when the target is
    # already running, the running models; when in no set, just the target.
    members: frozenset[str]


class MatrixPolicy:
    """llama-swap's matrix as a pure function of (target, running).

    ``sets`` is ordered: definition order breaks ties, except that a set
    referenced with ``+ref`` is evaluated before the sets referencing it.
    Raises ConfigError with llama-swap's message on any invalid input.
    """

    def __init__(
        self,
        vars: Mapping[str, str],
        evict_costs: Mapping[str, int],
        sets: Mapping[str, str],
        models: Iterable[str],
    ) -> None:
        self._program = compile_matrix(vars, evict_costs, sets, models)
        self._costs = self._program.costs
        self._sets = self._program.sets

    @classmethod
    def of(cls, program: MatrixProgram) -> MatrixPolicy:
        """The policy for an already compiled (validated) matrix."""
        policy = cls.__new__(cls)
        policy._program = program
        policy._costs = program.costs
        policy._sets = program.sets
        return policy

    # -- queries -------------------------------------------------------------------

    @property
    def evaluation_order(self) -> tuple[str, ...]:
        """Set names in tie-break order (definition order, dependencies first)."""
        return tuple(s.name for s in self._sets)

    def coexist(self, models: Iterable[str]) -> bool:
        """Whether one expanded set contains every one of ``models``."""
        return self._program.coexist(models)

    def expand(
        self, set_name: str, relevant: Iterable[str] | None = None
    ) -> list[frozenset[str]]:
        """The set's expanded family (see ``MatrixProgram.expand``)."""
        return self._program.expand(set_name, relevant)

    def cost(self, model: str) -> int:
        return self._costs.get(model, DEFAULT_EVICT_COST)

    def evict(self, target: str, running: Set[str]) -> frozenset[str]:
        """Running models to stop before ``target`` starts (never ``target``)."""
        return self.decide(target, running).evict

    def explain(
        self, target: str, running: Set[str]
    ) -> tuple[str | None, frozenset[str], int]:
        """``(set name or None, evict, cost)``, for the swap's log line."""
        d = self.decide(target, running)
        return d.set_name, d.evict, d.cost

    def decide(self, target: str, running: Set[str]) -> MatrixDecision:
        running = frozenset(running)
        if target in running:
            # Already running: nothing to evict; name a set for the log only.
            found = self._program.first_containing(running)
            return MatrixDecision(
                found.name if found else None,
                found.dsl if found else None,
                frozenset(),
                0,
                running,
            )
        candidates = [s for s in self._sets if target in s.support]
        if not candidates:  # a model in no set runs alone
            cost = sum(self.cost(m) for m in running)
            return MatrixDecision(None, None, running, cost, frozenset({target}))
        return self._solve(target, running, candidates)

    def _solve(
        self, target: str, running: frozenset[str], candidates: list[CompiledSet]
    ) -> MatrixDecision:
        view = Projection([target, *sorted(running)])
        want = view.bits[target]
        total = sum(self.cost(m) for m in running)
        best: tuple[int, CompiledSet, State] | None = None
        for compiled in candidates:
            for state in view.states(compiled.root):
                if not state.mask & want:
                    continue
                kept = view.members(state.mask) - {target}
                cost = total - sum(self.cost(m) for m in kept)
                if best is None or cost < best[0]:  # strict: first found wins ties
                    best = (cost, compiled, state)
        # The target is in every candidate's support, and every model of an
        # expression appears in some expanded set, so some state matched.
        assert best is not None
        cost, chosen, state = best
        evict = running - view.members(state.mask)
        return MatrixDecision(
            chosen.name, chosen.dsl, evict, cost, flatten(state.witness)
        )


def policy_from_config(
    matrix: MatrixSettings | Mapping[str, object] | None, models: Iterable[str]
) -> MatrixPolicy:
    """Validate and compile a matrix block (``program_from_config``) and
    build its policy. Raises ConfigError with llama-swap's messages."""
    return MatrixPolicy.of(program_from_config(matrix, models))
