"""fifo ``maxWait`` through the real app: a request queued behind a model
that keeps getting new requests is served once the requests it waited for
drain, not after everyone who came later (a benchmark client saw an
embeddings request wait 52 s behind nine later chat requests; llama-swap has
no bound). It holds for the group engine, the default here."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import fake_cmd, wait_until

if TYPE_CHECKING:
    from tests.harness import Apps


def config(max_wait: float) -> str:
    return f"""
routing:
  scheduler:
    settings:
      fifo:
        maxWait: {max_wait}
models:
  chat:
    cmd: {fake_cmd("chat")}
  embed:
    cmd: {fake_cmd("embed")}
"""


@pytest.mark.parametrize("max_wait", [0.5, 0])
async def test_a_queued_request_is_not_starved_by_later_ones(
    apps: Apps, max_wait: float
) -> None:
    app = await apps.start(config(max_wait))
    assert await app.reply("chat") == "hello from chat"
    done: dict[str, float] = {}

    async def chat(n: int) -> None:
        assert await app.reply("chat", fake_delay=0.6) == "hello from chat"
        done[f"chat{n}"] = time.monotonic()

    async def embed() -> None:
        assert await app.reply("embed") == "hello from embed"
        done["embed"] = time.monotonic()

    # Chat requests overlap without a gap (each 0.6 s, one every 0.2 s: a
    # 0.4 s margin for a loaded machine) for ~2.2 s; embed arrives early.
    first = asyncio.create_task(chat(0))
    await wait_until(lambda: app.router.scheduler.in_flight("chat") == 1)
    waiting = asyncio.create_task(embed())
    await wait_until(lambda: app.router.queue_depth() == 1)
    later = []
    for n in range(1, 9):
        later.append(asyncio.create_task(chat(n)))
        await asyncio.sleep(0.2)  # the arrival pattern under test, not a wait
    await asyncio.gather(first, waiting, *later)
    after = sum(1 for k, t in done.items() if k != "embed" and t > done["embed"])
    if max_wait:
        # Served once the chats admitted before its bound drained: most of
        # the later chats came after it.
        assert after >= 4, done
    else:
        # No bound (llama-swap's behaviour): it waits for the chats to stop.
        assert after == 0, done
