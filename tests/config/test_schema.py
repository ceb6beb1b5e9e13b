"""config.schema.json: the committed file is what ``swapvisor schema`` prints,
and it accepts the example config while rejecting wrong ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from controller.config.loader import parse_yaml
from controller.config.schema import config_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "config.schema.json"
EXAMPLE = ROOT / "tests" / "fixtures" / "llama-swap-example.yaml"
REGENERATE = ".venv/bin/python -m controller schema > config.schema.json"


def generated_text() -> str:
    # What `python -m controller schema` prints (print adds the newline).
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"


def test_committed_schema_is_up_to_date() -> None:
    committed = SCHEMA_FILE.read_text() if SCHEMA_FILE.exists() else ""
    assert committed == generated_text(), (
        f"config.schema.json is stale; regenerate it with: {REGENERATE}"
    )


def test_schema_declares_camel_case_keys_with_descriptions() -> None:
    schema = config_schema()
    top = schema["properties"]
    for key in ("healthCheckTimeout", "globalTTL", "includeAliasesInList", "apiKeys"):
        assert top[key]["description"], key
    model = schema["$defs"]["ModelConfig"]["properties"]
    for key in ("cmdStop", "checkEndpoint", "useModelName", "concurrencyLimit"):
        assert model[key]["description"], key
    assert "setParamsByID" in schema["$defs"]["Filters"]["properties"]
    assert "ignorePaths" in schema["$defs"]["UpstreamSettings"]["properties"]
    assert "on_startup" in schema["$defs"]["Hooks"]["properties"]
    assert all(value.get("description") for value in top.values())
    assert all(value.get("description") for value in model.values())


def test_schema_declares_the_observability_keys() -> None:
    top = config_schema()["properties"]
    for key in (
        "logTimeFormat",
        "logToStdout",
        "logRequests",
        "metricsMaxInMemory",
        "captureBuffer",
        "store",
        "ui",
        "performance",
    ):
        assert key in top, key
    assert top["logToStdout"]["enum"] == ["proxy", "upstream", "both", "none"]


# -- validation (needs the jsonschema package) ------------------------------------------


def validator(schema: dict[str, Any]) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown keys refused in every section that lists its keys."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is True:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def errors(schema: dict[str, Any], document: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(schema).iter_errors(document)
    ]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    validator(json.loads(SCHEMA_FILE.read_text()))


def test_schema_accepts_the_example() -> None:
    document = parse_yaml(EXAMPLE.read_text())
    assert errors(json.loads(SCHEMA_FILE.read_text()), document) == []


def test_schema_declares_every_key_the_example_uses() -> None:
    # An editor flags no key of the example as unknown.
    document = parse_yaml(EXAMPLE.read_text())
    assert errors(strict(config_schema()), document) == []


def test_strict_schema_flags_a_typo() -> None:
    document = {"models": {"a": {"cmd": "srv", "ttll": 5}}}
    assert errors(strict(config_schema()), document) != []


@pytest.mark.parametrize(
    "document",
    [
        {"models": {"a": {"ttl": "abc"}}},
        {"models": {"a": {"cmd": ["srv", "--port"]}}},
        {"models": {"a": {"capabilities": {"in": ["video"]}}}},
        {"models": {"a": {"unlisted": "maybe"}}},
        {"startPort": "first"},
        {"apiKeys": "sk-1"},
        {"routing": {"router": {"use": "swap"}}},
        {"routing": {"scheduler": {"use": "lifo"}}},
        {"selectors": {"s": {"strategy": "balance", "targets": ["a"]}}},
        {"groups": {"g": {"members": "a"}}},
        {"peers": {"p": {"proxy": "http://h", "models": "m"}}},
        {"logToStdout": "stderr"},
        {"models": []},
    ],
)
def test_schema_rejects_wrong_configs(document: Any) -> None:
    assert errors(json.loads(SCHEMA_FILE.read_text()), document) != []


def test_schema_accepts_the_spec_example() -> None:
    from tests.config.test_config_examples import SPEC_EXAMPLE

    document = parse_yaml(SPEC_EXAMPLE)
    assert errors(strict(config_schema()), document) == []
