"""Hugging Face TEI `/rerank`: what Elasticsearch's `hugging_face` rerank service and TEI clients send."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, RootModel, conint

from reranker.api import ApiContext, ranking
from reranker.messages import DocScores, PairRequest
from reranker.settings import RerankerSettings


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


# ----- TEI's /info ---------------------------------------------------------------------------------


class TeiClassifierModel(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class TeiModelType(BaseModel):
    """TEI's ModelType for a cross-encoder: `{"reranker": {id2label, label2id}}`."""

    reranker: TeiClassifierModel


class TeiInfo(BaseModel):
    """The fields of TEI's /info (router/src/lib.rs `Info`) with their TEI meanings; `tei-client` reads them."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    # The hub commit of the model's files; null for a local directory.
    model_sha: Optional[str]
    model_dtype: str
    served_model_name: str
    model_type: TeiModelType
    # Requests admitted at once before the proxy answers 429: the ingress replicas' max_ongoing_requests
    # plus the proxy's max_queued_requests.
    max_concurrent_requests: int
    # Longest (query, passage) pair in tokens.
    max_input_length: int
    # Padded tokens in one forward pass, and pairs in one forward pass.
    max_batch_tokens: int
    max_batch_requests: Optional[int]
    # Documents one request may send (max_documents).
    max_client_batch_size: int
    # What happens to a text over max_input_length when a request does not say (`truncate` defaults to true).
    auto_truncate: bool
    # Running tokenizer replicas.
    tokenization_workers: int
    version: str
    sha: Optional[str] = None
    docker_label: Optional[str] = None


def tei_info(
    settings: RerankerSettings,
    tokenizer: dict,
    scorer: dict,
    replicas: dict[str, int],
    ingress_limits: dict[str, int],
    version: str,
) -> TeiInfo:
    """TEI's /info from the tokenizer's and one scorer's descriptions, replica counts and the ingress's limits."""
    queued = ingress_limits.get("max_queued_requests", -1)
    return TeiInfo(
        model_id=settings.model,
        model_sha=tokenizer.get("model_sha"),
        model_dtype=scorer.get("dtype") or settings.dtype,
        served_model_name=settings.model,
        model_type=TeiModelType(
            reranker=TeiClassifierModel(id2label=tokenizer["id2label"], label2id=tokenizer["label2id"])
        ),
        max_concurrent_requests=ingress_limits["max_ongoing_requests"] * max(replicas.get("Ingress", 1), 1)
        + max(queued, 0),
        max_input_length=tokenizer["max_length"],
        max_batch_tokens=scorer.get("max_batch_tokens") or settings.max_batch_tokens,
        max_batch_requests=scorer.get("max_batch_size") or settings.max_batch_size,
        max_client_batch_size=settings.max_documents,
        auto_truncate=TEIRerankRequest.model_fields["truncate"].default,
        tokenization_workers=max(replicas.get("Tokenizer", 1), 1),
        version=version,
    )
