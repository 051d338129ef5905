"""What one eager forward of the mBERT architecture costs the CPU, and (on a GPU) the GPU.

Calibrates `reranker/backends/simulated.py`. The simulated GPU needs three CPU numbers per forward
batch: how many torch calls the eager transformers forward makes from Python, how long each
holds the GIL (the Python between the calls: module __call__, argument handling) and how long
each runs natively with the GIL released (torch's generated bindings release it around the
dispatch; on a GPU the cudaLaunchKernel is in there too). And two GPU numbers, a + b x padded tokens.

CPU numbers: the full mBERT layer structure (12 layers, 12 heads, SDPA, 2 labels) with tiny
widths (hidden 12, intermediate 12, vocab 128) and a 4 x 16 input, so the arithmetic is
negligible and the wall time is the launch overhead. `sys.setprofile` counts the torch calls
of one forward and times the native part of each; the Python part is the rest of the wall time
of a forward without the profiler. Minimum over many runs (other processes share the cores).

With `--device cuda` it also builds the full-size model in float16 on the GPU and measures, per
padded-token count, the time `forward` takes to return (the real launch cost) and the time to
the synchronized result, then fits GPU seconds = a + b x padded tokens; then the same shapes
replayed as CUDA graphs (the `cuda_graphs` setting), launch and total.

Run:  python benchmarks/launch_cost.py [--device cpu|cuda] [--runs 300] [--json out.json]
"""

from __future__ import annotations

import bench_env  # noqa: F401  (first: puts the repository root on sys.path)

import argparse
import json
import statistics
import sys
import time

TINY_WIDTHS = dict(vocab_size=128, hidden_size=12, intermediate_size=12)
MBERT_LAYOUT = dict(num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, num_labels=2)
MBERT_WIDTHS = dict(vocab_size=105879, hidden_size=768, intermediate_size=3072)


def build(widths: dict, device: str, dtype):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**widths, **MBERT_LAYOUT)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval().to(device=device, dtype=dtype)


def inputs(pairs: int, width: int, device: str):
    import torch

    ids = torch.randint(1, 100, (pairs, width), device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def torch_calls_of(forward) -> tuple[int, float]:
    """(torch calls made from Python, seconds spent inside them) during one forward."""
    starts: list[float] = []
    counted = {"calls": 0, "native_s": 0.0}

    def hook(frame, event, arg):
        if event == "c_call":
            starts.append(time.perf_counter())
        elif event in ("c_return", "c_exception") and starts:
            started = starts.pop()
            module = getattr(arg, "__module__", None) or ""
            owner = getattr(arg, "__qualname__", "")
            if module.startswith("torch") or owner.startswith("TensorBase") or owner.startswith("Tensor."):
                counted["calls"] += 1
                counted["native_s"] += time.perf_counter() - started

    sys.setprofile(hook)
    try:
        forward()
    finally:
        sys.setprofile(None)
    return counted["calls"], counted["native_s"]


def cpu_launch_cost(runs: int) -> dict:
    """Launch overhead of the eager forward, split into torch calls, GIL-held and GIL-released time."""
    import torch

    torch.set_num_threads(1)
    model = build(TINY_WIDTHS, "cpu", torch.float32)
    batch = inputs(4, 16, "cpu")

    def forward():
        with torch.inference_mode():
            return model(**batch).logits.float()

    for _ in range(20):
        forward()
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        forward()
        walls.append(time.perf_counter() - started)
    samples = [torch_calls_of(forward) for _ in range(max(runs // 10, 5))]
    calls = samples[0][0]
    native_s = min(s[1] for s in samples)
    wall_s = min(walls)
    python_s = max(wall_s - native_s, 0.0)
    return {
        "forward_wall_min_ms": wall_s * 1e3,
        "forward_wall_median_ms": statistics.median(walls) * 1e3,
        "torch_calls": calls,
        "native_us_per_call": native_s / calls * 1e6,
        "python_us_per_call": python_s / calls * 1e6,
    }


def gpu_costs(token_counts: list[int], runs: int) -> dict:
    """Per padded-token count: seconds until forward returns (launch) and until its result is ready (GPU)."""
    import numpy as np
    import torch

    model = build(MBERT_WIDTHS, "cuda", torch.float16)
    width = 160
    rows = []
    for tokens in token_counts:
        batch = inputs(max(tokens // width, 1), width, "cuda")
        launches, totals = [], []
        with torch.inference_mode():
            for attempt in range(runs + 3):
                torch.cuda.synchronize()
                started = time.perf_counter()
                out = model(**batch).logits
                launched = time.perf_counter()
                out.float().cpu()
                done = time.perf_counter()
                if attempt >= 3:
                    launches.append(launched - started)
                    totals.append(done - started)
        rows.append({"padded_tokens": batch["input_ids"].numel(), "launch_ms": statistics.median(launches) * 1e3,
                     "total_ms": statistics.median(totals) * 1e3})
    rows += graph_rows(model, token_counts, width, runs)
    rows, graphed = [r for r in rows if not r.get("graph")], [r for r in rows if r.get("graph")]
    # GPU-bound rows (the result arrives well after the launch returned) fit a + b x tokens.
    bound = [r for r in rows if r["total_ms"] > 1.5 * r["launch_ms"]] or rows
    b, a = np.polyfit([r["padded_tokens"] for r in bound], [r["total_ms"] for r in bound], 1) if len(bound) > 1 else (0.0, bound[0]["total_ms"])
    return {"rows": rows, "graph_rows": graphed, "gpu_fixed_ms": float(a), "gpu_us_per_token": float(b) * 1e3,
            "device": torch.cuda.get_device_name()}


def graph_rows(model, token_counts: list[int], width: int, runs: int) -> list[dict]:
    """The same shapes replayed as CUDA graphs (reranker/backends/cuda_graphs.py): launch and total ms."""
    import numpy as np
    import torch

    from reranker.backends.cuda_graphs import CapturedForwards
    from reranker.backends.torch import sdpa_mask

    def forward(block):
        block = block.long()
        return model(input_ids=block[0], attention_mask=sdpa_mask(block[1]), token_type_ids=block[2]).logits.float()

    shapes = [(max(tokens // width, 1), width) for tokens in token_counts]
    graphs = CapturedForwards(forward, shapes, pad_token_id=0)
    rows = []
    for pairs, _ in shapes:
        ids = np.random.default_rng(0).integers(1, 100, (pairs, width)).astype(np.int32)
        launches, totals = [], []
        for attempt in range(runs + 3):
            torch.cuda.synchronize()
            started = time.perf_counter()
            _, ready = graphs.launch(ids, np.ones_like(ids), np.zeros_like(ids))
            launched = time.perf_counter()
            ready.synchronize()
            done = time.perf_counter()
            if attempt >= 3:
                launches.append(launched - started)
                totals.append(done - started)
        rows.append({"graph": True, "padded_tokens": ids.size, "launch_ms": statistics.median(launches) * 1e3,
                     "total_ms": statistics.median(totals) * 1e3})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    result = {"cpu": cpu_launch_cost(args.runs)}
    if args.device == "cuda":
        result["cuda"] = gpu_costs([2048, 4096, 8192, 16384, 32768, 65536], runs=max(args.runs // 30, 5))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
