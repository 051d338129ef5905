"""Tier 2: the torch backend's launch reads nothing back from the device (a read-back on CUDA waits
for every batch launched before it), and scores padded batches as transformers does with a 2D mask.

On CPU a read-back cannot be observed as a wait, so the test watches the aten calls instead:
`aten.is_nonzero` and `aten._local_scalar_dense` are what turn a tensor into a Python value.
tests/gpu/test_gpu_windows.py checks the same on CUDA with torch's sync debug mode.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reranker.backends.torch import TorchBackend
from reranker.batching import collate
from reranker.model_files import load_tokenizer
from reranker.tokenization import PairEncoder
from tiny_models import CORPUS

READ_BACKS = ("aten.is_nonzero", "aten._local_scalar_dense", "aten.item", "aten.nonzero")


class AtenCalls(TorchDispatchMode):
    """Counts the aten operators dispatched inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def read_backs(self) -> dict:
        return {name: count for name, count in self.calls.items() if name in READ_BACKS}


def padded_batch(model_dir, pad_token_id: int):
    """Eight pairs of different lengths in one padded batch."""
    pairs = PairEncoder(load_tokenizer(str(model_dir)), 512, 256).encode(CORPUS[0], CORPUS[1:9])
    assert len(set(pairs.lengths.tolist())) > 1
    return collate(pairs, np.arange(pairs.num_pairs), 8, pad_token_id)


def launch_calls(backend, batch) -> AtenCalls:
    with AtenCalls() as calls:
        backend.fetch([backend.launch(*batch)])
    return calls


def test_launch_reads_nothing_back_and_scores_as_the_2d_mask_does(tiny_model_dir):
    backend = TorchBackend(str(tiny_model_dir), None, "cpu", torch.float32)
    batch = padded_batch(tiny_model_dir, backend.pad_token_id)
    assert backend.prepared_mask
    prepared = launch_calls(backend, batch)
    with_mask = backend.fetch([backend.launch(*batch)])[0]

    backend.prepared_mask = False
    plain = launch_calls(backend, batch)
    with_2d_mask = backend.fetch([backend.launch(*batch)])[0]

    assert prepared.read_backs() == {}
    # The probe sees transformers' read-back on the 2D path, so an empty result above means something.
    assert plain.read_backs(), sorted(plain.calls)
    assert sum(prepared.calls.values()) < sum(plain.calls.values())
    np.testing.assert_allclose(with_mask, with_2d_mask, rtol=1e-6, atol=1e-6)


class DropsFourDimensionalMasks(torch.nn.Module):
    """A model that ignores a 4D mask (as one reading masks its own way might): the load check must notice."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, attention_mask, **inputs):
        return self.inner(attention_mask=None if attention_mask.dim() == 4 else attention_mask, **inputs)


def test_a_model_that_reads_the_prepared_mask_differently_keeps_the_2d_mask(tiny_model_dir):
    backend = TorchBackend(str(tiny_model_dir), None, "cpu", torch.float32)
    backend.model = DropsFourDimensionalMasks(backend.model)
    assert not backend.prepared_mask_matches()
