"""The HTTP API families and the one route table.

Each family module (`tei`, `infinity`, `cohere`, `score`, `weaviate`) holds its request and response models and a
`RerankApi` object: how a body becomes a `PairRequest`, and how `DocScores` become the typed
answer. Adding a family is one module plus one line in `RERANK_ROUTES`; a route that takes
several families' bodies (TEI's and Infinity's on `/rerank`) tells them apart by a key of the
body (`dispatch.BodyKeyDispatch`).

Every route needs an API key when keys are configured, except the paths in `PUBLIC_PATHS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np
from pydantic import BaseModel

from reranker.messages import DocScores, PairRequest
from reranker.settings import RerankerSettings


@dataclass(frozen=True)
class ApiContext:
    """What a family needs beyond the body: the settings, the served model's names, the request id."""

    settings: RerankerSettings
    model_names: frozenset[str]
    request_id: str


class RerankApi(Protocol):
    """One API family on one route."""

    request_model: type[BaseModel]
    response_model: Any
    # Error body style on this route: "tei" or "cohere" (reranker/errors.py error_body).
    error_family: str
    summary: str

    def to_pair_request(self, body: Any, context: ApiContext) -> PairRequest:
        """Validates what the model cannot (model name, document shapes) and maps the body to pairs."""

    def build_response(self, body: Any, request: PairRequest, scores: DocScores, context: ApiContext) -> Any:
        """The typed answer for scored documents, in document order in `scores`."""


@dataclass(frozen=True)
class Route:
    path: str
    api: RerankApi


def ranking(scores: np.ndarray, top_n: Optional[int]) -> np.ndarray:
    """Indices by descending score, ties by ascending index, cut to top_n."""
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    return order[:top_n] if top_n else order


def truncation_header(truncated: bool) -> Optional[dict]:
    return {"X-Reranker-Query-Truncated": "true"} if truncated else None


def _route_table() -> tuple[Route, ...]:
    from reranker.api import cohere, infinity, score, tei, weaviate
    from reranker.api.dispatch import BodyKeyDispatch

    rerank = BodyKeyDispatch(
        {"texts": ("TEI", tei.API), "documents": ("Infinity, vLLM", infinity.API)},
        "Rerank texts against a query: a TEI body (texts) or an Infinity/vLLM body (documents)",
    )
    return (
        Route("/rerank", rerank),
        Route("/v1/rerank", cohere.V1_API),
        Route("/v2/rerank", cohere.V2_API),
        Route("/score", score.API),
        Route(weaviate.RERANK_PATH, weaviate.API),
    )


RERANK_ROUTES: tuple[Route, ...] = _route_table()
ROUTES_BY_PATH = {route.path: route for route in RERANK_ROUTES}


def _public_paths() -> frozenset[str]:
    from reranker.api import weaviate

    operations = {"/health", "/ready", "/info", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
    # Weaviate's readiness and meta paths: operational, like /ready and /info.
    return frozenset(operations | {weaviate.READY_PATH, weaviate.LIVE_PATH, weaviate.META_PATH})


PUBLIC_PATHS = _public_paths()
KNOWN_PATHS = frozenset(ROUTES_BY_PATH) | PUBLIC_PATHS
# Union tags of the routes that take several bodies: not part of a field's location in an error.
BODY_UNION_TAGS = frozenset(tag for route in RERANK_ROUTES for tag in getattr(route.api, "tags", ()))


def error_family(path: str) -> str:
    """The error body style of a path; TEI's for paths outside the table."""
    route = ROUTES_BY_PATH.get(path)
    return route.api.error_family if route else "tei"
