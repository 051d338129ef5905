"""Tiny random BERT cross-encoders and tokenizers, built in the test and saved like a hub model.

Nothing is downloaded: the vocabulary is made from a multilingual corpus in this file, and the
weights are random with a fixed seed. Production code loads these through `from_pretrained`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

CORPUS = [
    "what is the capital of france",
    "paris is the capital and most populous city of france",
    "berlin ist die hauptstadt von deutschland",
    "madrid es la capital de españa",
    "столица россии москва",
    "東京は日本の首都です",
    "北京是中国的首都",
    "서울은 대한민국의 수도이다",
    "القاهرة هي عاصمة مصر",
    "नई दिल्ली भारत की राजधानी है",
    "roma è la capitale d'italia",
    "lisboa é a capital de portugal",
    "emoji test 🙂 🚀 ✨",
    "mixed paris и москва 東京",
    "the quick brown fox jumps over the lazy dog",
    "relevant passage about neural rerankers and search engines",
]


def build_vocab() -> list[str]:
    """Special tokens, whole words, single characters and ##characters of the corpus."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words, chars = set(), set()
    for line in CORPUS:
        text = unicodedata.normalize("NFD", line.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        for word in text.split():
            words.add(word)
            chars.update(word)
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = specials + sorted(words) + sorted(chars) + sorted("##" + c for c in chars)
    return list(dict.fromkeys(vocab))


def save_tiny_model(
    directory: Path,
    num_labels: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 512,
    architecture: str = "sequence-classification",
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    id2label: dict | None = None,
) -> Path:
    """Writes config, weights and tokenizer files of a tiny random BERT to `directory`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        # Wide random weights spread the scores, so rankings in tests are far from ties.
        initializer_range=0.5,
    )
    if id2label:
        config.id2label = dict(id2label)
        config.label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    model_cls = BertForSequenceClassification if architecture == "sequence-classification" else BertModel
    model = model_cls(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
