"""With ``apiKeys`` the UI is behind the same key as the API: the browser gets
a Basic challenge, and with credentials everything works."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.ui.conftest import get_json, needs_browser, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Response

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]

KEY = "sk-ui-test-key"


def status_of(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Accept": "text/html"})
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate", "")


def test_the_ui_needs_the_key(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import Error as PlaywrightError, expect

    ui = start_ui({"apiKeys": [KEY], "models": {"a": {"cmd": fake("a")}}})
    # Plain HTTP: a Basic challenge, for the page and for its files.
    for path in ("/ui/", "/ui/app.js", "/api/events", "/logs/stream/a"):
        code, challenge = status_of(ui.url + path)
        assert code == 401, path
        assert challenge.startswith("Basic realm="), (path, challenge)
    basic = "Basic " + base64.b64encode(f"anyone:{KEY}".encode()).decode()
    assert status_of(ui.url + "/ui/", basic) == (200, "text/html; charset=utf-8")

    # A browser without credentials gets the 401 challenge (a person would
    # see the browser's login prompt; headless Chromium gives up instead).
    ui.expected_errors.append("401")
    anonymous = ui.page(navigate=False)
    seen: list[Response] = []
    anonymous.on("response", lambda r: seen.append(r))
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.goto(f"{ui.url}/ui/")
    [challenge_response] = [r for r in seen if r.url == f"{ui.url}/ui/"]
    assert challenge_response.status == 401
    assert challenge_response.headers["www-authenticate"].startswith("Basic realm=")
    expect(anonymous.locator("#model-list")).to_have_count(0)

    # With the key as the password, the page, its event stream and its
    # fetches all carry the browser's credentials.
    page = ui.page("models", credentials=("anyone", KEY))
    card = page.locator('.model-card[data-model="a"]')
    expect(card.locator(".state-text")).to_have_text("stopped")
    card.locator("button.action").click()
    expect(card.locator(".state-text")).to_have_text("ready")
    assert get_json(f"{ui.url}/running", auth=KEY)["running"][0]["state"] == "ready"
    page.locator("#nav a", has_text="Logs").click()
    expect(page.locator("#log-proxy")).to_contain_text("a ready in")
    shoot(page, "auth-with-credentials-desktop-light")

    # a wrong key is refused like no key
    wrong = "Basic " + base64.b64encode(b"anyone:wrong").decode()
    assert status_of(ui.url + "/ui/", wrong)[0] == 401
