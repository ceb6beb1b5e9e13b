"""In-process swapvisor: the real app and native backend, real fake-upstream
processes, driven over real HTTP on 127.0.0.1 by pytest-aiohttp's client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from aiohttp.test_utils import TestClient, TestServer

from backends.native import NativeBackend
from controller.config.loader import parse_config
from controller.http.app import create_app
from controller.http.keys import RUNTIME
from tests.conftest import port_block

if TYPE_CHECKING:
    from controller.engine.router import Router


@dataclass
class Running:
    client: TestClient  # type: ignore[type-arg]
    router: Router

    def state(self, model: str) -> str:
        return self.router.upstreams[model].state.value


MakeApp = Callable[[str], Awaitable[Running]]


@pytest.fixture
async def make_app() -> AsyncIterator[MakeApp]:
    """Factory: YAML text → a running app; every upstream is stopped afterwards."""
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def make(yaml_text: str) -> Running:
        text = f"startPort: {port_block()}\n" + yaml_text
        config = parse_config(text).config
        app = create_app(config, NativeBackend())
        server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Running(client, app[RUNTIME].router)

    yield make
    for client in clients:
        await client.close()


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
