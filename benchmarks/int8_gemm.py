"""int8 products against fp32 ones at mBERT's shapes, on this CPU: the ceiling of `onnx-int8`.

`onnx-int8` (reranker/backends/onnx_int8.py) replaces the fused fp32 graph's projections with
ONNX Runtime `MatMulInteger` products and adds per-token quantize passes around them. So however
good the rest of the graph, it cannot run faster than `onnx` fp32 by more than its products do:
if every second of the fp32 graph were spent in these products and the quantize passes cost
nothing, `onnx-int8` would still be at most (int8 rate / fp32 rate) times `onnx`. This script
measures that ratio where it is decided: the four projections of a BERT-base layer, for one
scorer pass (8 pairs of 149 tokens = 1192 rows, `--rows`), 2 threads, the weights initializers
as in the model, round-robin, median of each round, best round.

Kernels:
- fp32 `MatMul` (MLAS SGEMM), what `onnx` runs;
- u8 x u8 `MatMulInteger`, weights stored + 128 with zero point 128, what `onnx-int8` runs;
- u8 x s8 `MatMulInteger`, int8 weights: faster where the CPU has VNNI, but on x86 without it
  ONNX Runtime multiplies with VPMADDUBSW, whose int16 sums saturate. The `exact` column compares
  each kernel's int32 result with numpy's on full-range random data, so the table shows it.

Run:  python benchmarks/int8_gemm.py [--rounds 5] [--rows 1192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import bench_env  # noqa: F401
import numpy as np

from machine import describe

HIDDEN, INTERMEDIATE = 768, 3072  # mBERT (BERT-base): the projections of each layer
SHAPES = {  # name: (K, N) of activations [rows x K] times weights [K x N]
    "QKV (fused Attention)": (HIDDEN, 3 * HIDDEN),
    "attention output": (HIDDEN, HIDDEN),
    "FFN up": (HIDDEN, INTERMEDIATE),
    "FFN down": (INTERMEDIATE, HIDDEN),
}
KERNELS = ("fp32", "u8 x u8", "u8 x s8")


def _session(nodes, inputs, outputs, initializers, threads: int):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "product", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxBackend
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def product(kernel: str, rows: int, k: int, n: int, threads: int, rng: np.random.Generator):
    """(run, exact): `run()` computes one product; `exact` says whether its result equals numpy's."""
    from onnx import TensorProto, helper, numpy_helper

    if kernel == "fp32":
        a = rng.standard_normal((rows, k), dtype=np.float32)
        weight = rng.standard_normal((k, n), dtype=np.float32)
        session = _session(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, k])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [rows, n])],
            [numpy_helper.from_array(weight, "b")], threads,
        )
        expected, tolerance = a.astype(np.float64) @ weight.astype(np.float64), 1e-3
    else:
        a = rng.integers(0, 256, (rows, k), dtype=np.uint8)
        signed = rng.integers(-128, 128, (k, n), dtype=np.int16)  # the weights' int8 values
        if kernel == "u8 x u8":  # as onnx_int8.py stores them: + 128, zero point 128
            stored, zero_point = (signed + 128).astype(np.uint8), [numpy_helper.from_array(np.uint8(128), "zb")]
        else:
            stored, zero_point = signed.astype(np.int8), []
        session = _session(
            [helper.make_node("MatMulInteger", ["a", "b", "", "zb"] if zero_point else ["a", "b"], ["c"])],
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, k])],
            [helper.make_tensor_value_info("c", TensorProto.INT32, [rows, n])],
            [numpy_helper.from_array(stored, "b")] + zero_point, threads,
        )
        expected, tolerance = a.astype(np.int64) @ signed.astype(np.int64), 0
    feed = {"a": a}
    error = np.abs(session.run(None, feed)[0] - expected).max()
    exact = bool(error <= tolerance * max(1.0, float(np.abs(expected).max())))
    return (lambda: session.run(None, feed)), exact


def median_rate(run, flops: float, runs: int) -> float:
    run()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return flops / statistics.median(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8 * 149, help="activation rows: pairs per pass x tokens per pair")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds; the best round's median counts")
    parser.add_argument("--runs", type=int, default=7, help="products timed per kernel per round (median)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)

    import onnxruntime

    print(f"{describe()}; onnxruntime {onnxruntime.__version__}; {args.threads} threads")
    rng = np.random.default_rng(0)
    products = {(shape, kernel): product(kernel, args.rows, k, n, args.threads, rng)
                for shape, (k, n) in SHAPES.items() for kernel in KERNELS}
    best = {key: 0.0 for key in products}
    for _ in range(args.rounds):
        for (shape, kernel), (run, _exact) in products.items():
            k, n = SHAPES[shape]
            best[shape, kernel] = max(best[shape, kernel], median_rate(run, 2.0 * args.rows * k * n, args.runs))

    print(f"\n| product ({args.rows} rows x K x N) | fp32 `MatMul` GFLOP/s | u8 x u8 GOP/s (x fp32, exact) | u8 x s8 GOP/s (x fp32, exact) |")
    print("|---|---|---|---|")
    for shape, (k, n) in SHAPES.items():
        fp32 = best[shape, "fp32"]
        cells = [f"{best[shape, kernel] / 1e9:.1f} ({best[shape, kernel] / fp32:.2f}x, "
                 f"{'exact' if products[shape, kernel][1] else 'WRONG'})" for kernel in KERNELS[1:]]
        print(f"| {shape}: {k} x {n} | {fp32 / 1e9:.1f} | " + " | ".join(cells) + " |")
    # A BERT layer's products weigh by their FLOPs (K x N each); the ratio of the sums is what a
    # graph made only of these products would gain.
    weights = {shape: k * n for shape, (k, n) in SHAPES.items()}
    for kernel in KERNELS[1:]:
        seconds_fp32 = sum(w / best[s, "fp32"] for s, w in weights.items())
        seconds_int8 = sum(w / best[s, kernel] for s, w in weights.items())
        exact = all(products[s, kernel][1] for s in SHAPES)
        print(f"\n{kernel}: a layer's products take {seconds_int8 / seconds_fp32:.2f}x the fp32 time, so "
              f"`onnx-int8` on this kernel is at most {seconds_fp32 / seconds_int8:.2f}x `onnx` fp32"
              f"{'' if exact else ' (and its results are wrong here: saturated)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
