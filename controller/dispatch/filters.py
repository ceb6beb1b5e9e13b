"""llama-swap's request filters on JSON bodies (llama-swap.md §1.3, §2.1, §6).

Owns ``filters.stripParams`` normalisation and the filter pass over a JSON
request body, in llama-swap's order: ``useModelName`` rewrites ``model``, then
``stripParams`` deletes, ``setParams`` sets (sorted key order), and finally
``setParamsByID[requested]`` sets (so it overrides ``setParams``). ``model`` can
never be stripped or set by params. Peers use the same pass with no
``useModelName`` and no ``setParamsByID``.

Keys are gjson/sjson-style paths: dots address nested fields (``a.b``), ``\\``
escapes a dot or colon, a number addresses an array element when the value
there is an array (``-1``: append on set, last element on delete) and a
leading ``:`` forces an object key (``users.:2313``). Wildcards have no
special meaning. Missing objects on a set path are created.

The body is only parsed when some filter is configured and only re-encoded
when one actually changed it; otherwise the same ``bytes`` object comes back.
Re-encoding keeps key order and writes every number exactly as it was sent
(``1e400``, ``0.10``, ``12345678901234567890`` are never turned into floats).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.errors import BadRequest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

PROTECTED = frozenset({"model"})
_INDEX_RE = re.compile(r"-?[0-9]+")


def normalize_strip_params(value: str) -> tuple[str, ...]:
    """``"b, a,,a, model"`` → ``("a", "b")``: trimmed, deduplicated, sorted."""
    names = {part.strip() for part in value.split(",")}
    return tuple(sorted(names - PROTECTED - {""}))


def apply_filters(
    body: bytes,
    *,
    use_model_name: str,
    strip: Sequence[str],
    set_params: Mapping[str, Any],
    set_params_by_id: Mapping[str, Mapping[str, Any]],
    requested_id: str,
) -> bytes:
    """The body with the filters applied; ``body`` itself when nothing changed.

    Raises BadRequest when a filter must run and the body is not a JSON object.
    """
    sets = [*_settable(set_params), *_settable(set_params_by_id.get(requested_id))]
    strips = [p for p in strip if p and p not in PROTECTED]
    if not (use_model_name or strips or sets):
        return body
    doc = _parse_object(body)
    changed = False
    if use_model_name and doc.get("model") != use_model_name:
        doc["model"] = use_model_name
        changed = True
    for path in strips:
        changed = _delete(doc, _split_path(path)) or changed
    for key, value in sets:
        _set(doc, _split_path(key), copy.deepcopy(value), key)
        changed = True
    return _encode(doc) if changed else body


def _settable(params: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """Params in sorted key order, protected keys left out."""
    if not params:
        return []
    return sorted(
        ((str(k), v) for k, v in params.items() if str(k) not in PROTECTED),
        key=lambda kv: kv[0],
    )


# -- parsing, with numbers kept as sent --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Number:
    """A JSON number (or NaN/Infinity constant) as the client wrote it."""

    text: str


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(
            body, parse_int=_Number, parse_float=_Number, parse_constant=_Number
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest("the JSON request body must be an object")
    return doc


# -- paths ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    key: str
    force_key: bool  # written ":key": never an array index

    def index(self, length: int) -> int | None:
        """The array position this step names, if it is an index."""
        if self.force_key or not _INDEX_RE.fullmatch(self.key):
            return None
        i = int(self.key)
        if i == -1:
            return length
        return i if i >= 0 else None


def _split_path(path: str) -> list[_Step]:
    """``a.b\\.c.:1`` → steps ``a``, ``b.c``, forced key ``1``."""
    steps: list[_Step] = []
    part: list[str] = []
    forced = False
    chars = iter(path)
    for ch in chars:
        if ch == "\\":
            part.append(next(chars, ""))
        elif ch == ":" and not part and not forced:
            forced = True
        elif ch == ".":
            steps.append(_Step("".join(part), forced))
            part, forced = [], False
        else:
            part.append(ch)
    steps.append(_Step("".join(part), forced))
    return steps


_MISSING = object()


def _delete(doc: Any, steps: list[_Step]) -> bool:
    """Remove the value at ``steps``; False when there was none."""
    *parents, last = steps
    target = doc
    for step in parents:
        target = _child(target, step, append=False)
        if target is None:
            return False
    if isinstance(target, dict):
        return target.pop(last.key, _MISSING) is not _MISSING
    if isinstance(target, list):
        i = last.index(max(len(target) - 1, 0))
        if i is not None and i < len(target):
            del target[i]
            return True
    return False


def _child(container: Any, step: _Step, *, append: bool) -> Any:
    """The value one step down, or None when there is none.

    ``-1`` names the last element, or (``append``) the slot just past it.
    """
    if isinstance(container, dict):
        return container.get(step.key)
    if isinstance(container, list):
        i = step.index(len(container) if append else max(len(container) - 1, 0))
        if i is not None and i < len(container):
            return container[i]
    return None


def _set(doc: dict[str, Any], steps: list[_Step], value: Any, key: str) -> None:
    """Set ``value`` at ``steps``, creating (or replacing scalars with) objects."""
    *parents, last = steps
    target: Any = doc
    for step in parents:
        nxt = _child(target, step, append=True)
        if not isinstance(nxt, dict | list):
            nxt = {}
            _put(target, step, nxt, key)
        target = nxt
    _put(target, last, value, key)


def _put(container: Any, step: _Step, value: Any, key: str) -> None:
    if isinstance(container, dict):
        container[step.key] = value
        return
    i = step.index(len(container))
    if i is None:
        raise BadRequest(f"error setting parameter {key} in request")
    container.extend([None] * (i + 1 - len(container)))
    container[i] = value


# -- encoding -------------------------------------------------------------------


def _encode(doc: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8 kept; lone surrogates (``"\\ud800"``) force escapes."""
    try:
        return "".join(_emit(doc, ascii_only=False)).encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_emit(doc, ascii_only=True)).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"error encoding filtered request: {exc}") from exc


def _emit(value: Any, *, ascii_only: bool) -> Iterator[str]:
    if isinstance(value, _Number):
        yield value.text
    elif isinstance(value, dict):
        yield from _emit_object(value, ascii_only=ascii_only)
    elif isinstance(value, list | tuple):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _emit(item, ascii_only=ascii_only)
        yield "]"
    else:  # str, int, float, bool, None (and anything json knows)
        yield json.dumps(value, ensure_ascii=ascii_only, allow_nan=False, default=str)


def _emit_object(obj: dict[Any, Any], *, ascii_only: bool) -> Iterator[str]:
    yield "{"
    for i, (key, item) in enumerate(obj.items()):
        if i:
            yield ","
        yield json.dumps(_key_text(key), ensure_ascii=ascii_only)
        yield ":"
        yield from _emit(item, ascii_only=ascii_only)
    yield "}"


def _key_text(key: Any) -> str:
    """Object keys as json.dumps writes them (set values may come from YAML)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return str(key)
