"""Tier 1: which logit is relevance, and its normalization (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from reranker.errors import ModelLoadError
from reranker.relevance import check_architecture, relevance_from_logits, relevance_head

ONE = {"id2label": {"0": "LABEL_0"}}
TWO = {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
THREE = {"id2label": {"0": "negative", "1": "neutral", "2": "relevant"}}


def test_one_label_is_logit_zero_with_sigmoid():
    head = relevance_head(ONE)
    assert (head.num_labels, head.label_index, head.normalization) == (1, 0, "sigmoid")


@pytest.mark.parametrize("config", [TWO, {}, {"num_labels": 2}])
def test_two_labels_is_logit_one_with_softmax(config):
    head = relevance_head(config)
    assert (head.num_labels, head.label_index, head.normalization) == (2, 1, "softmax")


def test_three_labels_need_relevant_label():
    with pytest.raises(ModelLoadError, match=r"3 labels .*set relevant_label"):
        relevance_head(THREE)


@pytest.mark.parametrize("relevant_label", [2, "2", "relevant"])
def test_relevant_label_by_index_or_name(relevant_label):
    head = relevance_head(THREE, relevant_label)
    assert (head.label_index, head.label_name, head.normalization) == (2, "relevant", "softmax")


@pytest.mark.parametrize("relevant_label,message", [
    (3, "relevant_label 3 is out of range for a model with 3 labels"),
    (-1, "relevant_label -1 is out of range"),
    ("entailment", "relevant_label 'entailment' is not a label of this model"),
])
def test_bad_relevant_label(relevant_label, message):
    with pytest.raises(ModelLoadError, match=message):
        relevance_head(THREE, relevant_label)


def test_softmax_of_label_one():
    logits = np.array([[0.5, 2.0], [3.0, -1.0], [1000.0, 1001.0]], np.float32)
    raw, normalized = relevance_from_logits(logits, relevance_head(TWO))
    assert raw.tolist() == [2.0, -1.0, 1001.0]
    expected = 1.0 / (1.0 + np.exp(logits[:, 0].astype(np.float64) - logits[:, 1]))
    np.testing.assert_allclose(normalized, expected, rtol=1e-6)
    assert raw.dtype == normalized.dtype == np.float32


def test_sigmoid_of_the_single_logit():
    logits = np.array([[0.0], [2.0], [-3.0]], np.float32)
    raw, normalized = relevance_from_logits(logits, relevance_head(ONE))
    assert raw.tolist() == [0.0, 2.0, -3.0]
    np.testing.assert_allclose(normalized, [0.5, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(3.0))], rtol=1e-6)


def test_softmax_of_a_chosen_label_among_three():
    logits = np.array([[1.0, 2.0, 3.0]])
    raw, normalized = relevance_from_logits(logits, relevance_head(THREE, "relevant"))
    assert raw.tolist() == [3.0]
    np.testing.assert_allclose(normalized, [np.exp(3) / np.exp([1, 2, 3]).sum()], rtol=1e-6)


def test_check_architecture():
    check_architecture({"architectures": ["BertForSequenceClassification"]})
    for config in ({"architectures": ["BertModel"]}, {}):
        with pytest.raises(ModelLoadError, match="not a sequence-classification"):
            check_architecture(config)
