"""Tier 2: our scores equal the model card's reference usage on tiny random cross-encoders.

Reference: AutoTokenizer + AutoModelForSequenceClassification, one pair at a time,
`tokenizer(q, p, truncation="only_second", max_length=512)`; 2 labels: logits[0][1] and
softmax[1]; 1 label: logits[0][0] and sigmoid. An empty passage is `[CLS] q [SEP] [SEP]`
(the batched reference `tokenizer([q], [""])`), see test_tokenization.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import LONG_PASSAGE, MULTILINGUAL_PAIRS, ONNX_CACHE_DIR, QUERY
from reference import Ours, pair_ids

from reranker.batching import max_by_doc
from reranker.scoring import ModelScorer
from reranker.settings import BatchSettings, RerankerSettings
from reranker.tokenization import PairEncoder
from reranker.model_files import load_tokenizer
from tiny_models import CORPUS

TOLERANCE = 1e-4
PASSAGES = [p for _, p in MULTILINGUAL_PAIRS]


class Reference:
    """The model card's usage of one tiny model."""

    def __init__(self, model_dir):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def encode(self, query, passage, max_length=512):
        if passage == "":
            return self.tokenizer([query], [passage], return_tensors="pt")
        return self.tokenizer(query, passage, truncation="only_second", max_length=max_length, return_tensors="pt")

    @torch.inference_mode()
    def score_ids(self, input_ids, token_type_ids) -> tuple[float, float]:
        logits = self.model(
            input_ids=torch.tensor([input_ids]), token_type_ids=torch.tensor([token_type_ids])
        ).logits[0].double()
        if logits.shape[0] == 1:
            return float(logits[0]), float(torch.sigmoid(logits[0]))
        return float(logits[1]), float(torch.softmax(logits, dim=0)[1])

    def score(self, query, passage) -> tuple[float, float]:
        encoded = self.encode(query, passage)
        return self.score_ids(encoded["input_ids"][0].tolist(), encoded["token_type_ids"][0].tolist())


@pytest.fixture(
    scope="module",
    params=[("tiny_model_dir", "auto"), ("tiny_model_dir_1label", "auto"), ("tiny_model_dir", "torch"), ("tiny_model_dir_1label", "torch")],
    ids=["2labels-cpu-default", "1label-cpu-default", "2labels-torch", "1label-torch"],
)
def models(request):
    """Our scorer through the CPU default backend (onnx) and through torch, with the reference."""
    fixture, backend = request.param
    model_dir = request.getfixturevalue(fixture)
    return Ours(model_dir, backend=backend), Reference(model_dir)


def test_scores_equal_the_reference_across_scripts(models):
    ours, reference = models
    expected = np.array([reference.score(q, p) for q, p in MULTILINGUAL_PAIRS])
    got = np.array([[float(s.raw[0]), float(s.normalized[0])] for s in (ours.score(q, [p])[1] for q, p in MULTILINGUAL_PAIRS)])
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.ptp(expected[:, 0]) > 0.1  # the pairs really score differently
    # One batch of all passages against one query (dynamic padding) matches too.
    _, batch = ours.score(QUERY, PASSAGES)
    reference_batch = np.array([reference.score(QUERY, p) for p in PASSAGES])
    assert np.abs(batch.raw - reference_batch[:, 0]).max() <= TOLERANCE
    assert np.abs(batch.normalized - reference_batch[:, 1]).max() <= TOLERANCE


def test_empty_passage_scores_as_an_empty_second_segment(models):
    ours, reference = models
    encoded, scores = ours.score(QUERY, ["paris", "", LONG_PASSAGE])
    batched = reference.tokenizer([QUERY], [""])
    assert pair_ids(encoded, 1) == (batched["input_ids"][0], batched["token_type_ids"][0])
    raw, normalized = reference.score_ids(batched["input_ids"][0], batched["token_type_ids"][0])
    assert abs(scores.raw[1] - raw) <= TOLERANCE and abs(scores.normalized[1] - normalized) <= TOLERANCE


def test_order_and_batch_budget_change_no_score(models):
    ours, _ = models
    encoded, baseline = ours.score(QUERY, PASSAGES)
    order = list(range(len(PASSAGES)))
    random.Random(7).shuffle(order)
    _, shuffled = ours.score(QUERY, [PASSAGES[i] for i in order])
    assert np.abs(shuffled.raw - baseline.raw[order]).max() <= TOLERANCE
    original = ours.scorer.batching
    batch_counts = set()
    try:
        for budget in (BatchSettings(max_batch_tokens=1, max_batch_size=1),
                       BatchSettings(max_batch_tokens=600, max_batch_size=3),
                       BatchSettings(max_batch_tokens=100_000, max_batch_size=64)):
            ours.scorer.reconfigure(budget)
            scores = ours.scorer.score_pairs(encoded)
            batch_counts.add(len(scores.batches))
            assert np.abs(scores.raw - baseline.raw).max() <= TOLERANCE
            assert np.abs(scores.normalized - baseline.normalized).max() <= TOLERANCE
    finally:
        ours.scorer.reconfigure(original)
    assert len(batch_counts) == 3  # the budgets really made different batches


def one_token_words(tokenizer, text):
    return [w for w in text.split() if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]


def test_chunked_passage_scores_as_its_best_window(models):
    ours, reference = models
    tokenizer = reference.tokenizer
    budget = 512 - len(tokenizer(QUERY, add_special_tokens=False)["input_ids"]) - 3
    filler = "the quick brown fox jumps over the lazy dog " * 180  # 1620 tokens
    words = one_token_words(tokenizer, CORPUS[1] + " " + CORPUS[15])
    relevant = " ".join(words[i % len(words)] for i in range(budget))  # exactly one window
    assert len(tokenizer(relevant, add_special_tokens=False)["input_ids"]) == budget
    encoded, scores = ours.score(QUERY, [filler + relevant], chunk=True, max_chunks=10)
    assert encoded.num_pairs == 5 and set(encoded.doc_index.tolist()) == {0}
    window_scores = [reference.score_ids(*pair_ids(encoded, i))[0] for i in range(encoded.num_pairs)]
    chunked = max_by_doc(encoded.doc_index, 1, scores.raw)[0]
    assert abs(chunked - max(window_scores)) <= TOLERANCE
    # The last window is the relevant segment alone, as the reference scores it.
    alone = reference.encode(QUERY, relevant)
    assert pair_ids(encoded, encoded.num_pairs - 1)[0] == alone["input_ids"][0].tolist()
    assert abs(scores.raw[-1] - reference.score(QUERY, relevant)[0]) <= TOLERANCE


def test_relevant_label_by_name_scores_that_label(tiny_model_dir_3label):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = ModelScorer(RerankerSettings(model=str(tiny_model_dir_3label), relevant_label="relevant", device="cpu",
                                         onnx_cache_dir=ONNX_CACHE_DIR))
    assert scorer.head.label_index == 2
    encoder = PairEncoder(load_tokenizer(str(tiny_model_dir_3label)), 512, 256)
    scores = scorer.score_pairs(encoder.encode(QUERY, PASSAGES[:4]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir_3label)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir_3label).eval()
    with torch.inference_mode():
        logits = torch.cat([model(**tokenizer(QUERY, p, return_tensors="pt")).logits for p in PASSAGES[:4]]).double()
    assert np.abs(scores.raw - logits[:, 2].numpy()).max() <= TOLERANCE
    assert np.abs(scores.normalized - torch.softmax(logits, 1)[:, 2].numpy()).max() <= TOLERANCE
