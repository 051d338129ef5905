"""Model files: where a local or hub model's files are, its config, its tokenizer, its length limit.

Torch-free on purpose: the tokenizer deployment runs on CPU replicas. In transformers 5,
`AutoTokenizer`/`AutoConfig` import torch, so `load_tokenizer` resolves the tokenizer class the
way `AutoTokenizer` does (tokenizer_config.json, then the model type) and calls that class's
`from_pretrained`. The parity tests compare the ids with `AutoTokenizer` on the same files.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Optional

from reranker.errors import ModelLoadError, SettingsError


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model))


def model_file(model: str, revision: Optional[str], filename: str) -> Optional[str]:
    """Path of one file of a local or hub model, or None if the model has no such file."""
    if is_local_path(model):
        directory = os.path.expanduser(model)
        if not os.path.isdir(directory):
            raise ModelLoadError(f"Model directory '{model}' does not exist.")
        path = os.path.join(directory, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(model, filename, revision=revision)
    except LocalEntryNotFoundError as exc:
        # Also an EntryNotFoundError, but it means "offline and not cached": absent only if the model is cached.
        if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
            return None
        raise ModelLoadError(describe_load_failure(model, revision, exc)) from exc
    except EntryNotFoundError:
        return None
    except Exception as exc:  # offline, unknown repo, revision, network: one clear message
        raise ModelLoadError(describe_load_failure(model, revision, exc)) from exc


def describe_load_failure(model: str, revision: Optional[str], exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"'{model}'" + (f" at revision '{revision}'" if revision else "")
    hint = (
        "Check the hub id and network access, or pre-download it into HF_HOME and set "
        "HF_HUB_OFFLINE=1, or point RERANKER_MODEL at a local directory."
    )
    if is_local_path(model):
        hint = "Check that the directory holds a saved model (config.json, weights, tokenizer files)."
    return f"Cannot load model {where}: {type(exc).__name__}: {detail[:300].rstrip('.')}. {hint}"


def read_model_config(model: str, revision: Optional[str] = None) -> dict:
    """config.json of a local or hub model as a dict, without importing torch."""
    path = model_file(model, revision, "config.json")
    if path is None:
        raise ModelLoadError(f"Model '{model}' has no config.json; it is not a transformers model.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_tokenizer(model: str, revision: Optional[str] = None):
    """The model's fast tokenizer, resolved as AutoTokenizer does, without importing torch."""
    import transformers

    config_path = model_file(model, revision, "tokenizer_config.json")
    tokenizer_config = {}
    if config_path is not None:
        with open(config_path, encoding="utf-8") as handle:
            tokenizer_config = json.load(handle)
    class_name = tokenizer_config.get("tokenizer_class")
    candidates = []
    if class_name:
        base = class_name[:-4] if class_name.endswith("Fast") else class_name
        candidates = [base + "Fast", base]
    tokenizer_cls = next((getattr(transformers, name) for name in candidates if hasattr(transformers, name)), None)
    if tokenizer_cls is None:
        model_type = read_model_config(model, revision).get("model_type", "")
        try:
            module = importlib.import_module(f"transformers.models.{model_type.replace('-', '_')}")
        except ImportError:
            module = None
        names = sorted(n for n in dir(module or object) if n.endswith(("TokenizerFast", "Tokenizer")))
        names.sort(key=lambda n: not n.endswith("Fast"))
        tokenizer_cls = getattr(module, names[0]) if names else transformers.PreTrainedTokenizerFast
    try:
        tokenizer = tokenizer_cls.from_pretrained(model, revision=revision)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(describe_load_failure(model, revision, exc)) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"Model '{model}' has no fast tokenizer; the reranker needs one.")
    return tokenizer


def model_commit(model: str, revision: Optional[str] = None) -> Optional[str]:
    """The hub commit a model's files come from (its snapshot folder's name); None for a local directory."""
    if is_local_path(model):
        return None
    path = model_file(model, revision, "config.json")
    if path is None:
        return None
    snapshot = os.path.dirname(path)
    if os.path.basename(os.path.dirname(snapshot)) != "snapshots":
        return None
    return os.path.basename(snapshot)


def labels(model_config: dict) -> tuple[dict[str, str], dict[str, int]]:
    """The config's id2label and label2id, with string ids and integer labels as TEI's /info gives them."""
    id2label = {str(k): str(v) for k, v in (model_config.get("id2label") or {}).items()}
    if not id2label:  # transformers' defaults for a config that names no labels
        count = model_config.get("num_labels") if isinstance(model_config.get("num_labels"), int) else 2
        id2label = {str(i): f"LABEL_{i}" for i in range(count)}
    label2id = {str(k): int(v) for k, v in (model_config.get("label2id") or {}).items()}
    return id2label, label2id or {name: int(i) for i, name in id2label.items()}


def resolve_max_length(model_config: dict, override: Optional[int] = None) -> int:
    """Longest pair the model accepts: max_position_embeddings (less RoBERTa's padding offset).

    The amberoad tokenizer sets no model_max_length, so the model config is the source of truth.
    """
    positions = model_config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        raise ModelLoadError("Model config has no max_position_embeddings; cannot bound pair length.")
    if model_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2
    if override is not None:
        if override > positions:
            raise SettingsError(f"max_length {override} exceeds the model's {positions} positions")
        return override
    return positions
