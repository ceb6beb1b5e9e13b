"""The matrix DSL: llama-swap's ``routing.router.settings.matrix`` read,
checked and compiled (llama-swap.md §1.7, §4).

Owns everything about the block except solving: validating
``vars``/``evict_costs``/``sets`` against the configured model ids,
tokenizing and parsing each set's DSL, linking ``+ref`` references into one
DAG of ``Leaf``/``OpNode`` nodes per set (``MatrixProgram``). The solver that
answers "which running models must stop so that ``target`` may start" is
``controller.engine.matrix``. Pure: no I/O, no clock, no logging.

Grammar (``&`` binds tighter than ``|``)::

    expr := and ('|' and)*
    and  := atom ('&' atom)*
    atom := IDENT | '+' NAME | '(' expr ')'

Error positions are 0-based code-point indexes into the DSL string after its
surrounding whitespace is trimmed, as llama-swap reports them (runes of the
trimmed string); for a bare ``+`` the position is the one just after it.

Every error text is llama-swap's, including its ``matrix: `` prefix, so a
config that llama-swap rejects is rejected here with the same words.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, TypeAlias, cast

from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# The keys llama-swap reads from a matrix block; the loader may warn on others.
MATRIX_KEYS = frozenset({"vars", "evict_costs", "sets"})

DEFAULT_EVICT_COST = 1
_VAR_KEY = re.compile(r"[a-zA-Z0-9.-]{1,32}")

# Go's unicode.IsSpace (the White_Space property); str.isspace() differs on a
# few control characters, and llama-swap both trims and skips with this set.
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


class DSLError(ValueError):
    """A DSL string that does not tokenize or parse; wrapped per set at load."""


# -- Go-compatible quoting ------------------------------------------------------
# llama-swap formats names with Go's %q; matching it keeps messages identical
# even for names with quotes or control characters.

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _escape(ch: str, quote: str) -> str:
    if ch in (quote, "\\"):
        return "\\" + ch
    if ch in _GO_ESCAPES:
        return _GO_ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """Go's ``%q`` for a string: ``"name"``."""
    return '"' + "".join(_escape(ch, '"') for ch in text) + '"'


def _quote_rune(ch: str) -> str:
    return "'" + _escape(ch, "'") + "'"


# -- tokenizer ------------------------------------------------------------------

TokenKind = Literal["ident", "ref", "&", "|", "(", ")", "eof"]


class Token(NamedTuple):
    kind: TokenKind
    value: str  # the name for ident/ref (without '+'), the symbol otherwise


_SYMBOLS: dict[str, TokenKind] = {"&": "&", "|": "|", "(": "(", ")": ")"}


def _is_ident_char(ch: str) -> bool:
    # Go's unicode.IsLetter / IsDigit: categories L* and Nd (isdecimal, not
    # isdigit, which also accepts superscripts).
    return ch.isalpha() or ch.isdecimal() or ch in "_-."


def _ident_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and _is_ident_char(text[end]):
        end += 1
    return end


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens ending with ``eof``; raise DSLError."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _SPACE:
            i += 1
        elif ch in _SYMBOLS:
            tokens.append(Token(_SYMBOLS[ch], ch))
            i += 1
        elif ch == "+":
            end = _ident_end(text, i + 1)
            if end == i + 1:
                raise DSLError(
                    f"tokenize: expected set name after '+' at position {i + 1}"
                )
            tokens.append(Token("ref", text[i + 1 : end]))
            i = end
        elif _is_ident_char(ch):
            end = _ident_end(text, i)
            tokens.append(Token("ident", text[i:end]))
            i = end
        else:
            raise DSLError(
                f"tokenize: unexpected character {_quote_rune(ch)} at position {i}"
            )
    tokens.append(Token("eof", ""))
    return tokens


# -- parser -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ident:
    name: str  # a var key or a model id, resolved when the matrix is compiled


@dataclass(frozen=True, slots=True)
class Ref:
    name: str  # another set's name (written ``+name``)


@dataclass(frozen=True, slots=True)
class Op:
    kind: Literal["&", "|"]
    children: tuple[Expr, ...]  # two or more


Expr: TypeAlias = "Ident | Ref | Op"


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._pos = 0

    def peek(self) -> Token:
        return self._tokens[self._pos]

    def next(self) -> Token:
        token = self._tokens[self._pos]
        if token.kind != "eof":
            self._pos += 1
        return token

    def expr(self) -> Expr:
        return self._chain("|", self.conjunction)

    def conjunction(self) -> Expr:
        return self._chain("&", self.atom)

    def _chain(self, kind: Literal["&", "|"], operand: Callable[[], Expr]) -> Expr:
        children = [operand()]
        while self.peek().kind == kind:
            self.next()
            children.append(operand())
        return children[0] if len(children) == 1 else Op(kind, tuple(children))

    def atom(self) -> Expr:
        token = self.next()
        if token.kind == "ident":
            return Ident(token.value)
        if token.kind == "ref":
            return Ref(token.value)
        if token.kind == "(":
            inner = self.expr()
            if self.next().kind != ")":
                raise DSLError("parse: missing closing parenthesis")
            return inner
        raise DSLError(f"parse: unexpected token {go_quote(token.value)}")


def parse_dsl(text: str) -> Expr:
    """Parse one set's DSL string; raise DSLError with llama-swap's text."""
    text = text.strip(_SPACE)
    if not text:
        raise DSLError("empty DSL expression")
    parser = _Parser(tokenize(text))
    root = parser.expr()
    if parser.peek().kind != "eof":
        raise DSLError(
            f"parse: unexpected token {go_quote(parser.peek().value)} after expression"
        )
    return root


def _leaves(expr: Expr) -> Iterable[Ident | Ref]:
    """Identifiers and references left to right (llama-swap's pre-order walk)."""
    if isinstance(expr, Op):
        for child in expr.children:
            yield from _leaves(child)
    else:
        yield expr


# -- compiled form ----------------------------------------------------------------
# References are linked by sharing the referenced set's compiled root, so the
# program is a DAG; nodes hash by identity (eq=False) for per-query memoization.


@dataclass(frozen=True, slots=True, eq=False)
class Leaf:
    model: str  # a real model id


@dataclass(frozen=True, slots=True, eq=False)
class OpNode:
    kind: Literal["&", "|"]
    children: tuple[Node, ...]


Node: TypeAlias = "Leaf | OpNode"


@dataclass(frozen=True, slots=True)
class CompiledSet:
    name: str
    dsl: str
    root: Node
    support: frozenset[str]  # every model the expression mentions


def _link(expr: Expr, resolve: Callable[[str], str], roots: dict[str, Node]) -> Node:
    if isinstance(expr, Ident):
        return Leaf(resolve(expr.name))
    if isinstance(expr, Ref):
        return roots[expr.name]  # dependency-first order: already compiled
    return OpNode(expr.kind, tuple(_link(c, resolve, roots) for c in expr.children))


def _support(node: Node, memo: dict[int, frozenset[str]]) -> frozenset[str]:
    cached = memo.get(id(node))
    if cached is not None:
        return cached
    if isinstance(node, Leaf):
        out = frozenset({node.model})
    else:
        out = frozenset().union(*(_support(c, memo) for c in node.children))
    memo[id(node)] = out
    return out


# -- projected evaluation ---------------------------------------------------------
# A query only cares about the relevant models (target + running): every other
# model is projected away (bit 0), so choices differing only in irrelevant
# models collapse, and a state whose mask is a subset of another's is dropped
# (it can never cost less, costs being positive). Families stay at most
# 2^|relevant| whatever the size of the Cartesian product.

# A witness records the concrete choice behind a state, for the log line.
Witness: TypeAlias = "str | tuple[Witness, Witness] | None"


class State(NamedTuple):
    mask: int
    witness: Witness


def maximal(candidates: Iterable[State]) -> list[State]:
    """Drop duplicate and dominated states, keeping first-seen order.

    Same result as llama-swap's one-at-a-time frontier (a candidate equal to or
    inside a kept state is dropped, states inside it are removed), computed in
    one pass per popcount level: a mask can only sit inside a larger one.
    """
    first: dict[int, State] = {}
    for state in candidates:
        first.setdefault(state.mask, state)  # equal masks: the earlier one wins
    kept: set[int] = set()
    larger: list[int] = []
    by_size = sorted(first, key=int.bit_count, reverse=True)
    for _, level in itertools.groupby(by_size, key=int.bit_count):
        fresh = [m for m in level if not any(m & ~big == 0 for big in larger)]
        kept.update(fresh)
        larger.extend(fresh)
    return [state for mask, state in first.items() if mask in kept]


def span(states: Iterable[State]) -> int:
    return functools.reduce(operator.or_, (s.mask for s in states), 0)


class Projection:
    """One query's view of the program, memoized per node."""

    def __init__(self, relevant: Iterable[str]) -> None:
        self.bits = {m: 1 << i for i, m in enumerate(dict.fromkeys(relevant))}
        self._memo: dict[int, list[State]] = {}

    def mask(self, models: Iterable[str]) -> int:
        out = 0
        for model in models:
            out |= self.bits[model]
        return out

    def members(self, mask: int) -> frozenset[str]:
        return frozenset(m for m, bit in self.bits.items() if mask & bit)

    def states(self, node: Node) -> list[State]:
        cached = self._memo.get(id(node))
        if cached is None:
            cached = self._evaluate(node)
            self._memo[id(node)] = cached
        return cached

    def _evaluate(self, node: Node) -> list[State]:
        if isinstance(node, Leaf):
            return [State(self.bits.get(node.model, 0), node.model)]
        if node.kind == "|":  # alternatives, left to right
            return maximal(s for child in node.children for s in self.states(child))
        out = [State(0, None)]  # "&": one choice from each side, unioned
        for child in node.children:
            rights = self.states(child)
            product = [
                State(left.mask | right.mask, (left.witness, right.witness))
                for left in out
                for right in rights
            ]
            # Both sides are antichains; over disjoint models their product is
            # one too, so pruning (the costly part) is needed only on overlap.
            out = maximal(product) if span(out) & span(rights) else product
        return out


def flatten(witness: Witness) -> frozenset[str]:
    out: set[str] = set()
    stack = [witness]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.add(item)
        elif item is not None:
            stack.extend(item)
    return frozenset(out)


# -- the compiled program ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatrixProgram:
    """A validated matrix: its sets compiled (dependencies first) and costs."""

    vars: Mapping[str, str]
    costs: Mapping[str, int]
    sets: tuple[CompiledSet, ...]

    def coexist(self, models: Iterable[str]) -> bool:
        """Whether one expanded set contains every one of ``models``."""
        return self.first_containing(frozenset(models)) is not None

    def first_containing(self, models: frozenset[str]) -> CompiledSet | None:
        view = Projection(sorted(models))
        everything = view.mask(models)
        for compiled in self.sets:
            if not models <= compiled.support:
                continue
            if any(s.mask == everything for s in view.states(compiled.root)):
                return compiled
        return None

    def expand(
        self, set_name: str, relevant: Iterable[str] | None = None
    ) -> list[frozenset[str]]:
        """The set's expanded family, projected onto ``relevant`` (default: all).

        Only maximal sets are listed: under subset semantics a set contained in
        another adds nothing. Exponential without a small ``relevant``; meant
        for tests and diagnostics, not for the request path.
        """
        compiled = next(s for s in self.sets if s.name == set_name)
        view = Projection(
            sorted(compiled.support) if relevant is None else sorted(set(relevant))
        )
        return [view.members(s.mask) for s in view.states(compiled.root)]


def compile_matrix(
    vars: Mapping[str, str],
    evict_costs: Mapping[str, int],
    sets: Mapping[str, str],
    models: Iterable[str],
) -> MatrixProgram:
    """Validate and compile a matrix block against the real model ids.

    ``sets`` is ordered: definition order breaks ties, except that a set
    referenced with ``+ref`` is compiled before the sets referencing it.
    Raises ConfigError with llama-swap's message on any invalid input.
    """
    known = frozenset(models)
    try:
        if not sets:
            raise ConfigError("matrix must define at least one set")
        checked_vars = _check_vars(vars, known)

        def resolve(name: str) -> str | None:
            # A var shadows a model id of the same name; aliases are not ids.
            if name in checked_vars:
                return checked_vars[name]
            return name if name in known else None

        costs = _check_costs(evict_costs, resolve)
        return MatrixProgram(checked_vars, costs, _compile(sets, resolve))
    except ConfigError as exc:
        raise ConfigError(f"matrix: {exc.message}") from exc


# -- load-time validation ---------------------------------------------------------


def _check_vars(vars: Mapping[str, str], known: frozenset[str]) -> dict[str, str]:
    for key, model in vars.items():
        if not _VAR_KEY.fullmatch(key):
            raise ConfigError(
                f"var key {go_quote(key)} must contain only alphanumeric, '-' or '.'"
                " characters and be 1-32 characters long"
            )
        if model not in known:
            raise ConfigError(
                f"var key {go_quote(key)} references unknown model {go_quote(model)}"
            )
    return dict(vars)


def _check_costs(
    costs: Mapping[str, object], resolve: Callable[[str], str | None]
) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in costs.items():
        cost = _positive_int(key, value)
        model = resolve(key)
        if model is None:
            raise ConfigError(f"evict_costs: unknown var or model {go_quote(key)}")
        out[model] = cost  # a var and its model both keyed: the later one wins
    return out


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return value
        shown = str(value)
    else:  # YAML gave a string, float, bool or null: llama-swap cannot decode it
        shown = repr(value)
    raise ConfigError(
        f"evict_cost for {go_quote(key)} must be a positive integer, got {shown}"
    )


def _compile(
    sets: Mapping[str, str], resolve: Callable[[str], str | None]
) -> tuple[CompiledSet, ...]:
    parsed: dict[str, Expr] = {}
    deps: dict[str, list[str]] = {}
    for name, dsl in sets.items():
        parsed[name] = _parse_set(name, dsl)
        deps[name] = _check_names(name, parsed[name], resolve, sets)
    roots: dict[str, Node] = {}
    support_memo: dict[int, frozenset[str]] = {}
    out: list[CompiledSet] = []
    for name in _dependency_order(list(sets), deps):
        roots[name] = _link(parsed[name], _strict(resolve), roots)
        support = _support(roots[name], support_memo)
        out.append(CompiledSet(name, sets[name], roots[name], support))
    return tuple(out)


def _parse_set(name: str, dsl: str) -> Expr:
    try:
        return parse_dsl(dsl)
    except DSLError as exc:
        raise ConfigError(f"set {go_quote(name)}: {exc}") from exc


def _check_names(
    name: str,
    expr: Expr,
    resolve: Callable[[str], str | None],
    sets: Mapping[str, str],
) -> list[str]:
    """Check every identifier and reference; return the referenced sets."""
    refs: list[str] = []
    for leaf in _leaves(expr):
        if isinstance(leaf, Ident) and resolve(leaf.name) is None:
            raise ConfigError(
                f"set {go_quote(name)}: unknown var or model {go_quote(leaf.name)}"
            )
        if isinstance(leaf, Ref):
            if leaf.name not in sets:
                raise ConfigError(
                    f"set {go_quote(name)} references undefined set "
                    f"{go_quote(leaf.name)}"
                )
            if leaf.name not in refs:
                refs.append(leaf.name)
    return refs


def _strict(resolve: Callable[[str], str | None]) -> Callable[[str], str]:
    def strict(name: str) -> str:
        model = resolve(name)
        assert model is not None  # every identifier was checked by _check_names
        return model

    return strict


def _dependency_order(names: list[str], deps: Mapping[str, list[str]]) -> list[str]:
    """Definition order, each set after the sets it references; reject cycles."""
    state: dict[str, Literal["visiting", "done"]] = {}
    order: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == "visiting":
            raise ConfigError(
                f"circular reference detected involving set {go_quote(name)}"
            )
        if name in state:
            return
        state[name] = "visiting"
        for dep in deps[name]:
            visit(dep)
        state[name] = "done"
        order.append(name)

    for name in names:
        visit(name)
    return order


# -- from the raw config ----------------------------------------------------------


def _text(value: object, where: str) -> str:
    """A YAML scalar as the string llama-swap's decoder would make of it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(f"matrix: {where} must be a string, got {value!r}")


def _mapping(raw: Mapping[str, object], key: str, what: str) -> dict[str, object]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"matrix: {key}: must be a mapping of {what}")
    return {_text(k, f"{key} key {k!r}"): v for k, v in value.items()}


class MatrixSettings(Protocol):
    """A typed matrix block, e.g. the loader's pydantic model (read-only)."""

    @property
    def vars(self) -> Mapping[str, str]: ...

    @property
    def evict_costs(self) -> Mapping[str, int]: ...

    @property
    def sets(self) -> Mapping[str, str]: ...


def program_from_config(
    matrix: MatrixSettings | Mapping[str, object] | None, models: Iterable[str]
) -> MatrixProgram:
    """Validate a matrix block and compile it.

    ``matrix`` is either the raw YAML mapping (shapes checked here, so null or
    numeric DSL strings get llama-swap's treatment) or an already-typed block.
    ``models`` are the real model ids (aliases are not accepted in the DSL).
    Keys other than MATRIX_KEYS are ignored here; the loader may warn on them.
    Raises ConfigError with llama-swap's messages.
    """
    if matrix is None or isinstance(matrix, Mapping):
        return _from_raw(matrix, models)
    if not all(hasattr(matrix, key) for key in MATRIX_KEYS):
        raise ConfigError("matrix: must be a mapping with vars, evict_costs and sets")
    return compile_matrix(matrix.vars, matrix.evict_costs, matrix.sets, models)


def _from_raw(raw: Mapping[str, object] | None, models: Iterable[str]) -> MatrixProgram:
    raw = raw or {}
    vars = {
        k: _text(v, f"vars.{k}")
        for k, v in _mapping(raw, "vars", "var key to model id").items()
    }
    sets = {
        k: _text(v, f"sets.{k}")
        for k, v in _mapping(raw, "sets", "set name to DSL expression").items()
    }
    costs = _mapping(raw, "evict_costs", "var or model id to cost")
    # Not narrowed here: compile_matrix checks each cost at runtime, in
    # llama-swap's order and words ("must be a positive integer, got ...").
    return compile_matrix(vars, cast("Mapping[str, int]", costs), sets, models)
