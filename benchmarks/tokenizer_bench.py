"""Pair encoding's CPU per 1 x 50 request: PairEncoder as it is against the transformers call it made before.

PairEncoder tokenizes a request's texts with the Rust tokenizer's `encode_batch_fast` (no
character offsets); before, it called the transformers tokenizer, which computes offsets and
attention masks it never read. Both run in this process on the same 16 long and 16 short 1 x 50
requests of scorer_bench's workloads, interleaved, best of --rounds; every request's ids are checked
equal first. CPU is process time (all threads).

Run:  python benchmarks/tokenizer_bench.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bench_env  # noqa: F401  (first: paths, offline hub)
import machine
from scorer_bench import make_workloads, save_random_mbert

from reranker.model_files import load_tokenizer
from reranker.tokenization import PairEncoder


def transformers_call_encoder(model_dir: Path) -> PairEncoder:
    """A PairEncoder that tokenizes as it did before: through the transformers tokenizer's __call__."""
    encoder = PairEncoder(load_tokenizer(str(model_dir)), max_length=512, max_query_tokens=64)
    encoder._ids = lambda texts: encoder.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return encoder


def cpu_ms_per_request(encoder: PairEncoder, requests) -> float:
    started = time.process_time()
    for request in requests:
        encoder.encode(request.query, request.passages)
    return (time.process_time() - started) / len(requests) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    print(machine.describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_random_mbert(Path(tmp) / "model", size="tiny")  # the benchmarks' WordPiece vocabulary
        encoders = {"transformers call (before)": transformers_call_encoder(model_dir),
                    "encode_batch_fast (now)": PairEncoder(load_tokenizer(str(model_dir)), 512, 64)}
        for kind in ("long", "short"):
            requests = [make_workloads(seed=i)[kind] for i in range(16)]
            before, now = encoders.values()
            for request in requests:
                a, b = before.encode(request.query, request.passages), now.encode(request.query, request.passages)
                if a.input_ids.tolist() != b.input_ids.tolist() or a.lengths.tolist() != b.lengths.tolist():
                    raise SystemExit(f"ids differ on a {kind} request")
            best = dict.fromkeys(encoders, float("inf"))
            for _ in range(args.rounds):
                for name, encoder in encoders.items():
                    best[name] = min(best[name], cpu_ms_per_request(encoder, requests))
            (before_ms, now_ms) = best.values()
            print(f"{kind} 1 x 50: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in best.items())
                  + f"; now / before {now_ms / before_ms:.2f} (ids equal on all 16 requests)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
