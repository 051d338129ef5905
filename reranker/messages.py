"""Messages between processes: what the ingress sends the tokenizer, the tokenizer the scorer, and back.

Plain dataclasses of numpy arrays (no torch), pickled by Ray between replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

TOKEN_DTYPE = np.int32


@dataclass
class PairRequest:
    """What the tokenizer deployment encodes for one request (or one part of a large request).

    Every passage is paired with `queries[query_of_passage[i]]`, or with `queries[0]` when
    `query_of_passage` is None (the rerank routes have one query; `/score` may have many).
    """

    queries: list[str]
    passages: list[str]
    query_of_passage: Optional[list[int]] = None
    chunk: bool = False
    max_chunks: int = 1
    max_tokens_per_doc: Optional[int] = None
    truncate: bool = True
    truncation_direction: str = "right"


@dataclass
class EncodedPairs:
    """Token ids of (query, passage-or-window) pairs, flat, as they travel between processes.

    Pair i occupies `input_ids[offsets[i]:offsets[i] + lengths[i]]`. `doc_index[i]` is the
    passage (within this request part) that pair i scores; chunk mode gives a passage several.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    doc_index: np.ndarray
    num_docs: int
    query_truncated: bool = False

    @property
    def num_pairs(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)[:-1])).astype(np.int64)

    @property
    def total_tokens(self) -> int:
        return int(self.lengths.sum())

    def chunks_per_doc(self) -> np.ndarray:
        return np.bincount(self.doc_index, minlength=self.num_docs)

    def select(self, pair_indices: np.ndarray) -> "EncodedPairs":
        """The listed pairs as a new EncodedPairs; doc_index is kept as is."""
        offsets = self.offsets
        pieces_ids = [self.input_ids[offsets[i]: offsets[i] + self.lengths[i]] for i in pair_indices]
        pieces_types = [self.token_type_ids[offsets[i]: offsets[i] + self.lengths[i]] for i in pair_indices]
        return EncodedPairs(
            input_ids=np.concatenate(pieces_ids) if pieces_ids else np.zeros(0, TOKEN_DTYPE),
            token_type_ids=np.concatenate(pieces_types) if pieces_types else np.zeros(0, np.int8),
            lengths=self.lengths[pair_indices],
            doc_index=self.doc_index[pair_indices],
            num_docs=self.num_docs,
            query_truncated=self.query_truncated,
        )

    @staticmethod
    def concat(parts: Sequence["EncodedPairs"]) -> "EncodedPairs":
        """Joins request parts; each part's doc_index is shifted past the previous parts' docs."""
        doc_offset = 0
        doc_indices = []
        for part in parts:
            doc_indices.append(part.doc_index + doc_offset)
            doc_offset += part.num_docs
        return EncodedPairs(
            input_ids=np.concatenate([p.input_ids for p in parts]),
            token_type_ids=np.concatenate([p.token_type_ids for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            doc_index=np.concatenate(doc_indices).astype(np.int32),
            num_docs=doc_offset,
            query_truncated=any(p.query_truncated for p in parts),
        )


@dataclass
class DocScores:
    """Per-document scores of one request part (or a whole request), in document order."""

    raw: np.ndarray
    normalized: np.ndarray
    chunks_per_doc: np.ndarray
    total_tokens: int
    query_truncated: bool
    # The scorer's live max_batch_tokens: the ingress sizes the next request parts by it.
    max_batch_tokens: int = 0
    # Tokens per second of the scorer's forward pass, measured when it loaded: admission's first guess.
    forward_tokens_per_s: float = 0.0

    @staticmethod
    def concat(parts: Sequence["DocScores"]) -> "DocScores":
        """Joins the scores of consecutive request parts into the whole request's."""
        return DocScores(
            raw=np.concatenate([p.raw for p in parts]),
            normalized=np.concatenate([p.normalized for p in parts]),
            chunks_per_doc=np.concatenate([p.chunks_per_doc for p in parts]),
            total_tokens=sum(p.total_tokens for p in parts),
            query_truncated=any(p.query_truncated for p in parts),
            max_batch_tokens=max(p.max_batch_tokens for p in parts),
            forward_tokens_per_s=max(p.forward_tokens_per_s for p in parts),
        )
