"""Pair encoding: query and passages to numpy int32 token arrays, with truncation or chunking.

Torch-free on purpose: the tokenizer deployment runs on CPU replicas. In transformers 5,
`AutoTokenizer`/`AutoConfig` import torch, so `load_tokenizer` resolves the tokenizer class the
way `AutoTokenizer` does (tokenizer_config.json, then the model type) and calls that class's
`from_pretrained`. The parity tests compare the ids with `AutoTokenizer` on the same files.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from deployments.errors import ModelLoadError, PayloadTooLargeError, SettingsError

TOKEN_DTYPE = np.int32


@dataclass
class EncodedPairs:
    """Token ids of (query, passage-or-window) pairs, flat, as they travel between processes.

    Pair i occupies `input_ids[offsets[i]:offsets[i] + lengths[i]]`. `doc_index[i]` is the
    passage (within this request part) that pair i scores; chunk mode gives a passage several.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    doc_index: np.ndarray
    num_docs: int
    query_truncated: bool = False

    @property
    def num_pairs(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)[:-1])).astype(np.int64)

    @property
    def total_tokens(self) -> int:
        return int(self.lengths.sum())

    def chunks_per_doc(self) -> np.ndarray:
        return np.bincount(self.doc_index, minlength=self.num_docs)

    def select(self, pair_indices: np.ndarray) -> "EncodedPairs":
        """The listed pairs as a new EncodedPairs; doc_index is kept as is."""
        offsets = self.offsets
        pieces_ids = [self.input_ids[offsets[i]: offsets[i] + self.lengths[i]] for i in pair_indices]
        pieces_types = [self.token_type_ids[offsets[i]: offsets[i] + self.lengths[i]] for i in pair_indices]
        return EncodedPairs(
            input_ids=np.concatenate(pieces_ids) if pieces_ids else np.zeros(0, TOKEN_DTYPE),
            token_type_ids=np.concatenate(pieces_types) if pieces_types else np.zeros(0, np.int8),
            lengths=self.lengths[pair_indices],
            doc_index=self.doc_index[pair_indices],
            num_docs=self.num_docs,
            query_truncated=self.query_truncated,
        )

    @staticmethod
    def concat(parts: Sequence["EncodedPairs"]) -> "EncodedPairs":
        """Joins request parts; each part's doc_index is shifted past the previous parts' docs."""
        doc_offset = 0
        doc_indices = []
        for part in parts:
            doc_indices.append(part.doc_index + doc_offset)
            doc_offset += part.num_docs
        return EncodedPairs(
            input_ids=np.concatenate([p.input_ids for p in parts]),
            token_type_ids=np.concatenate([p.token_type_ids for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            doc_index=np.concatenate(doc_indices).astype(np.int32),
            num_docs=doc_offset,
            query_truncated=any(p.query_truncated for p in parts),
        )


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model))


def _model_file(model: str, revision: Optional[str], filename: str) -> Optional[str]:
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
    path = _model_file(model, revision, "config.json")
    if path is None:
        raise ModelLoadError(f"Model '{model}' has no config.json; it is not a transformers model.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_tokenizer(model: str, revision: Optional[str] = None):
    """The model's fast tokenizer, resolved as AutoTokenizer does, without importing torch."""
    import transformers

    config_path = _model_file(model, revision, "tokenizer_config.json")
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


class PairEncoder:
    """Encodes one query against many passages exactly as `tokenizer(q, p, truncation="only_second")`."""

    def __init__(self, tokenizer, max_length: int, max_query_tokens: int, chunk_overlap_tokens: int = 32):
        if max_query_tokens > max_length - 4:
            raise SettingsError(
                f"max_query_tokens ({max_query_tokens}) must leave room for passage tokens: "
                f"at most max_length - 4 = {max_length - 4}"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_query_tokens = max_query_tokens
        self.chunk_overlap_tokens = chunk_overlap_tokens
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        if self.cls_id is None or self.sep_id is None:
            raise ModelLoadError("The tokenizer has no [CLS]/[SEP] tokens; only BERT-style pair encoders are supported.")
        self._check_pair_template()

    def _check_pair_template(self) -> None:
        # Short enough that no truncation happens at any allowed max_length (>= 8) with any vocabulary.
        query, passage = "a b", "c d"
        reference = self.tokenizer(query, passage)
        mine = self.encode(query, [passage])
        if list(reference["input_ids"]) != mine.input_ids.tolist() or (
            "token_type_ids" in reference and list(reference["token_type_ids"]) != mine.token_type_ids.tolist()
        ):
            raise ModelLoadError(
                "The tokenizer's pair template is not [CLS] query [SEP] passage [SEP]; it is not supported."
            )

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _cut_query(self, ids: list[int]) -> tuple[list[int], bool]:
        """Cuts a query to max_query_tokens only when no passage token would fit beside it."""
        if len(ids) + 3 >= self.max_length:
            return ids[: self.max_query_tokens], True
        return ids, False

    def windows(self, passage_ids: list[int], budget: int, max_chunks: int) -> list[list[int]]:
        """Overlapping windows of at most `budget` tokens; the last one ends at the passage's end."""
        if len(passage_ids) <= budget:
            return [passage_ids]
        overlap = min(self.chunk_overlap_tokens, budget // 2)
        stride = budget - overlap
        last_start = len(passage_ids) - budget
        starts = list(range(0, last_start, stride)) + [last_start]
        return [passage_ids[start: start + budget] for start in starts[:max_chunks]]

    def encode(self, query: str, passages: Sequence[str], **options) -> EncodedPairs:
        """Pairs of one query with each passage."""
        return self.encode_request(PairRequest(queries=[query], passages=list(passages), **options))

    def encode_request(self, request: "PairRequest") -> EncodedPairs:
        return self.encode_many([request])[0]

    def encode_many(self, requests: Sequence["PairRequest"]) -> list[EncodedPairs]:
        """Encodes several requests with one tokenizer call for all queries and one for all passages."""
        all_queries = [q for r in requests for q in r.queries]
        all_passages = [p for r in requests for p in r.passages]
        query_ids = iter(self._ids(all_queries))
        passage_ids = iter(self._ids(all_passages))
        out = []
        for request in requests:
            heads, budgets, truncated = [], [], False
            for _ in request.queries:
                ids, cut = self._cut_query(next(query_ids))
                truncated |= cut
                heads.append([self.cls_id, *ids, self.sep_id])
                budgets.append(self.max_length - len(ids) - 3)
            segments: list[list[int]] = []
            seg_heads: list[list[int]] = []
            doc_index: list[int] = []
            for doc in range(len(request.passages)):
                p_ids = next(passage_ids)
                query = request.query_of_passage[doc] if request.query_of_passage else 0
                budget = budgets[query]
                if request.max_tokens_per_doc is not None:
                    p_ids = p_ids[: request.max_tokens_per_doc]
                if request.chunk:
                    pieces = self.windows(p_ids, budget, request.max_chunks)
                elif len(p_ids) > budget and not request.truncate:
                    raise PayloadTooLargeError(
                        f"Document {doc} has {len(p_ids)} tokens; with the query it exceeds max_length "
                        f"{self.max_length}. Send truncate=true to cut it."
                    )
                elif request.truncation_direction == "left":
                    pieces = [p_ids[len(p_ids) - budget:] if len(p_ids) > budget else p_ids]
                else:
                    pieces = [p_ids[:budget]]
                segments.extend(pieces)
                seg_heads.extend([heads[query]] * len(pieces))
                doc_index.extend([doc] * len(pieces))
            out.append(self._assemble(segments, seg_heads, doc_index, len(request.passages), truncated))
        return out

    def _assemble(self, segments, heads, doc_index, num_docs, truncated) -> EncodedPairs:
        lengths = np.fromiter(
            (len(h) + len(s) + 1 for h, s in zip(heads, segments)), dtype=TOKEN_DTYPE, count=len(segments)
        )
        input_ids = np.empty(int(lengths.sum()), dtype=TOKEN_DTYPE)
        token_type_ids = np.ones(int(lengths.sum()), dtype=np.int8)
        position = 0
        for head, segment, length in zip(heads, segments, lengths):
            input_ids[position: position + len(head)] = head
            token_type_ids[position: position + len(head)] = 0
            input_ids[position + len(head): position + length - 1] = segment
            input_ids[position + length - 1] = self.sep_id
            position += int(length)
        return EncodedPairs(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            lengths=lengths,
            doc_index=np.asarray(doc_index, dtype=np.int32),
            num_docs=num_docs,
            query_truncated=truncated,
        )


@dataclass
class PairRequest:
    """What the tokenizer deployment encodes for one request (or one part of a large request).

    Every passage is paired with `queries[query_of_passage[i]]`, or with `queries[0]` when
    `query_of_passage` is None (the rerank routes have one query; `/score` may have many).
    """

    queries: list[str]
    passages: list[str]
    query_of_passage: Optional[list[int]] = None
    chunk: bool = False
    max_chunks: int = 1
    max_tokens_per_doc: Optional[int] = None
    truncate: bool = True
    truncation_direction: str = "right"
