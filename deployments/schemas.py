"""Request and response models of every route (TEI, Cohere v1/Jina, Cohere v2, /score).

They drive validation and the OpenAPI document at /openapi.json.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, conint

class TEIRerankRequest(BaseModel):
    """Hugging Face TEI's /rerank body; Elasticsearch's `hugging_face` rerank service sends it."""

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


DocumentIn = Union[str, dict[str, Any]]


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
    search_units: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    warnings: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta
    model: str
    usage: Usage


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


class ScoreResponse(BaseModel):
    scores: list[PairScore]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    """TEI routes' error body."""

    error: str
    error_type: str


class CohereErrorBody(BaseModel):
    """Cohere and Jina routes' error body: Cohere's SDK reads `message`."""

    message: str


class NotReadyBody(BaseModel):
    """/ready's 503 body: why the model cannot score yet."""

    status: Literal["not_ready"]
    reason: str
