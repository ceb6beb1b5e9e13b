"""Extra fixtures for the end-to-end tests: fake upstreams whose command lines
carry the test's tmp path, so each model's process can be found by
``pids_of`` and nothing another test started is ever mistaken for it."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import FAKE, PY, pids_of, port_block

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Swapvisor


@dataclass(frozen=True)
class FakeFleet:
    """Where this test's fake upstream lives, and how to find its processes."""

    script: Path  # a symlink to the fake inside the test's tmp path

    def cmd(self, model: str, *flags: str) -> str:
        """A ``cmd`` line; ``--model`` comes first so ``pattern`` can match it."""
        return " ".join(
            [PY, str(self.script), "--model", model, "--port ${PORT}", *flags]
        )

    def pattern(self, model: str) -> str:
        return f"{self.script} --model {model} "

    def pids(self, model: str) -> list[int]:
        return pids_of(self.pattern(model))

    def all_pids(self) -> list[int]:
        return pids_of(str(self.script))


@pytest.fixture
def fleet(tmp_path: Path) -> FakeFleet:
    script = tmp_path / "fake_upstream.py"
    script.symlink_to(FAKE)
    return FakeFleet(script)


@pytest.fixture
def start_fakes(
    fleet: FakeFleet,
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
) -> Callable[..., Swapvisor]:
    """Start swapvisor over fake-upstream models.

    ``models`` maps a model id to its settings; the key ``flags`` (a list of
    fake-upstream flags) is turned into the model's ``cmd``, every other key is
    copied into the config as is. ``top`` adds top-level config keys.
    """

    def start(models: dict[str, dict[str, Any]], **top: Any) -> Swapvisor:
        entries: dict[str, dict[str, Any]] = {}
        for mid, settings in models.items():
            entry = dict(settings)
            flags = [str(f) for f in entry.pop("flags", [])]
            entry["cmd"] = fleet.cmd(mid, *flags)
            entries[mid] = entry
        config: dict[str, Any] = {
            "startPort": port_block(len(entries)),
            **top,
            "models": entries,
        }
        return swapvisor(write_config(yaml.safe_dump(config, sort_keys=False)))

    return start


def environ_has(pid: int, token: str) -> bool:
    """Whether process ``pid`` carries ``token`` in its environment."""
    try:
        return token.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def own_pids(pattern: str, token: str) -> list[int]:
    """Live processes matching ``pattern`` that inherited ``token``: this test's
    own, even when another run uses the very same command lines."""
    return [pid for pid in pids_of(pattern) if environ_has(pid, token)]


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) in process group ``pgid``."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def in_flight(sv: Swapvisor, model: str) -> int:
    """Requests being served by ``model`` now, from swapvisor's /running."""
    with urllib.request.urlopen(f"{sv.url}/running", timeout=5) as r:
        running = json.load(r)["running"]
    return sum(int(m["in_flight"]) for m in running if m["model"] == model)
