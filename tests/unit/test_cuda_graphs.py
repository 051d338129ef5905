"""Tier 2: the shapes CUDA graphs are captured at, and the padding that fits a batch into one.

The capture and replay need CUDA (tests/gpu/test_gpu_graphs.py); what decides which graph a batch
runs in, and that padding a batch up to it leaves its real rows' scores alone, runs here: the
padding through the real eager model on CPU, the serving-side accounting through the simulated GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reranker.backends.cuda_graphs import PARTIAL_ROWS, CapturedForwards, ShapeTable, graph_shapes, pad_to_shape, width_step
from reranker.backends.simulated import SimulatedGpuBackend
from reranker.backends.torch import TorchBackend
from reranker.batching import collate, plan_batches, round_up
from reranker.errors import SettingsError
from reranker.model_files import load_tokenizer
from reranker.scoring import ModelScorer
from reranker.settings import RerankerSettings
from reranker.tokenization import PairEncoder
from tiny_models import CORPUS

GPU_BUDGETS = dict(max_length=512, max_batch_tokens=32768, max_batch_size=256)


def test_width_step_is_a_multiple_of_the_padding_and_at_least_32():
    assert [width_step(p) for p in (1, 8, 24, 32, 48)] == [32, 32, 48, 32, 48]


def test_every_planned_batch_fits_a_graph_and_pads_at_most_half_its_rows():
    shapes = graph_shapes(step=32, **GPU_BUDGETS)
    assert len(shapes) == len(set(shapes)) <= 16 * (len(PARTIAL_ROWS) + 1)
    table = ShapeTable(shapes)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(8, 513, size=int(rng.integers(1, 600))).astype(np.int32)
        for indices in plan_batches(lengths, 32768, 256, 32):
            rows, width = len(indices), round_up(int(lengths[indices].max()), 32)
            fitted = table.fit(rows, width)
            assert fitted is not None and fitted[1] == width and rows <= fitted[0] <= max(rows * 1.5, 1)


def test_a_full_batch_is_a_captured_shape():
    shapes = set(graph_shapes(step=32, **GPU_BUDGETS))
    for width in (32, 160, 512):
        lengths = np.full(1000, width, np.int32)
        full = plan_batches(lengths, 32768, 256, 32)[0]
        assert (len(full), width) in shapes


def test_no_graph_holds_a_batch_beyond_the_budgets_captured():
    table = ShapeTable(graph_shapes(step=32, **GPU_BUDGETS))
    assert table.fit(257, 32) is None and table.fit(65, 512) is None and table.fit(1, 544) is None
    assert table.fit(1, 1) == (1, 32)


def test_padding_up_to_a_shape_leaves_the_real_rows_scores_alone(tiny_model_dir):
    backend = TorchBackend(str(tiny_model_dir), None, "cpu", torch.float32)
    pairs = PairEncoder(load_tokenizer(str(tiny_model_dir)), 512, 256).encode(CORPUS[0], CORPUS[1:6])
    batch = collate(pairs, np.arange(pairs.num_pairs), 32, backend.pad_token_id)
    rows, width = batch[0].shape
    block = pad_to_shape(*batch, (rows + 3, width + 64), backend.pad_token_id)
    assert block.shape == (3, rows + 3, width + 64) and block.dtype == np.int32
    assert (block[1, rows:].sum(axis=1) == 1).all() and (block[0, rows:] == backend.pad_token_id).all()
    padded = backend.fetch([backend.launch(*block)])[0]
    alone = backend.fetch([backend.launch(*batch)])[0]
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded[:rows], alone, rtol=1e-5, atol=1e-5)


def test_cuda_graphs_on_a_cpu_scorer_is_refused(tiny_model_dir):
    for backend in ("torch", "onnx"):
        with pytest.raises(SettingsError, match="cuda_graphs needs a CUDA device"):
            ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cpu", backend=backend, cuda_graphs=True))


def test_the_simulated_gpu_replays_a_graph_of_the_fitted_shape(tiny_model_dir, tiny_tokenizer):
    settings = dict(model=str(tiny_model_dir), backend="simulated-gpu")
    scorer = ModelScorer(RerankerSettings(cuda_graphs=True, **settings))
    assert scorer.pad_to_multiple_of == 32
    assert scorer.describe()["cuda_graphs"] == len(scorer.graph_shapes) == len(graph_shapes(
        scorer.max_length, scorer.batching.max_batch_tokens, scorer.batching.max_batch_size, 32))
    encoded = PairEncoder(tiny_tokenizer, scorer.max_length, 64).encode(CORPUS[0], CORPUS[1:12])
    eager = ModelScorer(RerankerSettings(**settings))
    np.testing.assert_array_equal(scorer.score_pairs(encoded).raw, eager.score_pairs(encoded).raw)

    charged = []
    backend = SimulatedGpuBackend(launch_torch_calls=600)
    backend.capture_graphs([(4, 32)])
    backend.gpu_seconds = lambda tokens: charged.append(tokens) or 0.0
    backend.launch(*collate(encoded, np.arange(3), 32, 0))  # 3 rows, width 32: the (4, 32) graph
    backend.launch(*collate(encoded, np.arange(5), 32, 0))  # 5 rows fit no graph: eager
    assert charged == [4 * 32, 5 * collate(encoded, np.arange(5), 32, 0)[0].shape[1]]


class CpuStandIn(CapturedForwards):
    """CapturedForwards with its CUDA calls stood in on a CPU: a "graph" re-runs the captured
    forward on its own block into its own logits tensor, as a replay does on the device."""

    def _warm_up(self, forward, shapes):
        for shape in shapes:
            forward(self._device_block(shape))

    def _capture(self, forward, block):
        logits = forward(block)
        return (lambda: logits.copy_(forward(block))), logits

    def _synchronize(self):
        pass

    @staticmethod
    def _pinned(host):
        return host

    @staticmethod
    def _recorded_event():
        return None


def test_replays_read_their_batch_from_the_static_block_and_return_their_own_rows(tiny_model_dir):
    """The capture and replay path on a CPU stand-in for the CUDA calls, through the real model."""
    eager = TorchBackend(str(tiny_model_dir), None, "cpu", torch.float32)
    graphed = TorchBackend(str(tiny_model_dir), None, "cpu", torch.float32)
    shapes = graph_shapes(max_length=128, max_batch_tokens=1024, max_batch_size=16, step=32)
    with torch.inference_mode():
        graphed.graphs = CpuStandIn(graphed.graph_forward, shapes, graphed.pad_token_id, "cpu")
    assert set(graphed.graphs.graphs) == set(shapes)
    pairs = PairEncoder(load_tokenizer(str(tiny_model_dir)), 128, 64).encode(CORPUS[0], CORPUS * 2)
    batches = [collate(pairs, np.arange(start, start + rows), 32, eager.pad_token_id)
               for start, rows in ((0, 1), (1, 5), (6, 9), (15, 16), (0, 16))]
    # Launched back to back before any fetch: a later replay of the same graph must not change the
    # logits an earlier launch returned.
    launched = [graphed.launch(*batch) for batch in batches]
    for batch, logits in zip(batches, graphed.fetch(launched)):
        assert graphed.graphs.table.fit(*batch[0].shape) is not None
        np.testing.assert_allclose(logits, eager.fetch([eager.launch(*batch)])[0], rtol=1e-5, atol=1e-5)
    beyond = collate(pairs, np.arange(20), 32, eager.pad_token_id)  # 20 rows > 16: no graph, eager
    assert graphed.graphs.launch(*beyond) is None
    np.testing.assert_allclose(graphed.fetch([graphed.launch(*beyond)])[0], eager.fetch([eager.launch(*beyond)])[0],
                               rtol=1e-5, atol=1e-5)
