"""Tier 2: a model that cannot be served fails at load time with one clear ModelLoadError or SettingsError."""

from __future__ import annotations

import pytest
import torch
from conftest import ONNX_CACHE_DIR

from reranker.errors import ModelLoadError, SettingsError
from reranker.scoring import ModelScorer
from reranker.relevance import check_architecture, relevance_head
from reranker.settings import RerankerSettings
from reranker.model_files import load_tokenizer, read_model_config

HUB_ID = "nobody/does-not-exist"


@pytest.fixture
def offline(monkeypatch):
    """Offline whatever the outer environment says (huggingface_hub reads the constant per call)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def every_loader(model: str):
    """Each way the service loads a model: the scorer, the tokenizer and the config alone."""
    return (lambda: ModelScorer(RerankerSettings(model=model)), lambda: load_tokenizer(model),
            lambda: read_model_config(model))


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    message = f"Model directory '{missing}' does not exist"
    for load in every_loader(missing):
        with pytest.raises(ModelLoadError, match=message):
            load()


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json; it is not a transformers model"):
        ModelScorer(RerankerSettings(model=str(tmp_path)))


@pytest.mark.usefixtures("offline")
def test_hub_id_without_network():
    message = rf"Cannot load model '{HUB_ID}': LocalEntryNotFoundError: .*Check the hub id and network access"
    for load in every_loader(HUB_ID):
        with pytest.raises(ModelLoadError, match=message):
            load()


def test_model_without_classification_head(tiny_model_dir_base):
    message = r"\['BertModel'\] is not a sequence-classification cross-encoder"
    with pytest.raises(ModelLoadError, match=message):
        ModelScorer(RerankerSettings(model=str(tiny_model_dir_base)))
    with pytest.raises(ModelLoadError, match=message):  # the tokenizer deployment's check
        check_architecture(read_model_config(str(tiny_model_dir_base)))


def test_three_labels_without_relevant_label(tiny_model_dir_3label):
    message = r"Model has 3 labels \['negative', 'neutral', 'relevant'\]; set relevant_label"
    with pytest.raises(ModelLoadError, match=message):
        ModelScorer(RerankerSettings(model=str(tiny_model_dir_3label)))
    with pytest.raises(ModelLoadError, match=message):
        relevance_head(read_model_config(str(tiny_model_dir_3label)))
    with pytest.raises(ModelLoadError, match="relevant_label 5 is out of range"):
        ModelScorer(RerankerSettings(model=str(tiny_model_dir_3label), relevant_label=5))


def test_scorer_describes_what_it_loaded(tiny_model_dir_1label):
    scorer = ModelScorer(RerankerSettings(model=str(tiny_model_dir_1label), device="cpu", backend="torch"))
    described = scorer.describe()
    assert (described["device"], described["dtype"], described["num_labels"]) == ("cpu", "float32", 1)
    assert described["max_length"] == 512 and "sigmoid" in described["score"]
    assert scorer.backend.accepts_token_type_ids


def test_cpu_defaults_are_onnx_and_the_cpu_batch_budget(tiny_model_dir):
    scorer = ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cpu", onnx_cache_dir=ONNX_CACHE_DIR))
    assert scorer.describe()["backend"] == "onnx"
    assert (scorer.batching.max_batch_size, scorer.batching.max_batch_tokens) == (8, 4096)
    explicit = ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cpu", max_batch_size=3, onnx_cache_dir=ONNX_CACHE_DIR))
    assert (explicit.batching.max_batch_size, explicit.batching.max_batch_tokens) == (3, 4096)


def test_half_precision_on_cpu_is_refused(tiny_model_dir):
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(SettingsError, match=f"dtype {dtype} is for GPU"):
            ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cpu", dtype=dtype))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_refused(tiny_model_dir):
    with pytest.raises(SettingsError, match="device is 'cuda' but CUDA is not available"):
        ModelScorer(RerankerSettings(model=str(tiny_model_dir), device="cuda"))


def test_max_length_beyond_the_model_is_refused(tiny_model_dir):
    with pytest.raises(SettingsError, match="max_length 1024 exceeds the model's 512 positions"):
        ModelScorer(RerankerSettings(model=str(tiny_model_dir), max_length=1024))
