"""``scripts/device-check --host``: the GPU device check's own scenario, run
over host RAM so its logic (fake servers, config, eviction, /api/explain,
/metrics, report, cleanup) is exercised on every machine. The GPU variant
needs an NVIDIA driver and is run by hand (README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device-check"


@pytest.mark.timeout(240)
def test_device_check_host_mode_passes(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    work = tmp_path / "work"  # its temp folder: every command line names it
    work.mkdir()
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--host", "--report", str(report)],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(work)),
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = report.read_text()
    assert "**FAIL**" not in text
    for check in (
        "toobig: 503 insufficient_memory at once",
        "learned: learned from its measurement",
        "eviction: least recently used — learned stays",
        "/metrics: swapvisor_evictions_total",
        "shutdown: every model server ended",
    ):
        assert f"| {check}" in text, check
    # Nothing it started outlives it, and its temp folder is gone.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
    assert str(work) not in ps.stdout
    assert list(work.iterdir()) == []


def test_device_check_without_a_driver_says_what_is_missing() -> None:
    """GPU mode on a machine without libcuda.so.1: one line, exit 2."""
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        pass
    else:
        pytest.skip("an NVIDIA driver is here: GPU mode would run")
    out = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "libcuda.so.1" in lines[0], out.stdout
    assert "Traceback" not in out.stderr
