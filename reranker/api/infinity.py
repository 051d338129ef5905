"""Infinity's (and vLLM's) `/rerank` body: `documents` instead of TEI's `texts`, answered in Infinity's shape.

What `infinity_client`, LangChain's `InfinityRerank` and LiteLLM's `infinity/` and `hosted_vllm/`
providers send to a server root. The answer follows Infinity's `ReRankResult`
(libs/infinity_emb/infinity_emb/fastapi_schemas/pymodels.py in michaelfeil/infinity): `document`
is a plain string, present only when `return_documents` is true, and `usage` has
`prompt_tokens` beside `total_tokens`. It shares `/rerank` with TEI's body (reranker/api/dispatch.py).
"""

from __future__ import annotations

import time
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, conint

from reranker.api import ApiContext, ranking
from reranker.messages import DocScores, PairRequest
from reranker.validation import check_model

# The `model` that infinity_client sends unless told otherwise: Infinity's "no model named".
UNSPECIFIED_MODEL = "default/not-specified"


class InfinityRerankRequest(BaseModel):
    """Infinity's RerankInput; vLLM's rerank body has the same fields (its own extras are ignored)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    query: str
    documents: list[str]
    model: Optional[str] = None
    # vLLM reads 0 as "every document"; Infinity itself wants a positive number or none.
    top_n: Optional[conint(ge=0)] = None
    return_documents: bool = False
    raw_scores: bool = False


class InfinityResult(BaseModel):
    relevance_score: float
    index: int
    document: Optional[str] = None


class InfinityUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class InfinityRerankResponse(BaseModel):
    """Infinity's ReRankResult, sorted by relevance."""

    object: Literal["rerank"] = "rerank"
    id: str
    created: int
    model: str
    results: list[InfinityResult]
    usage: InfinityUsage


class InfinityApi:
    request_model = InfinityRerankRequest
    response_model = InfinityRerankResponse
    error_family = "tei"
    summary = "Rerank documents (Infinity and vLLM format)"

    def to_pair_request(self, body: InfinityRerankRequest, context: ApiContext) -> PairRequest:
        if body.model != UNSPECIFIED_MODEL:
            check_model(body.model, context.settings.model, context.model_names)
        return PairRequest(
            queries=[body.query],
            passages=body.documents,
            chunk=context.settings.long_passage_mode == "chunk",
            max_chunks=context.settings.max_chunks_per_doc,
        )

    def build_response(self, body: InfinityRerankRequest, request: PairRequest, scores: DocScores, context: ApiContext):
        values = scores.raw if body.raw_scores else scores.normalized
        tokens = int(scores.total_tokens)
        return InfinityRerankResponse(
            id=context.request_id,
            created=int(time.time()),
            model=context.settings.model,
            results=[
                InfinityResult(
                    relevance_score=float(values[i]),
                    index=int(i),
                    document=body.documents[i] if body.return_documents else None,
                )
                for i in ranking(values, body.top_n)
            ],
            usage=InfinityUsage(prompt_tokens=tokens, total_tokens=tokens),
        )


API = InfinityApi()
