"""swapvisor as a subprocess, driven by the official ``openai`` SDK, in front of
fake upstreams that are real processes: chat (plain and streamed), embeddings,
the model list, swaps, aliases, shutdown and every error the client can see."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import TYPE_CHECKING, Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import alive, wait_until
from tests.e2e.conftest import children_of, in_flight

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from tests.conftest import Swapvisor
    from tests.e2e.conftest import FakeFleet

pytestmark = pytest.mark.e2e

TWO_MODELS: dict[str, dict[str, Any]] = {
    "alpha": {"aliases": ["gpt-4o-mini"], "useModelName": "upstream-alpha"},
    "beta": {"aliases": ["beta-alias"]},
    "embedder": {"aliases": ["text-embedding-3-small"]},
    "hidden": {"unlisted": True},
}


def client(sv: Swapvisor) -> OpenAI:
    return OpenAI(base_url=f"{sv.url}/v1", api_key="x", max_retries=0, timeout=30)


def async_client(sv: Swapvisor) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{sv.url}/v1", api_key="x", max_retries=0, timeout=30)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def chat_text(c: OpenAI, model: str, text: str, **kw: Any) -> str:
    reply = c.chat.completions.create(model=model, messages=ask(text), **kw)
    return reply.choices[0].message.content or ""


def streamed_text(c: OpenAI, model: str, text: str, **kw: Any) -> str:
    stream = c.chat.completions.create(
        model=model, messages=ask(text), stream=True, **kw
    )
    with stream:
        return "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )


def raw_models(sv: Swapvisor) -> dict[str, str]:
    """``id -> status.value`` from the raw /v1/models JSON, through the SDK."""
    with client(sv) as c:
        raw = c.models.with_raw_response.list()
        data = json.loads(raw.text)
    return {m["id"]: m["status"]["value"] for m in data["data"]}


# -- the happy path -------------------------------------------------------------------


def test_chat_streamed_equals_non_streamed(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        whole = chat_text(c, "beta", "echo: the quick brown fox jumps")
        assert whole == "the quick brown fox jumps"
        assert streamed_text(c, "beta", "echo: the quick brown fox jumps") == whole
        # Many small chunks are relayed one by one, none lost or merged wrongly.
        many = streamed_text(c, "beta", "hi", extra_body={"fake_chunks": 200})
        assert many == "x" * 200


def test_streamed_chunks_arrive_in_order_with_usage(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        stream = c.chat.completions.create(
            model="beta",
            messages=ask("echo: one two three"),
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            chunks = list(stream)
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert pieces[0] == ""  # the role chunk
    assert "".join(p or "" for p in pieces) == "one two three"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_embeddings(start_fakes: Callable[..., Swapvisor]) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        # The SDK asks for base64 by default and decodes it.
        res = c.embeddings.create(
            model="text-embedding-3-small", input=["first", "second"]
        )
        as_float = c.embeddings.create(
            model="embedder", input=["first", "second"], encoding_format="float"
        )
    vectors = [d.embedding for d in res.data]
    assert [d.index for d in res.data] == [0, 1]
    assert len(vectors[0]) == len(vectors[1]) == 8
    assert vectors[0] != vectors[1]
    assert [d.embedding for d in as_float.data] == vectors
    assert res.usage.prompt_tokens == 2


def test_models_list_ids_and_status(start_fakes: Callable[..., Swapvisor]) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        ids = [m.id for m in c.models.list()]
    assert ids == ["alpha", "beta", "embedder"]  # sorted; "hidden" is unlisted
    assert raw_models(sv) == {
        "alpha": "unloaded",
        "beta": "unloaded",
        "embedder": "unloaded",
    }
    with client(sv) as c:
        chat_text(c, "gpt-4o-mini", "hi")
        raw = c.models.with_raw_response.list()
        record = json.loads(raw.text)["data"][0]
    assert record["id"] == "alpha"
    assert record["object"] == "model"
    assert record["meta"]["llamaswap"]["aliases"] == ["gpt-4o-mini"]
    assert raw_models(sv) == {
        "alpha": "loaded",
        "beta": "unloaded",
        "embedder": "unloaded",
    }


def test_aliases_and_use_model_name(start_fakes: Callable[..., Swapvisor]) -> None:
    """The fake echoes the ``model`` it received in its answer's ``model``."""
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        by_alias = c.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
        by_id = c.chat.completions.create(model="alpha", messages=ask("hi"))
        stream = c.chat.completions.create(
            model="gpt-4o-mini", messages=ask("hi"), stream=True
        )
        with stream:
            streamed_models = {chunk.model for chunk in stream}
        # No useModelName: the upstream sees the name the client sent.
        plain_alias = c.chat.completions.create(model="beta-alias", messages=ask("hi"))
        plain_id = c.chat.completions.create(model="beta", messages=ask("hi"))
        # An unlisted model is still served.
        hidden = c.chat.completions.create(model="hidden", messages=ask("hi"))
    assert by_alias.model == "upstream-alpha"
    assert by_id.model == "upstream-alpha"
    assert by_alias.choices[0].message.content == "hello from alpha"
    assert streamed_models == {"upstream-alpha"}
    assert plain_alias.model == "beta-alias"
    assert plain_id.model == "beta"
    assert plain_alias.choices[0].message.content == "hello from beta"
    assert hidden.choices[0].message.content == "hello from hidden"


def test_legacy_completions_and_multipart_transcription(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(TWO_MODELS)
    audio = b"RIFF" + bytes(100)
    with client(sv) as c:
        done = c.completions.create(model="beta", prompt="echo: two words")
        streamed = c.completions.create(
            model="beta", prompt="echo: two words", stream=True
        )
        with streamed:
            text = "".join(ch.choices[0].text for ch in streamed if ch.choices)
        # The model is a multipart form field here; useModelName rewrites it.
        heard = c.audio.transcriptions.create(
            model="gpt-4o-mini", file=("clip.wav", audio, "audio/wav")
        )
    assert done.choices[0].text == "two words"
    assert text == "two words"
    assert heard.text == "transcribed clip.wav (104 bytes) by upstream-alpha"


# -- swaps and shutdown ------------------------------------------------------------------


def test_swap_a_b_a_one_process_at_a_time(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(TWO_MODELS)
    assert fleet.all_pids() == []
    seen: dict[str, int] = {}
    with client(sv) as c:
        for model in ("alpha", "beta", "alpha"):
            assert chat_text(c, model, "hi") == f"hello from {model}"
            pids = fleet.pids(model)
            assert len(pids) == 1, f"{model}: {pids}"
            assert fleet.all_pids() == pids
            status = raw_models(sv)
            assert status[model] == "loaded"
            assert [m for m, s in status.items() if s == "loaded"] == [model]
            if model in seen:
                assert seen[model] != pids[0]  # a fresh process after the swap
            seen[model] = pids[0]
    assert "swap: stopping alpha to start beta" in sv.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_stops_everything(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet, sig: signal.Signals
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        chat_text(c, "alpha", "hi")
        chat_text(c, "beta", "hi")
    assert len(fleet.pids("beta")) == 1
    assert sv.stop(sig) == 0
    assert fleet.all_pids() == []
    assert "shutdown complete" in sv.output()


async def test_sigterm_while_a_model_starts_answers_503(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    """SIGTERM during a slow start: the waiting client gets a 503 at once."""
    sv = start_fakes({"slow": {"flags": ["--health-delay", "30"]}})
    async with async_client(sv) as c:
        waiting = asyncio.create_task(
            c.chat.completions.create(model="slow", messages=ask("hi"))
        )
        await wait_until(lambda: len(fleet.pids("slow")) == 1)
        assert await asyncio.to_thread(sv.stop, signal.SIGTERM) == 0
        with pytest.raises(openai.InternalServerError) as caught:
            await waiting
    err = caught.value
    assert err.status_code == 503
    assert "Retry-After" in err.response.headers
    assert fleet.all_pids() == []


async def test_sigterm_lets_an_in_flight_stream_finish(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(TWO_MODELS)
    async with async_client(sv) as c:
        stream = await c.chat.completions.create(
            model="beta",
            messages=ask("hi"),
            stream=True,
            extra_body={"fake_chunks": 8, "fake_chunk_delay": 0.05},
        )
        pieces: list[str] = []
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if not pieces:
                        sv.proc.send_signal(signal.SIGTERM)
                    pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "x" * 8
    assert await asyncio.to_thread(sv.proc.wait, 30) == 0
    assert fleet.all_pids() == []


async def test_upstreams_die_with_a_sigkilled_swapvisor(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        chat_text(c, "beta", "hi")
    assert len(fleet.pids("beta")) == 1
    sv.proc.kill()
    sv.proc.wait(10)
    await wait_until(lambda: fleet.all_pids() == [], timeout=5)


def test_grandchildren_are_stopped_on_swap_and_shutdown(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    spawning = {"flags": ["--spawn-child"]}
    sv = start_fakes({"alpha": spawning, "beta": spawning})
    with client(sv) as c:
        chat_text(c, "alpha", "hi")
        [alpha] = fleet.pids("alpha")
        alpha_kids = children_of(alpha)
        chat_text(c, "beta", "hi")
        [beta] = fleet.pids("beta")
        beta_kids = children_of(beta)
    assert len(alpha_kids) == len(beta_kids) == 1
    try:
        assert not any(alive(k) for k in alpha_kids)  # gone with the swap
        assert sv.stop() == 0
        assert not any(alive(k) for k in beta_kids)  # gone with swapvisor
    finally:
        for k in alpha_kids + beta_kids:
            if alive(k):
                os.kill(k, signal.SIGKILL)


def test_upstream_ignoring_sigterm_is_killed_after_unload_timeout(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(
        {"stubborn": {"flags": ["--ignore-sigterm"]}, "beta": {}}, unloadTimeout=1
    )
    with client(sv) as c:
        chat_text(c, "stubborn", "hi")
        chat_text(c, "beta", "hi")  # the swap SIGKILLs it after 1 s
        assert fleet.pids("stubborn") == []
        chat_text(c, "stubborn", "hi")
    assert sv.stop() == 0  # and so does the shutdown
    assert fleet.all_pids() == []
    assert "stubborn stopped (killed by signal 9)" in sv.output()


# -- errors -----------------------------------------------------------------------------


def test_unknown_model_is_404_listing_available_ids(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c, pytest.raises(openai.NotFoundError) as caught:
        chat_text(c, "no-such-model", "hi")
    err = caught.value
    assert err.status_code == 404
    assert "no-such-model" in err.message
    assert "available models: alpha, beta, embedder" in err.message
    assert "hidden" not in err.message
    assert err.code == "model_not_found"
    assert err.type == "invalid_request_error"
    assert err.param == "model"
    with client(sv) as c, pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="no-such-embedder", input="x")


async def test_missing_model_and_invalid_json_are_400(
    start_fakes: Callable[..., Swapvisor], http: aiohttp.ClientSession
) -> None:
    sv = start_fakes(TWO_MODELS)
    url = f"{sv.url}/v1/chat/completions"
    async with http.post(url, json={"messages": ask("hi")}) as r:
        assert r.status == 400
        body = await r.json()
    assert "model" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    async with http.post(
        url, data=b'{"model": "alpha", ', headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        body = await r.json()
    assert "invalid JSON" in body["error"]["message"]
    assert body["error"]["code"] == "bad_request"
    # Through the SDK too: an empty model name.
    with client(sv) as c, pytest.raises(openai.BadRequestError) as caught:
        chat_text(c, "", "hi")
    assert caught.value.status_code == 400


def test_server_exiting_on_start_is_503_with_exit_code_and_log(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes({"broken": {"flags": ["--exit-on-start", "3"]}, "beta": {}})
    with client(sv) as c, pytest.raises(openai.InternalServerError) as caught:
        chat_text(c, "broken", "hi")
    err = caught.value
    assert err.status_code == 503
    assert "exit code 3" in err.message
    assert err.message.rstrip().endswith("fatal: simulated startup failure")
    assert err.response.headers["Retry-After"] == "1"
    assert err.code == "upstream_start_failed"
    assert fleet.all_pids() == []
    # The failure does not poison the other models.
    with client(sv) as c:
        assert chat_text(c, "beta", "hi") == "hello from beta"


def test_never_healthy_is_504_after_per_model_deadline(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes({"sick": {"flags": ["--fail-health"], "healthCheckTimeout": 1}})
    with client(sv) as c, pytest.raises(openai.APIStatusError) as caught:
        chat_text(c, "sick", "hi")
    err = caught.value
    assert err.status_code == 504
    assert "did not become healthy within 1 s" in err.message
    assert err.code == "health_check_timeout"
    assert fleet.all_pids() == []


def test_crash_mid_request_is_502_with_exit_reason_then_restarts(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(TWO_MODELS)
    with client(sv) as c:
        assert chat_text(c, "beta", "hi") == "hello from beta"
        first = fleet.pids("beta")
        with pytest.raises(openai.APIStatusError) as caught:
            chat_text(c, "beta", "hi", extra_body={"fake_crash_midstream": True})
        err = caught.value
        assert err.status_code == 502
        assert "exit code 9" in err.message
        assert "fake_crash_midstream: exiting with code 9" in err.message
        # The next request restarts the model.
        assert chat_text(c, "beta", "hi") == "hello from beta"
    again = fleet.pids("beta")
    assert len(again) == 1
    assert again != first


def test_crash_mid_stream_raises_in_sdk_then_restarts(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet
) -> None:
    sv = start_fakes(TWO_MODELS)
    got: list[str] = []
    with client(sv) as c:
        stream = c.chat.completions.create(
            model="beta",
            messages=ask("echo: one two three four five"),
            stream=True,
            extra_body={"fake_crash_midstream": True},
        )
        with stream, pytest.raises(openai.APIError) as caught:
            got.extend(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert "upstream" in caught.value.message
        assert "".join(got) == "one two"  # what arrived before the crash
        assert chat_text(c, "beta", "echo: after") == "after"
    assert len(fleet.pids("beta")) == 1


async def test_over_concurrency_limit_is_429(
    start_fakes: Callable[..., Swapvisor],
) -> None:
    sv = start_fakes({"limited": {"concurrencyLimit": 1}})
    async with async_client(sv) as c:
        await c.chat.completions.create(model="limited", messages=ask("warm up"))
        slow = asyncio.create_task(
            c.chat.completions.create(
                model="limited",
                messages=ask("echo: slow"),
                extra_body={"fake_delay": 1},
            )
        )
        await wait_until(lambda: in_flight(sv, "limited") == 1)
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="limited", messages=ask("hi"))
        err = caught.value
        assert err.status_code == 429
        assert err.code == "concurrency_limit"
        assert err.response.headers["Retry-After"] == "1"
        assert "concurrencyLimit 1" in err.message
        assert not slow.done()
        reply = await slow
        assert reply.choices[0].message.content == "slow"
        # Once the slow one finished there is room again.
        again = await c.chat.completions.create(model="limited", messages=ask("hi"))
        assert again.choices[0].message.content == "hello from limited"


@pytest.mark.parametrize(
    "grandchild",
    [
        pytest.param(False, id="plain"),
        # A child that inherited the pipe keeps it open: the exit must be seen
        # from the process itself, not from the end of its output.
        pytest.param(True, id="grandchild-holds-stdout"),
    ],
)
async def test_upstream_dying_while_idle_is_noticed_and_restarted(
    start_fakes: Callable[..., Swapvisor], fleet: FakeFleet, grandchild: bool
) -> None:
    flags = ["--spawn-child"] if grandchild else []
    sv = start_fakes({"beta": {"flags": flags}})
    with client(sv) as c:
        assert chat_text(c, "beta", "hi") == "hello from beta"
        [pid] = fleet.pids("beta")
        kids = children_of(pid)
        assert len(kids) == (1 if grandchild else 0)
        try:
            os.kill(pid, signal.SIGKILL)  # the server dies on its own
            await wait_until(lambda: raw_models(sv)["beta"] == "unloaded", timeout=2)
            assert chat_text(c, "beta", "hi") == "hello from beta"
        finally:
            assert sv.stop() == 0
            leftovers = [k for k in kids if alive(k)]
            for k in leftovers:
                os.kill(k, signal.SIGKILL)
        assert leftovers == []
