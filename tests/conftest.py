"""Shared fixtures: tiny models on disk, and (in test_serving*) one real local Ray for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-label tiny random BERT cross-encoder, like the amberoad model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny2"), num_labels=2)


@pytest.fixture(scope="session")
def tiny_model_dir_1label(tmp_path_factory) -> Path:
    """A 1-label tiny random BERT cross-encoder, like ms-marco MiniLM."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny1"), num_labels=1, seed=1)
