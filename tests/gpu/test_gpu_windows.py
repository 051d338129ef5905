"""Tier 4: the torch backend's launch and event-synchronized fetch on CUDA (skipped without CUDA).

The scorer launches the next batch window from one thread while another thread waits for the
previous one: each fetch must return its own batch's logits, whatever was launched after it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from reranker.backends.torch import TorchBackend
from reranker.batching import collate
from reranker.model_files import load_tokenizer
from reranker.tokenization import PairEncoder
from cuda_probes import launch_behind_queued_work
from tiny_models import CORPUS

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = [pytest.mark.gpu, needs_cuda]


def batches(model_dir, pad_token_id: int):
    encoder = PairEncoder(load_tokenizer(str(model_dir)), 512, 256)
    pairs = encoder.encode(CORPUS[0], CORPUS * 4)
    order = np.arange(pairs.num_pairs)
    return [collate(pairs, indices, 8, pad_token_id) for indices in np.array_split(order, 4)]


def test_each_fetch_returns_its_own_batch_while_later_ones_run(tiny_model_dir):
    backend = TorchBackend(str(tiny_model_dir), None, "cuda", torch.float16)
    arrays = batches(tiny_model_dir, backend.pad_token_id)
    alone = [backend.fetch([backend.launch(*batch)])[0] for batch in arrays]

    launched = [backend.launch(*arrays[0])]
    results = {}

    def fetch_first():
        results["first"] = backend.fetch(launched[:1])[0]

    waiter = threading.Thread(target=fetch_first)
    waiter.start()
    launched += [backend.launch(*batch) for batch in arrays[1:]]  # from another thread, meanwhile
    waiter.join()
    rest = backend.fetch(launched[1:])
    # Same batch, same kernels; a tolerance only for GEMM algorithms that may differ between runs.
    np.testing.assert_allclose(results["first"], alone[0], rtol=0, atol=1e-3)
    for got, expected in zip(rest, alone[1:]):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    assert all(logits.dtype == np.float32 for logits in rest)


def test_a_launch_does_not_wait_for_the_work_queued_before_it(tiny_model_dir):
    """No read-back in `launch`: torch's sync debug mode raises on one, and the launch returns while
    a second of GPU work queued before it on the same stream is still running."""
    backend = TorchBackend(str(tiny_model_dir), None, "cuda", torch.float16)
    assert backend.prepared_mask
    batch = batches(tiny_model_dir, backend.pad_token_id)[0]
    expected = backend.fetch([backend.launch(*batch)])[0]
    launched, earlier_work_still_running = launch_behind_queued_work(backend, batch)
    assert earlier_work_still_running
    np.testing.assert_allclose(backend.fetch([launched])[0], expected, rtol=0, atol=1e-3)
