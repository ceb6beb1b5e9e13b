"""keepSlots' file handling: names keyed by the launch fingerprint, the size
cap evicting oldest first, and save/restore against a server speaking
llama.cpp's ``/slots`` API (in process), including its failures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from backends.base import LaunchSpec
from controller.engine.slots import SlotKeeper, SlotStore, launch_fingerprint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def spec(*argv: str) -> LaunchSpec:
    return LaunchSpec(argv=argv, base_url="http://127.0.0.1:9")


def test_the_fingerprint_follows_the_launch_command() -> None:
    a = launch_fingerprint(spec("srv", "-m", "a.gguf"))
    assert a == launch_fingerprint(spec("srv", "-m", "a.gguf"))
    assert a != launch_fingerprint(spec("srv", "-m", "b.gguf"))
    assert len(a) == 16


def test_only_this_launchs_files_are_restored(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, 1 << 30)
    mine = SlotKeeper(store, "m", "0" * 16)
    other = SlotKeeper(store, "m", "1" * 16)
    mine.prepare()
    (mine.dir / f"{'0' * 16}-slot0.bin").write_bytes(b"x" * 10)
    (mine.dir / f"{'1' * 16}-slot0.bin").write_bytes(b"y" * 10)
    (mine.dir / "notes.txt").write_text("not a slot file")
    assert [p.name for p in mine.files()] == [f"{'0' * 16}-slot0.bin"]
    assert [p.name for p in other.files()] == [f"{'1' * 16}-slot0.bin"]
    assert SlotKeeper(store, "another-model", "0" * 16).files() == []


def test_the_size_cap_evicts_oldest_first(tmp_path: Path) -> None:
    store = SlotStore(tmp_path, 25)
    keeper = SlotKeeper(store, "m", "a" * 16)
    keeper.prepare()
    paths = [keeper.dir / f"{'a' * 16}-slot{i}.bin" for i in range(3)]
    for age, path in enumerate(paths):
        path.write_bytes(b"z" * 10)
        os.utime(path, (1000 + age, 1000 + age))
    gone = store.evict()
    assert gone == [paths[0]]
    assert [p.exists() for p in paths] == [False, True, True]


@dataclass
class SlotsServer:
    """llama.cpp's /slots API over an in-memory "disk"."""

    tokens: dict[int, int] = field(default_factory=lambda: {0: 120, 1: 0})
    disk: dict[str, int] = field(default_factory=dict)
    broken: bool = False
    directory: Path | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slots", self.slots)
        app.router.add_post("/slots/{id}", self.action)
        return app

    async def slots(self, request: web.Request) -> web.Response:
        if self.broken:
            return web.json_response(
                {"error": {"message": "slots disabled"}}, status=501
            )
        return web.json_response([{"id": i} for i in self.tokens])

    async def action(self, request: web.Request) -> web.Response:
        slot = int(request.match_info["id"])
        name = (await request.json())["filename"]
        assert self.directory is not None
        path = self.directory / name
        if request.query["action"] == "save":
            n = self.tokens[slot]
            path.write_bytes(b"k" * (n * 10 + 1))
            return web.json_response(
                {"id_slot": slot, "n_saved": n, "n_written": n * 10}
            )
        if not path.exists() or path.read_bytes()[:1] != b"k":
            msg = "Unable to restore slot: invalid slot save file"
            return web.json_response({"error": {"message": msg}}, status=400)
        n = (len(path.read_bytes()) - 1) // 10
        self.tokens[slot] = n
        return web.json_response({"id_slot": slot, "n_restored": n, "n_read": n * 10})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[SlotsServer, str, SlotKeeper]]:
    keeper = SlotKeeper(SlotStore(tmp_path, 1 << 30), "m", "f" * 16)
    keeper.prepare()
    server = SlotsServer(directory=keeper.dir)
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server()
    yield server, str(test_server.make_url("")).rstrip("/"), keeper
    await test_server.close()


async def test_save_keeps_slots_with_tokens_and_restore_puts_them_back(
    served: tuple[SlotsServer, str, SlotKeeper],
) -> None:
    server, url, keeper = served
    saved = await keeper.save(url)
    assert (saved.count, saved.tokens, saved.error) == (1, 120, "")
    assert [p.name for p in keeper.files()] == [f"{'f' * 16}-slot0.bin"]  # slot 1 empty
    assert keeper.saved().tokens == 120
    server.tokens = {0: 0, 1: 0}  # a fresh server
    restored = await keeper.restore(url)
    assert (restored.count, restored.tokens, restored.error) == (1, 120, "")
    assert server.tokens[0] == 120


async def test_a_corrupt_file_is_reported_not_raised(
    served: tuple[SlotsServer, str, SlotKeeper],
) -> None:
    server, url, keeper = served
    await keeper.save(url)
    keeper.files()[0].write_bytes(b"garbage")
    report = await keeper.restore(url)
    assert "invalid slot save file" in report.error


async def test_a_server_without_slots_is_reported_not_raised(
    served: tuple[SlotsServer, str, SlotKeeper],
) -> None:
    server, url, keeper = served
    server.broken = True
    report = await keeper.save(url)
    assert "slots disabled" in report.error and report.count == 0


async def test_nothing_saved_nothing_restored(
    served: tuple[SlotsServer, str, SlotKeeper],
) -> None:
    _, url, keeper = served
    report = await keeper.restore(url)
    assert (report.count, report.error) == (0, "")
