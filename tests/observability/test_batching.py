"""controller.observability.recorder: finished requests are written in
batches, and nothing a reader can see is ever missing from them.

A request leaves the in-flight table when it ends; its row, capture, metrics
and ``activity`` event follow in the observer's next flush: a timer, a burst
of ``FLUSH_MAX``, or any read of the store or the captures.
"""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request

from controller.observability import recorder
from controller.observability.activity import ActivityEntry, ActivityStore
from controller.observability.captures import CaptureBuffer
from controller.observability.events import EventBus
from controller.observability.metrics import Metrics, RequestDone
from controller.observability.recorder import Observer, Recording

BODY = json.dumps(
    {"usage": {"prompt_tokens": 3, "completion_tokens": 5}, "choices": []}
).encode()


def observer() -> Observer:
    return Observer(ActivityStore(), CaptureBuffer(1 << 20), Metrics(None), EventBus())


def one_request(obs: Observer, model: str = "m", status: int = 200) -> Recording:
    request = make_mocked_request(
        "POST", "/v1/chat/completions", headers={"Content-Type": "application/json"}
    )
    rec = obs.begin(request, model, "/v1/chat/completions", b"{}")
    rec.headers(status, [("Content-Type", "application/json")])
    rec.chunk(BODY)
    rec.close()
    return rec


def flush_due(obs: Observer) -> bool:
    return obs._timer is not None


def counted(obs: Observer, name: str, **labels: str) -> float:
    value = obs.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_finished_request_waits_for_the_batch_then_is_all_there() -> None:
    obs = observer()
    queue = obs.events.subscribe()
    rec = one_request(obs)
    assert rec.id not in obs.in_flight  # out of the table at once
    assert obs._store.get(1) is None  # the row is not written yet
    assert flush_due(obs)
    rows = obs.store.query({})["data"]  # reading flushes first
    assert [r["id"] for r in rows] == [1]
    assert rows[0]["tokens"]["input_tokens"] == 3
    assert not flush_due(obs)
    assert 1 in obs.captures
    assert counted(obs, "swapvisor_requests_total", model="m", status="200") == 1
    frames = [queue.get_nowait() for _ in range(queue.qsize())]
    assert frames[-1] is not None
    assert b"activity" in frames[-1]  # announced after the row is there


async def test_a_batch_counts_as_each_request_would() -> None:
    obs, alone = observer(), observer()
    for status in (200, 200, 500):
        one_request(obs, status=status)
    obs.flush()
    for status, tokens in ((200, (3, 5, 0)), (200, (3, 5, 0)), (500, (0, 0, 0))):
        alone.metrics.request_done("m", status, 0.0, 0.0, *tokens)
    for name, labels in (
        ("swapvisor_requests_total", {"model": "m", "status": "200"}),
        ("swapvisor_requests_total", {"model": "m", "status": "500"}),
        ("swapvisor_tokens_total", {"model": "m", "kind": "output"}),
        ("swapvisor_tokens_total", {"model": "m", "kind": "cached"}),
        ("swapvisor_request_duration_seconds_count", {"model": "m"}),
        ("swapvisor_time_to_first_byte_seconds_count", {"model": "m"}),
    ):
        assert counted(obs, name, **labels) == counted(alone, name, **labels), name
    assert obs.store.query({})["total"] == 3


async def test_a_burst_is_written_at_once() -> None:
    obs = observer()
    for _ in range(recorder.FLUSH_MAX):
        one_request(obs)
    assert obs._store.get(recorder.FLUSH_MAX) is not None
    assert not flush_due(obs)


def test_rows_of_a_batch_share_one_transaction_and_keep_their_order() -> None:
    store = ActivityStore(metrics_max_in_memory=5)
    entries = [ActivityEntry(model=f"m{i}", req_path="/v1/x") for i in range(40)]
    assert store.add_many(entries) == list(range(1, 41))
    assert [e.id for e in entries] == list(range(1, 41))
    # the batch crossed a PRUNE_EVERY boundary: pruned to the newest rows
    assert store.query({"limit": ["100"]})["total"] == 5
    more = [ActivityEntry(model="n", req_path="/v1/x") for _ in range(3)]
    assert store.add_many(more) == [41, 42, 43]  # no boundary: no prune
    assert store.query({"limit": ["100"]})["total"] == 8


def test_request_done_is_a_batch_of_one() -> None:
    a, b = Metrics(None), Metrics(None)
    a.request_done("m", 200, 0.5, 0.1, 1, 2, 3)
    b.requests_done([RequestDone("m", 200, 0.5, 0.1, 1, 2, 3)])
    assert request_series(a) == request_series(b)


def request_series(metrics: Metrics) -> list[bytes]:
    """The rendered request series (host figures change between scrapes)."""
    prefixes = tuple(
        b"swapvisor_" + name
        for name in (b"requests", b"tokens", b"request_", b"time_to_first_byte")
    )
    return [x for x in metrics.render()[0].splitlines() if x.startswith(prefixes)]
