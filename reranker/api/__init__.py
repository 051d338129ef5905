"""The HTTP API families and the one route table.

Each family module (`tei`, `cohere`, `score`) holds its request and response models and a
`RerankApi` object: how a body becomes a `PairRequest`, and how `DocScores` become the typed
answer. Adding a family is one module plus one line in `RERANK_ROUTES`.

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
    from reranker.api import cohere, score, tei

    return (
        Route("/rerank", tei.API),
        Route("/v1/rerank", cohere.V1_API),
        Route("/v2/rerank", cohere.V2_API),
        Route("/score", score.API),
    )


RERANK_ROUTES: tuple[Route, ...] = _route_table()
ROUTES_BY_PATH = {route.path: route for route in RERANK_ROUTES}
PUBLIC_PATHS = frozenset({"/health", "/ready", "/info", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
KNOWN_PATHS = frozenset(ROUTES_BY_PATH) | PUBLIC_PATHS


def error_family(path: str) -> str:
    """The error body style of a path; TEI's for paths outside the table."""
    route = ROUTES_BY_PATH.get(path)
    return route.api.error_family if route else "tei"
