"""Logs page: proxy and upstream live from /api/events, a model's own log live
from /logs/stream/<id>, the regex filter and the auto-scroll toggle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.ui.conftest import needs_browser, post_json, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]


def chat(ui: UI, model: str, text: str) -> Any:
    return post_json(
        f"{ui.url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": text}]},
    )


def test_proxy_and_upstream_logs_are_live(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}, "b": {"cmd": fake("b")}}})
    page = ui.page("logs")
    proxy = page.locator("#log-proxy")
    upstream = page.locator("#log-upstream")
    expect(proxy).to_contain_text("swapvisor listening on")  # the history
    expect(upstream).not_to_contain_text("fake-upstream listening")
    page.evaluate("window.__sameDocument = true")

    chat(ui, "a", "hi")  # another client
    expect(upstream).to_contain_text("fake-upstream listening on")
    expect(upstream).to_contain_text("request POST /v1/chat/completions")
    expect(proxy).to_contain_text("a ready in")

    chat(ui, "b", "hi")
    expect(upstream).to_contain_text("model=b")
    expect(proxy).to_contain_text("b ready in")
    assert page.evaluate("window.__sameDocument") is True

    # the regex filter (case-insensitive) keeps matching lines only
    page.fill("#log-filter", "MODEL=B")
    expect(upstream).to_contain_text("model=b")
    expect(upstream).not_to_contain_text("model=a")
    expect(
        page.locator('.log-panel[data-source="upstream"] .log-count')
    ).to_contain_text(" of ")
    page.fill("#log-filter", "(unclosed")
    expect(page.locator("#log-filter")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#log-filter-error")).to_have_text("invalid regex")
    page.fill("#log-filter", "")
    expect(upstream).to_contain_text("model=a")

    # auto-scroll: the newest line is in view; off, the view stays put
    for i in range(40):
        chat(ui, "b", f"line {i}")
    expect(upstream).to_contain_text("request POST", timeout=5000)
    page.wait_for_function(
        "() => { const e = document.querySelector('#log-upstream');"
        " return e.scrollHeight > e.clientHeight"
        " && e.scrollTop + e.clientHeight >= e.scrollHeight - 2; }"
    )
    page.locator("#log-autoscroll").uncheck()
    page.evaluate("document.querySelector('#log-upstream').scrollTop = 0")
    chat(ui, "b", "more")
    page.wait_for_timeout(300)
    assert page.evaluate("document.querySelector('#log-upstream').scrollTop") == 0
    shoot(page, "logs-live-desktop-light")


def test_a_models_own_log_streams_live(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}, "b": {"cmd": fake("b")}}})
    chat(ui, "a", "first")
    page = ui.page("models", mobile=True, dark=True)
    # from the model card's Logs link
    page.locator('.model-card[data-model="a"] a', has_text="Logs").click()
    expect(page.locator("#log-source")).to_have_value("model:a")
    own = page.locator("#log-model")
    expect(own).to_be_visible()
    expect(page.locator("#log-proxy")).to_be_hidden()
    expect(own).to_contain_text("fake-upstream listening on")
    expect(page.locator('.log-panel[data-source="model"] .log-status')).to_have_text(
        "live"
    )
    lines = own.inner_text().count("request POST")
    chat(ui, "a", "second")
    expect(own).to_contain_text("request POST")
    page.wait_for_function(
        "n => document.querySelector('#log-model').textContent"
        ".split('request POST').length - 1 > n",
        arg=lines,
    )
    chat(ui, "b", "other model")  # b's lines never appear in a's log
    page.wait_for_timeout(300)
    expect(own).not_to_contain_text("model=b")
    shoot(page, "logs-model-mobile-dark")
