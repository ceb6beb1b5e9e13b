"""Every page at 1440 px (light) and 390 px (dark): renders without errors,
fits the width, labels every control, fetches nothing from another origin
(checked by the ``start_ui`` fixture); the theme toggle; performance charts."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import wait_until_sync
from tests.ui.conftest import get_json, needs_browser, post_json, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Page

    from controller.observability.gpu import GpuInfo, GpuSample
    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]

PAGES = ["models", "playground", "logs", "activity", "performance"]

# Controls without an accessible name (visible ones only).
UNLABELLED = """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => {
    const aria = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    const text = (el.textContent || '').trim();
    const labelled = el.labels && el.labels.length > 0;
    return !(aria || labelled || (['BUTTON', 'A'].includes(el.tagName) && text));
  })
  .map((el) => el.outerHTML.slice(0, 120))"""

OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def config(fake: Callable[..., str]) -> dict[str, Any]:
    return {
        "captureBuffer": 5,
        "models": {
            "a": {
                "name": "Llama 3 8B (fake)",
                "description": "a fake upstream standing in for llama-server",
                "cmd": fake("a"),
                "aliases": ["gpt-4o-mini"],
            },
            "b": {
                "cmd": fake("b"),
                "capabilities": {
                    "in": ["text", "image"],
                    "out": ["text"],
                    "tools": True,
                },
            },
            "c-unlisted": {"cmd": fake("c"), "unlisted": True},
        },
    }


def settle(page: Page, route: str) -> None:
    from playwright.sync_api import expect

    if route == "models":
        expect(page.locator('.model-card[data-model="a"] .state-text')).to_have_text(
            "ready"
        )
    elif route == "playground":
        expect(page.locator("#pg-model option")).not_to_have_count(0)
    elif route == "logs":
        expect(page.locator("#log-proxy")).to_contain_text("a ready in")
    elif route == "activity":
        expect(page.locator("#activity-rows tr")).not_to_have_count(0)
    elif route == "performance":
        expect(page.locator("#perf-status")).to_contain_text("samples", timeout=20_000)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mobile", "dark"), [(False, False), (True, True)], ids=["desktop", "mobile"]
)
def test_every_page(
    start_ui: Callable[..., UI], fake: Callable[..., str], mobile: bool, dark: bool
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(config(fake))
    post_json(
        f"{ui.url}/v1/chat/completions",
        {"model": "a", "messages": [{"role": "user", "content": "echo: hello there"}]},
    )
    page = ui.page("models", mobile=mobile, dark=dark)
    size = "mobile" if mobile else "desktop"
    scheme = "dark" if dark else "light"
    for route in PAGES:
        page.locator(f'#nav a[data-route="{route}"]').click()
        expect(page.locator(f"#page-{route}")).to_be_visible()
        expect(page.locator(f'#nav a[data-route="{route}"]')).to_have_attribute(
            "aria-current", "page"
        )
        settle(page, route)
        assert page.evaluate(OVERFLOW) <= 0, f"{route} is wider than the screen"
        assert page.evaluate(UNLABELLED) == [], route
        shoot(page, f"page-{route}-{size}-{scheme}")
    assert page.title().endswith("swapvisor")


def test_performance_charts_and_no_gpu(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}}})
    page = ui.page("performance", dark=True)
    settle(page, "performance")
    for chart in ("cpu", "memory", "load", "network"):
        figure = page.locator(f"#chart-{chart}")
        expect(figure.locator("svg")).to_have_attribute("role", "img")
        expect(figure.locator(".legend li").first).to_be_visible()
    expect(page.locator("#chart-cpu svg .series")).not_to_have_count(0)
    assert "all cores" in (
        page.locator("#chart-cpu svg").get_attribute("aria-label") or ""
    )
    perf = get_json(f"{ui.url}/api/performance")
    if perf["gpu_stats"]:
        expect(page.locator("#chart-gpu-util")).to_be_visible()
    else:
        expect(page.locator("#gpu-note")).to_have_text("No GPU detected.")
    page.select_option("#perf-range", "5")
    expect(page.locator("#chart-cpu")).to_be_visible()
    shoot(page, "performance-desktop-dark")


def test_theme_toggle_is_remembered(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}}})
    page = ui.page("models")  # the system scheme is light here
    html = page.locator("html")
    theme = page.locator("#theme")
    expect(theme).to_contain_text("System")
    light_bg = page.evaluate(
        "getComputedStyle(document.querySelector('.topbar')).backgroundColor"
    )
    theme.click()
    expect(theme).to_contain_text("Light")
    expect(html).to_have_attribute("data-theme", "light")
    theme.click()
    expect(theme).to_contain_text("Dark")
    expect(html).to_have_attribute("data-theme", "dark")
    expect(theme).to_have_attribute(
        "aria-label", "Colour theme: dark. Activate to change."
    )
    dark_bg = page.evaluate(
        "getComputedStyle(document.querySelector('.topbar')).backgroundColor"
    )
    assert dark_bg != light_bg
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.locator("#theme")).to_contain_text("Dark")
    shoot(page, "theme-forced-dark-desktop")
    page.locator("#theme").click()  # back to following the system
    expect(page.locator("html")).not_to_have_attribute("data-theme", "dark")
    expect(page.locator("#theme")).to_contain_text("System")


def test_profile_selector(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "models": {"a": {"cmd": fake("a")}, "b": {"cmd": fake("b")}},
            "profiles": {
                "fast": {"description": "everything on a", "pins": {"chat": "a"}}
            },
        }
    )
    page = ui.page("models", mobile=True)
    select = page.locator("#profile")
    expect(select).to_be_visible()
    expect(select).to_have_value("")
    select.select_option("fast")
    wait_until_sync(lambda: get_json(f"{ui.url}/api/profiles")["active"] == "fast")
    expect(select).to_be_enabled()  # the PUT and its refresh are done
    expect(select).to_have_value("fast")
    # a change made elsewhere shows up through the profileChanged event
    req = urllib.request.Request(
        f"{ui.url}/api/profiles/active",
        data=json.dumps({"name": None}).encode(),
        headers={"Content-Type": "application/json"},
        method="PUT",
    )
    with urllib.request.urlopen(req, timeout=10):
        pass
    expect(select).to_have_value("")
    shoot(page, "profile-selector-mobile-light")


class TwoGpus:
    """A GPU probe with two busy GPUs (this machine may have none)."""

    def __init__(self) -> None:
        self.tick = 0

    def devices(self) -> list[GpuSample]:
        from controller.observability.gpu import GpuSample

        self.tick += 1
        gib = 1 << 30
        return [
            GpuSample(
                index=i,
                uuid=f"GPU-{i}",
                name="NVIDIA H100 80GB HBM3",
                utilization_pct=float((self.tick * 17 + i * 40) % 100),
                memory_used_bytes=(20 + 10 * i + self.tick) * gib,
                memory_total_bytes=80 * gib,
                memory_utilization_pct=None,
                temperature_c=40.0 + self.tick + 5 * i,
                vram_temperature_c=None,
                fan_speed_pct=None,
                power_w=150.0 + 20 * self.tick + 50 * i,
            )
            for i in range(2)
        ]

    def inventory(self) -> list[GpuInfo]:
        return []


def gpu_payload() -> dict[str, Any]:
    """``/api/performance`` as swapvisor's own PerfMonitor writes it, with GPUs."""
    from controller.observability.perf import PerfMonitor

    now = time.time()
    clock = iter(now - 120 + 5 * i for i in range(24))
    monitor = PerfMonitor(5, TwoGpus(), clock=lambda: next(clock))
    for _ in range(24):
        monitor.sample()
    return monitor.history()


def test_gpu_charts(start_ui: Callable[..., UI], fake: Callable[..., str]) -> None:
    from playwright.sync_api import Route, expect

    payload = gpu_payload()
    assert payload["gpu_stats"][0]["gpu_util_pct"] is not None
    ui = start_ui({"models": {"a": {"cmd": fake("a")}}})
    page = ui.page(navigate=False)

    def answer(route: Route) -> None:
        later = "after=" in route.request.url
        empty = {"enabled": True, "sys_stats": [], "gpu_stats": []}
        route.fulfill(json=empty if later else payload)

    page.route("**/api/performance*", answer)
    page.goto(f"{ui.url}/ui/#/performance")
    expect(page.locator("#perf-status")).to_contain_text("24 samples")
    expect(page.locator("#gpu-note")).to_be_hidden()
    for chart in ("gpu-util", "gpu-mem", "gpu-temp", "gpu-power"):
        figure = page.locator(f"#chart-{chart}")
        expect(figure.locator("polyline.series")).to_have_count(2)
        expect(figure.locator(".legend")).to_contain_text(
            "GPU 1 · NVIDIA H100 80GB HBM3"
        )
    expect(page.locator("#chart-gpu-temp .legend")).to_contain_text("°C")
    expect(page.locator("#chart-gpu-power .legend")).to_contain_text(" W")
    shoot(page, "performance-gpus-desktop-light")


def test_performance_disabled(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui({"models": {"a": {"cmd": fake("a")}}})
    ui.expected_errors.append("503")
    page = ui.page(navigate=False, mobile=True)
    page.route(
        "**/api/performance*",
        lambda route: route.fulfill(status=503, json={"enabled": False}),
    )
    page.goto(f"{ui.url}/ui/#/performance")
    expect(page.locator("#perf-status")).to_contain_text("disabled")
