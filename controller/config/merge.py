"""Configuration sources and how they merge (llama-swap.md §1.1 items 1-2).

Owns which files make up the configuration (``--config`` first, then the
top-level ``*.yml``/``*.yaml`` files of ``--config-dir`` in sorted filename
order), the per-file step "expand ``${env.X}`` in the raw text, then parse",
and the merge rules between sources. The result is one plain mapping in source
order, not yet validated: ``controller.config`` decodes and checks it.

Merge rules, applied key by key:

* mapping + mapping merge recursively; sequence + sequence concatenate;
* scalar + scalar must be equal (same value and type), else a conflict;
* a null on either side yields to the other side;
* differing kinds are a conflict;
* under an *identity map* (``IDENTITY_MAPS``) each child names one entity (a
  model, a group, a peer, ...), so a child key defined twice is an error.
  ``macros`` is an ordinary mapping: macros from different files combine.

Inputs are never mutated (YAML aliases share objects, so an in-place merge
could leak into every place an anchor is used); merged mappings are new dicts
that keep insertion order, which matters downstream (e.g. matrix ``sets``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

IDENTITY_MAPS = frozenset(
    {
        "models",
        "groups",
        "profiles",
        "selectors",
        "peers",
        "matrix",
        "routing.router.settings.groups",
        "routing.router.settings.matrix",
    }
)
YAML_SUFFIXES = (".yml", ".yaml")


def load_sources(
    config_file: Path | None,
    config_dir: Path | None,
    expand: Callable[[str], str],
    parse: Callable[[str], Any],
) -> dict[str, Any]:
    """Read, expand, parse and merge every configuration source.

    ``expand`` rewrites a file's raw text (``controller.macros.expand_env``);
    ``parse`` turns text into plain data (the project's YAML 1.2-boolean
    loader). Returns ``{}`` when every source is empty.
    """
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in source_paths(config_file, config_dir):
        doc = read_source(path, expand, parse)
        if doc is not None:
            docs.append((str(path), doc))
    return merge_documents(docs)


def source_paths(config_file: Path | None, config_dir: Path | None) -> list[Path]:
    """The files to merge, in merge order."""
    if config_file is None and config_dir is None:
        raise ConfigError("at least one of --config or --config-dir must be provided")
    paths = [] if config_file is None else [config_file]
    if config_dir is not None:
        dir_files = _yaml_files(config_dir)
        if config_file is not None:
            _check_not_in_dir(config_file, config_dir, dir_files)
        paths.extend(dir_files)
    if not paths:
        raise ConfigError("no configuration sources found")
    return paths


def _yaml_files(config_dir: Path) -> list[Path]:
    """Top-level ``*.yml``/``*.yaml`` files of the directory, sorted by name."""
    try:
        entries = list(config_dir.iterdir())
    except OSError as exc:
        raise ConfigError(f"--config-dir {config_dir}: {_reason(exc)}") from exc
    files = [p for p in entries if p.name.endswith(YAML_SUFFIXES) and not p.is_dir()]
    return sorted(files, key=lambda p: p.name)


def _check_not_in_dir(
    config_file: Path, config_dir: Path, dir_files: list[Path]
) -> None:
    target = config_file.resolve()
    if any(f.resolve() == target for f in dir_files):
        raise ConfigError(
            f"--config path {config_file} is also present in --config-dir "
            f"{config_dir}; remove it from one"
        )


def read_source(
    path: Path, expand: Callable[[str], str], parse: Callable[[str], Any]
) -> dict[str, Any] | None:
    """One file as a mapping, or None when it is empty or only comments."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"failed to read config {path}: {_reason(exc)}") from exc
    try:
        doc = parse(expand(text))
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc.message}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"failed to parse config {path}: {exc}") from exc
    if doc is None or (isinstance(doc, dict | list) and not doc):
        return None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: top-level YAML must be a mapping")
    return doc


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# -- merging ----------------------------------------------------------------------


def merge_documents(docs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Merge (source name, mapping) pairs in order; ``{}`` when there are none."""
    merged: dict[str, Any] = {}
    for source, doc in docs:
        merged = _merge_mapping(merged, doc, "", source)
    return merged


def _merge_mapping(
    dst: dict[Any, Any], src: dict[Any, Any], path: str, source: str
) -> dict[Any, Any]:
    """Shared keys keep ``dst``'s position; keys only in ``src`` are appended."""
    out = dict(dst)
    for key, value in src.items():
        if key not in out:
            out[key] = value
            continue
        child = _join(path, key)
        if child in IDENTITY_MAPS:
            out[key] = _merge_identity_map(out[key], value, child, str(key), source)
        else:
            out[key] = _merge_value(out[key], value, child, source)
    return out


def _merge_identity_map(
    dst: Any, src: Any, path: str, map_name: str, source: str
) -> Any:
    # A null side yields here too (llama-swap errors on `models:` left empty
    # in one file; accepting it is the friendlier reading of "null yields").
    if dst is None or src is None:
        return src if dst is None else dst
    if not isinstance(dst, dict) or not isinstance(src, dict):
        raise ConfigError(
            f"conflict at {_quote(path)}: expected a mapping, introduced by {source}"
        )
    existing = {str(k) for k in dst}
    for key in src:
        if str(key) in existing:
            raise ConfigError(
                f"duplicate {map_name} {_quote(str(key))} found in {source} "
                "(already defined in another config source)"
            )
    return {**dst, **src}


def _merge_value(dst: Any, src: Any, path: str, source: str) -> Any:
    if dst is None or src is None:
        return src if dst is None else dst
    dst_kind, src_kind = _kind(dst), _kind(src)
    if dst_kind != src_kind:
        raise ConfigError(
            f"conflict at {_quote(path)}: incompatible YAML node kinds "
            f"({dst_kind} vs {src_kind}) introduced by {source}"
        )
    if dst_kind == "mapping":
        return _merge_mapping(dst, src, path, source)
    if dst_kind == "sequence":
        return [*dst, *src]
    if _same_scalar(dst, src):
        return dst
    raise ConfigError(
        f"conflict at {_quote(path)}: {source} sets a different value than a "
        "previous source"
    )


def _kind(value: Any) -> str:
    # llama-swap prints yaml.v3's numeric node kinds ("kind 4 vs 2"); readable
    # names say the same thing: mapping (4), sequence (2), scalar (8).
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "sequence"
    return "scalar"


def _same_scalar(a: Any, b: Any) -> bool:
    """Same value and same type (``1`` vs ``1.0`` vs ``"1"`` vs ``true`` differ)."""
    if type(a) is not type(b):
        return False
    both_nan = a != a and b != b  # .nan in both files is the same value
    return bool(a == b) or both_nan


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _quote(text: str) -> str:
    """Double-quoted with escapes, like Go's ``%q`` for printable text."""
    return json.dumps(text, ensure_ascii=False)
