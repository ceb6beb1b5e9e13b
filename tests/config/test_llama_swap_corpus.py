"""Real llama-swap configs (tests/fixtures/llama-swap-corpus/, see its
README.md) through ``swapvisor check``: each gets llama-swap's verdict, ok
where it loads, an error naming the same thing where it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.cli.check import check_main

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "llama-swap-corpus"
FILES = sorted(CORPUS.glob("*.yaml"))


def header(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a corpus file."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(
            r"# (llama-swap corpus|source|changed|env|llama-swap|expect): (.*)", line
        )
        if match is None:
            break
        out[match[1]] = match[2]
    return out


def test_corpus_has_configs_from_docs_examples_and_tests() -> None:
    sources = [header(p)["source"] for p in FILES]
    assert 10 <= len(FILES) <= 30
    assert all(s.startswith("github.com/mostlygeek/llama-swap@") for s in sources)
    for kind in ("config.example.yaml", "docs/", "README.md", "_test.go"):
        assert any(kind in s for s in sources), kind
    verdicts = [header(p)["llama-swap"] for p in FILES]
    assert "ok" in verdicts and any(v.startswith("error: ") for v in verdicts)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_verdict_matches_llama_swap(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = header(path)
    for pair in meta.get("env", "").split():
        name, _, value = pair.partition("=")
        monkeypatch.setenv(name, value)
    code = check_main([str(path)])
    out, err = capsys.readouterr()
    if meta["llama-swap"] == "ok":
        assert code == 0, err
        assert out.startswith("config OK")
        return
    expected = meta.get("expect", meta["llama-swap"].removeprefix("error: "))
    expected = expected.split(" (Go map order")[0]
    assert code == 1, out
    assert expected in err, f"llama-swap: {meta['llama-swap']}\nswapvisor: {err}"
