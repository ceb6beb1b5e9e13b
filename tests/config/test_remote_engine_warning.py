"""A model on another host's engine whose proxy still names this host gets a
warning at load: it can only work if that engine is local."""

from __future__ import annotations

from controller.config.loader import parse_config

BASE = """
models:
  m:
    proxy: {proxy}
    docker: {{image: "srv:1", engine: "{engine}"}}
"""


def warnings(engine: str, proxy: str) -> list[str]:
    text = BASE.format(engine=engine, proxy=proxy)
    return [w for w in parse_config(text).warnings if "proxy" in w]


def test_a_remote_engine_with_a_loopback_proxy_is_warned() -> None:
    (warning,) = warnings("tcp://gpu-box:2375", "http://127.0.0.1:8080")
    assert "models.m.proxy" in warning and "gpu-box" in warning


def test_a_remote_engine_with_its_own_host_in_the_proxy_is_fine() -> None:
    assert warnings("tcp://gpu-box:2375", "http://gpu-box:8080") == []


def test_a_second_daemon_on_this_host_is_fine() -> None:
    assert warnings("tcp://127.0.0.1:2375", "http://127.0.0.1:8080") == []
