"""Weaviate's `reranker-transformers` module, under `/weaviate` (its RERANKER_INFERENCE_API origin).

The module (weaviate/weaviate, modules/reranker-transformers/clients/) calls three paths of its
origin: `POST /rerank` with `{query, documents, property}` (32 documents at most per call, several
calls at once), `GET /.well-known/ready` until it answers 2xx, and `GET /meta`. It reads `scores`
(one `{document, score}` per document, in document order) and, from a non-200 answer, `error`:
the TEI error body has that key. The module's own inference container also scores one
`property` against the query when there are no documents; so does this.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from reranker.api import ApiContext
from reranker.errors import ValidationError
from reranker.messages import DocScores, PairRequest

PREFIX = "/weaviate"
RERANK_PATH = PREFIX + "/rerank"
READY_PATH = PREFIX + "/.well-known/ready"
LIVE_PATH = PREFIX + "/.well-known/live"
META_PATH = PREFIX + "/meta"


class WeaviateRankRequest(BaseModel):
    """The module's RankInput."""

    model_config = ConfigDict(extra="ignore")

    query: str
    documents: Optional[list[str]] = None
    property: Optional[str] = None


class WeaviateDocumentScore(BaseModel):
    document: str
    score: float


class WeaviateRankResponse(BaseModel):
    """The module's RankResponse: `scores` for documents, or `property` and `score` for one property."""

    query: str
    scores: Optional[list[WeaviateDocumentScore]] = None
    property: Optional[str] = None
    score: Optional[float] = None


class WeaviateMeta(BaseModel):
    """GET /meta: Weaviate shows it under the module's name in its own /v1/meta."""

    model: dict


class WeaviateApi:
    request_model = WeaviateRankRequest
    response_model = WeaviateRankResponse
    # The module reads `error` from a failed answer.
    error_family = "tei"
    summary = "Rerank documents for Weaviate's reranker-transformers module"

    def to_pair_request(self, body: WeaviateRankRequest, context: ApiContext) -> PairRequest:
        if body.documents is not None:
            passages = body.documents
        elif body.property is not None:
            passages = [body.property]
        else:
            raise ValidationError("Send 'documents' to rank, or one 'property' to score.")
        return PairRequest(
            queries=[body.query],
            passages=passages,
            chunk=context.settings.long_passage_mode == "chunk",
            max_chunks=context.settings.max_chunks_per_doc,
        )

    def build_response(self, body: WeaviateRankRequest, request: PairRequest, scores: DocScores, context: ApiContext):
        # The normalized score, like the module's container (a sentence-transformers CrossEncoder,
        # whose default activation for a one-logit model is the sigmoid).
        if body.documents is None:
            return WeaviateRankResponse(query=body.query, property=body.property, score=float(scores.normalized[0]))
        return WeaviateRankResponse(
            query=body.query,
            scores=[
                WeaviateDocumentScore(document=text, score=float(score))
                for text, score in zip(body.documents, scores.normalized.tolist())
            ],
        )


API = WeaviateApi()
