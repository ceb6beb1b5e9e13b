"""The command line: ``python -m controller`` flags (one or two dashes), broken
configs, the bind warning, config warnings, and the always-open endpoints."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import urllib.request
from typing import TYPE_CHECKING

import pytest

from controller import __version__
from tests.conftest import PY, ROOT, free_port, wait_until_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import aiohttp

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet

pytestmark = pytest.mark.e2e


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "controller", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            # The app's answer, not the early listener's (start-up).
            app = "X-Swapvisor-State" not in r.headers
            return bool(r.status == 200 and r.read() == b"OK" and app)
    except OSError:
        return False


class Spawned:
    """swapvisor started with exactly the given arguments (no fixture flags)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log_path = tmp_path / f"spawned-{free_port()}.log"
        self._log = self.log_path.open("w")
        env = {**os.environ, "PATH": f"{os.path.dirname(PY)}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(
            [PY, "-m", "controller", *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def wait_healthy(self, port: int) -> None:
        """Until the app serves (``/health`` answers from the first
        milliseconds, controller.cli.early, marked as starting)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swapvisor exited: {self.output()}")
            return health_ok(port)

        wait_until_sync(up, timeout=20)

    def output(self) -> str:
        return self.log_path.read_text()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    started: list[Spawned] = []

    def start(*args: str) -> Spawned:
        s = Spawned(tmp_path, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_version(flag: str) -> None:
    done = run_cli(flag)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert "version" in line
    assert re.search(rf"\b{re.escape(__version__)}\b", line)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
    assert done.stderr == ""


BROKEN = {
    "invalid-yaml": ("models:\n  a: [unclosed\n    cmd: x\n", "yaml"),
    "unknown-macro": (
        "models:\n  a:\n    cmd: ${nope} --port ${PORT}\n",
        "unknown macro '${nope}'",
    ),
    "negative-ttl": (
        "models:\n  a:\n    cmd: x --port ${PORT}\n    ttl: -5\n",
        "invalid TTL value -5",
    ),
    "not-a-mapping": ("- just\n- a list\n", "mapping"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_exits_1_with_one_line(
    case: str, write_config: Callable[[str], Path]
) -> None:
    text, expected = BROKEN[case]
    path = write_config(text)
    done = run_cli("--config", str(path), "--listen", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0]
    reason = lines[0].replace(str(path), "").lower()  # the file name has "yaml" too
    assert expected.lower() in reason


def test_missing_config_file_exits_1_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    done = run_cli("--config", str(missing))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(missing) in lines[0]
    assert "No such file or directory" in lines[0]  # the OS's reason


def test_no_config_and_bad_listen_exit_1(write_config: Callable[[str], Path]) -> None:
    done = run_cli()
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "--config" in done.stderr
    path = write_config("models: {}\n")
    done = run_cli("--config", str(path), "--listen", "nonsense")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "nonsense" in done.stderr


@pytest.mark.parametrize(
    ("config_flag", "listen_flag"),
    [("--config", "--listen"), ("-config", "-listen")],
)
def test_listen_flag_one_or_two_dashes(
    config_flag: str,
    listen_flag: str,
    write_config: Callable[[str], Path],
    spawn: Callable[..., Spawned],
) -> None:
    path = write_config("models: {}\n")
    port = free_port()
    sv = spawn(config_flag, str(path), listen_flag, f"127.0.0.1:{port}")
    sv.wait_healthy(port)
    assert f"listening on http://127.0.0.1:{port}" in sv.output()
    assert "reachable by all hosts" not in sv.output()
    assert sv.close() == 0


@pytest.mark.parametrize("listen", ["0.0.0.0:{port}", ":{port}"])
def test_listening_on_all_hosts_warns(
    listen: str,
    write_config: Callable[[str], Path],
    spawn: Callable[..., Spawned],
) -> None:
    path = write_config("models: {}\n")
    port = free_port()
    sv = spawn("--config", str(path), "--listen", listen.format(port=port))
    sv.wait_healthy(port)  # polled through 127.0.0.1 only
    out = sv.output()
    assert "[WARN]" in out
    assert "reachable by all hosts" in out
    assert f"--listen 127.0.0.1:{port}" in out
    assert sv.close() == 0


def test_config_warnings_are_logged(
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
    fleet: FakeFleet,
) -> None:
    path = write_config(
        f"bogusTop: 1\nmodels:\n  m:\n    cmd: {fleet.cmd('m')}\n    cmdd: typo\n"
    )
    sv = swapvisor(path)
    out = sv.output()
    assert "[WARN] config: bogusTop: unknown key, ignored" in out
    assert "config: models.m.cmdd: unknown key, ignored (did you mean 'cmd'?)" in out
    assert sv.stop() == 0


async def test_health_and_root_redirect(
    write_config: Callable[[str], Path],
    swapvisor: Callable[..., Swapvisor],
    http: aiohttp.ClientSession,
) -> None:
    sv = swapvisor(write_config("models: {}\n"))
    async with http.get(f"{sv.url}/health") as r:
        assert r.status == 200
        assert await r.text() == "OK"
    async with http.get(f"{sv.url}/", allow_redirects=False) as r:
        assert r.status in (301, 302, 307, 308)
        assert r.headers["Location"] == "/ui"
    async with http.get(f"{sv.url}/ui") as r:
        assert r.status == 200
        assert "swapvisor" in await r.text()
    # /health stays open when API keys are required.
    keyed = swapvisor(write_config("apiKeys: [sekrit]\nmodels: {}\n"))
    async with http.get(f"{keyed.url}/health") as r:
        assert r.status == 200
    async with http.get(f"{keyed.url}/v1/models") as r:
        assert r.status == 401
    async with http.get(
        f"{keyed.url}/v1/models", headers={"Authorization": "Bearer sekrit"}
    ) as r:
        assert r.status == 200


def test_config_dir_is_merged_after_the_config_file(
    tmp_path: Path, spawn: Callable[..., Spawned], fleet: FakeFleet
) -> None:
    main = tmp_path / "main.yaml"
    main.write_text("logLevel: info\nmacros: {who: merged}\n")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "10-a.yaml").write_text(
        "models:\n  a:\n    cmd: " + fleet.cmd("a") + "\n    name: ${who}\n"
    )
    (conf_d / "20-b.yml").write_text("models:\n  b:\n    cmd: " + fleet.cmd("b") + "\n")
    port = free_port()
    s = spawn(
        "-config",
        str(main),
        "-config-dir",
        str(conf_d),
        "--listen",
        f"127.0.0.1:{port}",
    )
    s.wait_healthy(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
        data = json.loads(r.read())["data"]
    assert {m["id"]: m.get("name") for m in data} == {"a": "merged", "b": None}
    assert s.close() == 0


def test_duplicate_model_across_config_dir_files_is_a_clear_error(
    tmp_path: Path,
) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "1.yaml").write_text(
        "models: {a: {cmd: x, proxy: 'http://127.0.0.1:1'}}\n"
    )
    (conf_d / "2.yaml").write_text(
        "models: {a: {cmd: y, proxy: 'http://127.0.0.1:1'}}\n"
    )
    done = run_cli("--config-dir", str(conf_d))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert 'duplicate models "a"' in line


def test_tls_flags_serve_https(
    tmp_path: Path, spawn: Callable[..., Spawned], write_config: Callable[[str], Path]
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = write_config("models: {}\n")
    port = free_port()
    s = spawn(
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "-tls-cert-file",
        str(cert),
        "-tls-key-file",
        str(key),
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False

    def up() -> bool:
        if s.proc.poll() is not None:
            raise RuntimeError(s.output())
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/health", timeout=1, context=context
            ) as r:
                return bool(r.read() == b"OK")
        except OSError:
            return False

    wait_until_sync(up, timeout=20)
    assert "listening on https://127.0.0.1" in s.output()
    assert s.close() == 0
    done = run_cli("--config", str(config), "--tls-cert-file", str(cert))
    assert done.returncode == 1
    assert "both --tls-cert-file and --tls-key-file" in done.stderr


def test_serving_takes_start_up_objects_out_of_the_collectors_sight() -> None:
    """What ``serve`` does once listening (``_tune_gc``): start-up objects are
    frozen and young collections run less often."""
    import gc

    from controller.cli import main as cli

    before = gc.get_threshold()
    try:
        cli._tune_gc()
        assert gc.get_freeze_count() > 10_000  # the modules, at least
        assert gc.get_threshold() == cli.GC_THRESHOLDS
        assert cli.GC_THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
