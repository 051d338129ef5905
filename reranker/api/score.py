"""`/score`: raw (query, passage) pairs scored in input order, several queries allowed."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from reranker.api import ApiContext
from reranker.errors import EmptyInputError, ValidationError
from reranker.messages import DocScores, PairRequest


class ScoreRequest(BaseModel):
    """Raw pairs: `pairs: [[query, passage], ...]`, or `queries` and `documents` of equal length."""

    model_config = ConfigDict(extra="ignore")

    pairs: Optional[list[list[str]]] = None
    queries: Optional[list[str]] = None
    documents: Optional[list[str]] = None
    truncate: bool = True


class PairScore(BaseModel):
    index: int
    score: float
    raw_score: float


class ScoreUsage(BaseModel):
    total_tokens: int


class ScoreResponse(BaseModel):
    scores: list[PairScore]
    model: str
    usage: ScoreUsage


def score_request_pairs(body: ScoreRequest) -> tuple[list[str], list[str]]:
    """The body's (queries, documents), one query per document."""
    if body.pairs is not None:
        if body.queries is not None or body.documents is not None:
            raise ValidationError("Send either 'pairs' or 'queries' and 'documents', not both.")
        for index, pair in enumerate(body.pairs):
            if len(pair) != 2:
                raise ValidationError(f"Pair {index} must be [query, passage].")
        return [p[0] for p in body.pairs], [p[1] for p in body.pairs]
    if body.queries is None or body.documents is None:
        raise EmptyInputError("Send 'pairs', or 'queries' and 'documents'.")
    if len(body.queries) != len(body.documents):
        raise ValidationError(f"{len(body.queries)} queries but {len(body.documents)} documents; they pair one to one.")
    if not body.queries:
        raise EmptyInputError("No pairs to score.")
    return list(body.queries), list(body.documents)


class ScoreApi:
    request_model = ScoreRequest
    response_model = ScoreResponse
    error_family = "tei"
    summary = "Score raw (query, passage) pairs in input order"

    def to_pair_request(self, body: ScoreRequest, context: ApiContext) -> PairRequest:
        queries, documents = score_request_pairs(body)
        unique = list(dict.fromkeys(queries))
        position = {query: i for i, query in enumerate(unique)}
        return PairRequest(
            queries=unique,
            passages=documents,
            query_of_passage=[position[q] for q in queries],
            truncate=body.truncate,
        )

    def build_response(self, body: ScoreRequest, request: PairRequest, scores: DocScores, context: ApiContext):
        return ScoreResponse(
            scores=[
                PairScore(index=i, score=float(scores.normalized[i]), raw_score=float(scores.raw[i]))
                for i in range(len(request.passages))
            ],
            model=context.settings.model,
            usage=ScoreUsage(total_tokens=int(scores.total_tokens)),
        )


API = ScoreApi()
