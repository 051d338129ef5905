"""For comparing scores in tests: the model card's reference usage (one pair at a time), and
this project's own in-process path (PairEncoder, then ModelScorer)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def _load(model_dir: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def reference_scores(model_dir, query: str, passages: list[str], max_length: int = 512):
    """(raw, normalized) per passage: logit[1] and softmax[1] (1 label: logit[0] and sigmoid).

    An empty passage is encoded as an empty second segment, as the batched reference call does.
    """
    import torch

    tokenizer, model = _load(str(model_dir))
    raw, normalized = [], []
    with torch.inference_mode():
        for passage in passages:
            features = tokenizer([query], [passage], truncation="only_second", max_length=max_length, return_tensors="pt")
            logits = model(**features).logits[0]
            if logits.shape[0] == 1:
                raw.append(float(logits[0]))
                normalized.append(float(torch.sigmoid(logits[0])))
            else:
                raw.append(float(logits[1]))
                normalized.append(float(torch.softmax(logits, dim=0)[1]))
    return np.array(raw), np.array(normalized)


class Ours:
    """This project's path: PairEncoder (torch-free tokenizer) then ModelScorer, on CPU.

    `settings` are RerankerSettings fields (backend, dtype, onnx_cache_dir, max_batch_size...).
    ONNX exports go to the session's cache (conftest.py), as the served apps' do, unless
    `onnx_cache_dir` says otherwise: never into ~/.cache, and each tiny model once per session.
    """

    def __init__(self, model_dir, **settings):
        from reranker.scoring import ModelScorer
        from reranker.settings import RerankerSettings
        from reranker.tokenization import PairEncoder
        from reranker.model_files import load_tokenizer

        from conftest import ONNX_CACHE_DIR

        settings.setdefault("onnx_cache_dir", ONNX_CACHE_DIR)
        self.settings = RerankerSettings(model=str(model_dir), device="cpu", **settings)
        self.scorer = ModelScorer(self.settings)
        self.encoder = PairEncoder(load_tokenizer(str(model_dir)), self.scorer.max_length, self.settings.max_query_tokens)

    def score(self, query, passages, **options):
        """(EncodedPairs, PairScores) of the passages against the query."""
        encoded = self.encoder.encode(query, passages, **options)
        return encoded, self.scorer.score_pairs(encoded)


def pair_ids(encoded, i: int) -> tuple[list[int], list[int]]:
    """Token ids and token types of pair i of EncodedPairs, as lists."""
    start, length = int(encoded.offsets[i]), int(encoded.lengths[i])
    return encoded.input_ids[start: start + length].tolist(), encoded.token_type_ids[start: start + length].tolist()
