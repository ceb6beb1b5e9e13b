"""A model whose backend's optional SDK is missing: one line naming the
model and the extra, from ``swapvisor check`` and at start-up alike."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.conftest import PY, ROOT, free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e

CONFIG = """
models:
  local:
    cmd: sleep 1000 --port ${PORT}
  boxed:
    proxy: http://127.0.0.1:9999
    docker: {image: "example/server:1"}
"""
NEEDS = (
    "model boxed: the docker backend needs the Python package 'docker': "
    "pip install 'swapvisor[docker]'"
)


def without_docker(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import docker`` fails as if not installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "docker.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'docker'\", name='docker')\n"
    )
    return {**os.environ, "PYTHONPATH": str(shadow)}


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    return subprocess.run(
        [PY, "-m", "controller", *args, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=without_docker(tmp_path),
    )


def test_check_names_the_missing_extra_in_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, "check")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert NEEDS in done.stderr


def test_start_up_names_the_missing_extra_in_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--config")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert NEEDS in done.stderr


def test_check_is_ok_when_the_extra_is_there(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [PY, "-m", "controller", "check", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
