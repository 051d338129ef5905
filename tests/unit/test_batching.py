"""Tier 1: pure batching helpers (no Ray, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from reranker.batching import (
    collate,
    max_by_doc,
    padded_tokens,
    plan_batches,
    round_up,
    split_by_budget,
    split_documents,
    unbatch,
)
from reranker.messages import EncodedPairs


def make_pairs(rows: list[list[int]], doc_index=None, num_docs=None, query_truncated=False) -> EncodedPairs:
    """EncodedPairs from explicit token rows; the first half of each row is segment 0."""
    types = [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]
    doc_index = list(range(len(rows))) if doc_index is None else doc_index
    return EncodedPairs(
        input_ids=np.asarray([t for r in rows for t in r], np.int32),
        token_type_ids=np.asarray([t for r in types for t in r], np.int8),
        lengths=np.asarray([len(r) for r in rows], np.int32),
        doc_index=np.asarray(doc_index, np.int32),
        num_docs=len(rows) if num_docs is None else num_docs,
        query_truncated=query_truncated,
    )


def rows_of(pairs: EncodedPairs) -> list[list[int]]:
    return [pairs.input_ids[o: o + n].tolist() for o, n in zip(pairs.offsets, pairs.lengths)]


def check_plan(lengths, plan, max_batch_tokens, max_batch_size, multiple=1):
    flat = np.concatenate(plan) if plan else np.zeros(0, int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
    assert np.all(np.diff(lengths[flat]) >= 0)  # shortest first
    for number, batch in enumerate(plan):
        cost = round_up(int(lengths[batch].max()), multiple) * len(batch)
        assert len(batch) <= max_batch_size
        assert cost <= max_batch_tokens or len(batch) == 1
        if number + 1 < len(plan):  # greedy: the next pair would not have fitted
            grown = np.append(batch, plan[number + 1][0])
            grown_cost = round_up(int(lengths[grown].max()), multiple) * len(grown)
            assert len(grown) > max_batch_size or grown_cost > max_batch_tokens


@pytest.mark.parametrize("max_batch_tokens,max_batch_size,multiple", [(512, 16, 1), (4096, 8, 1), (2000, 64, 8), (1, 4, 1)])
def test_plan_batches_respects_both_budgets(max_batch_tokens, max_batch_size, multiple):
    lengths = np.random.default_rng(0).integers(3, 513, size=200).astype(np.int32)
    plan = plan_batches(lengths, max_batch_tokens, max_batch_size, multiple)
    check_plan(lengths, plan, max_batch_tokens, max_batch_size, multiple)


def test_plan_batches_gives_an_oversize_pair_its_own_batch():
    lengths = np.array([600, 10, 20, 700], np.int32)
    plan = plan_batches(lengths, max_batch_tokens=512, max_batch_size=16)
    assert [b.tolist() for b in plan] == [[1, 2], [0], [3]]


def test_plan_batches_counts_longest_times_count_with_padding_multiple():
    lengths = np.array([9, 9, 9], np.int32)
    assert [len(b) for b in plan_batches(lengths, 32, 16)] == [3]  # 9 x 3 = 27
    assert [len(b) for b in plan_batches(lengths, 32, 16, pad_to_multiple_of=8)] == [2, 1]  # 16 x 2 = 32
    assert [len(b) for b in plan_batches(np.array([2, 2, 30], np.int32), 60, 16)] == [2, 1]  # 30 x 3 > 60


def test_plan_batches_of_nothing_is_empty():
    assert plan_batches(np.zeros(0, np.int32), 100, 4) == []


def test_split_by_budget_has_no_size_limit():
    lengths = np.full(40, 10, np.int32)
    plan = split_by_budget(make_pairs([[1] * 10] * 40), max_batch_tokens=100)
    assert [len(b) for b in plan] == [10] * 4
    check_plan(lengths, plan, 100, 40)


def test_padded_tokens_and_round_up():
    assert padded_tokens(np.array([3, 7, 5])) == 21
    assert padded_tokens(np.zeros(0, np.int32)) == 0
    assert [round_up(v, 8) for v in (1, 8, 9)] == [8, 8, 16]


def test_collate_pads_to_the_longest_in_the_batch():
    pairs = make_pairs([[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]])
    input_ids, mask, types = collate(pairs, np.array([1, 0]), pad_token_id=99)
    assert input_ids.tolist() == [[8, 9, 99], [5, 6, 7]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert types.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert input_ids.dtype == mask.dtype == types.dtype == np.int32
    input_ids, mask, _ = collate(pairs, np.array([2, 1]), pad_to_multiple_of=8)
    assert input_ids.shape == (2, 8) and mask.sum(axis=1).tolist() == [6, 2]
    assert input_ids[1].tolist() == [8, 9, 0, 0, 0, 0, 0, 0]


def test_select_keeps_doc_index_and_concat_shifts_it():
    first = make_pairs([[1, 2], [3, 4, 5], [6]], doc_index=[0, 0, 1], num_docs=2)
    second = make_pairs([[7, 8], [9]], doc_index=[0, 2], num_docs=3, query_truncated=True)
    picked = first.select(np.array([2, 0]))
    assert rows_of(picked) == [[6], [1, 2]]
    assert picked.doc_index.tolist() == [1, 0] and picked.num_docs == 2
    assert picked.token_type_ids.tolist() == [1, 0, 1]
    assert first.select(np.array([], int)).num_pairs == 0
    joined = EncodedPairs.concat([first, second])
    assert rows_of(joined) == [[1, 2], [3, 4, 5], [6], [7, 8], [9]]
    assert joined.doc_index.tolist() == [0, 0, 1, 2, 4] and joined.doc_index.dtype == np.int32
    assert joined.num_docs == 5 and joined.query_truncated
    assert joined.chunks_per_doc().tolist() == [2, 1, 1, 0, 1]


def test_max_by_doc_takes_each_documents_best_window():
    values = np.array([0.1, 0.7, -2.0, 0.3, 0.9, 0.2], np.float32)
    doc_index = np.array([0, 0, 1, 3, 3, 3], np.int32)
    best = max_by_doc(doc_index, 4, values)
    assert best[[0, 1, 3]].tolist() == pytest.approx([0.7, -2.0, 0.9])
    assert best[2] == -np.inf  # a document without pairs


def test_split_documents_into_contiguous_ranges():
    assert split_documents([5, 5, 5, 5], 10) == [(0, 2), (2, 4)]
    assert split_documents([50, 1, 1], 10) == [(0, 1), (1, 3)]  # an oversize document alone
    assert split_documents([3, 50], 10) == [(0, 1), (1, 2)]
    assert split_documents([], 10) == []


def test_unbatch_gives_each_caller_its_slice():
    parts = unbatch(np.arange(6), [1, 3, 2])
    assert [p.tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert [p.tolist() for p in unbatch(np.arange(2), [0, 2])] == [[], [0, 1]]
    assert unbatch(np.zeros(0), []) == []


def test_serve_batch_size_fn_counts_padded_tokens_and_never_raises():
    """Serve's batch_size_fn: longest pair x pairs over all queued parts; garbage counts as 0."""
    from deployments.scorer import ScoreItem, batch_padded_tokens

    def item(lengths):
        lengths = np.asarray(lengths, np.int32)
        return ScoreItem(
            EncodedPairs(
                input_ids=np.zeros(int(lengths.sum()), np.int32),
                token_type_ids=np.zeros(int(lengths.sum()), np.int8),
                lengths=lengths,
                doc_index=np.arange(len(lengths), dtype=np.int32),
                num_docs=len(lengths),
            ),
            enqueued_at=0.0,
        )

    assert batch_padded_tokens([item([10, 30]), item([20])]) == 30 * 3
    assert batch_padded_tokens([item([7])]) == 7
    # An exception here would stall Ray's batcher, so bad input counts as 0 instead.
    assert batch_padded_tokens([None]) == 0
    assert batch_padded_tokens([]) == 0
