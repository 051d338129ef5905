"""Pair encoding: a query and its passages to flat numpy int32 token arrays, truncated or chunked.

Torch-free on purpose: the tokenizer deployment runs on CPU replicas.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reranker.errors import ModelLoadError, PayloadTooLargeError, SettingsError
from reranker.messages import TOKEN_DTYPE, EncodedPairs, PairRequest


class PairEncoder:
    """Encodes one query against many passages exactly as `tokenizer(q, p, truncation="only_second")`."""

    def __init__(self, tokenizer, max_length: int, max_query_tokens: int, chunk_overlap_tokens: int = 32):
        if max_query_tokens > max_length - 4:
            raise SettingsError(
                f"max_query_tokens ({max_query_tokens}) must leave room for passage tokens: "
                f"at most max_length - 4 = {max_length - 4}"
            )
        self.tokenizer = tokenizer
        # The fast tokenizer's Rust tokenizer. Its encode_batch_fast skips the character offsets that
        # a transformers call computes and nothing here reads (benchmarks/tokenizer_bench.py: 0.65-0.82x
        # the CPU per request).
        self._rust = tokenizer.backend_tokenizer
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
        # Passages are cut here, after tokenization: no truncation or padding may apply, neither
        # tokenizer.json's nor what a transformers call on the same tokenizer left set (transformers
        # sets both on the Rust tokenizer per call, as this does).
        if self._rust.truncation is not None:
            self._rust.no_truncation()
        if self._rust.padding is not None:
            self._rust.no_padding()
        return [encoding.ids for encoding in self._rust.encode_batch_fast(texts, add_special_tokens=False)]

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

    def encode_request(self, request: PairRequest) -> EncodedPairs:
        return self.encode_many([request])[0]

    def encode_many(self, requests: Sequence[PairRequest]) -> list[EncodedPairs]:
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
