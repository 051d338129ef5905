"""The simulated-GPU backend: the Backend contract, deterministic scores, the device's timeline.

Pure unit tests (no Ray). The serving path with this backend is tested in tests/serving/test_gpu_config.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from reranker.backends import BACKENDS, Backend, backend_class, build_backend
from reranker.backends.simulated import SimulatedGpuBackend, simulated_logits
from reranker.settings import RerankerSettings, load_settings

# A simulated GPU that costs almost nothing, for tests that only check behaviour.
FAST = dict(launch_torch_calls=2, launch_python_s_per_call=1e-6, launch_native_s_per_call=1e-6)


def padded(rows: list[list[int]], width: int):
    """(input_ids, attention_mask, token_type_ids) int32, each row padded with zeros to `width`."""
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    types = np.zeros_like(ids)
    types[:, 3:] = mask[:, 3:]
    return ids, mask, types


def test_registered_and_allowed_by_settings(tiny_model_dir):
    assert backend_class("simulated-gpu") is SimulatedGpuBackend
    assert "simulated-gpu" in BACKENDS
    settings = load_settings({"model": str(tiny_model_dir)}, environ={"RERANKER_BACKEND": "simulated-gpu"})
    backend = build_backend(settings, "cpu", None)
    assert isinstance(backend, Backend) and backend.name == "simulated-gpu"
    assert SimulatedGpuBackend.devices == ("cpu",)


def test_a_gpu_device_is_refused(tiny_model_dir):
    from reranker.errors import SettingsError

    with pytest.raises(SettingsError, match="simulated-gpu runs on cpu only"):
        build_backend(RerankerSettings(model=str(tiny_model_dir), backend="simulated-gpu"), "cuda", None)


def test_logits_are_deterministic_and_ignore_padding():
    rows = [[101, 7, 8, 102, 9, 10, 102], [101, 5, 102, 102], [101, 7, 8, 102, 9, 11, 102]]
    narrow = simulated_logits(*padded(rows, 7), num_labels=2)
    wide = simulated_logits(*padded(rows, 16), num_labels=2)
    assert narrow.dtype == np.float32 and narrow.shape == (3, 2)
    np.testing.assert_array_equal(narrow, wide)
    np.testing.assert_array_equal(narrow[:1], simulated_logits(*padded(rows[:1], 7), num_labels=2))
    # Different pairs and different labels get different logits.
    assert narrow[0, 1] != narrow[2, 1] and narrow[0, 0] != narrow[0, 1]
    assert simulated_logits(*padded(rows, 7), num_labels=1).shape == (3, 1)


def test_launch_queues_device_time_and_fetch_waits_for_it():
    backend = SimulatedGpuBackend(gpu_fixed_s=0.02, gpu_s_per_token=1e-6, **FAST)
    batches = [padded([[101, 5, 102]] * 4, 8), padded([[101, 6, 102]] * 2, 16)]
    before = time.perf_counter()
    first = backend.launch(*batches[0])
    second = backend.launch(*batches[1])
    # The device runs batches one after another, each for a + b x padded tokens.
    assert first.done_at >= before + backend.gpu_seconds(32)
    assert second.done_at >= first.done_at + backend.gpu_seconds(32)
    logits = backend.fetch([first, second])
    assert time.perf_counter() >= second.done_at
    assert [block.shape for block in logits] == [(4, 2), (2, 2)]
    assert backend.fetch([]) == []


@pytest.mark.parametrize("read_back", [False, True])
def test_a_read_back_at_launch_waits_for_the_work_queued_before(read_back):
    """Benchmarks only: the launch as it was with transformers' mask check, which waited for the device."""
    calls = dict(FAST, launch_torch_calls=12)  # past the read-back, after the embeddings' calls
    backend = SimulatedGpuBackend(gpu_fixed_s=0.2, gpu_s_per_token=0.0, read_back_at_launch=read_back, **calls)
    first = backend.launch(*padded([[101, 5, 102]], 3))
    second = backend.launch(*padded([[101, 6, 102]], 3))
    returned = time.perf_counter()
    assert (returned >= first.done_at) is read_back
    # Either way the device runs the two batches one after the other.
    assert second.done_at >= first.done_at + 0.2 - 1e-9


def test_fetch_releases_the_gil_while_waiting(monkeypatch):
    """The wait is a sleep (GIL released, like a CUDA synchronize), never a busy loop."""
    import reranker.backends.simulated as simulated

    slept = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    backend = SimulatedGpuBackend(gpu_fixed_s=5.0, **FAST)
    launched = backend.launch(*padded([[101, 5, 102]], 3))
    backend.fetch([launched])
    assert len(slept) == 1 and slept[0] > 4.0


def test_concurrent_launches_share_one_device_timeline():
    """The health check's warm-up may launch beside a batch: the device still runs one batch at a time."""
    backend = SimulatedGpuBackend(gpu_fixed_s=0.01, gpu_s_per_token=0.0, **FAST)
    launched = []

    def launch():
        launched.append(backend.launch(*padded([[101, 5, 102]], 3)))

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = sorted(batch.done_at for batch in launched)
    assert all(later - earlier >= 0.01 - 1e-9 for earlier, later in zip(done, done[1:]))


def test_model_scorer_batches_like_a_gpu_and_scores_do_not_depend_on_batching(tiny_model_dir, tiny_tokenizer):
    from reranker.scoring import DEVICE_BATCH_DEFAULTS, ModelScorer
    from reranker.tokenization import PairEncoder

    scorer = ModelScorer(RerankerSettings(model=str(tiny_model_dir), backend="simulated-gpu"))
    assert scorer.device == "cpu" and scorer.backend.name == "simulated-gpu"
    assert scorer.pad_to_multiple_of == 8
    assert scorer.batching.max_batch_tokens == DEVICE_BATCH_DEFAULTS["cuda"]["max_batch_tokens"]
    assert scorer.batching.max_batch_size == DEVICE_BATCH_DEFAULTS["cuda"]["max_batch_size"]
    assert scorer.batching.batch_window_forwards == DEVICE_BATCH_DEFAULTS["cuda"]["batch_window_forwards"] == 2
    assert scorer.describe()["backend"] == "simulated-gpu"

    encoder = PairEncoder(tiny_tokenizer, scorer.max_length, 64)
    passages = ["paris is the capital of france", "berlin", "", "the quick brown fox jumps over the lazy dog" * 3]
    encoded = encoder.encode("what is the capital of france", passages)
    together = scorer.score_pairs(encoded)
    one_at_a_time = ModelScorer(
        RerankerSettings(model=str(tiny_model_dir), backend="simulated-gpu", max_batch_size=1, pad_to_multiple_of=1)
    ).score_pairs(encoded)
    np.testing.assert_array_equal(together.raw, one_at_a_time.raw)
    np.testing.assert_array_equal(together.normalized, one_at_a_time.normalized)
    assert len(one_at_a_time.batches) == len(passages) > len(together.batches)
    assert np.all((together.normalized > 0) & (together.normalized < 1))


def test_processes_on_one_gpu_share_its_timeline(tmp_path, monkeypatch):
    """Two scorers that Ray gives the same GPU (fractional num_gpus) get one device's time between them."""
    from reranker.backends.simulated import shared_device_path

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert shared_device_path().startswith("/dev/shm/reranker-simulated-gpu-3-")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert shared_device_path() is None

    batch = padded([[101, 5, 102]], 3)
    shared = str(tmp_path / "gpu0")
    first = SimulatedGpuBackend(gpu_fixed_s=0.05, gpu_s_per_token=0.0, device_path=shared, **FAST)
    second = SimulatedGpuBackend(gpu_fixed_s=0.05, gpu_s_per_token=0.0, device_path=shared, **FAST)
    alone = SimulatedGpuBackend(gpu_fixed_s=0.05, gpu_s_per_token=0.0, device_path=str(tmp_path / "gpu1"), **FAST)
    a = first.launch(*batch)
    b = second.launch(*batch)
    c = alone.launch(*batch)
    assert b.done_at >= a.done_at + 0.05  # queued behind the other process's batch
    assert c.done_at < b.done_at  # another GPU runs at once
    second.fetch([b])
