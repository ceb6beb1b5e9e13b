"""The web UI in real headless Chromium (driven by Playwright) against
swapvisor running as a subprocess with real upstream processes.

Needs ``/usr/bin/chromium`` (``scripts/setup-browser``) and the ``playwright``
package; Playwright's own browser download is never used. Every test leaves a
screenshot in ``test-artifacts/screenshots/<name>.png`` for a reviewer.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import FAKE, PY, ROOT, port_block

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

    from tests.conftest import Swapvisor

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1440, "height": 900}
MOBILE: ViewportSize = {"width": 390, "height": 844}


def missing_browser() -> str | None:
    if not CHROMIUM.exists():
        return "needs /usr/bin/chromium: run scripts/setup-browser"
    if importlib.util.find_spec("playwright") is None:
        return "needs the playwright package: pip install -e '.[test]'"
    return None


_MISSING = missing_browser()
needs_browser = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class UI:
    """One swapvisor and the browser pages opened on it."""

    sv: Swapvisor
    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    # console errors, page errors, requests to another origin
    problems: list[str] = field(default_factory=list)
    expected_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.sv.url

    def page(
        self,
        route: str = "models",
        *,
        mobile: bool = False,
        dark: bool = False,
        credentials: tuple[str, str] | None = None,
        wait_live: bool = True,
        navigate: bool = True,
    ) -> Page:
        """A fresh browser context (own storage) with the UI open at ``#/route``."""
        context = self.browser.new_context(
            viewport=MOBILE if mobile else DESKTOP,
            color_scheme="dark" if dark else "light",
            http_credentials=(
                {"username": credentials[0], "password": credentials[1]}
                if credentials
                else None
            ),
            device_scale_factor=1,
        )
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        origin = self.url
        page.on(
            "request",
            lambda req: (
                None
                if req.url.startswith((origin + "/", "data:", "blob:"))
                else self.problems.append(f"off-origin request: {req.url}")
            ),
        )
        page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error"
                and not any(e in msg.text for e in self.expected_errors)
                else None
            ),
        )
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        if not navigate:
            return page
        page.goto(f"{origin}/ui/#/{route}")
        if wait_live:
            wait_connected(page)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def wait_connected(page: Page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#conn")).to_have_attribute("data-conn", "connected")


def shoot(page: Page, name: str) -> Path:
    """Save a full-page screenshot for reviewers."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., str]:
    """``fake(model, *flags)``: a ``cmd`` running the fake upstream through a
    symlink inside this test's tmp path, so the ``swapvisor`` fixture's
    clean-up finds (and never mistakes) this test's upstream processes."""
    script = tmp_path / "fake_upstream.py"
    if not script.exists():
        script.symlink_to(FAKE)

    def cmd(model: str, *flags: str) -> str:
        return " ".join([PY, str(script), "--model", model, "--port ${PORT}", *flags])

    return cmd


@pytest.fixture
def start_ui(
    browser: Browser,
    swapvisor: Callable[..., Swapvisor],
    write_config: Callable[[str], Path],
) -> Iterator[Callable[..., UI]]:
    """Factory: write a config (a dict), start swapvisor on it, return a UI.

    At the end: no page error, no console error, nothing fetched from any
    other origin than swapvisor's.
    """
    made: list[UI] = []

    def start(
        config: dict[str, Any], *, env: dict[str, str] | None = None, marker: str = ""
    ) -> UI:
        config = {"startPort": port_block(), **config}
        path = write_config(yaml.safe_dump(config, sort_keys=False))
        sv = swapvisor(path, env=env, marker=marker)
        ui = UI(sv, browser)
        made.append(ui)
        return ui

    yield start
    problems = [p for ui in made for p in ui.problems]
    for ui in made:
        ui.close()
    assert problems == [], problems


def get_json(url: str, auth: str | None = None) -> Any:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", f"Bearer {auth}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def post_json(url: str, body: dict[str, Any], timeout: float = 60) -> Any:
    """A request from another client than the browser."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def running(sv: Swapvisor) -> dict[str, str]:
    """``{model: state}`` from ``GET /running``."""
    return {r["model"]: r["state"] for r in get_json(f"{sv.url}/running")["running"]}
