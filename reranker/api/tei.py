"""Hugging Face TEI `/rerank`: what Elasticsearch's `hugging_face` rerank service and TEI clients send."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, RootModel, conint

from reranker.api import ApiContext, ranking
from reranker.messages import DocScores, PairRequest


class TEIRerankRequest(BaseModel):
    """TEI's /rerank body."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    truncate: bool = True
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    raw_scores: bool = False
    return_text: bool = False
    top_n: Optional[conint(ge=1)] = None


class TEIRank(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


class TEIRerankResponse(RootModel[list[TEIRank]]):
    """TEI answers a bare list, sorted by score."""


class TeiApi:
    request_model = TEIRerankRequest
    response_model = TEIRerankResponse
    error_family = "tei"
    summary = "Rerank texts against a query (Hugging Face TEI format)"

    def to_pair_request(self, body: TEIRerankRequest, context: ApiContext) -> PairRequest:
        return PairRequest(
            queries=[body.query],
            passages=body.texts,
            chunk=context.settings.long_passage_mode == "chunk",
            max_chunks=context.settings.max_chunks_per_doc,
            truncate=body.truncate,
            truncation_direction=body.truncation_direction.lower(),
        )

    def build_response(self, body: TEIRerankRequest, request: PairRequest, scores: DocScores, context: ApiContext):
        values = scores.raw if body.raw_scores else scores.normalized
        return TEIRerankResponse(
            [
                TEIRank(index=int(i), score=float(values[i]), text=body.texts[i] if body.return_text else None)
                for i in ranking(values, body.top_n)
            ]
        )


API = TeiApi()
