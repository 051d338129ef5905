"""Which logit is relevance, and how to normalize it. Pure numpy, no torch.

- 2 labels (this model): raw = logit[1] (the model card's -10..10), normalized = softmax[1].
- 1 label (ms-marco MiniLM style): raw = logit[0], normalized = sigmoid(logit[0]).
- More labels: only with `relevant_label` (index or label name), normalized by softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from reranker.errors import ModelLoadError


@dataclass(frozen=True)
class RelevanceHead:
    num_labels: int
    label_index: int
    label_name: str
    normalization: str  # "softmax" or "sigmoid"

    def describe(self) -> str:
        if self.normalization == "sigmoid":
            return f"raw = logit[{self.label_index}]; normalized = sigmoid(logit[{self.label_index}])"
        return f"raw = logit[{self.label_index}] ({self.label_name}); normalized = softmax(logits)[{self.label_index}]"


def check_architecture(model_config: dict) -> None:
    """Refuses a checkpoint without a sequence-classification head (its head would be random)."""
    architectures = model_config.get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ModelLoadError(
            f"Model architecture {architectures or '(none listed)'} is not a sequence-classification "
            "cross-encoder (…ForSequenceClassification); loading it would attach a random head."
        )


def _num_labels(model_config: dict) -> int:
    if isinstance(model_config.get("num_labels"), int):
        return model_config["num_labels"]
    id2label = model_config.get("id2label")
    return len(id2label) if id2label else 2


def relevance_head(model_config: dict, relevant_label: Optional[Union[int, str]] = None) -> RelevanceHead:
    """The relevance label of a classification config, or a clear ModelLoadError."""
    num_labels = _num_labels(model_config)
    id2label = {int(k): str(v) for k, v in (model_config.get("id2label") or {}).items()}
    if relevant_label is None:
        if num_labels == 1:
            index = 0
        elif num_labels == 2:
            index = 1
        else:
            raise ModelLoadError(
                f"Model has {num_labels} labels {sorted(id2label.values())}; set relevant_label "
                "(an index or a label name) to say which one is relevance."
            )
    elif isinstance(relevant_label, int) or str(relevant_label).lstrip("-").isdigit():
        index = int(relevant_label)
        if not 0 <= index < num_labels:
            raise ModelLoadError(f"relevant_label {index} is out of range for a model with {num_labels} labels.")
    else:
        matches = [i for i, name in id2label.items() if name == relevant_label]
        if not matches:
            raise ModelLoadError(
                f"relevant_label '{relevant_label}' is not a label of this model; labels: {sorted(id2label.values())}."
            )
        index = matches[0]
    return RelevanceHead(
        num_labels=num_labels,
        label_index=index,
        label_name=id2label.get(index, f"LABEL_{index}"),
        normalization="sigmoid" if num_labels == 1 else "softmax",
    )


def relevance_from_logits(logits: np.ndarray, head: RelevanceHead) -> tuple[np.ndarray, np.ndarray]:
    """(raw, normalized) float32 scores from an (n, num_labels) logits array."""
    logits = np.asarray(logits, dtype=np.float64)
    raw = logits[:, head.label_index]
    if head.normalization == "sigmoid":
        normalized = 1.0 / (1.0 + np.exp(-raw))
    else:
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        normalized = exp[:, head.label_index] / exp.sum(axis=1)
    return raw.astype(np.float32), normalized.astype(np.float32)
