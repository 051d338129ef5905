"""Tier 4: half precision on CUDA against fp32 and against the reference in the same dtype (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import pair_ids

from reranker.model_files import load_tokenizer
from reranker.scoring import ModelScorer
from reranker.settings import RerankerSettings
from reranker.tokenization import PairEncoder
from tiny_models import CORPUS

# fp32 vs half on the tiny model (wide random init, so big activations): fp16 meets the issue's
# 0.05 / 0.99; bf16's 8-bit mantissa alone moves it ~0.06-0.10 (plain HF bf16 does the same), so
# bf16 gets a looser bound here, and both get a tight check against HF in the same dtype.
HALF_BOUNDS = {"float16": (0.05, 0.99), "bfloat16": (0.15, 0.98)}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def spearman(a, b) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def corpus_pairs(model_dir):
    encoder = PairEncoder(load_tokenizer(str(model_dir)), 512, 256)
    return [encoder.encode(q, CORPUS[5:15]) for q in CORPUS[:5]]  # 50 pairs


def normalized_scores(model_dir, dtype, encoded):
    scorer = ModelScorer(RerankerSettings(model=str(model_dir), device="cuda", dtype=dtype))
    return np.concatenate([scorer.score_pairs(e).normalized for e in encoded])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", list(HALF_BOUNDS))
def test_half_precision_is_close_to_fp32(tiny_model_dir, dtype):
    encoded = corpus_pairs(tiny_model_dir)
    expected = normalized_scores(tiny_model_dir, "float32", encoded)
    got = normalized_scores(tiny_model_dir, dtype, encoded)
    max_abs, min_spearman = HALF_BOUNDS[dtype]
    assert np.abs(got - expected).max() <= max_abs
    assert spearman(got, expected) >= min_spearman


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", list(HALF_BOUNDS))
def test_half_precision_equals_the_reference_in_the_same_dtype(tiny_model_dir, dtype):
    from transformers import AutoModelForSequenceClassification

    encoded = corpus_pairs(tiny_model_dir)
    got = normalized_scores(tiny_model_dir, dtype, encoded)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype)).cuda().eval()
    expected = []
    with torch.inference_mode():
        for pairs in encoded:
            for i in range(pairs.num_pairs):
                ids, types = pair_ids(pairs, i)
                logits = model(input_ids=torch.tensor([ids]).cuda(), token_type_ids=torch.tensor([types]).cuda()).logits
                expected.append(float(torch.softmax(logits.double(), dim=1)[0, 1]))
    assert np.abs(got - np.array(expected)).max() <= 0.01
