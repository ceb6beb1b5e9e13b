"""The deployment files: the Dockerfiles and compose files exist and check
/health, each compose file mounts an engine socket and its config, and the
example configs they mount load cleanly with the backend they are written for.
Nothing is built or started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
EXAMPLES = [("config.docker.yaml", "docker"), ("config.podman.yaml", "podman")]
COMPOSE_FILES = {
    "docker-compose.yml": ("config.docker.yaml", "/var/run/docker.sock"),
    "podman-compose.yml": ("config.podman.yaml", "/run/podman/podman.sock"),
}


@pytest.mark.parametrize(("name", "kind"), EXAMPLES)
def test_example_config_loads_clean_with_its_backend(
    name: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWAPVISOR_KEY", "sk-deploy-test")
    loaded = load_config(COMPOSE / name)
    assert loaded.warnings == ()
    config = loaded.config
    assert config.api_keys == ["sk-deploy-test"]
    assert config.models, "the example has models"
    assert {m.backend_kind for m in config.models.values()} == {kind}
    for mid, model in config.models.items():
        spec = config.launch_spec(mid)
        assert spec.container is not None and spec.container.image
        # ${PORT} was given out, and the server is told to use it.
        port = str(spec.base_url.rsplit(":", 1)[1])
        assert port in spec.container.command, (mid, spec.container.command)
        assert model.engine_url is None  # the engine comes from the environment


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_has_a_health_check(name: str) -> None:
    text = (ROOT / name).read_text()
    assert "HEALTHCHECK" in text
    assert "/health" in text


@pytest.mark.parametrize(("name", "wanted"), sorted(COMPOSE_FILES.items()))
def test_compose_mounts_the_socket_and_config_and_checks_health(
    name: str, wanted: tuple[str, str]
) -> None:
    config_file, socket_path = wanted
    path = COMPOSE / name
    assert "/health" in path.read_text()
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    service = doc["services"]["swapvisor"]
    volumes = [str(v) for v in service["volumes"]]
    assert f"{socket_path}:{socket_path}" in volumes, volumes
    config_mount = next(v for v in volumes if v.startswith(f"./{config_file}:"))
    target = config_mount.split(":")[1]
    # The config it mounts is the one swapvisor is told to read.
    command = [str(a) for a in service["command"]]
    assert command[command.index("--config") + 1] == target
    assert (path.parent / config_file).is_file()
    health = service["healthcheck"]
    assert any("/health" in str(part) for part in health["test"])
    assert service.get("network_mode") == "host"
    assert service["environment"].get("SWAPVISOR_INSTANCE")
