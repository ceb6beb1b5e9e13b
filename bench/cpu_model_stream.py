#!/usr/bin/env python3
"""What swapvisor adds to a token stream from a real model computing on the CPU.

The common home-lab case: llama.cpp's server (SmolLM2-135M from PyPI, the
repo's ``config.yaml`` model) decoding on every core, swapvisor relaying its
tokens. Each token wakes swapvisor while the model's threads hold the cores,
so how soon the kernel runs swapvisor decides how late each token reaches
the client.

swapvisor (the default config otherwise) serves one model whose ``proxy:``
is a llama-server started here (2 threads), so DIRECT and THROUGH hit the
same server. Streams alternate direct / through, ``--rounds`` times
``--streams``; each asks for ``--tokens`` tokens at temperature 0 with the
prompt cache off, so every stream decodes the same tokens from the same
prompt.

Reported per path, median over the streams: time to the first token, the
gap between tokens (the median of each stream's gaps, and its p90), and the
whole stream; through − direct for each; and the CPU time swapvisor spent per
relayed token (``/proc/PID/stat`` across the through streams). Writes
``bench/results/cpu_model_stream.json``. Exits 0 whatever the numbers; all on
127.0.0.1.

    .venv/bin/python bench/cpu_model_stream.py [--rounds 3] [--streams 20] [--tokens 64]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is on the path: the other benchmark's helpers.
from proxy_overhead import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"
PROMPT = "Write a long story about a lighthouse keeper and the sea."


def stream(port: int, tokens: int) -> dict[str, float]:
    """One streamed completion; times from the request's send."""
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "cache_prompt": False,
        }
    )
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    t0 = time.perf_counter()
    conn.request(
        "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    arrivals: list[float] = []
    buf = b""
    while chunk := resp.read1(65536):
        now = time.perf_counter()
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if b'"content":"' in event:
                arrivals.append(now)
    conn.close()
    if len(arrivals) < 2:
        raise SystemExit(f"a stream on port {port} brought {len(arrivals)} tokens")
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {
        "first_ms": (arrivals[0] - t0) * 1000,
        "gap_p50_ms": statistics.median(gaps),
        "gap_p90_ms": statistics.quantiles(gaps, n=10)[-1],
        "total_ms": (arrivals[-1] - t0) * 1000,
        "tokens": len(arrivals),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def cpu_seconds(pid: int) -> float:
    """CPU time a process has run, all threads (``schedstat``: nanoseconds,
    not clock ticks)."""
    tasks = Path(f"/proc/{pid}/task")
    return (
        sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir())
        / 1e9
    )


def round_(
    sv_pid: int, sv_port: int, model_port: int, streams: int, tokens: int
) -> dict[str, Any]:
    direct, through = [], []
    sv_cpu = 0.0
    for _ in range(streams):
        direct.append(stream(model_port, tokens))
        before = cpu_seconds(sv_pid)
        through.append(stream(sv_port, tokens))
        sv_cpu += cpu_seconds(sv_pid) - before
    d, t = summary(direct), summary(through)
    relayed = sum(r["tokens"] for r in through)
    return {
        "direct": d,
        "through": t,
        "added": {k: t[k] - d[k] for k in d if k != "tokens"},
        "swapvisor_cpu_us_per_token": sv_cpu / relayed * 1e6,
    }


def measure(
    model_port: int, work: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    port = free_port()
    config = work / "swapvisor.yaml"
    config.write_text(
        "models:\n  m:\n"
        "    cmd: \"python3 -c 'import time; time.sleep(86400)'\"\n"
        f"    proxy: http://{HOST}:{model_port}\n"
        "    checkEndpoint: /health\n"
    )
    argv = [
        PY,
        "-m",
        "controller",
        "--config",
        str(config),
        "--listen",
        f"{HOST}:{port}",
    ]
    with (work / "swapvisor.log").open("wb") as log:
        sv = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_http_ok(port, sv, timeout=30, poll_s=0.1)
        stream(port, 4)  # loads the model (the placeholder) and warms both paths
        stream(model_port, 4)
        return [
            round_(sv.pid, port, model_port, args.streams, args.tokens)
            for _ in range(args.rounds)
        ]
    finally:
        sv.send_signal(signal.SIGTERM)
        sv.wait(30)


def report(rounds: list[dict[str, Any]]) -> None:
    print(
        f"{'round':>5} {'path':>8} {'first ms':>9} {'gap p50':>8} {'gap p90':>8} "
        f"{'total ms':>9}"
    )
    for i, r in enumerate(rounds, 1):
        for path in ("direct", "through", "added"):
            x = r[path]
            print(
                f"{i:>5} {path:>8} {x['first_ms']:9.2f} {x['gap_p50_ms']:8.2f} "
                f"{x['gap_p90_ms']:8.2f} {x['total_ms']:9.1f}"
            )
        print(
            f"{i:>5} swapvisor CPU per relayed token: "
            f"{r['swapvisor_cpu_us_per_token']:.0f} µs"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--output", default=str(ROOT / "bench/results/cpu_model_stream.json")
    )
    args = ap.parse_args()
    model_port = free_port()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "tokens": args.tokens}
    with tempfile.TemporaryDirectory(prefix="svbench-cpu-") as tmp:
        work = Path(tmp)
        argv = [
            PY,
            "-m",
            "launchers.smollm2",
            "--port",
            str(model_port),
            "--alias",
            "m",
        ]
        with (work / "model.log").open("wb") as log:
            model = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
        try:
            wait_http_ok(model_port, model, timeout=60, poll_s=0.1)
            results["rounds"] = measure(model_port, work, args)
        finally:
            model.send_signal(signal.SIGTERM)
            model.wait(30)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    report(results["rounds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
