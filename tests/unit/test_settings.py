"""Tier 1: settings from args and RERANKER_* environment variables; bad values name the setting."""

from __future__ import annotations

import os

import pytest

from reranker.errors import SettingsError
from reranker.settings import DEFAULT_MODEL, BatchSettings, load_settings
from reranker.tokenization import PairEncoder
from reranker.model_files import resolve_max_length


def test_defaults():
    settings = load_settings({}, {})
    assert settings.model == DEFAULT_MODEL
    assert (settings.max_batch_tokens, settings.max_batch_size, settings.device) == (4096, 8, "auto")


def test_environment_overrides_args():
    settings = load_settings(
        {"model": "/models/a", "max_batch_size": 8, "revision": None},
        {"RERANKER_MODEL": "/models/b", "RERANKER_MAX_BATCH_SIZE": "32", "RERANKER_DEVICE": "", "OTHER": "x"},
    )
    assert (settings.model, settings.max_batch_size, settings.device) == ("/models/b", 32, "auto")


def test_environment_values_are_parsed():
    settings = load_settings({}, {
        "RERANKER_MODEL": "1234", "RERANKER_REVISION": "1234", "RERANKER_RELEVANT_LABEL": "relevant",
        "RERANKER_MODEL_ALIASES": '["a", "b"]', "RERANKER_LOG_TEXT": "true", "RERANKER_BATCH_WAIT_TIMEOUT_S": "0.01",
    })
    assert (settings.model, settings.revision) == ("1234", "1234")  # ids stay strings
    assert settings.relevant_label == "relevant" and settings.model_aliases == ["a", "b"]
    assert settings.log_text is True and settings.batch_wait_timeout_s == 0.01
    assert load_settings({}, {"RERANKER_RELEVANT_LABEL": "2"}).relevant_label == 2


@pytest.mark.parametrize("variable,value,name", [
    ("RERANKER_MAX_BATCH_TOKENS", "0", "max_batch_tokens"),
    ("RERANKER_MAX_BATCH_SIZE", "many", "max_batch_size"),
    ("RERANKER_BACKEND", "tensorrt", "backend"),
    ("RERANKER_DEVICE", "tpu", "device"),
    ("RERANKER_DTYPE", "int4", "dtype"),
    ("RERANKER_MAX_LENGTH", "4", "max_length"),
    ("RERANKER_LONG_PASSAGE_MODE", "split", "long_passage_mode"),
    ("RERANKER_RELEVANT_LABEL", '" "', "relevant_label"),
])
def test_bad_environment_value_names_the_setting(variable, value, name):
    with pytest.raises(SettingsError, match=rf"Invalid reranker settings: {name}: "):
        load_settings({}, {variable: value})


def test_unknown_arg_is_refused():
    with pytest.raises(SettingsError, match="max_batch_tokenz: Extra inputs are not permitted"):
        load_settings({"max_batch_tokenz": 10}, {})


def test_batch_settings_are_the_live_knobs():
    settings = load_settings({"max_batch_tokens": 2048, "max_batch_size": 4}, {})
    assert settings.batch_settings() == BatchSettings(max_batch_tokens=2048, max_batch_size=4)


def test_max_query_tokens_must_leave_room_for_the_passage(tiny_tokenizer):
    with pytest.raises(SettingsError, match=r"max_query_tokens \(509\) must leave room .* 508"):
        PairEncoder(tiny_tokenizer, max_length=512, max_query_tokens=509)
    assert PairEncoder(tiny_tokenizer, max_length=512, max_query_tokens=508).max_query_tokens == 508


def test_max_length_comes_from_the_model_config():
    assert resolve_max_length({"max_position_embeddings": 512, "model_type": "bert"}) == 512
    assert resolve_max_length({"max_position_embeddings": 514, "model_type": "xlm-roberta"}) == 512
    assert resolve_max_length({"max_position_embeddings": 512}, override=256) == 256
    with pytest.raises(SettingsError, match="max_length 600 exceeds"):
        resolve_max_length({"max_position_embeddings": 512}, override=600)


def test_available_cpus_honours_a_cgroup_quota(tmp_path):
    """A pod's CPU limit (cgroup v2 cpu.max) caps the thread count; 'max' means no quota."""
    from reranker.settings import available_cpus

    affinity = len(os.sched_getaffinity(0))
    limited = tmp_path / "cpu.max"
    limited.write_text("150000 100000\n")  # 1.5 CPUs: round up to 2, never above the affinity
    assert available_cpus(str(limited)) == min(affinity, 2)
    unlimited = tmp_path / "cpu.max.unlimited"
    unlimited.write_text("max 100000\n")
    assert available_cpus(str(unlimited)) == affinity
    assert available_cpus(str(tmp_path / "absent")) == affinity
