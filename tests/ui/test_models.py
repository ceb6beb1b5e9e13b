"""Models page: live state from /api/events, load / unload / Unload all."""

from __future__ import annotations

import threading
import urllib.error
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import wait_until_sync
from tests.ui.conftest import needs_browser, post_json, running, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Locator, Page

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]


def two_models(fake: Callable[..., str], delay: float = 1) -> dict[str, Any]:
    """a and b share the default exclusive slot: loading one stops the other."""
    return {
        "healthCheckTimeout": 30,
        "models": {
            "a": {
                "name": "Model A",
                "description": "a fake upstream",
                "cmd": fake("a", f"--health-delay {delay}"),
            },
            "b": {"cmd": fake("b", "--health-delay 1"), "aliases": ["bee"]},
        },
    }


def state(page: Page, model: str) -> Locator:
    return page.locator(f'.model-card[data-model="{model}"] .state-text')


def action(page: Page, model: str) -> Locator:
    return page.locator(f'.model-card[data-model="{model}"] button.action')


def chat(ui: UI, model: str) -> Any:
    return post_json(
        f"{ui.url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def test_model_list_follows_a_swap_made_by_another_client(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(two_models(fake))
    page = ui.page("models")
    expect(state(page, "a")).to_have_text("stopped")
    expect(state(page, "b")).to_have_text("stopped")
    expect(page.locator("#ready-count")).to_have_text("0 of 2 ready")
    page.evaluate("window.__sameDocument = true")

    chat(ui, "a")
    expect(state(page, "a")).to_have_text("ready")
    expect(page.locator('.model-card[data-model="a"]')).to_have_attribute(
        "data-state", "ready"
    )

    # The swap to b, seen while it happens: b starting (its health check
    # takes a second), then b ready and a stopped, without any reload.
    other = threading.Thread(target=chat, args=(ui, "bee"))
    other.start()
    try:
        expect(state(page, "b")).to_have_text("starting")
        expect(page.locator('.model-card[data-model="b"] .state')).to_have_class(
            "state state-busy"
        )
    finally:
        other.join(30)
    expect(state(page, "b")).to_have_text("ready")
    expect(state(page, "a")).to_have_text("stopped")
    expect(page.locator("#ready-count")).to_have_text("1 of 2 ready")
    assert page.evaluate("window.__sameDocument") is True
    assert running(ui.sv) == {"b": "ready"}
    # the state is readable by colour and by word
    badge = page.locator('.model-card[data-model="b"] .state')
    expect(badge).to_have_class("state state-ok")
    assert page.locator('.model-card[data-model="a"] .state').get_attribute(
        "class"
    ) == ("state state-idle")
    shoot(page, "models-swap-from-another-client-desktop-light")


def test_load_and_unload_buttons(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(two_models(fake, delay=3))
    page = ui.page("models", mobile=True, dark=True)
    load_a = action(page, "a")
    expect(load_a).to_have_text("Load")
    expect(load_a).to_have_attribute("aria-label", "Load Model A")

    load_a.click()
    # pending while the model loads; the page stays responsive
    expect(load_a).to_have_text("Cancel load")
    expect(load_a).to_have_attribute("aria-busy", "true")
    expect(state(page, "a")).to_have_text("starting")
    expect(page.locator('.model-card[data-model="a"] .elapsed')).to_contain_text("s")
    page.locator("#show-unlisted").check()  # other controls still work meanwhile
    shoot(page, "models-loading-mobile-dark")
    expect(state(page, "a")).to_have_text("ready")
    expect(load_a).to_have_text("Unload")
    expect(load_a).not_to_have_attribute("aria-busy", "true")
    assert running(ui.sv) == {"a": "ready"}
    shoot(page, "models-ready-mobile-dark")

    action(page, "a").click()
    expect(state(page, "a")).to_have_text("stopped")
    expect(action(page, "a")).to_have_text("Load")
    wait_until_sync(lambda: running(ui.sv) == {}, timeout=10)

    # Unload all
    action(page, "b").click()
    expect(state(page, "b")).to_have_text("ready")
    assert running(ui.sv) == {"b": "ready"}
    page.locator("#unload-all").click()
    expect(state(page, "b")).to_have_text("stopped")
    wait_until_sync(lambda: running(ui.sv) == {}, timeout=10)
    expect(page.locator("#unload-all")).to_be_disabled()
    shoot(page, "models-unloaded-mobile-dark")


def test_cancel_a_load_stops_the_model(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(two_models(fake, delay=5))
    page = ui.page("models")
    action(page, "a").click()
    expect(state(page, "a")).to_have_text("starting")
    expect(action(page, "a")).to_have_text("Cancel load")
    action(page, "a").click()
    expect(state(page, "a")).to_have_text("stopped")
    expect(action(page, "a")).to_have_text("Load")
    wait_until_sync(lambda: running(ui.sv) == {}, timeout=10)
    expect(page.locator('.model-card[data-model="a"] .card-error')).to_be_hidden()


def test_open_ui_link_points_at_the_upstream(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(two_models(fake))
    page = ui.page("models")
    link = page.locator('.model-card[data-model="b"] a', has_text="Open UI")
    expect(link).to_have_attribute("href", "/upstream/b/")
    expect(link).to_have_attribute("target", "_blank")


def test_a_quarantined_model_shows_why_and_until_when(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "crashLoop": {"failures": 2, "backoff": 60},
            "models": {"a": {"cmd": fake("a", "--exit-on-start 3")}},
        }
    )
    page = ui.page("models")
    for _ in range(2):  # two failed starts in a row
        with pytest.raises(urllib.error.HTTPError, match="503"):
            chat(ui, "a")
    card = page.locator('.model-card[data-model="a"]')
    expect(card).to_have_attribute("data-quarantined", "true")
    expect(card.locator(".card-error")).to_contain_text(
        "Quarantined after 2 failed starts"
    )
    expect(card.locator(".card-error")).to_contain_text("exit code 3")
    shoot(page, "models-quarantined")
