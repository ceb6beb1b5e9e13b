"""${PORT} across reloads: a model whose launch settings did not change keeps
its port (so it keeps running), new and changed models take the lowest free
ports, and a fresh load (``swapvisor check``) still numbers them in sorted id
order as llama-swap does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from controller.config.loader import expand_with_ports, load_config
from controller.engine.reload import Reloader
from tests.conftest import fake_cmd

if TYPE_CHECKING:
    from controller.config.model import PortPlan
    from tests.harness import Apps


def models(*ids: str, changed: str = "") -> str:
    """A config serving the fake upstream as each of ``ids``; ``changed``'s
    command line differs from the others'."""
    text = "models:\n"
    for mid in ids:
        flags = ("--health-delay", "0") if mid == changed else ()
        text += f"  {mid}:\n    cmd: {fake_cmd(mid, *flags)}\n"
    return text


def ports_of(text: str, previous: PortPlan | None = None) -> dict[str, int]:
    raw = yaml.safe_load(f"startPort: 7000\n{text}")
    _, plan = expand_with_ports(raw, previous)
    return {mid: port for mid, (_, port) in plan.items()}


def plan_of(text: str) -> PortPlan:
    return expand_with_ports(yaml.safe_load(f"startPort: 7000\n{text}"))[1]


def test_ports_fresh_load_numbers_in_sorted_id_order() -> None:
    assert ports_of(models("b", "a", "c")) == {"a": 7000, "b": 7001, "c": 7002}


def test_ports_a_new_model_takes_a_free_port_and_moves_no_other() -> None:
    before = plan_of(models("a", "b", "c"))
    after = ports_of(models("a", "aaa", "b", "c"), before)
    assert after == {"a": 7000, "b": 7001, "c": 7002, "aaa": 7003}
    # Without the running plan (a fresh start) aaa takes b's old port.
    assert ports_of(models("a", "aaa", "b", "c"))["aaa"] == 7001


def test_ports_a_removed_models_port_is_free_again() -> None:
    before = plan_of(models("a", "b", "c"))
    assert ports_of(models("a", "c", "bb"), before) == {
        "a": 7000,
        "c": 7002,
        "bb": 7001,
    }


def test_ports_a_changed_model_is_not_held_to_its_port() -> None:
    before = plan_of(models("a", "b"))
    # a's command changed, so it restarts anyway: the new 0a may take 7000.
    after = ports_of(models("0a", "a", "b", changed="a"), before)
    assert after == {"0a": 7000, "a": 7002, "b": 7001}


def test_ports_the_expanded_tree_uses_the_plan() -> None:
    before = plan_of(models("a", "b"))
    raw = yaml.safe_load(f"startPort: 7000\n{models('a', 'aaa', 'b')}")
    data, _ = expand_with_ports(raw, before)
    assert data["models"]["b"]["proxy"] == "http://127.0.0.1:7001"
    assert "--port 7001 --model b" in data["models"]["b"]["cmd"]
    assert data["models"]["aaa"]["proxy"] == "http://127.0.0.1:7002"


async def test_reload_adding_a_model_that_sorts_earlier_restarts_nothing(
    apps: Apps,
) -> None:
    app = await apps.start(models("a", "b"))
    assert await app.reply("b") == "hello from b"
    b, pid, url = app.upstream("b"), app.pid("b"), app.upstream("b").base_url
    restarts: list[list[str]] = []
    reconfigure = app.router.reconfigure

    def spy(config: object) -> list[str]:
        restarts.append(reconfigure(config))  # type: ignore[arg-type]
        return restarts[-1]

    app.router.reconfigure = spy  # type: ignore[method-assign]
    app.write_config(models("a", "aaa", "b"))
    assert await Reloader(app.runtime, app.config_path, None).reload_now()
    assert restarts == [[]]
    assert app.upstream("b") is b and app.pid("b") == pid
    assert app.upstream("b").base_url == url
    assert app.upstream("aaa").base_url == f"http://127.0.0.1:{app.start_port + 2}"
    assert await app.reply("b") == "hello from b"
    assert await app.reply("aaa") == "hello from aaa"
    # swapvisor check shows what a fresh start would use: sorted id order.
    fresh = load_config(app.config_path).config
    assert fresh.models["aaa"].proxy == f"http://127.0.0.1:{app.start_port + 1}"
    assert fresh.models["b"].proxy == f"http://127.0.0.1:{app.start_port + 2}"
