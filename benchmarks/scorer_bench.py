"""CPU throughput of the scorer against the model card's per-pair loop and sentence-transformers.

Builds the full-size mBERT architecture (random weights, realistic WordPiece vocabulary made in
this file, nothing downloaded), then times every method on the same two multilingual workloads
in one process:

  long  = 1 query x 50 passages of 60-120 words (~150 tokens per pair)
  short = 1 query x 50 titles/snippets of 8-20 words (~30-50 tokens per pair)

Methods: (a) the model card's per-pair loop (the baseline), (b) `CrossEncoder.predict` at batch
32, (c) this project's PairEncoder + ModelScorer at several (max_batch_size, max_batch_tokens),
and (d) the onnx / onnx-int8 backends when `reranker.backends.onnx` is importable, with (e) a
baseline onnx graph whose last layer runs for every token (the export before 2026-12-01).
Tokenization is inside every timing.

Useful FLOPs are the ones the score needs, on real (unpadded) tokens only, T tokens per pair:
    flops(T) = (L - 1) * (2 * p * T + 4 * T^2 * H) + 2 * 3H^2 * T + 4 * T * H + 2 * (H^2 + 2 H I)
with p = 4 H^2 + 2 H I the non-embedding weights of one layer (QKV, output projection, FFN up and
down; biases, LayerNorm, pooler and classifier are < 0.2% and left out) and 4 T^2 H per layer for
QK^T and attention x V. The head reads token 0 ([CLS]) of the last layer only, so that layer needs
keys and values of every token but its query, attention, output projection and FFN for token 0
alone (what the onnx export runs: reranker/backends/onnx_cls_only.py); methods that compute the
whole last layer get no credit for the rest. mBERT-base: a 149-token pair needs 24.5 GFLOP (26.1
with the whole last layer, the count used before 2026-12-01). The peak ("%peak") is the highest
measured fp32 GEMM rate on the same threads: the median of large square products in torch
(`torch.matmul`, MKL) and in ONNX Runtime (a one-node `MatMul` graph, MLAS, the weight as an
initializer as in the model), whichever is higher, measured before the runs and after every
round (the highest kept: one measurement on a virtual machine can come out 10% low). The two
libraries pick their kernels separately (MKL takes its AVX2 path on AMD CPUs, MLAS uses AVX-512
where the CPU has it), so on one machine they can differ by up to 2x; dividing by torch's rate
alone made ONNX rows exceed 100%. int8 rows get no %peak: their products are not fp32 FLOPs.

Run:  python benchmarks/scorer_bench.py [--quick] [--reps N] [--no-onnx] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizes in this process

import numpy as np

MBERT = dict(
    vocab_size=105879, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, num_labels=2,
)
TINY = dict(
    vocab_size=105879, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=128, max_position_embeddings=512, num_labels=2,
)

# Per language: letters that survive uncased-BERT normalization unchanged (no combining marks
# after NFD), the stem length range, and how words are joined in running text.
SCRIPTS = {
    "en": ("bcdfghklmnprstvw", "aeiou", (2, 4)),
    "de": ("bcdfghklmnprstwz", "aeiou", (2, 5)),
    "es": ("bcdfglmnprstv", "aeiou", (2, 4)),
    "ru": ("бвгдзклмнпрстфхцчшщ", "аеиоуыэюя", (2, 4)),
    "ar": ("بتثجحخدذرزسشصضطظعغفقكلمنهوي", "اوي", (2, 3)),
    "hi": ("कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह", "ाि ी", (2, 3)),
    "ja": ("かきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわ", "あいうえお", (2, 3)),
    "zh": ("", "", (1, 2)),
}
LANGS = list(SCRIPTS)
SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
STEMS_PER_LANG = 5000
SUFFIXES_PER_LANG = 120
SUFFIX_PROBABILITY = 0.4  # a suffixed word is 2 WordPiece tokens, so ~1.4 tokens per word


@dataclass
class Lexicon:
    """Whole-word stems and ##suffixes per language, as they appear in text and in the vocab."""

    stems: dict = field(default_factory=dict)
    suffixes: dict = field(default_factory=dict)
    cjk: list = field(default_factory=list)


def _syllables(rng: random.Random, consonants: str, vowels: str, count: int) -> str:
    vowels = vowels.replace(" ", "")
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(count))


def build_lexicon(seed: int = 0) -> Lexicon:
    rng = random.Random(seed)
    lex = Lexicon()
    lex.cjk = [chr(code) for code in rng.sample(range(0x4E00, 0x9FA5), 3000)]
    for lang, (consonants, vowels, (lo, hi)) in SCRIPTS.items():
        if lang == "zh":
            continue
        stems = set()
        while len(stems) < STEMS_PER_LANG:
            stems.add(_syllables(rng, consonants, vowels, rng.randint(lo, hi)))
        suffixes = set()
        while len(suffixes) < SUFFIXES_PER_LANG:
            suffixes.add(_syllables(rng, consonants, vowels, 1) + rng.choice(consonants))
        lex.stems[lang] = sorted(stems)
        lex.suffixes[lang] = sorted(suffixes)
    return lex


def build_vocab(lex: Lexicon, vocab_size: int) -> dict:
    """mBERT-like ids ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102), padded to vocab_size."""
    tokens = []
    for lang, stems in lex.stems.items():
        tokens += stems + ["##" + s for s in lex.suffixes[lang]]
    chars = set(lex.cjk) | set(".,?!;:。、،।")
    for consonants, vowels, _ in SCRIPTS.values():
        chars |= set(consonants) | set(vowels.replace(" ", ""))
    chars |= set("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens += sorted(chars) + sorted("##" + c for c in chars if c not in lex.cjk)
    tokens = [t for t in dict.fromkeys(tokens) if t not in SPECIALS]
    vocab = dict(SPECIALS)
    free_ids = (i for i in range(vocab_size) if i not in SPECIALS.values())
    for token in tokens:
        vocab[token] = next(free_ids)
    for i in free_ids:  # synthetic filler, so that the embedding table has the real size
        vocab[f"[unused{i}]"] = i
    if len(vocab) != vocab_size:
        raise RuntimeError(f"vocab has {len(vocab)} entries, expected {vocab_size}")
    return vocab


def make_text(rng: random.Random, lex: Lexicon, lang: str, words: int) -> str:
    """Running text of `words` words in `lang`, with sentence punctuation."""
    out = []
    for index in range(words):
        if lang == "zh":
            out.append("".join(rng.choice(lex.cjk) for _ in range(rng.randint(1, 2))))
        else:
            word = rng.choice(lex.stems[lang])
            if rng.random() < SUFFIX_PROBABILITY:
                word += rng.choice(lex.suffixes[lang])
            out.append(word)
        if index % 11 == 10:
            out[-1] += {"zh": "。", "ja": "。", "ar": ".", "hi": "।"}.get(lang, ".")
    return ("" if lang == "zh" else " ").join(out)


@dataclass
class Workload:
    name: str
    query: str
    passages: list


def make_workloads(seed: int = 0, lex: Optional[Lexicon] = None, num_passages: int = 50) -> dict:
    """The long and short multilingual workloads (passages cycle through all languages).

    `seed` varies the texts; the words always come from the lexicon the model's vocab was built from.
    """
    lex = lex or build_lexicon(0)
    rng = random.Random(seed + 1)
    long_passages = [make_text(rng, lex, LANGS[i % len(LANGS)], rng.randint(60, 120)) for i in range(num_passages)]
    short_passages = [make_text(rng, lex, LANGS[i % len(LANGS)], rng.randint(8, 20)) for i in range(num_passages)]
    return {
        "long": Workload("long", make_text(rng, lex, "en", 9) + "?", long_passages),
        "short": Workload("short", make_text(rng, lex, "de", 6) + "?", short_passages),
    }


def save_random_mbert(directory, size: str = "full", seed: int = 0) -> Path:
    """Writes a random-weight mBERT-architecture cross-encoder + tokenizer (uncased WordPiece)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dims = MBERT if size == "full" else TINY
    vocab = build_vocab(build_lexicon(seed), dims["vocab_size"])
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.model_max_length = 512
    config = BertConfig(**dims)
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def flops_per_pair(tokens: int, dims: dict = MBERT) -> float:
    """Encoder FLOPs the score of one pair of `tokens` real tokens needs (module docstring)."""
    h, i, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    qkv, rest = 3 * h * h, h * h + 2 * h * i  # weights per layer: QKV; output projection and FFN
    full_layer = 2.0 * (qkv + rest) * tokens + 4.0 * tokens * tokens * h
    last_layer = 2.0 * qkv * tokens + 4.0 * tokens * h + 2.0 * rest  # token 0's query only
    return (layers - 1) * full_layer + last_layer


def gemm_peak_flops(size: int = 3072, runs: int = 7, dtype=None, device: str = "cpu") -> float:
    """Median FLOP/s of a square matmul (fp32 by default) on the current thread count."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        torch.matmul(a, b)
    rates = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2.0 * size**3 / (time.perf_counter() - started))
    return statistics.median(rates)


def ort_gemm_peak_flops(size: int = 3072, runs: int = 7, threads: Optional[int] = None) -> float:
    """Median FLOP/s of ONNX Runtime's fp32 MatMul (size x size by a size x size initializer)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.standard_normal((size, size), dtype=np.float32)}
    for _ in range(2):
        session.run(None, feed)
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        rates.append(2.0 * size**3 / (time.perf_counter() - started))
    return statistics.median(rates)


def gemm_peaks(with_onnx: bool) -> dict:
    """Measured fp32 GEMM rates by library: best median of 2048^2 and 4096^2 products."""
    peaks = {"torch": max(gemm_peak_flops(2048), gemm_peak_flops(4096, runs=3))}
    if with_onnx:
        try:
            peaks["onnxruntime"] = max(ort_gemm_peak_flops(2048), ort_gemm_peak_flops(4096, runs=3))
        except ImportError:
            pass
    return peaks


# ---------------------------------------------------------------- methods


def card_loop(model_dir: str, device: str = "cpu") -> Callable:
    """The model card's usage: one tokenizer call and one forward per pair; score = logit[1]."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)

    def score(query: str, passages: list) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for passage in passages:
                inputs = tokenizer(query, passage, truncation="only_second", max_length=512, return_tensors="pt")
                out.append(float(model(**inputs.to(device)).logits[0, 1]))
        return np.asarray(out, np.float32)

    return score


def cross_encoder(model_dir: str, batch_size: int = 32) -> Callable:
    """sentence-transformers CrossEncoder.predict at batch 32; column 1 of the 2-label output."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(model_dir, num_labels=2, max_length=512, device="cpu")

    def score(query: str, passages: list) -> np.ndarray:
        logits = model.predict([(query, p) for p in passages], batch_size=batch_size, show_progress_bar=False)
        return np.asarray(logits, np.float32)[:, 1]

    return score


def project_scorer(model_dir: str, backend: str = "torch", **settings) -> tuple:
    """PairEncoder + ModelScorer (tokenization included); returns (score, reconfigure)."""
    from reranker.scoring import ModelScorer
    from reranker.settings import BatchSettings, RerankerSettings
    from reranker.tokenization import PairEncoder
    from reranker.model_files import load_tokenizer

    config = RerankerSettings(model=str(model_dir), device="cpu", dtype="float32", backend=backend, **settings)
    scorer = ModelScorer(config)
    encoder = PairEncoder(load_tokenizer(str(model_dir)), scorer.max_length, config.max_query_tokens, config.chunk_overlap_tokens)

    def score(query: str, passages: list) -> np.ndarray:
        return scorer.score_pairs(encoder.encode(query, passages)).raw

    def reconfigure(max_batch_size: int, max_batch_tokens: int) -> None:
        scorer.reconfigure(BatchSettings(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                                         batch_wait_timeout_s=config.batch_wait_timeout_s))

    return score, reconfigure


def whole_last_layer_scorer(model_dir: str, cache: str) -> tuple:
    """project_scorer on an onnx export whose last layer runs for every token (the baseline of the
    [CLS]-only pruning), exported into its own cache root beside `cache`."""
    from reranker.backends.onnx import FP32_FILE, cache_dir_for, export_fp32

    root = f"{cache.rstrip('/')}-last-layer-whole"
    target = cache_dir_for(model_dir, None, root) / FP32_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        export_fp32(model_dir, None, target, cls_only=False)
    return project_scorer(model_dir, backend="onnx", onnx_cache_dir=root)


def token_counts(model_dir: str, workload: Workload) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return np.asarray([
        len(tokenizer(workload.query, p, truncation="only_second", max_length=512)["input_ids"])
        for p in workload.passages
    ])


@dataclass
class Timing:
    method: str
    workload: str
    wall_s: list = field(default_factory=list)
    cpu_s: list = field(default_factory=list)
    load: list = field(default_factory=list)
    max_abs_diff: float = float("nan")


@dataclass
class Method:
    name: str
    score: Callable
    before: Optional[Callable] = None  # e.g. set the scorer's batch settings


def measure(methods: list, workloads: dict, reps: int, after_round: Optional[Callable] = None) -> dict:
    """Warm-up on a few pairs, then `reps` rounds; each round times every method once per workload.

    Round-robin order, so that a load change on a shared machine hits every method alike.
    `after_round` runs after each round (the GEMM peak is measured there again).
    """
    results = {(m.name, w): Timing(m.name, w) for m in methods for w in workloads}
    for method in methods:
        if method.before:
            method.before()
        for workload in workloads.values():
            method.score(workload.query, workload.passages[:8])
    reference = {}
    for round_index in range(reps):
        for workload in workloads.values():
            for method in methods:
                if method.before:
                    method.before()
                gc.collect()
                timing = results[(method.name, workload.name)]
                timing.load.append(os.getloadavg()[0])
                wall, cpu = time.perf_counter(), time.process_time()
                scores = method.score(workload.query, workload.passages)
                timing.wall_s.append(time.perf_counter() - wall)
                timing.cpu_s.append(time.process_time() - cpu)
                ref = reference.setdefault(workload.name, scores)
                timing.max_abs_diff = float(np.max(np.abs(scores - ref)))
                print(f"  round {round_index + 1} {method.name:36s} {workload.name:5s} {timing.wall_s[-1]:7.2f} s  "
                      f"cpu {timing.cpu_s[-1]:7.2f} s  load {timing.load[-1]:4.1f}  max|d| {timing.max_abs_diff:.1e}",
                      flush=True)
        if after_round:
            after_round()
    return results


def report(results: dict, workloads: dict, tokens: dict, peak: float) -> list:
    rows = []
    for (name, wname), timing in results.items():
        n = len(workloads[wname].passages)
        best = min(timing.wall_s)
        cpu = timing.cpu_s[timing.wall_s.index(best)]
        flops = sum(flops_per_pair(int(t)) for t in tokens[wname])
        loop = results.get(("card-loop (per pair)", wname))
        rows.append(dict(
            method=name, workload=wname, pairs_per_s=n / best, pairs_per_cpu_s=n / cpu,
            wall_s=best, median_wall_s=statistics.median(timing.wall_s),
            # int8 products are not bounded by the fp32 peak: no fraction for those rows
            gflops=flops / best / 1e9, peak_fraction=float("nan") if "int8" in name else flops / best / peak,
            vs_loop=(min(loop.wall_s) / best) if loop else float("nan"),
            load_avg=statistics.mean(timing.load),
            max_abs_diff=timing.max_abs_diff,
        ))
    return rows


def describe_peaks(peaks: dict) -> str:
    best = max(peaks, key=peaks.get)
    rates = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in peaks.items())
    return (f"fp32 GEMM peak: {peaks[best] / 1e9:.1f} GFLOP/s on {os.cpu_count()} threads ({best}; "
            f"measured GFLOP/s: {rates})")


def _percent(fraction: float) -> str:
    return "     -" if fraction != fraction else f"{100 * fraction:5.1f}%"


def print_table(rows: list, peaks: dict) -> None:
    from machine import describe

    print(f"\n{describe()}")
    print(describe_peaks(peaks))
    header = f"{'workload':8s} {'method':36s} {'pairs/s':>8s} {'pairs/CPU-s':>11s} {'GFLOP/s':>8s} {'%peak':>6s} {'x loop':>7s} {'max|d|':>9s} {'load':>5s}"
    print(header)
    print("-" * len(header))
    for row in sorted(rows, key=lambda r: (r["workload"], -r["pairs_per_s"])):
        print(f"{row['workload']:8s} {row['method']:36s} {row['pairs_per_s']:8.2f} {row['pairs_per_cpu_s']:11.2f} "
              f"{row['gflops']:8.1f} {_percent(row['peak_fraction'])} {row['vs_loop']:7.2f} {row['max_abs_diff']:9.1e} "
              f"{row['load_avg']:5.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 timed pass, fewer batch configs")
    parser.add_argument("--reps", type=int, default=None, help="timed passes per method and workload (default 2)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnx and onnx-int8 backends")
    parser.add_argument("--only-onnx", action="store_true", help="only the card loop and the onnx backends")
    parser.add_argument("--only-defaults", action="store_true",
                        help="with --only-onnx: the onnx backends at the CPU default batch only (more reps in the same time)")
    parser.add_argument("--model-dir", help="model directory, built there if missing and reused later (default: a temp dir)")
    parser.add_argument("--onnx-cache-dir", help="ONNX export cache to reuse (default: in the temp dir)")
    parser.add_argument("--json", help="write the result rows here")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 2)

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="scorer_bench_")
    model_dir = args.model_dir or str(Path(tmp.name) / "mbert")
    if not (Path(model_dir) / "config.json").is_file():
        save_random_mbert(model_dir)
    workloads = make_workloads()
    tokens = {name: token_counts(model_dir, w) for name, w in workloads.items()}
    for name, counts in tokens.items():
        print(f"workload {name}: {len(counts)} pairs, tokens/pair mean {counts.mean():.0f} "
              f"(min {counts.min()}, max {counts.max()})")
    print(f"model ready in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, {threads} threads")
    # The peak is measured before the runs and after every round, and the highest kept: on a
    # shared or virtual machine a single measurement can come out well below what the cores do.
    peaks = gemm_peaks(with_onnx=not args.no_onnx)
    print(describe_peaks(peaks) + " (best median of 2048^2 and 4096^2 products)", flush=True)

    def remeasure_peaks() -> None:
        for name, rate in gemm_peaks(with_onnx=not args.no_onnx).items():
            peaks[name] = max(rate, peaks[name])
        print("  " + describe_peaks(peaks) + " (highest so far)", flush=True)

    methods = [Method("card-loop (per pair)", card_loop(model_dir))]
    if not args.only_onnx:
        methods.append(Method("CrossEncoder.predict b32", cross_encoder(model_dir)))
        configs = [(16, 4096), (8, 4096), (32, 8192)] if args.quick else [(16, 4096), (4, 4096), (8, 4096), (8, 2048), (32, 8192)]
        score, reconfigure = project_scorer(model_dir)
        for size, budget in configs:
            methods.append(Method(f"ModelScorer torch b{size}/{budget}", score, lambda s=size, b=budget, r=reconfigure: r(s, b)))
    if not args.no_onnx:
        try:
            import reranker.backends.onnx  # noqa: F401
        except ImportError as exc:
            print(f"onnx backends skipped: {exc}")
        else:
            from reranker.scoring import DEVICE_BATCH_DEFAULTS

            # backend auto is onnx on CPU, with the CPU batch defaults
            cpu_default = (DEVICE_BATCH_DEFAULTS["cpu"]["max_batch_size"], DEVICE_BATCH_DEFAULTS["cpu"]["max_batch_tokens"])
            cache = args.onnx_cache_dir or str(Path(tmp.name) / "onnx-cache")
            for backend in ("onnx", "onnx-int8"):
                load = time.perf_counter()
                score, reconfigure = project_scorer(model_dir, backend=backend, onnx_cache_dir=cache)
                print(f"{backend} ready in {time.perf_counter() - load:.0f} s (export if not cached + load)", flush=True)
                for size, budget in [cpu_default] if args.only_defaults else [(8, 4096), (16, 4096)]:
                    default = backend == "onnx" and (size, budget) == cpu_default
                    methods.append(Method(f"ModelScorer {backend} b{size}/{budget}" + (" (CPU default)" if default else ""), score,
                                          lambda s=size, b=budget, r=reconfigure: r(s, b)))
            score, reconfigure = whole_last_layer_scorer(model_dir, cache)
            methods.append(Method(f"onnx b{cpu_default[0]}/{cpu_default[1]}, last layer whole", score,
                                  lambda r=reconfigure: r(*cpu_default)))
    results = measure(methods, workloads, reps, after_round=remeasure_peaks)
    peak = max(peaks.values())
    rows = report(results, workloads, tokens, peak)
    print_table(rows, peaks)
    print(f"\nbest of {reps} timed pass(es) each; total {time.perf_counter() - started:.0f} s; "
          f"load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        from machine import cpu_info

        Path(args.json).write_text(json.dumps(dict(cpu=cpu_info(), peak_flops=peak, peak_flops_by_library=peaks, threads=threads, reps=reps, rows=rows,
                                                   tokens={k: v.tolist() for k, v in tokens.items()}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
