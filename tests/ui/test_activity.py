"""Activity page: in-flight requests with Cancel, recent requests with tokens
and speeds, refreshed by `activity` events, and the capture viewer."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.ui.conftest import needs_browser, post_json, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]


def slow_stream(ui: UI, outcome: dict[str, object]) -> None:
    """A streaming chat of 400 chunks 50 ms apart (20 s unless cancelled)."""
    body = {
        "model": "a",
        "stream": True,
        "fake_chunks": 400,
        "fake_chunk_delay": 0.05,
        "messages": [{"role": "user", "content": "go slowly"}],
    }
    req = urllib.request.Request(
        f"{ui.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Session-ID": "sess-42"},
        method="POST",
    )
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            outcome["body"] = resp.read().decode(errors="replace")
    except Exception as exc:  # a cancelled stream may end abruptly
        outcome["error"] = repr(exc)
    outcome["seconds"] = time.monotonic() - began


def test_in_flight_cancel_recent_requests_and_capture(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"captureBuffer": 5, "models": {"a": {"cmd": fake("a")}}})
    page = ui.page("activity", dark=True)
    expect(page.locator("#inflight-empty")).to_be_visible()

    post_json(
        f"{ui.url}/v1/chat/completions",
        {"model": "a", "messages": [{"role": "user", "content": "echo: one two"}]},
    )
    first = page.locator('#activity-rows tr[data-id="1"]')
    expect(first).to_be_visible()  # refreshed by the `activity` event
    cells = first.locator("td")
    expect(cells.nth(2)).to_have_text("a")
    expect(cells.nth(3)).to_contain_text("/v1/chat/completions")
    expect(cells.nth(4)).to_have_text("200")
    expect(cells.nth(6)).to_have_text("2")  # generated tokens
    expect(cells.nth(9)).to_have_text("100")  # decode tok/s (fake timings)
    expect(page.locator("#activity-stats")).to_contain_text("Requests1")

    outcome: dict[str, object] = {}
    client = threading.Thread(target=slow_stream, args=(ui, outcome))
    client.start()
    try:
        row = page.locator("#inflight-rows tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("POST /v1/chat/completions")
        expect(row).to_contain_text("sess-42")  # session id from uiConfig headers
        expect(page.locator("#inflight-empty")).to_be_hidden()
        before = row.locator("td.elapsed").inner_text()
        page.wait_for_timeout(700)
        assert row.locator("td.elapsed").inner_text() != before  # it ticks
        shoot(page, "activity-in-flight-desktop-dark")
        row.get_by_role("button", name="Cancel request").click()
        expect(row).to_have_count(0)
        expect(page.locator("#inflight-empty")).to_be_visible()
    finally:
        client.join(30)
    seconds = outcome["seconds"]
    assert isinstance(seconds, float)
    assert seconds < 15, outcome  # cut short, not the full 20 s
    expect(page.locator('#activity-rows tr[data-id="2"]')).to_be_visible()

    # the capture of the first request
    first.get_by_role("button", name="View capture of request 1").click()
    dialog = page.locator("#capture-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Request body")
    expect(dialog).to_contain_text('"content": "echo: one two"')
    expect(dialog).to_contain_text("one two")  # the response body
    shoot(page, "activity-capture-desktop-dark")
    dialog.get_by_role("button", name="Close capture").click()
    expect(dialog).to_be_hidden()
