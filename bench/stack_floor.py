#!/usr/bin/env python3
"""Where a proxied request's cost lies: the stack's floor, then swapvisor's parts.

Six servers answer the same POST from the same fast fake upstream
(``tests/fakes/fake_upstream.py``), measured in turn, ``--rounds`` times:

* ``direct``: the fake itself;
* ``bare``: an ``asyncio.Protocol`` proxy (``bench/floor_proxies.py``), the
  floor of any proxy on asyncio;
* ``front``: the same with requests parsed by aiohttp's C parser, a task
  per request and swapvisor's pooled lean client: what a server front of
  swapvisor's own would cost before any of swapvisor's logic;
* ``aiohttp``: aiohttp's ``web.Application`` with swapvisor's lean upstream
  client, the stack swapvisor's data path is built on;
* ``unobserved``: swapvisor, its per-request observation switched off;
* ``swapvisor``: swapvisor with the default config (captures, activity rows,
  metrics, the performance sampler), as ``bench/proxy_overhead.py`` runs it.

For each: ``wrk -t1 -c1`` p50 latency (``--c1-seconds``), then
``wrk -t1 -c32`` (``--seconds``) with the server's CPU time from
``/proc/PID/stat``. Prints the medians over the rounds, the latency added
over ``direct`` and the CPU per 1,000 requests; writes
``bench/results/stack_floor.json``. Needs ``wrk``. Exits 0 whatever the
numbers; all on 127.0.0.1.

    .venv/bin/python bench/stack_floor.py [--rounds 3] [--seconds 5] [--c1-seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run as a script, bench/ is on the path: the other benchmark's helpers.
from proxy_overhead import (
    CHAT,
    CLK_TCK,
    HOST,
    PY,
    ROOT,
    Procs,
    chat_body,
    cpu_ticks,
    free_port,
    proxy_config,
    run_wrk,
    wait_app,
    wait_http_ok,
)

FLOOR = ROOT / "bench" / "floor_proxies.py"
RESULTS = ROOT / "bench" / "results" / "stack_floor.json"
SERVERS = ("direct", "bare", "front", "aiohttp", "unobserved", "swapvisor")


def start(procs: Procs, up_port: int) -> dict[str, tuple[int, int]]:
    """Every server but the fake: name -> (port, pid)."""
    out: dict[str, tuple[int, int]] = {}
    for kind in ("bare", "front", "aiohttp"):
        port = free_port()
        argv = [PY, str(FLOOR), kind, str(port), str(up_port), procs.marker]
        proc = procs.spawn(argv, f"{kind}.log")
        wait_http_ok(port, proc, timeout=20)
        out[kind] = (port, proc.pid)
    config = procs.workdir / "swapvisor.yaml"
    config.write_text(proxy_config(up_port, procs.marker))
    for name, head in (
        ("unobserved", [PY, str(FLOOR), "unobserved"]),
        ("swapvisor", [PY, "-m", "controller"]),
    ):
        port = free_port()
        argv = [*head, "--config", str(config), "--listen", f"{HOST}:{port}"]
        proc = procs.spawn(argv, f"{name}.log", env={"PYTHONDONTWRITEBYTECODE": ""})
        wait_app(port, proc, timeout=60)
        out[name] = (port, proc.pid)
    return out


def measure(port: int, pid: int, args: argparse.Namespace, lua: Path) -> dict[str, Any]:
    url = f"http://{HOST}:{port}{CHAT}"
    body = chat_body("p")
    c1 = run_wrk(url, body, 1, args.c1_seconds, lua)
    before = cpu_ticks(pid)
    c32 = run_wrk(url, body, 32, args.seconds, lua)
    cpu_s = (cpu_ticks(pid) - before) / CLK_TCK
    return {
        "c1_p50_ms": c1.p50_ms,
        "c32_rps": c32.rps,
        "cpu_s_per_1000": cpu_s / c32.requests * 1000 if c32.requests else None,
        "errors": c1.errors + c32.errors,
    }


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in SERVERS:
        runs = [r[name] for r in rounds]
        out[name] = {
            key: statistics.median(v for run in runs if (v := run[key]) is not None)
            for key in ("c1_p50_ms", "c32_rps", "cpu_s_per_1000")
        }
        out[name]["errors"] = sum(run["errors"] for run in runs)
    direct = out["direct"]["c1_p50_ms"]
    for name in SERVERS[1:]:
        out[name]["c1_added_ms"] = out[name]["c1_p50_ms"] - direct
    return out


def report(res: dict[str, dict[str, Any]]) -> None:
    head = ("server", "c=1 p50", "added", "c=32 req/s", "CPU/1000")
    print(f"{head[0]:<12} {head[1]:>9} {head[2]:>8} {head[3]:>11} {head[4]:>9}")
    for name in SERVERS:
        r = res[name]
        added = f"+{r['c1_added_ms']:.3f}" if "c1_added_ms" in r else ""
        print(
            f"{name:<12} {r['c1_p50_ms']:>9.3f} {added:>8} {r['c32_rps']:>11.0f}"
            f" {r['cpu_s_per_1000']:>8.3f}s"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="wrk -c32 per server")
    p.add_argument("--c1-seconds", type=int, default=4, help="wrk -c1 per server")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    marker = f"svfloor{os.getpid()}"
    procs = Procs(marker, Path(tempfile.mkdtemp(prefix=f"{marker}-")))
    try:
        up_port = free_port()
        fake = procs.fake(up_port, marker)
        servers = {"direct": (up_port, fake.pid), **start(procs, up_port)}
        lua = procs.workdir / "post.lua"
        rounds = []
        for i in range(args.rounds):
            rounds.append({n: measure(*servers[n], args, lua) for n in SERVERS})
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        procs.close()
    shutil.rmtree(procs.workdir, ignore_errors=True)  # logs kept only on failure
    res = summary(rounds)
    report(res)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": res, "rounds": rounds}, indent=2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
