"""The mock backend's scripted lifecycle and its OpenAI/Anthropic-compatible
server, driven with the official SDKs over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import anthropic
import openai
import pytest

from backends.base import BackendStartError, Health, LaunchSpec
from backends.mock import MockBackend
from backends.specs import MockSpec
from tests.backends.test_contract import until
from tests.conftest import free_port

pytestmark = pytest.mark.container


def spec_for(port: int, **mock: object) -> LaunchSpec:
    return LaunchSpec(
        argv=(),
        base_url=f"http://127.0.0.1:{port}",
        mock=MockSpec(**mock),  # type: ignore[arg-type]
    )


async def test_health_fails_the_given_number_of_probes() -> None:
    backend = MockBackend()
    spec = spec_for(free_port(), health_failures=3)
    handle = await backend.start("m", spec)
    seen: list[Health] = []
    async with asyncio.timeout(10):
        while not seen or seen[-1] is not Health.READY:
            seen.append(await backend.health(handle, spec))
            await asyncio.sleep(0.005)
    # Probes before the server listens do not reach it; then exactly 3 fail.
    assert seen[-4:] == [Health.STARTING] * 3 + [Health.READY]
    await backend.stop(handle, spec, grace=1)
    await backend.aclose()


async def test_never_ready_and_a_start_delay() -> None:
    backend = MockBackend()
    spec = spec_for(free_port(), health_failures=-1, start_delay_s=0.2)
    began = time.monotonic()
    handle = await backend.start("m", spec)
    assert time.monotonic() - began < 0.1  # start does not wait
    for _ in range(40):
        assert await backend.health(handle, spec) is Health.STARTING
        await asyncio.sleep(0.01)
    info = await backend.stop(handle, spec, grace=1)
    assert (info.code, info.forced) == (0, False)
    await backend.aclose()


async def test_openai_and_anthropic_sdks_talk_to_it() -> None:
    backend = MockBackend()
    port = free_port()
    spec = spec_for(port, reply="Paris is the capital.")
    handle = await backend.start("m", spec)
    lines: list[bytes] = []

    async def read() -> None:
        async for line in backend.logs(handle):
            lines.append(line)  # noqa: PERF401 - read while it grows

    reader = asyncio.create_task(read())
    await until(backend, handle, spec, Health.READY)
    oai = openai.AsyncOpenAI(base_url=f"{spec.base_url}/v1", api_key="x")
    chat = await oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "capital?"}]
    )
    assert chat.choices[0].message.content == "Paris is the capital."
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    stream = await oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [
        chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
    ]
    assert "".join(pieces) == "Paris is the capital."
    completion = await oai.completions.create(model="m", prompt="The capital")
    assert completion.choices[0].text == "Paris is the capital."
    embedding = await oai.embeddings.create(model="m", input=["a", "b"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["m"]
    await oai.close()

    claude = anthropic.AsyncAnthropic(base_url=spec.base_url, api_key="x")
    message = await claude.messages.create(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "Paris is the capital."  # type: ignore[union-attr]
    async with claude.messages.stream(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as events:
        text = "".join([t async for t in events.text_stream])
    assert text == "Paris is the capital."
    await claude.close()

    info = await backend.stop(handle, spec, grace=1)
    assert (info.code, info.forced) == (0, False)
    await asyncio.wait_for(reader, 5)
    output = b"".join(lines)
    assert b"request POST /v1/chat/completions" in output
    assert b"request POST /v1/messages" in output
    await backend.aclose()


async def test_crash_after_requests_exits_with_the_code() -> None:
    backend = MockBackend()
    spec = spec_for(free_port(), crash_after_requests=2, exit_code=42)
    handle = await backend.start("m", spec)
    await until(backend, handle, spec, Health.READY)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # both answered in full
            async with http.post(
                f"{spec.base_url}/v1/chat/completions", json=body
            ) as resp:
                assert resp.status == 200
                await resp.json()
    await until(backend, handle, spec, Health.EXITED, timeout=5)
    await asyncio.wait_for(backend.wait(handle), 5)
    info = await backend.stop(handle, spec, grace=1)
    assert (info.code, info.forced) == (42, False)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http:
            await http.get(f"{spec.base_url}/health")
    await backend.aclose()


async def test_stop_honours_the_grace() -> None:
    backend = MockBackend()
    slow = spec_for(free_port(), stop_delay_s=0.3)
    handle = await backend.start("m", slow)
    await until(backend, handle, slow, Health.READY)
    began = time.monotonic()
    info = await backend.stop(handle, slow, grace=2)
    assert (info.code, info.forced) == (0, False)
    assert 0.3 <= time.monotonic() - began < 1.5

    too_slow = spec_for(free_port(), stop_delay_s=5)
    handle = await backend.start("m", too_slow)
    await until(backend, handle, too_slow, Health.READY)
    began = time.monotonic()
    info = await backend.stop(handle, too_slow, grace=0.2)
    assert info.forced is True and info.describe() == "killed by signal 9"
    assert 0.2 <= time.monotonic() - began < 1.5
    await backend.aclose()


async def test_a_busy_port_is_an_exit_with_a_reason() -> None:
    backend = MockBackend()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec = spec_for(busy.getsockname()[1])
        handle = await backend.start("m", spec)
        lines = [line async for line in backend.logs(handle)]
        assert await backend.health(handle, spec) is Health.EXITED
    assert b"cannot listen" in b"".join(lines)
    info = await backend.stop(handle, spec, grace=1)
    assert info.code == 1
    await backend.aclose()


async def test_only_loopback_and_a_port() -> None:
    backend = MockBackend()
    for url in ("http://10.0.0.1:8080", "http://127.0.0.1"):
        with pytest.raises(BackendStartError, match="127.0.0.1"):
            await backend.start("m", LaunchSpec(argv=(), base_url=url))
    assert await backend.reap_orphans() == []
    await backend.aclose()


def test_mock_spec_validates() -> None:
    with pytest.raises(ValueError, match="health_failures"):
        MockSpec(health_failures=-2)
    with pytest.raises(ValueError, match="crash_after_requests"):
        MockSpec(crash_after_requests=0)
    with pytest.raises(ValueError, match="negative"):
        MockSpec(start_delay_s=-1)
