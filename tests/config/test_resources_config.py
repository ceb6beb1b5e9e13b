"""``routing.router.use: resources``: the budget, per-model ``needs`` and
``gpus``, fifo ``maxWait``/``minResidency``, their errors, and what
``swapvisor check`` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from controller.cli.check import check_main
from controller.config.sections import ram_fraction_or_bytes
from tests.config.helpers import error_of, load

if TYPE_CHECKING:
    from pathlib import Path

GIB = 1 << 30


def resources(body: str, models: str = "  a:\n    cmd: srv ${PORT}\n") -> str:
    return (
        "routing:\n  router:\n    use: resources\n    settings:\n      resources:\n"
        + "".join(f"        {line}\n" for line in body.splitlines())
        + "models:\n"
        + models
    )


def test_the_budget_keys_read_sizes_and_percentages() -> None:
    config = load(
        resources(
            "gpus: [{index: 0, memory: 24GiB}, {index: 1, memory: 16g}]\n"
            "ram: 75%\nreserve: {vram: 1GiB, ram: 512MiB}"
        )
    )
    assert config.routing_engine()[0] == "resources"
    r = config.resources
    assert r is not None
    assert [(g.index, g.memory) for g in r.gpus] == [(0, 24 * GIB), (1, 16 * GIB)]  # type: ignore[union-attr]
    assert ram_fraction_or_bytes(r.ram) == (0.75, None)
    assert (r.reserve.vram, r.reserve.ram) == (GIB, 512 << 20)


def test_defaults_are_every_gpu_and_80_percent_of_ram() -> None:
    config = load(
        "routing:\n  router:\n    use: resources\nmodels:\n  a:\n    cmd: s ${PORT}\n"
    )
    r = config.resources
    assert r is not None and r.gpus == "auto" and r.ram == "80%"
    assert config.max_wait_s == 30 and config.min_residency_s == 0


def test_needs_and_gpus_of_a_model() -> None:
    models = "  a:\n    cmd: s ${PORT}\n    needs: {vram: 18GiB, ram: 2GiB}\n    gpus: [1, 0]\n"
    config = load(resources("gpus: auto", models))
    needs = config.models["a"].needs
    assert needs is not None and (needs.vram, needs.ram) == (18 * GIB, 2 * GIB)
    assert config.pinned_gpus("a") == (1, 0)


def test_a_numeric_cuda_visible_devices_in_env_is_a_pin() -> None:
    models = '  a:\n    cmd: s ${PORT}\n    env: ["CUDA_VISIBLE_DEVICES=2,3"]\n'
    assert load(resources("gpus: auto", models)).pinned_gpus("a") == (2, 3)
    uuid = "  a:\n    cmd: s ${PORT}\n    env: [CUDA_VISIBLE_DEVICES=GPU-1234]\n"
    assert load(resources("gpus: auto", uuid)).pinned_gpus("a") is None


@pytest.mark.parametrize(
    ("body", "models", "message"),
    [
        ("ram: lots", None, "not a size"),
        ("ram: 150%", None, "percentage must be in (0%, 100%]"),
        ("gpus: some", None, 'must be "auto" or a list'),
        ("gpus: [{index: 0}]", None, "memory is required"),
        ("gpus: [{index: 0, memory: 1g}, {index: 0, memory: 2g}]", None, "unique"),
        ("reserve: {vram: -1}", None, "must not be negative"),
        (
            "gpus: [{index: 0, memory: 8GiB}]",
            "  a:\n    cmd: s ${PORT}\n    gpus: [1]\n",
            "model a: gpus [1] not in routing.router.settings.resources.gpus",
        ),
        ("gpus: auto", "  a:\n    cmd: s ${PORT}\n    gpus: []\n", "non-empty list"),
        (
            "gpus: auto",
            "  a:\n    cmd: s ${PORT}\n    needs: {vram: big}\n",
            "not a size",
        ),
    ],
)
def test_bad_values_are_named(body: str, models: str | None, message: str) -> None:
    text = resources(body, models) if models else resources(body)
    assert message in error_of(text)


def test_max_wait_must_not_be_negative() -> None:
    text = "routing:\n  scheduler:\n    settings:\n      fifo: {maxWait: -1}\nmodels:\n  a:\n    cmd: s ${PORT}\n"
    assert "must be >= 0 seconds" in error_of(text)


def test_persistent_groups_and_pin_selectors_stay_loaded() -> None:
    text = resources(
        "ram: 1GiB",
        "  a:\n    cmd: s ${PORT}\n  b:\n    cmd: s ${PORT}\n  c:\n    cmd: s ${PORT}\n",
    )
    text = text.replace(
        "      resources:\n",
        "      groups:\n        keep: {persistent: true, members: [a]}\n      resources:\n",
    )
    text += "selectors:\n  pick:\n    strategy: pin\n    targets: [b, c]\n"
    assert load(text).never_evicted() == {"a", "b"}


def test_check_shows_the_budget_and_each_models_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = (
        "  small:\n    cmd: s ${PORT}\n    needs: {vram: 6GiB}\n"
        "  huge:\n    cmd: s ${PORT}\n    needs: {vram: 30GiB}\n"
        "  new:\n    cmd: s ${PORT}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        resources(
            f"gpus: [{{index: 0, memory: 24GiB}}]\nram: 8GiB\n"
            f"learnedFile: {tmp_path / 'learned.json'}",
            models,
        )
    )
    assert check_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "router: resources" in out
    assert "budget: RAM 8.0 GiB, GPU 0: 24.0 GiB" in out
    assert "needs: declared VRAM 6.0 GiB" in out
    assert "needs: declared VRAM 30.0 GiB -- can never fit this budget" in out
    assert "needs: unknown (runs alone on its first load, then learned)" in out
