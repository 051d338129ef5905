"""Cohere `/v1/rerank` (also Jina's) and `/v2/rerank`: the Cohere SDK, LangChain, LlamaIndex, Haystack."""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, conint

from reranker.api import ApiContext, ranking
from reranker.errors import ValidationError
from reranker.messages import DocScores, PairRequest
from reranker.validation import check_model

DocumentIn = Union[str, dict[str, Any]]
# Cohere bills one search unit per query with up to 100 documents (its pricing page).
DOCUMENTS_PER_SEARCH_UNIT = 100


class CohereV1RerankRequest(BaseModel):
    """Cohere v1 /rerank body, also Jina's."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    query: str
    documents: list[DocumentIn]
    top_n: Optional[conint(ge=1)] = None
    return_documents: bool = False
    rank_fields: Optional[list[str]] = None
    max_chunks_per_doc: Optional[conint(ge=1)] = None


class CohereV2RerankRequest(CohereV1RerankRequest):
    """Cohere v2 /rerank body: v1's fields (legacy ones honoured for older clients) plus these."""

    max_tokens_per_doc: Optional[conint(ge=1)] = None
    priority: Optional[int] = None


class CohereResultDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[CohereResultDocument] = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    # ceil(documents / 100), as Cohere bills a rerank call.
    search_units: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    warnings: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    # Both count every token scored; Infinity-style clients (LiteLLM's infinity/) read prompt_tokens.
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta
    model: str
    usage: Usage


def document_text(document: DocumentIn, rank_fields: Optional[list[str]], index: int) -> str:
    """A Cohere document as text: a string, its `text`, or its `rank_fields` as 'key: value' lines."""
    if isinstance(document, str):
        return document
    if rank_fields:
        lines = []
        for field in rank_fields:
            if field not in document:
                raise ValidationError(f"Document {index} has no field '{field[:100]}' named in rank_fields.")
            value = document[field]
            lines.append(f"{field}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
        return "\n".join(lines)
    text = document.get("text")
    if not isinstance(text, str):
        raise ValidationError(f"Document {index} is an object without a string 'text' field (or set rank_fields).")
    return text


class CohereApi:
    response_model = CohereRerankResponse
    error_family = "cohere"

    def __init__(self, api_version: str, request_model: type[CohereV1RerankRequest], summary: str):
        self.api_version = api_version
        self.request_model = request_model
        self.summary = summary

    def to_pair_request(self, body: CohereV1RerankRequest, context: ApiContext) -> PairRequest:
        check_model(body.model, context.settings.model, context.model_names)
        max_tokens_per_doc = getattr(body, "max_tokens_per_doc", None)
        chunked = (
            body.max_chunks_per_doc is not None
            or context.settings.long_passage_mode == "chunk"
            or max_tokens_per_doc is not None
        )
        return PairRequest(
            queries=[body.query],
            passages=[document_text(doc, body.rank_fields, i) for i, doc in enumerate(body.documents)],
            chunk=chunked,
            max_chunks=body.max_chunks_per_doc or context.settings.max_chunks_per_doc,
            max_tokens_per_doc=max_tokens_per_doc,
        )

    def build_response(self, body: CohereV1RerankRequest, request: PairRequest, scores: DocScores, context: ApiContext):
        texts = request.passages
        results = [
            CohereResult(
                index=int(i),
                relevance_score=float(scores.normalized[i]),
                document=CohereResultDocument(text=texts[i]) if body.return_documents else None,
            )
            for i in ranking(scores.normalized, body.top_n)
        ]
        return CohereRerankResponse(
            id=context.request_id,
            results=results,
            meta=CohereMeta(
                api_version=ApiVersion(version=self.api_version),
                billed_units=BilledUnits(search_units=math.ceil(len(texts) / DOCUMENTS_PER_SEARCH_UNIT)),
                warnings=["The query was truncated to max_query_tokens."] if scores.query_truncated else [],
            ),
            model=context.settings.model,
            usage=Usage(prompt_tokens=int(scores.total_tokens), total_tokens=int(scores.total_tokens)),
        )


V1_API = CohereApi("1", CohereV1RerankRequest, "Rerank documents (Cohere v1 and Jina format)")
V2_API = CohereApi("2", CohereV2RerankRequest, "Rerank documents (Cohere v2 format; legacy v1 fields honoured)")
