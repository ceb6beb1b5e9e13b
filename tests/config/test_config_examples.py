"""Whole configs: the illustrative config of llama-swap.md §1.12, and
tests/fixtures/llama-swap-example.yaml, a config written like llama-swap's own
config.example.yaml that uses every documented key (§1.2, §1.3); and
``swapvisor check`` on them. Nothing here is started or contacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from controller.cli.check import check_main
from controller.config.loader import load_config, parse_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from controller.config.model import Config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "fixtures" / "llama-swap-example.yaml"
EXAMPLE_ENV = {"SWAPVISOR_EXAMPLE_KEY": "sk-from-env"}

# -- llama-swap.md §1.12, verbatim ---------------------------------------------------------

SPEC_EXAMPLE = """\
healthCheckTimeout: 300          # seconds, min 15
globalTTL: 600                   # unload idle models after 10 min
sendLoadingState: true
apiKeys: ["${env.LS_KEY}"]
macros:
  server: /opt/llama/llama-server --port ${PORT}   # PORT resolves per model
  ctx: 8192
models:
  chat-big:
    cmd: ${server} -m /models/big.gguf --ctx-size ${ctx}
    aliases: [gpt-4o]
    filters:
      stripParams: "temperature, top_p"
      setParamsByID:
        "${MODEL_ID}:think": {chat_template_kwargs: {enable_thinking: true}}
  embed:
    cmd: ${server} -m /models/embed.gguf --embedding
    ttl: 0
  vllm-coder:
    cmd: docker run --init --rm --name ${MODEL_ID} -p ${PORT}:8000 vllm/vllm-openai --model /m
    cmdStop: docker stop ${MODEL_ID}
    unloadTimeout: 60
routing:
  router:
    use: group
    settings:
      groups:
        always-on: {swap: false, exclusive: false, persistent: true, members: [embed]}
        llms: {swap: true, exclusive: true, members: [chat-big, vllm-coder]}
peers:
  box2: {proxy: "http://10.0.0.2:8080", apiKey: "${env.BOX2_KEY}", models: [qwen-72b]}
hooks:
  on_startup: {preload: [embed]}
"""


@pytest.fixture
def spec_example(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("LS_KEY", "sk-ls")
    monkeypatch.setenv("BOX2_KEY", "sk-box2")
    loaded = parse_config(SPEC_EXAMPLE)
    assert loaded.warnings == ()
    return loaded.config


def test_spec_example_top_level(spec_example: Config) -> None:
    c = spec_example
    assert (c.health_check_timeout, c.health_deadline_s) == (300, 300.0)
    assert c.global_ttl == 600
    assert c.send_loading_state is True
    assert c.api_keys == ["sk-ls"]
    assert c.macros == {
        "server": "/opt/llama/llama-server --port ${PORT}",
        "ctx": 8192,
    }


def test_spec_example_commands_and_ports(spec_example: Config) -> None:
    c = spec_example
    # ${PORT} is allocated in sorted model ID order from startPort 5800.
    assert c.launch_spec("chat-big").argv == (
        "/opt/llama/llama-server",
        "--port",
        "5800",
        "-m",
        "/models/big.gguf",
        "--ctx-size",
        "8192",
    )
    assert c.models["chat-big"].proxy == "http://127.0.0.1:5800"
    assert c.models["embed"].proxy == "http://127.0.0.1:5801"
    assert c.launch_spec("vllm-coder").argv == (
        "docker",
        "run",
        "--init",
        "--rm",
        "--name",
        "vllm-coder",
        "-p",
        "5802:8000",
        "vllm/vllm-openai",
        "--model",
        "/m",
    )
    assert c.launch_spec("vllm-coder").cmd_stop == ("docker", "stop", "vllm-coder")
    assert c.launch_spec("vllm-coder").base_url == "http://127.0.0.1:5802"


def test_spec_example_lifetimes(spec_example: Config) -> None:
    c = spec_example
    assert (c.ttl_s("chat-big"), c.ttl_s("embed"), c.ttl_s("vllm-coder")) == (
        600.0,
        0.0,
        600.0,
    )
    assert (c.unload_grace_s("vllm-coder"), c.unload_grace_s("embed")) == (60.0, 10.0)


def test_spec_example_routing(spec_example: Config) -> None:
    engine, groups, matrix = spec_example.routing_engine()
    assert (engine, matrix) == ("group", None)
    assert sorted(groups) == ["always-on", "llms"]
    always, llms = groups["always-on"], groups["llms"]
    assert (always.swap, always.exclusive, always.persistent, always.members) == (
        False,
        False,
        True,
        ["embed"],
    )
    assert (llms.swap, llms.exclusive, llms.persistent, llms.members) == (
        True,
        True,
        False,
        ["chat-big", "vllm-coder"],
    )
    assert spec_example.routing.scheduler.use == "fifo"


def test_spec_example_aliases(spec_example: Config) -> None:
    c = spec_example
    assert c.models["chat-big"].aliases == ["gpt-4o"]
    assert c.resolve("gpt-4o") == "chat-big"
    # The setParamsByID key ${MODEL_ID}:think is an alias too.
    assert c.resolve("chat-big:think") == "chat-big"
    assert c.models["chat-big"].filters.set_params_by_id == {
        "chat-big:think": {"chat_template_kwargs": {"enable_thinking": True}}
    }
    assert c.models["chat-big"].filters.strip() == ("temperature", "top_p")
    assert c.resolve("qwen-72b") is None


def test_spec_example_peer(spec_example: Config) -> None:
    c = spec_example
    peer = c.peers["box2"]
    assert (peer.proxy, peer.api_key, peer.models) == (
        "http://10.0.0.2:8080",
        "sk-box2",
        ["qwen-72b"],
    )
    assert c.peer_of("qwen-72b") == ("box2", "qwen-72b")
    assert c.peer_of("box2/qwen-72b") == ("box2", "qwen-72b")
    assert c.peer_of("gpt-4o") is None


def test_spec_example_preload(spec_example: Config) -> None:
    assert spec_example.hooks.on_startup.preload == ["embed"]


# -- tests/fixtures/llama-swap-example.yaml ------------------------------------------------

# The keys of llama-swap.md §1.2 and §1.3 the example must use, as dotted
# paths (models.* = in some model).
DOCUMENTED_TOP_KEYS = (
    "healthCheckTimeout",
    "logLevel",
    "logTimeFormat",
    "logToStdout",
    "logRequests",
    "metricsMaxInMemory",
    "captureBuffer",
    "store.path",
    "ui.activity.session_id",
    "performance.disabled",
    "performance.every",
    "startPort",
    "sendLoadingState",
    "includeAliasesInList",
    "globalTTL",
    "unloadTimeout",
    "macros",
    "apiKeys",
    "peers",
    "upstream.ignorePaths",
    "profiles",
    "selectors",
    "hooks.on_startup.preload",
    "routing.router.use",
    "routing.router.settings.groups",
    "routing.router.settings.matrix",
    "routing.scheduler.use",
    "routing.scheduler.settings.fifo.priority",
)
DOCUMENTED_MODEL_KEYS = (
    "cmd",
    "cmdStop",
    "proxy",
    "checkEndpoint",
    "ttl",
    "unloadTimeout",
    "aliases",
    "env",
    "useModelName",
    "name",
    "description",
    "unlisted",
    "concurrencyLimit",
    "sendLoadingState",
    "filters.stripParams",
    "filters.strip_params",
    "filters.setParams",
    "filters.setParamsByID",
    "macros",
    "metadata",
    "timeouts.connect",
    "timeouts.keepalive",
    "timeouts.responseHeader",
    "timeouts.tlsHandshake",
    "timeouts.expectContinue",
    "timeouts.idleConn",
    "compat.ignoreWebsockets",
    "capabilities.in",
    "capabilities.out",
    "capabilities.tools",
    "capabilities.reranker",
    "capabilities.context",
)
# Every documented key is implemented: the example gives no warning at all.
NOT_YET_WARNINGS: list[str] = []


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            yield from _paths(value, path + ".")


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def example(example_env: None) -> Config:
    return load_config(EXAMPLE).config


def test_example_uses_every_documented_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    top = set(_paths(raw))
    assert [k for k in DOCUMENTED_TOP_KEYS if k not in top] == []
    in_models = {p for m in raw["models"].values() for p in _paths(m)}
    assert [k for k in DOCUMENTED_MODEL_KEYS if k not in in_models] == []
    # The legacy strip_params never sits next to stripParams in one model.
    for mid, model in raw["models"].items():
        filters = model.get("filters") or {}
        assert not ("stripParams" in filters and "strip_params" in filters), mid


def test_example_loads_without_warnings(
    example_env: None,
) -> None:
    loaded = load_config(EXAMPLE)
    assert sorted(loaded.warnings) == NOT_YET_WARNINGS


def test_example_top_level_values(example: Config) -> None:
    c = example
    assert (c.health_check_timeout, c.start_port, c.global_ttl, c.unload_timeout) == (
        500,
        10001,
        300,
        15,
    )
    assert (c.log_level, c.send_loading_state, c.include_aliases_in_list) == (
        "info",
        True,
        True,
    )
    assert c.api_keys == ["sk-example-1", "sk-from-env"]
    assert c.macros["default_args"] == "--ctx-size ${default_ctx} --jinja"
    assert [p.pattern for p in c.upstream.patterns()] == [
        r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",
        "^/metrics$",
    ]
    assert c.hooks.on_startup.preload == ["embed", "embed-b"]


def test_example_model_keys(example: Config) -> None:
    m = example.models["qwen-coder"]
    assert m.argv() == (
        "/opt/llama.cpp/llama-server",
        "--host",
        "127.0.0.1",
        "--port",
        "10004",
        "--model",
        "/models/qwen2.5-coder-7b-q4_k_m.gguf",
        "--ctx-size",
        "16384",  # the model macro overrides the global one
        "--temp",
        "0.7",
    )
    assert m.proxy == "http://127.0.0.1:10004"
    assert (m.name, m.description) == (
        "Qwen2.5 Coder 7B",
        "A coding model, 16384 tokens of context",
    )
    assert m.env == ["CUDA_VISIBLE_DEVICES=0", "LLAMA_ARG_ALIAS=qwen-coder"]
    assert (m.check_endpoint, m.ttl, m.unload_timeout) == ("/health", 600, 20)
    assert m.use_model_name == "qwen2.5-coder-7b-instruct"
    assert (m.concurrency_limit, m.send_loading_state) == (4, False)
    assert example.concurrency_limit("qwen-coder") == 4
    assert m.filters.strip() == ("temperature", "top_k", "top_p")
    assert m.filters.set_params == {"temperature": 0.7, "top_p": 0.9}
    assert sorted(m.filters.set_params_by_id) == ["qwen-coder", "qwen-coder:think"]
    assert m.metadata == {
        "port": 10004,
        "temperature": 0.7,
        "note": "qwen-coder listens on port 10004",
        "tags": ["code", "qwen-coder"],
    }
    assert m.capabilities.tools and m.capabilities.context == 16384
    assert m.timeouts.expect_continue == 1


def test_example_aliases(example: Config) -> None:
    for name in ("gpt-4o", "coder-small", "qwen-coder:think"):
        assert example.resolve(name) == "qwen-coder"
    assert example.alias_owner("qwen-coder") is None


def test_example_other_models(example: Config) -> None:
    c = example
    assert c.models["gemma-vision"].filters.strip() == ("frequency_penalty",)
    assert c.models["gemma-vision"].capabilities.in_ == ["text", "image"]
    assert c.launch_spec("embed").check_endpoint == "/v1/models"
    assert c.ttl_s("embed") == 0.0 and c.ttl_s("gemma-vision") == 300.0
    big = c.launch_spec("vllm-big")
    assert big.base_url == "http://127.0.0.1:8000"
    assert big.cmd_stop == ("docker", "stop", "vllm-big")
    assert c.unload_grace_s("vllm-big") == 60.0
    tiny = c.models["tiny-unlisted"]
    assert tiny.unlisted and tiny.compat.ignore_websockets
    assert c.launch_spec("tiny-unlisted").check_endpoint is None


def test_example_routing(example: Config) -> None:
    engine, groups, matrix = example.routing_engine()
    assert (engine, matrix) == ("group", None)
    assert {g: cfg.members for g, cfg in groups.items()} == {
        "always-on": ["embed", "embed-b"],
        "llms": ["qwen-coder", "gemma-vision", "vllm-big"],
    }
    assert (example.priority("qwen-coder"), example.priority("embed")) == (10, 5)
    assert example.priority("vllm-big") == 0


def test_example_peers_profiles_selectors(example: Config) -> None:
    c = example
    assert c.peer_of("qwen-72b") == ("box2", "qwen-72b")
    assert c.peer_of("box2/org/model-x") == ("box2", "org/model-x")
    assert c.peers["cloud"].api_key == "sk-from-env"
    assert c.peers["cloud"].filters.set_params == {
        "provider": {"data_collection": "deny"}
    }
    assert c.profiles["offline"].pins == {
        "qwen-72b": "qwen-coder",
        "deepseek-v3": "coder",
    }
    assert c.profiles["no-vision"].pins == {"gemma-vision": None}
    assert {s: (sel.strategy, sel.targets) for s, sel in c.selectors.items()} == {
        "coder": ("pin", ["qwen-coder", "box2/qwen-72b"]),
        "chat": ("warm", ["gemma-vision", "qwen-coder"]),
        "embeddings": ("spillover", ["embed", "embed-b"]),
    }
    assert c.selectors["embeddings"].settings.spillover == 4


# -- swapvisor check -------------------------------------------------------------------------


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "check", *args],
        cwd=ROOT,
        env={**os.environ, **EXAMPLE_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_example_shows_commands_proxies_and_groups() -> None:
    done = run_check(str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout.splitlines()
    assert out[0] == "config OK: 6 models, router: group"
    i = out.index("model qwen-coder")
    assert out[i + 1 : i + 5] == [
        (
            "  cmd:   /opt/llama.cpp/llama-server --host 127.0.0.1 --port 10004 "
            "--model /models/qwen2.5-coder-7b-q4_k_m.gguf --ctx-size 16384 --temp 0.7"
        ),
        "  proxy: http://127.0.0.1:10004",
        "  group: llms (swap=True exclusive=True persistent=False)",
        "  aliases: gpt-4o, coder-small, qwen-coder:think",
    ]
    i = out.index("model vllm-big")
    assert out[i + 2 : i + 5] == [
        "  stop:  docker stop vllm-big",
        "  proxy: http://127.0.0.1:8000",
        "  group: llms (swap=True exclusive=True persistent=False)",
    ]
    assert "  group: always-on (swap=False exclusive=False persistent=True)" in out
    i = out.index("model tiny-unlisted")
    assert out[i + 3] == "  group: (default)"
    assert "peer box2: http://box2.example.com:8080 (qwen-72b, org/model-x)" in out
    assert sorted(line for line in out if line.startswith("warning: ")) == [
        f"warning: {w}" for w in NOT_YET_WARNINGS
    ]


MATRIX = """\
models:
  gemma: {cmd: "srv --port ${PORT}"}
  qwen: {cmd: "srv --port ${PORT}"}
  voxtral: {cmd: "srv --port ${PORT}"}
  big: {cmd: "srv --port ${PORT}"}
  loner: {cmd: "srv --port ${PORT}"}
routing:
  router:
    use: matrix
    settings:
      matrix:
        vars: {g: gemma, q: qwen, v: voxtral}
        evict_costs: {v: 50}
        sets:
          standard: "(g | q) & v"
          voice: v
          full: big
"""


def test_check_matrix_shows_set_membership(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    done = run_check(str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "config OK: 5 models, router: matrix"
    membership = {
        out[i].removeprefix("model "): out[i + 3]
        for i, line in enumerate(out)
        if line.startswith("model ")
    }
    assert membership == {
        "big": "  matrix sets: full",
        "gemma": "  matrix sets: standard",
        "loner": "  matrix sets: none (runs alone)",
        "qwen": "  matrix sets: standard",
        "voxtral": "  matrix sets: standard, voice",
    }


def test_check_broken_config_exits_1_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models:\n  a:\n    cmd: srv ${PORT}\n    ttl: -5\n")
    done = run_check(str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"invalid: {path}: model a: invalid TTL value -5"
    ]


# The same command in-process (no interpreter start-up per case).


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "models:\n  a:\n    cmd: srv ${PORT}\ngroups:\n  g: {members: [a, a]}\n",
            "duplicate model member a found in group: g",
        ),
        ("selectors:\n  s: {targets: [x]}\n", "selectors.s.strategy is required"),
        (
            "models:\n  a:\n    cmd: srv 1\n",
            (
                "model a: proxy uses ${PORT} but cmd does not - ${PORT} is only "
                "available when used in cmd"
            ),
        ),
    ],
)
def test_check_main_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert check_main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"invalid: {path}: {problem}"]


def test_check_main_unparsable_config_names_the_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models:\n  a: [\n")
    assert check_main([str(path)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"invalid: config {path}: invalid YAML: ")
    assert line.count(str(path)) == 1


def test_check_main_config_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text("models:\n  a:\n    cmd: srv ${PORT}\n")
    (tmp_path / "b.yaml").write_text("models:\n  b:\n    cmd: srv ${PORT}\n")
    assert check_main(["--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "config OK: 2 models, router: group"
    assert "  proxy: http://127.0.0.1:5801" in out
