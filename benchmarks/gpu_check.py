"""One bounded GPU check of the scorer: half-precision parity, a batch-token sweep, latency, baseline.

Self-contained (repo + installed venv, no network). On the full-size random mBERT from
scorer_bench.py it measures, in this order, each step skipped once `--budget-s` is spent:

 1. bf16 matmul peak (8192^2, median) for MFU, and the fp32 peak for reference;
 2. parity of bf16 and fp16 against fp32 through ModelScorer on the long workload
    (max |raw score diff|, Spearman of raw scores);
 3. throughput over max_batch_tokens 2048..65536 (bf16, 1 query x 512 long passages):
    pairs/s and MFU = useful FLOPs / time / bf16 peak (FLOPs formula in scorer_bench.py);
 4. p50/p99 latency of one 1 x 50 long request (PairEncoder + ModelScorer.score_pairs, in process)
    at the default and at the best swept batch settings;
 (and first, as it is cheap) the model card's per-pair loop on GPU (fp32, as the card runs it),
    the baseline.

The markdown table is rewritten to `--out` after every step, so a killed run still leaves results.

Run:  python benchmarks/gpu_check.py --out $OUT/gpu_results.md [--budget-s 300]
      python benchmarks/gpu_check.py --dry-run     # tiny model on CPU, to test this script
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizes in this process

import numpy as np

from scorer_bench import (
    MBERT, TINY, card_loop, flops_per_pair, gemm_peak_flops, make_workloads, save_random_mbert, token_counts,
)

SWEEP_TOKENS = [2048, 4096, 8192, 16384, 32768, 65536]


class Report:
    """Markdown sections, rewritten to disk after each step."""

    def __init__(self, out: Path, header: list):
        self.out = out
        self.lines = list(header)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        for line in lines:
            print(line, flush=True)
        self.write()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def make_scorer(model_dir: str, device: str, dtype: str, **batch):
    from reranker.scoring import ModelScorer
    from reranker.settings import RerankerSettings
    from reranker.tokenization import PairEncoder
    from reranker.model_files import load_tokenizer

    settings = RerankerSettings(model=model_dir, device=device, dtype=dtype, backend="torch", **batch)
    scorer = ModelScorer(settings)
    encoder = PairEncoder(load_tokenizer(model_dir), scorer.max_length, settings.max_query_tokens)
    return scorer, encoder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.md"))
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip remaining steps after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU (float32 only), to test the script")
    parser.add_argument("--model-dir", help="reuse a model directory saved by scorer_bench (built if missing)")
    parser.add_argument("--latency-requests", type=int, default=50)
    args = parser.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    started = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    dims = TINY if args.dry_run else MBERT
    half_dtypes = [] if args.dry_run else ["bfloat16", "float16"]
    # The GPU default (RerankerSettings dtype "auto"); the peak stays the bf16 matmul peak (same on fp16).
    main_dtype = "float32" if args.dry_run else "float16"
    sweep = SWEEP_TOKENS[:3] if args.dry_run else SWEEP_TOKENS
    sweep_passages = 64 if args.dry_run else 512
    latency_requests = 5 if args.dry_run else args.latency_requests

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    report = Report(Path(args.out), [
        "# GPU check" + (" (dry run: tiny model on CPU)" if args.dry_run else ""),
        "",
        f"- device: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; {os.cpu_count()} CPU threads",
        f"- model: random mBERT architecture ({dims['num_hidden_layers']} layers, hidden {dims['hidden_size']}, "
        f"vocab {dims['vocab_size']}); command: `python {' '.join(sys.argv)}`",
        "",
    ])
    tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
    model_dir = args.model_dir or str(Path(tmp.name) / "mbert")
    if not (Path(model_dir) / "config.json").is_file():
        save_random_mbert(model_dir, size="tiny" if args.dry_run else "full")
    torch.set_num_threads(os.cpu_count() or 1)
    workloads = make_workloads()
    long = workloads["long"]
    big = make_workloads(seed=7, num_passages=sweep_passages)["long"]
    report.add(f"- model built in {time.perf_counter() - started:.0f} s; budget {args.budget_s:.0f} s", "")

    def step(title: str, body) -> None:
        if left() <= 0:
            report.add(f"## {title}", "", f"skipped: budget of {args.budget_s:.0f} s spent", "")
            return
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others
            traceback.print_exc()
            report.add(f"## {title}", "", f"failed: {type(exc).__name__}: {str(exc)[:300]}", "")
        finally:
            free(device)

    peaks = {}

    def peaks_step():
        size = 1024 if args.dry_run else 8192
        peaks["main"] = gemm_peak_flops(size, runs=10, dtype=getattr(torch, main_dtype), device=device)
        peaks["float32"] = gemm_peak_flops(size // 2 if device == "cuda" else size, runs=5, device=device)
        report.add("## Matmul peak (median)", "", "| dtype | TFLOP/s |", "|---|---|",
                   f"| {main_dtype} {size}² | {peaks['main'] / 1e12:.1f} |",
                   f"| float32 | {peaks['float32'] / 1e12:.1f} |", "")

    step("Matmul peak", peaks_step)
    peak = peaks.get("main", float("nan"))

    def parity_step():
        scorer, encoder = make_scorer(model_dir, device, "float32")
        pairs = encoder.encode(long.query, long.passages)
        reference = scorer.score_pairs(pairs).raw
        del scorer
        free(device)
        rows = ["## Parity vs float32 (long workload, raw scores)", "",
                "| dtype | max abs diff | Spearman | score std (fp32) |", "|---|---|---|---|"]
        for dtype in half_dtypes or ["float32"]:
            scorer, _ = make_scorer(model_dir, device, dtype)
            raw = scorer.score_pairs(pairs).raw
            rows.append(f"| {dtype} | {np.max(np.abs(raw - reference)):.3g} | "
                        f"{spearmanr(raw, reference).statistic:.4f} | {np.std(reference):.3g} |")
            del scorer
            free(device)
        report.add(*rows, "")

    loop = {}

    def baseline_step():
        score = card_loop(model_dir, device=device)
        score(long.query, long.passages[:4])
        sync(device)
        t0 = time.perf_counter()
        score(long.query, long.passages)
        sync(device)
        seconds = time.perf_counter() - t0
        loop["rate"] = len(long.passages) / seconds
        useful = sum(flops_per_pair(int(t), dims) for t in token_counts(model_dir, long))
        rows = ["## Model card per-pair loop (float32, one tokenizer call + forward per pair)", "",
                "| workload | pairs/s | MFU vs bf16 peak |", "|---|---|---|",
                f"| long 1 x 50 | {len(long.passages) / seconds:.1f} | {useful / seconds / peak:.1%} |"]
        report.add(*rows, "")

    step("Baseline", baseline_step)

    step("Parity", parity_step)

    best = {}

    def sweep_step(dtype: str):
        rows = [f"## Throughput sweep ({dtype}, 1 query x {len(big.passages)} long passages)", "",
                "| max_batch_tokens | max_batch_size | pairs/s | real tok/s | padded/real | MFU | inference-only pairs/s | inference-only MFU |",
                "|---|---|---|---|---|---|---|---|"]
        scorer, encoder = make_scorer(model_dir, device, dtype)
        pairs = encoder.encode(big.query, big.passages)
        pairs_tokens = pairs.lengths
        useful = sum(flops_per_pair(int(t), dims) for t in pairs_tokens)
        for tokens in sweep:
            if left() <= 0:
                rows.append(f"| {tokens} | skipped (budget) | | | | |")
                continue
            from reranker.settings import BatchSettings

            size = max(1, tokens // 16)
            scorer.reconfigure(BatchSettings(max_batch_tokens=tokens, max_batch_size=size))
            scorer.score_pairs(pairs)  # warm-up for these shapes
            times = []
            for _ in range(3):
                sync(device)
                t0 = time.perf_counter()
                result = scorer.score_pairs(encoder.encode(big.query, big.passages))
                sync(device)
                times.append(time.perf_counter() - t0)
            seconds = min(times)
            # The scorer deployment gets pre-tokenized pairs (tokenization runs in its own replicas).
            inference_times = []
            for _ in range(3):
                sync(device)
                t0 = time.perf_counter()
                scorer.score_pairs(pairs)
                sync(device)
                inference_times.append(time.perf_counter() - t0)
            inference_s = min(inference_times)
            padded = sum(b.padded_tokens for b in result.batches) / max(1, sum(b.real_tokens for b in result.batches))
            rate = len(big.passages) / seconds
            if dtype == main_dtype and rate > best.get("rate", 0):
                best.update(rate=rate, tokens=tokens, size=size)
            rows.append(f"| {tokens} | {size} | {rate:.0f} | {pairs_tokens.sum() / seconds:.0f} | {padded:.2f} | "
                        f"{useful / seconds / peak:.1%} | {len(big.passages) / inference_s:.0f} | "
                        f"{useful / inference_s / peak:.1%} |")
        del scorer
        report.add(*rows, "", "Tokenization is inside the first timings and outside the inference-only ones (best of 3 each).", "")

    for sweep_dtype in [main_dtype] + [d for d in half_dtypes if d != main_dtype]:
        step(f"Throughput sweep {sweep_dtype}", lambda dtype=sweep_dtype: sweep_step(dtype))

    def latency_step():
        configs = [("default", {})]
        if best:
            configs.append((f"best sweep ({best['size']}/{best['tokens']})",
                            dict(max_batch_size=best["size"], max_batch_tokens=best["tokens"])))
        rows = [f"## Latency of one 1 x 50 long request ({main_dtype}, in process, tokenization included)", "",
                "| batch settings | p50 ms | p99 ms | pairs/s at p50 | x card loop | requests |", "|---|---|---|---|---|---|"]
        for label, batch in configs:
            scorer, encoder = make_scorer(model_dir, device, main_dtype, **batch)
            for _ in range(3):
                scorer.score_pairs(encoder.encode(long.query, long.passages))
            samples = []
            for _ in range(latency_requests):
                if left() <= 0:
                    break
                t0 = time.perf_counter()
                scorer.score_pairs(encoder.encode(long.query, long.passages))
                samples.append(time.perf_counter() - t0)
            if samples:
                p50 = float(np.percentile(samples, 50))
                rows.append(f"| {label} | {1e3 * p50:.1f} | {1e3 * np.percentile(samples, 99):.1f} | "
                            f"{len(long.passages) / p50:.0f} | {len(long.passages) / p50 / loop.get('rate', float('nan')):.1f} | "
                            f"{len(samples)} |")
            del scorer
            free(device)
        report.add(*rows, "")

    step("Latency", latency_step)

    report.add(f"Total {time.perf_counter() - started:.0f} s (budget {args.budget_s:.0f} s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
