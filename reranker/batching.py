"""Pure batching helpers: padded-token counting, length-sorted batch plans, collation, unbatching.

No Ray and no torch here, so all of it is unit-tested in milliseconds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reranker.messages import EncodedPairs


def padded_tokens(lengths: np.ndarray) -> int:
    """Tokens a batch costs once padded to its longest pair: longest x count (as TEI counts)."""
    return int(lengths.max()) * int(lengths.shape[0]) if lengths.shape[0] else 0


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_batches(lengths: np.ndarray, max_batch_tokens: int, max_batch_size: int, pad_to_multiple_of: int = 1) -> list[np.ndarray]:
    """Pair indices grouped into forward batches, shortest pairs first.

    Every batch stays within `max_batch_size` pairs and `max_batch_tokens` padded tokens, except
    that a single pair longer than the budget still gets a batch of its own.
    """
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for position in range(1, len(order) + 1):
        if position == len(order):
            batches.append(order[start:position])
            break
        count = position - start + 1
        longest = round_up(int(lengths[order[position]]), pad_to_multiple_of)
        if count > max_batch_size or count * longest > max_batch_tokens:
            batches.append(order[start:position])
            start = position
    return [batch for batch in batches if batch.shape[0]]


def collate(pairs: EncodedPairs, indices: np.ndarray, pad_to_multiple_of: int = 1, pad_token_id: int = 0):
    """Dense (input_ids, attention_mask, token_type_ids) int32 arrays, padded to the batch's longest pair."""
    lengths = pairs.lengths[indices].astype(np.int64)
    width = round_up(int(lengths.max()), pad_to_multiple_of)
    columns = np.arange(width)
    mask = columns[None, :] < lengths[:, None]
    # Flat positions of every cell; padding cells point at position 0 and are masked out below.
    positions = np.where(mask, pairs.offsets[indices][:, None] + columns[None, :], 0)
    input_ids = np.where(mask, pairs.input_ids[positions], pad_token_id).astype(np.int32)
    token_type_ids = np.where(mask, pairs.token_type_ids[positions], 0).astype(np.int32)
    return input_ids, mask.astype(np.int32), token_type_ids


def split_by_budget(pairs: EncodedPairs, max_batch_tokens: int) -> list[np.ndarray]:
    """Pair indices in parts of at most `max_batch_tokens` padded tokens (length-sorted)."""
    return plan_batches(pairs.lengths, max_batch_tokens, max_batch_size=pairs.num_pairs or 1)


def max_by_doc(doc_index: np.ndarray, num_docs: int, values: np.ndarray) -> np.ndarray:
    """Per-document maximum over its pairs (a chunked passage scores as its best window)."""
    out = np.full(num_docs, -np.inf, dtype=np.float64)
    np.maximum.at(out, doc_index, values.astype(np.float64))
    return out


def split_documents(token_estimates: Sequence[int], budget_tokens: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) document ranges of about `budget_tokens` each (at least one doc each)."""
    ranges = []
    start, used = 0, 0
    for position, estimate in enumerate(token_estimates):
        if position > start and used + estimate > budget_tokens:
            ranges.append((start, position))
            start, used = position, 0
        used += estimate
    if start < len(token_estimates):
        ranges.append((start, len(token_estimates)))
    return ranges


def unbatch(values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Splits concatenated per-pair results back into one array per caller."""
    return np.split(values, np.cumsum(counts)[:-1]) if len(counts) else []
