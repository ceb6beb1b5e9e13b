"""controller.config.merge: config sources and the multi-file merge (llama-swap.md §1.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import yaml

from controller.config.macros import expand_env
from controller.config.merge import load_sources, merge_documents
from controller.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def parse(text: str) -> Any:
    return yaml.safe_load(text)


def no_expand(text: str) -> str:
    return text


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_dir(tmp_path: Path, **files: str) -> dict[str, Any]:
    """Write ``files`` (``a_yaml="..."`` → ``a.yaml``) and load the directory."""
    for name, text in files.items():
        write(tmp_path, name.replace("_", "."), text)
    return load_sources(None, tmp_path, no_expand, parse)


def dir_error(tmp_path: Path, **files: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_dir(tmp_path, **files)
    return info.value.message


# -- sources ------------------------------------------------------------------------


def test_a_single_config_file_gives_exactly_its_content(tmp_path: Path) -> None:
    text = (
        "models:\n  a:\n    cmd: x\n    env: [A=1]\nmacros:\n  m: 1\nstartPort: 9000\n"
    )
    cfg = write(tmp_path, "config.yaml", text)
    assert load_sources(cfg, None, no_expand, parse) == yaml.safe_load(text)


def test_neither_source_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_sources(None, None, no_expand, parse)
    assert info.value.message == (
        "at least one of --config or --config-dir must be provided"
    )


def test_a_dir_without_yaml_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "models: {}")
    (tmp_path / "sub.yaml").mkdir()
    assert dir_error(tmp_path) == "no configuration sources found"


def test_config_file_plus_an_empty_dir_is_fine(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "startPort: 1")
    empty = tmp_path / "d"
    empty.mkdir()
    assert load_sources(cfg, empty, no_expand, parse) == {"startPort": 1}


def test_a_missing_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_sources(None, tmp_path / "nope", no_expand, parse)
    assert info.value.message.startswith(f"--config-dir {tmp_path / 'nope'}: ")


def test_a_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_sources(tmp_path / "nope.yaml", None, no_expand, parse)
    assert info.value.message.startswith(
        f"failed to read config {tmp_path / 'nope.yaml'}: "
    )


def test_the_config_file_may_not_also_be_in_the_dir(tmp_path: Path) -> None:
    cfg = write(tmp_path, "a.yaml", "startPort: 1")
    with pytest.raises(ConfigError) as info:
        load_sources(cfg, tmp_path, no_expand, parse)
    assert info.value.message == (
        f"--config path {cfg} is also present in --config-dir {tmp_path}; "
        "remove it from one"
    )


def test_dir_files_merge_after_the_config_file_in_sorted_order(
    tmp_path: Path,
) -> None:
    cfg = write(tmp_path, "main.yaml", "apiKeys: [main]\nmodels: {m: {cmd: m}}")
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d, "b.yml", "apiKeys: [b]\nmodels: {b: {cmd: b}}")
    write(d, "10-c.yaml", "apiKeys: [c]\nmodels: {c: {cmd: c}}")
    write(d, "a.yaml", "apiKeys: [a]\nmodels: {a: {cmd: a}}")
    write(d, "z.json", "apiKeys: [json]")  # not a YAML file
    (d / "sub").mkdir()
    write(d / "sub", "deep.yaml", "apiKeys: [deep]")  # no recursion
    merged = load_sources(cfg, d, no_expand, parse)
    assert merged["apiKeys"] == ["main", "c", "a", "b"]
    assert list(merged["models"]) == ["m", "c", "a", "b"]


def test_empty_and_comment_only_files_are_skipped(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="",
        b_yaml="# nothing here\n   # nor here\n",
        c_yaml="startPort: 7\n",
        d_yaml="---\n",
    )
    assert merged == {"startPort": 7}


def test_every_source_empty_gives_an_empty_mapping(tmp_path: Path) -> None:
    assert load_dir(tmp_path, a_yaml="", b_yaml="# only a comment\n") == {}


def test_env_expansion_runs_on_the_raw_text_before_parsing(tmp_path: Path) -> None:
    seen: list[str] = []

    def expand(text: str) -> str:
        seen.append(text)
        return text.replace("${env.KEY}", "secret")

    write(tmp_path, "a.yaml", "apiKeys: [${env.KEY}]\n")  # unparseable unexpanded
    assert load_sources(None, tmp_path, expand, parse) == {"apiKeys": ["secret"]}
    assert seen == ["apiKeys: [${env.KEY}]\n"]


def test_expansion_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "apiKeys: [${env.SV_SURELY_UNSET_VAR}]\n")
    with pytest.raises(ConfigError) as info:
        load_sources(path, None, expand_env, parse)
    assert info.value.message == (
        f"config {path}: environment variable 'SV_SURELY_UNSET_VAR' is not set"
    )


def test_parse_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "models: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_sources(path, None, no_expand, parse)
    assert info.value.message.startswith(f"failed to parse config {path}: ")


def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_sources(path, None, no_expand, parse)
    assert info.value.message == f"config {path}: top-level YAML must be a mapping"


def test_the_callers_parser_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "anything")
    assert load_sources(path, None, no_expand, lambda _: {"from": "parser"}) == {
        "from": "parser"
    }


# -- merge rules ----------------------------------------------------------------


def test_mappings_merge_recursively(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="performance: {disabled: true}\nui: {activity: {x: 1}}",
        b_yaml="performance: {every: 10s}\nui: {activity: {y: 2}}",
    )
    assert merged == {
        "performance": {"disabled": True, "every": "10s"},
        "ui": {"activity": {"x": 1, "y": 2}},
    }


def test_sequences_concatenate(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="apiKeys: [k1]\nhooks: {on_startup: {preload: [a]}}",
        b_yaml="apiKeys: [k2, k3]\nhooks: {on_startup: {preload: [b]}}",
    )
    assert merged["apiKeys"] == ["k1", "k2", "k3"]
    assert merged["hooks"] == {"on_startup": {"preload": ["a", "b"]}}


def test_equal_scalars_are_fine(tmp_path: Path) -> None:
    merged = load_dir(tmp_path, a_yaml="startPort: 9000", b_yaml="startPort: 9000")
    assert merged == {"startPort": 9000}


@pytest.mark.parametrize(
    ("first", "second"),
    [("9000", "9001"), ("1", "'1'"), ("1", "1.0"), ("true", "1"), ("a", "b")],
)
def test_differing_scalars_conflict(tmp_path: Path, first: str, second: str) -> None:
    message = dir_error(
        tmp_path, a_yaml=f"x: {{y: {first}}}", b_yaml=f"x: {{y: {second}}}"
    )
    assert message == (
        f'conflict at "x.y": {tmp_path / "b.yaml"} sets a different value than '
        "a previous source"
    )


def test_nan_equals_nan(tmp_path: Path) -> None:
    merged = load_dir(tmp_path, a_yaml="x: .nan", b_yaml="x: .nan")
    assert merged["x"] != merged["x"]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [("~", "5", 5), ("null", "a", "a"), ("5", "", 5), ("", "[a]", ["a"])],
)
def test_null_yields_to_non_null(
    tmp_path: Path, first: str, second: str, expected: object
) -> None:
    merged = load_dir(tmp_path, a_yaml=f"x: {first}", b_yaml=f"x: {second}")
    assert merged == {"x": expected}


@pytest.mark.parametrize(
    ("first", "second", "kinds"),
    [
        ("{a: 1}", "[a]", "mapping vs sequence"),
        ("[a]", "{a: 1}", "sequence vs mapping"),
        ("1", "[a]", "scalar vs sequence"),
        ("{a: 1}", "text", "mapping vs scalar"),
    ],
)
def test_differing_kinds_conflict(
    tmp_path: Path, first: str, second: str, kinds: str
) -> None:
    message = dir_error(
        tmp_path, a_yaml=f"x: {{ttl: {first}}}", b_yaml=f"x: {{ttl: {second}}}"
    )
    assert message == (
        f'conflict at "x.ttl": incompatible YAML node kinds ({kinds}) '
        f"introduced by {tmp_path / 'b.yaml'}"
    )


def test_paths_are_dotted_through_nested_mappings(tmp_path: Path) -> None:
    message = dir_error(
        tmp_path,
        a_yaml="routing: {scheduler: {settings: {fifo: {priority: {m: 1}}}}}",
        b_yaml="routing: {scheduler: {settings: {fifo: {priority: {m: 2}}}}}",
    )
    assert message.startswith(
        'conflict at "routing.scheduler.settings.fifo.priority.m": '
    )


@pytest.mark.parametrize(
    ("map_path", "map_name"),
    [
        ("models", "models"),
        ("groups", "groups"),
        ("profiles", "profiles"),
        ("selectors", "selectors"),
        ("peers", "peers"),
        ("matrix", "matrix"),
        ("routing.router.settings.groups", "groups"),
        ("routing.router.settings.matrix", "matrix"),
    ],
)
def test_identity_maps_reject_a_child_defined_twice(
    tmp_path: Path, map_path: str, map_name: str
) -> None:
    def nest(inner: str) -> str:
        for part in reversed(map_path.split(".")):
            inner = f"{{{part}: {inner}}}"
        return inner

    # Even an identical definition is a duplicate: the key names one entity.
    message = dir_error(
        tmp_path,
        a_yaml=nest("{one: {cmd: x}, same: {cmd: x}}"),
        b_yaml=nest("{two: {cmd: y}, same: {cmd: x}}"),
    )
    assert message == (
        f'duplicate {map_name} "same" found in {tmp_path / "b.yaml"} '
        "(already defined in another config source)"
    )


def test_identity_maps_combine_distinct_children(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="models: {a: {cmd: a}}\npeers: {p: {proxy: x}}",
        b_yaml="models: {b: {cmd: b}}\npeers: {q: {proxy: y}}",
    )
    assert merged["models"] == {"a": {"cmd": "a"}, "b": {"cmd": "b"}}
    assert list(merged["peers"]) == ["p", "q"]


def test_identity_children_are_not_merged_field_by_field(tmp_path: Path) -> None:
    message = dir_error(
        tmp_path, a_yaml="models: {m: {cmd: a}}", b_yaml="models: {m: {ttl: 5}}"
    )
    assert message.startswith('duplicate models "m" found in ')


def test_an_identity_map_must_be_a_mapping(tmp_path: Path) -> None:
    message = dir_error(tmp_path, a_yaml="models: {a: {}}", b_yaml="models: [b]")
    assert message == (
        f'conflict at "models": expected a mapping, introduced by {tmp_path / "b.yaml"}'
    )


def test_an_empty_identity_map_yields(tmp_path: Path) -> None:
    merged = load_dir(tmp_path, a_yaml="models:\n", b_yaml="models: {a: {cmd: x}}")
    assert merged == {"models": {"a": {"cmd": "x"}}}


def test_only_the_listed_paths_are_identity_maps(tmp_path: Path) -> None:
    # A nested "models" key (here under metadata) is an ordinary mapping.
    merged = load_dir(
        tmp_path,
        a_yaml="ui: {models: {a: 1, same: 1}}",
        b_yaml="ui: {models: {b: 2, same: 1}}",
    )
    assert merged["ui"]["models"] == {"a": 1, "same": 1, "b": 2}


def test_macros_from_different_files_combine(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="macros: {base: /opt, port: 1}",
        b_yaml="macros: {model_dir: /models, port: 1}",
    )
    assert merged["macros"] == {"base": "/opt", "port": 1, "model_dir": "/models"}


def test_a_macro_redefined_differently_conflicts(tmp_path: Path) -> None:
    message = dir_error(tmp_path, a_yaml="macros: {m: 1}", b_yaml="macros: {m: 2}")
    assert message.startswith('conflict at "macros.m": ')


def test_insertion_order_is_kept(tmp_path: Path) -> None:
    merged = load_dir(
        tmp_path,
        a_yaml="z: {sets: {s2: a, s1: b}}\ny: 1",
        b_yaml="z: {sets: {s0: c}}\nx: 2\ny: 1",
    )
    assert list(merged) == ["z", "y", "x"]
    assert list(merged["z"]["sets"]) == ["s2", "s1", "s0"]


def test_inputs_are_not_mutated() -> None:
    shared = {"keys": ["a"]}
    first: dict[str, Any] = {"x": shared, "y": shared}  # like a YAML alias
    second: dict[str, Any] = {"x": {"keys": ["b"]}}
    merged = merge_documents([("one", first), ("two", second)])
    assert merged == {"x": {"keys": ["a", "b"]}, "y": {"keys": ["a"]}}
    assert shared == {"keys": ["a"]}
    assert second == {"x": {"keys": ["b"]}}


def test_merge_documents_of_nothing_is_empty() -> None:
    assert merge_documents([]) == {}
