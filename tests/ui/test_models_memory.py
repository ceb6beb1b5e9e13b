"""Models page: what ``GET /api/explain`` says, per model and for the budget.

Under ``use: resources`` each card shows the model's needs (declared,
learned, estimate), what was measured, where it is placed and a "stays
loaded" mark; above the list a budget card per device. Under every engine a
card shows the last decision that touched the model and why it waits.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from tests.ui.conftest import get_json, needs_browser, post_json, running, shoot

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from playwright.sync_api import Locator, Page, Route

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]

MIB = 1 << 20
GIB = 1 << 30


def fmt_bytes(n: float) -> str:
    """As the page writes bytes: "9.5 GiB", "800 MiB", "2 GiB"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.{0 if i == 0 or n >= 100 else 1}f} {units[i]}".replace(".0 ", " ")


def card(page: Page, model: str) -> Locator:
    return page.locator(f'.model-card[data-model="{model}"]')


def fact(page: Page, model: str, key: str) -> Locator:
    return card(page, model).locator(f'.fact[data-fact="{key}"] dd')


def chat(ui: UI, model: str) -> Any:
    return post_json(
        f"{ui.url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def explained(ui: UI) -> dict[str, Any]:
    data = get_json(f"{ui.url}/api/explain")
    return {m["id"]: m for m in data["models"]} | {"": data}


def test_resources_engine_shows_budget_measurements_and_evictions(
    start_ui: Callable[..., UI], fake: Callable[..., str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "healthCheckTimeout": 30,
            "routing": {
                "router": {
                    "use": "resources",
                    "settings": {
                        "resources": {
                            "gpus": [],
                            "ram": "600MiB",
                            "learnedFile": str(tmp_path / "learned.json"),
                        },
                        "groups": {"keep": {"persistent": True, "members": ["c"]}},
                    },
                }
            },
            "models": {
                "a": {"cmd": fake("a", "--hold-mib 100")},
                "b": {"cmd": fake("b", "--hold-mib 100")},
                # never loaded here: declared needs and the mark only
                "c": {"cmd": fake("c"), "needs": {"ram": "50MiB"}},
            },
        }
    )
    page = ui.page("models")

    # The budget: RAM only (no GPUs), nothing planned yet.
    budget = page.locator("#memory-budget")
    expect(budget).to_be_visible()
    expect(budget.locator("h2")).to_have_text("Memory budget")
    ram = budget.locator('.budget-card[data-device="ram"]')
    expect(ram.locator(".stat-label")).to_have_text("RAM")
    expect(ram.locator(".budget-planned")).to_have_text("0 B of 600 MiB planned")
    expect(ram.locator(".budget-free")).to_contain_text(re.compile(r"free now \d"))
    expect(budget.locator(".budget-card")).to_have_count(1)

    # Declared needs and the "stays loaded" mark without a load.
    expect(fact(page, "c", "needs")).to_have_text("50 MiB RAM (declared 50 MiB RAM)")
    expect(card(page, "c").locator(".tag.kept")).to_have_text("stays loaded")
    expect(fact(page, "a", "needs")).to_contain_text("not known yet")
    expect(card(page, "a").locator(".tag.kept")).to_have_count(0)
    expect(fact(page, "a", "measured")).to_have_count(0)
    expect(fact(page, "a", "decision")).to_have_count(0)

    # a loads and is measured a moment after it got ready: the page shows
    # the figure without a reload, as /api/explain has it.
    chat(ui, "a")
    expect(fact(page, "a", "measured")).to_have_text(
        re.compile(r"^RAM \d+(\.\d)? MiB$"), timeout=20_000
    )
    info = explained(ui)
    measured = info["a"]["measured"]["ram"]
    assert 100 * MIB <= measured < 400 * MIB
    expect(fact(page, "a", "measured")).to_have_text(f"RAM {fmt_bytes(measured)}")
    learned = info["a"]["needs"]["learned"]["ram"]
    expect(fact(page, "a", "needs")).to_have_text(
        f"{fmt_bytes(learned)} RAM (learned {fmt_bytes(learned)} RAM)"
    )
    expect(fact(page, "a", "decision")).to_contain_text("never measured")
    planned = info[""]["budget"]["ram"]["planned"]
    assert planned > 0
    expect(ram.locator(".budget-planned")).to_have_text(
        f"{fmt_bytes(planned)} of 600 MiB planned"
    )

    # b was never measured: it runs alone, so a is evicted; a's card says
    # so, in words and with the time.
    chat(ui, "b")
    assert running(ui.sv) == {"b": "ready"}
    decision = fact(page, "a", "decision")
    expect(decision).to_contain_text(re.compile(r"evicted at \S+ to fit b"))
    text = explained(ui)["a"]["decision"]["text"]
    expect(decision).to_contain_text(text)
    expect(decision.locator("time")).to_have_attribute(
        "datetime", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    )
    expect(fact(page, "b", "decision")).to_contain_text("never measured")
    expect(fact(page, "b", "measured")).to_have_text(
        re.compile(r"^RAM \d+(\.\d)? MiB$"), timeout=20_000
    )
    shoot(page, "models-memory-resources")


def test_group_engine_shows_decisions_but_no_budget(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "healthCheckTimeout": 30,
            "models": {"a": {"cmd": fake("a")}, "b": {"cmd": fake("b")}},
        }
    )
    page = ui.page("models", mobile=True)
    expect(card(page, "a")).to_be_visible()
    chat(ui, "a")
    expect(card(page, "a")).to_have_attribute("data-state", "ready")
    chat(ui, "b")
    expect(card(page, "a")).to_have_attribute("data-state", "stopped")
    info = explained(ui)
    assert info[""]["engine"] == "group"
    assert info[""]["budget"] is None
    text = info["a"]["decision"]["text"]
    assert "to start b" in text
    expect(fact(page, "a", "decision")).to_contain_text(text)
    expect(page.locator("#memory-budget")).to_be_hidden()
    # memory facts only under use: resources
    for key in ("needs", "measured", "placement"):
        expect(card(page, "a").locator(f'.fact[data-fact="{key}"]')).to_have_count(0)
    expect(card(page, "b").locator(".model-facts")).to_be_hidden()
    shoot(page, "models-memory-group-mobile")


GPU_EXPLAIN = {
    "engine": "resources",
    "budget": {
        "ram": {
            "capacity": 64 * GIB,
            "reserve": 4 * GIB,
            "planned": 2 * GIB,
            "available": 40 * GIB,
        },
        "gpus": [
            {
                "index": 0,
                "capacity": 24 * GIB,
                "reserve": 512 * MIB,
                "planned": 18 * GIB,
                "free": 6 * GIB,
            },
            {
                "index": 1,
                "capacity": 24 * GIB,
                "reserve": 512 * MIB,
                "planned": 30 * GIB,
                "free": None,
            },
        ],
    },
    "models": [
        {
            "id": "a",
            "state": "ready",
            "in_flight": 0,
            "needs": {
                "declared": {"vram": 8 * GIB, "ram": None},
                "learned": {"vram": int(9.5 * GIB), "ram": 800 * MIB},
                "estimate": {"vram": int(9.5 * GIB), "ram": 800 * MIB},
            },
            "measured": {"ram": 800 * MIB, "vram": {"1": 2 * GIB, "0": int(7.5 * GIB)}},
            "placement": [0, 1],
            "pinned": [0, 1],
            "holds": {"ram": 800 * MIB, "vram": {"0": int(7.5 * GIB), "1": 2 * GIB}},
            "protected": True,
            "decision": {
                "at": "2026-12-03T12:01:03Z",
                "text": "loading at 12:01:03 on <b>GPU 0</b> & GPU 1",
            },
            "waiting": None,
        },
        {
            "id": "b",
            "state": "stopped",
            "in_flight": 0,
            "needs": {"declared": None, "learned": None, "estimate": None},
            "measured": None,
            "placement": None,
            "pinned": None,
            "holds": None,
            "protected": False,
            "decision": None,
            "waiting": "waiting: a draining 2 request(s) <script>x</script>",
        },
    ],
}


def test_gpu_facts_and_budget_render_as_text(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    """With GPUs (an answer given by the test: no GPU here): bytes as
    "9.5 GiB", a card per GPU, an over-planned GPU marked, and server text
    never read as HTML."""
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}, "b": {"cmd": fake("b")}}})
    page = ui.page("models", navigate=False)

    def answer(route: Route) -> None:
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps(GPU_EXPLAIN)
        )

    page.route("**/api/explain", answer)
    page.goto(f"{ui.url}/ui/#/models")

    budget = page.locator("#memory-budget")
    expect(budget.locator(".budget-card")).to_have_count(3)
    ram = budget.locator('.budget-card[data-device="ram"]')
    expect(ram.locator(".budget-planned")).to_have_text("2 GiB of 64 GiB planned")
    expect(ram.locator(".budget-free")).to_have_text(
        "free now 40 GiB · 4 GiB kept in reserve"
    )
    gpu0 = budget.locator('.budget-card[data-device="gpu-0"]')
    expect(gpu0.locator(".stat-label")).to_have_text("GPU 0")
    expect(gpu0.locator(".budget-planned")).to_have_text("18 GiB of 24 GiB planned")
    expect(gpu0.locator(".budget-free")).to_have_text(
        "free now 6 GiB · 512 MiB kept in reserve"
    )
    expect(gpu0.locator('[role="meter"]')).to_have_attribute(
        "aria-valuenow", str(18 * GIB)
    )
    expect(gpu0).not_to_have_class(re.compile(r"\bover\b"))
    gpu1 = budget.locator('.budget-card[data-device="gpu-1"]')
    expect(gpu1).to_have_class(re.compile(r"\bover\b"))
    expect(gpu1.locator(".budget-free")).to_contain_text("free now unknown")

    expect(fact(page, "a", "needs")).to_have_text(
        "9.5 GiB VRAM, 800 MiB RAM (declared 8 GiB VRAM · learned 9.5 GiB VRAM, 800 MiB RAM)"
    )
    expect(fact(page, "a", "measured")).to_have_text(
        "RAM 800 MiB · GPU 0 7.5 GiB · GPU 1 2 GiB"
    )
    expect(fact(page, "a", "placement")).to_have_text(
        "GPU 0 (7.5 GiB), GPU 1 (2 GiB) · pinned to GPU 0, GPU 1"
    )
    expect(card(page, "a").locator(".tag.kept")).to_have_text("stays loaded")
    decision = fact(page, "a", "decision")
    expect(decision).to_contain_text("loading at 12:01:03 on <b>GPU 0</b> & GPU 1")
    expect(decision.locator("b")).to_have_count(0)
    expect(decision.locator("time")).to_have_attribute(
        "datetime", "2026-12-03T12:01:03Z"
    )

    expect(fact(page, "b", "needs")).to_contain_text("not known yet")
    waiting = fact(page, "b", "waiting")
    expect(waiting).to_have_text("waiting: a draining 2 request(s) <script>x</script>")
    expect(card(page, "b").locator("script")).to_have_count(0)
    for key in ("measured", "placement", "decision"):
        expect(card(page, "b").locator(f'.fact[data-fact="{key}"]')).to_have_count(0)
    shoot(page, "models-memory-gpus")
