"""The onnx / onnx-int8 backends: parity with torch, the export cache, the export CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import LONG_PASSAGE, MULTILINGUAL_TEXTS, ONNX_CACHE_DIR, QUERY, REPO_ROOT
from reference import Ours

from reranker.backends.onnx import FP32_FILE, INT8_FILE, cache_dir_for

PASSAGES = [*MULTILINGUAL_TEXTS[:6], "", LONG_PASSAGE]  # an empty one, and one truncated at max_length


def _scores(model_dir, backend: str, cache_dir) -> tuple:
    ours = Ours(model_dir, dtype="float32", backend=backend, onnx_cache_dir=str(cache_dir), max_batch_size=3)
    pairs, scores = ours.score(QUERY, PASSAGES)
    return ours.scorer, scores, ours.scorer.forward_logits(*_dense(pairs))


def _dense(pairs):
    from reranker.batching import collate

    return collate(pairs, np.arange(pairs.num_pairs))


@pytest.fixture(scope="module")
def onnx_cache():
    """The session's export cache (conftest.py), so each tiny model is exported once per session;
    the tests of the cache itself and of the CLI export into their own directories."""
    return ONNX_CACHE_DIR


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_model_dir_1label"])
def test_onnx_matches_torch(request, fixture, onnx_cache):
    model_dir = request.getfixturevalue(fixture)
    _, torch_scores, torch_logits = _scores(model_dir, "torch", onnx_cache)
    scorer, onnx_scores, onnx_logits = _scores(model_dir, "onnx", onnx_cache)
    assert scorer.backend.name == "onnx"
    assert onnx_logits.dtype == np.float32 and onnx_logits.shape == torch_logits.shape
    assert np.max(np.abs(onnx_logits - torch_logits)) <= 1e-4
    assert np.max(np.abs(onnx_scores.raw - torch_scores.raw)) <= 1e-4
    assert np.max(np.abs(onnx_scores.normalized - torch_scores.normalized)) <= 1e-4


def test_int8_loads_and_scores(tiny_model_dir, onnx_cache):
    _, torch_scores, _ = _scores(tiny_model_dir, "torch", onnx_cache)
    scorer, int8_scores, logits = _scores(tiny_model_dir, "onnx-int8", onnx_cache)
    assert scorer.backend.name == "onnx-int8"
    assert (cache_dir_for(str(tiny_model_dir), None, str(onnx_cache)) / INT8_FILE).is_file()
    assert int8_scores.raw.shape == torch_scores.raw.shape
    assert np.all(np.isfinite(int8_scores.raw)) and np.all(np.isfinite(logits))


def test_export_cli_fills_the_cache_that_scorers_reuse(tiny_model_dir_1label, tmp_path):
    """The export CLI (what the image bakes ahead) writes the cache; a scorer then loads it as it is."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "reranker.backends.onnx", "export", "--model", str(tiny_model_dir_1label),
         "--int8", "--cache-dir", str(tmp_path)],
        cwd=str(REPO_ROOT), env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    directory = cache_dir_for(str(tiny_model_dir_1label), None, str(tmp_path))
    path = directory / FP32_FILE
    assert path.is_file() and (directory / INT8_FILE).is_file()
    first = path.stat().st_mtime_ns
    for backend in ("onnx", "onnx-int8"):
        _scores(tiny_model_dir_1label, backend, tmp_path)
    assert path.stat().st_mtime_ns == first and sorted(directory.glob("*.onnx")) == sorted([path, directory / INT8_FILE])
    assert not list(directory.glob("*.tmp.onnx"))
    # The fp32 weights live in one external data file beside the graph (ORT maps it, not copies it).
    data = list(directory.glob("*.data"))
    assert len(data) == 1 and data[0].stat().st_size > path.stat().st_size
    assert str(directory / FP32_FILE) in result.stdout


def test_export_cli_reports_a_missing_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reranker.backends.onnx", "export", "--model", str(tmp_path / "missing"),
         "--cache-dir", str(tmp_path)],
        cwd=str(REPO_ROOT),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
