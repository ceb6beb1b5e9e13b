"""swapvisor as a subprocess, driven by the official ``anthropic`` SDK: messages
(plain and streamed two ways), count_tokens, and Anthropic-shaped errors."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from anthropic import Anthropic, AsyncAnthropic

from tests.conftest import wait_until
from tests.e2e.conftest import in_flight

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet

pytestmark = pytest.mark.e2e

MODELS: dict[str, dict[str, Any]] = {
    "claude-local": {
        "aliases": ["claude-alias"],
        "useModelName": "upstream-claude",
    },
    "other": {},
}


def client(sv: Swapvisor) -> Anthropic:
    return Anthropic(base_url=sv.url, api_key="x", max_retries=0, timeout=30)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_messages_plain_and_streamed_agree(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(MODELS)
    prompt = user("echo: a stream of several words")
    with client(sv) as c:
        message = c.messages.create(
            model="claude-alias", max_tokens=64, messages=prompt
        )
        with c.messages.stream(
            model="claude-alias", max_tokens=64, messages=prompt
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text_of(message) == "a stream of several words"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.model == "upstream-claude"  # useModelName reached the upstream
    assert message.usage.output_tokens == 5
    assert streamed == text_of(message)
    assert text_of(final) == streamed
    assert final.model == "upstream-claude"
    assert final.stop_reason == "end_turn"


def test_messages_create_stream_true_events(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(MODELS)
    with client(sv) as c:
        events = list(
            c.messages.create(
                model="other", max_tokens=64, messages=user("echo: x y z"), stream=True
            )
        )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "message_delta" in kinds
    deltas = [
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert "".join(deltas) == "x y z"


def test_count_tokens(start_fakes: Callable[..., Swapvisor]) -> None:
    sv = start_fakes(MODELS)
    with client(sv) as c:
        counted = c.messages.count_tokens(
            model="claude-alias",
            system="be brief",
            messages=user("one two three four"),
        )
    # The fake counts whitespace-separated words of system + messages.
    assert counted.input_tokens == 6


def test_unknown_model_is_anthropic_404(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(MODELS)
    with client(sv) as c, pytest.raises(anthropic.NotFoundError) as caught:
        c.messages.create(model="claude-nope", max_tokens=8, messages=user("hi"))
    err = caught.value
    assert err.status_code == 404
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "not_found_error"
    message = err.body["error"]["message"]
    assert "claude-nope" in message
    assert "available models: claude-local, other" in message
    with client(sv) as c, pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="claude-nope", messages=user("hi"))


async def test_bad_requests_get_anthropic_shape(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes(MODELS)
    async with http.post(
        f"{sv.url}/v1/messages",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
        body = await r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "invalid JSON" in body["error"]["message"]
    async with http.post(
        f"{sv.url}/v1/messages", json={"max_tokens": 8, "messages": user("hi")}
    ) as r:
        assert r.status == 400
        body = await r.json()
    assert body["type"] == "error"
    assert "model" in body["error"]["message"]
    with client(sv) as c, pytest.raises(anthropic.BadRequestError) as caught:
        c.messages.create(model="", max_tokens=8, messages=user("hi"))
    assert caught.value.status_code == 400


def test_start_failure_is_anthropic_503(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes({"broken": {"flags": ["--exit-on-start", "3"]}})
    with client(sv) as c, pytest.raises(anthropic.InternalServerError) as caught:
        c.messages.create(model="broken", max_tokens=8, messages=user("hi"))
    err = caught.value
    assert err.status_code == 503
    assert err.response.headers["Retry-After"] == "1"
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert "exit code 3" in err.body["error"]["message"]
    assert fleet.all_pids() == []


def test_crash_mid_stream_raises_then_restarts(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(MODELS)
    got: list[str] = []
    with client(sv) as c:
        with (
            pytest.raises(anthropic.APIError) as caught,
            c.messages.stream(
                model="other",
                max_tokens=64,
                messages=user("echo: one two three four"),
                extra_body={"fake_crash_midstream": True},
            ) as stream,
        ):
            got.extend(stream.text_stream)
        assert "upstream" in str(caught.value)
        assert "".join(got) == "one two"
        again = c.messages.create(model="other", max_tokens=8, messages=user("hi"))
    assert text_of(again) == "hello from other"
    assert len(fleet.pids("other")) == 1


async def test_over_concurrency_limit_is_anthropic_429(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes({"limited": {"concurrencyLimit": 1}})
    async with AsyncAnthropic(
        base_url=sv.url, api_key="x", max_retries=0, timeout=30
    ) as c:
        slow = asyncio.create_task(
            c.messages.create(
                model="limited",
                max_tokens=8,
                messages=user("echo: slow"),
                extra_body={"fake_delay": 1},
            )
        )
        await wait_until(lambda: in_flight(sv, "limited") == 1)
        with pytest.raises(anthropic.RateLimitError) as caught:
            await c.messages.create(model="limited", max_tokens=8, messages=user("x"))
        assert text_of(await slow) == "slow"
    err = caught.value
    assert err.status_code == 429
    assert err.response.headers["Retry-After"] == "1"
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"
