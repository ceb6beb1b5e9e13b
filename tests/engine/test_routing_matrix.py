"""The matrix engine with real processes (llama-swap.md §1.7, §4): the §4.4
example, eviction costs, models in no set, and the legacy top-level key."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import fake_cmd
from tests.harness import App, Apps, StateLog

MODELS = "models:\n" + "".join(
    f"  {mid}:\n    cmd: {fake_cmd(mid)}\n"
    for mid in ("gemma", "qwen", "voxtral", "llama-70B", "solo")
)

EXAMPLE = """
  vars: {g: gemma, q: qwen, v: voxtral}
  evict_costs: {v: 50}
  sets:
    standard: "(g | q) & v"
    full: "llama-70B"
"""


def routing_matrix(body: str) -> str:
    indented = "".join(f"      {line}\n" for line in body.strip("\n").splitlines())
    return f"routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n{indented}"


async def steps(app: App, plan: list[tuple[str, list[str]]]) -> None:
    for model, expected in plan:
        assert await app.reply(model) == f"hello from {model}"
        assert app.running() == expected, f"after a request for {model}"


async def test_matrix_example_evicts_only_what_the_chosen_set_excludes(
    apps: Apps,
) -> None:
    app = await apps.start(MODELS + routing_matrix(EXAMPLE))
    await steps(app, [("voxtral", ["voxtral"]), ("gemma", ["gemma", "voxtral"])])
    voxtral = app.pid("voxtral")
    # Only {q, v} contains qwen: gemma goes, voxtral stays (same process).
    await steps(app, [("qwen", ["qwen", "voxtral"])])
    assert app.pid("voxtral") == voxtral
    await steps(app, [("gemma", ["gemma", "voxtral"])])
    assert app.pid("voxtral") == voxtral
    # llama-70B is alone in its set: both go.
    await steps(app, [("llama-70B", ["llama-70B"])])
    # A model in no set runs alone.
    await steps(app, [("voxtral", ["voxtral"]), ("solo", ["solo"])])


async def test_matrix_models_of_one_set_load_in_parallel(apps: Apps) -> None:
    app = await apps.start(
        "models:\n"
        + "".join(
            f"  {m}:\n    cmd: {fake_cmd(m, '--health-delay', '0.5')}\n"
            for m in ("gemma", "voxtral")
        )
        + routing_matrix(
            """
  vars: {g: gemma, v: voxtral}
  sets:
    both: "g & v"
"""
        )
    )
    log = StateLog.attach(app.router)
    replies = await asyncio.gather(app.reply("gemma"), app.reply("voxtral"))
    assert list(replies) == ["hello from gemma", "hello from voxtral"]
    assert log.max_together(frozenset({"starting"})) == (2, {"gemma", "voxtral"})


@pytest.mark.parametrize(
    ("costs", "evicted"),
    [("", "voxtral"), ("evict_costs: {v: 50}", "gemma")],
    ids=["tie-takes-the-first-set", "cost-spares-voxtral"],
)
async def test_evict_costs_choose_the_cheapest_set(
    apps: Apps, costs: str, evicted: str
) -> None:
    """With gemma and voxtral running, qwen fits in {g, q} (evicting voxtral)
    or {q, v} (evicting gemma): equal costs take the first set in order."""
    app = await apps.start(
        MODELS
        + routing_matrix(
            f"""
  vars: {{g: gemma, q: qwen, v: voxtral}}
  {costs}
  sets:
    pair: "g & q"
    standard: "(g | q) & v"
"""
        )
    )
    await steps(app, [("voxtral", ["voxtral"]), ("gemma", ["gemma", "voxtral"])])
    kept = {"gemma", "voxtral"} - {evicted}
    await steps(app, [("qwen", sorted({"qwen"} | kept))])


async def test_legacy_top_level_matrix(apps: Apps) -> None:
    app = await apps.start(MODELS + "matrix:\n" + EXAMPLE)
    await steps(
        app,
        [
            ("voxtral", ["voxtral"]),
            ("gemma", ["gemma", "voxtral"]),
            ("qwen", ["qwen", "voxtral"]),
            ("llama-70B", ["llama-70B"]),
        ],
    )
