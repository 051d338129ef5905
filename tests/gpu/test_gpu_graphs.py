"""Tier 4: the forward as CUDA graphs (setting `cuda_graphs`) on CUDA (skipped without CUDA).

A replayed graph must give each batch the logits the eager forward gives it, whatever shape it
was padded up to, from any thread, without a read-back; a batch beyond the captured shapes runs
eagerly.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from reranker.backends.cuda_graphs import graph_shapes
from reranker.backends.torch import TorchBackend
from reranker.batching import collate
from reranker.model_files import load_tokenizer
from reranker.scoring import ModelScorer
from reranker.settings import RerankerSettings
from reranker.tokenization import PairEncoder
from cuda_probes import launch_behind_queued_work
from tiny_models import CORPUS

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = [pytest.mark.gpu, needs_cuda]
# Budgets small enough to capture quickly with the tiny model (max length 512: 16 widths).
SHAPES = dict(max_length=512, max_batch_tokens=2048, max_batch_size=32, step=32)


def batches(model_dir, pad_token_id: int) -> list:
    """Batches of 1, 3, 7 and 20 pairs of different widths."""
    encoder = PairEncoder(load_tokenizer(str(model_dir)), 512, 256)
    pairs = encoder.encode(CORPUS[0], CORPUS * 2)
    return [collate(pairs, np.arange(start, start + rows), 32, pad_token_id)
            for start, rows in ((0, 1), (1, 3), (4, 7), (11, 20))]


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    eager = TorchBackend(str(tiny_model_dir), None, "cuda", torch.float16)
    graphed = TorchBackend(str(tiny_model_dir), None, "cuda", torch.float16)
    graphed.capture_graphs(graph_shapes(**SHAPES))
    return eager, graphed


def test_a_replayed_graph_gives_the_eager_logits(backends, tiny_model_dir):
    eager, graphed = backends
    for batch in batches(tiny_model_dir, eager.pad_token_id):
        assert graphed.graphs.table.fit(*batch[0].shape) is not None
        expected = eager.fetch([eager.launch(*batch)])[0]
        got = graphed.fetch([graphed.launch(*batch)])[0]
        assert got.shape == expected.shape
        # Another padded shape may pick other GEMM kernels: half-precision noise only.
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-2)


def test_a_batch_beyond_the_captured_shapes_runs_eagerly(backends, tiny_model_dir):
    eager, graphed = backends
    encoder = PairEncoder(load_tokenizer(str(tiny_model_dir)), 512, 256)
    pairs = encoder.encode(CORPUS[0], CORPUS * 3)
    batch = collate(pairs, np.arange(40), 32, eager.pad_token_id)  # 40 rows > max_batch_size 32
    assert graphed.graphs.table.fit(*batch[0].shape) is None
    np.testing.assert_allclose(graphed.fetch([graphed.launch(*batch)])[0], eager.fetch([eager.launch(*batch)])[0],
                               rtol=0, atol=1e-3)


def test_replays_from_two_threads_each_get_their_own_batch(backends, tiny_model_dir):
    eager, graphed = backends
    arrays = batches(tiny_model_dir, eager.pad_token_id)
    expected = [graphed.fetch([graphed.launch(*batch)])[0] for batch in arrays]
    results: dict[int, list] = {0: [], 1: []}

    def launch_all(thread: int):
        for _ in range(20):
            results[thread].append(graphed.fetch([graphed.launch(*batch) for batch in arrays]))

    threads = [threading.Thread(target=launch_all, args=(index,)) for index in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rounds in results.values():
        for got in rounds:
            for logits, want in zip(got, expected):
                np.testing.assert_array_equal(logits, want)


def test_a_replay_reads_nothing_back(backends, tiny_model_dir):
    _, graphed = backends
    batch = batches(tiny_model_dir, graphed.pad_token_id)[2]
    launched, earlier_work_still_running = launch_behind_queued_work(graphed, batch)
    assert earlier_work_still_running
    graphed.fetch([launched])


def test_a_scorer_with_cuda_graphs_scores_as_without(tiny_model_dir):
    encoder = PairEncoder(load_tokenizer(str(tiny_model_dir)), 512, 256)
    encoded = encoder.encode(CORPUS[0], CORPUS * 3)
    budgets = dict(max_batch_tokens=4096, max_batch_size=64)
    plain = ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cuda", **budgets))
    graphed = ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cuda", cuda_graphs=True, **budgets))
    assert graphed.describe()["cuda_graphs"] == len(graphed.graph_shapes) > 0
    np.testing.assert_allclose(graphed.score_pairs(encoded).raw, plain.score_pairs(encoded).raw, rtol=0, atol=2e-2)
