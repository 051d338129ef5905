"""Pure unit tests of the error table, error bodies and response helpers, plus the ingress's one error path (tier 1)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from reranker import errors
from reranker.api import ranking, truncation_header
from reranker.api.cohere import document_text
from reranker.api.score import ScoreRequest, score_request_pairs
from reranker.errors import (
    INTERNAL_ERROR_MESSAGE,
    DeadlineExceededError,
    EmptyInputError,
    ModelLoadError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RerankerError,
    ScorerUnavailableError,
    UnauthenticatedError,
    ValidationError,
    error_body,
    error_headers,
)

STATUS_TABLE = [
    (EmptyInputError, 400, "empty"),
    (UnauthenticatedError, 401, "unauthenticated"),
    (PayloadTooLargeError, 413, "too_large"),
    (ValidationError, 422, "validation"),
    (OverloadedError, 429, "overloaded"),
    (NotReadyError, 503, "not_ready"),
    (ScorerUnavailableError, 503, "scorer_unavailable"),
    (ModelLoadError, 503, "not_ready"),
    (DeadlineExceededError, 504, "deadline"),
    (RerankerError, 500, "internal"),
]


@pytest.mark.parametrize("cls,status,reason", STATUS_TABLE)
def test_status_table(cls, status, reason):
    exc = cls("something went wrong")
    assert exc.status_code == status
    assert exc.reason == reason and reason in errors.FAILURE_REASONS
    assert isinstance(exc, RerankerError)


@pytest.mark.parametrize("cls,status,reason", STATUS_TABLE)
def test_each_family_has_its_own_body(cls, status, reason):
    exc = cls("a message for the client")
    assert error_body(exc, "tei") == {"error": "a message for the client", "error_type": exc.error_type}
    assert error_body(exc, "cohere") == {"message": "a message for the client", "detail": "a message for the client"}


def test_overloaded_maps_to_429_with_retry_after():
    exc = OverloadedError("Too many requests in flight.", retry_after_s=2.4)
    assert exc.status_code == 429
    assert error_headers(exc) == {"Retry-After": "2"}
    assert error_body(exc, "tei") == {"error": "Too many requests in flight.", "error_type": "overloaded"}


@pytest.mark.parametrize("seconds,header", [(0.01, "1"), (0.5, "1"), (1.4, "1"), (1.6, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_at_least_one(seconds, header):
    assert error_headers(NotReadyError("x", retry_after_s=seconds))["Retry-After"] == header


def test_only_some_errors_carry_headers():
    assert error_headers(ValidationError("x")) == {}
    assert error_headers(UnauthenticatedError("x")) == {"WWW-Authenticate": "Bearer"}
    # The class's headers are never mutated through one response's copy.
    error_headers(UnauthenticatedError("x"))["Retry-After"] = "9"
    assert UnauthenticatedError.headers == {"WWW-Authenticate": "Bearer"}


# ----- response helpers ---------------------------------------------------------------------


def test_ranking_orders_by_score_then_index_and_cuts_top_n():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.0], dtype=np.float32)
    assert ranking(scores, None).tolist() == [1, 3, 2, 0, 4]
    assert ranking(scores, 2).tolist() == [1, 3]
    assert ranking(scores, 10).tolist() == [1, 3, 2, 0, 4]
    assert ranking(np.array([], dtype=np.float32), None).tolist() == []


def test_truncation_header():
    assert truncation_header(True) == {"X-Reranker-Query-Truncated": "true"}
    assert truncation_header(False) is None


def test_document_text_from_strings_objects_and_rank_fields():
    assert document_text("plain", None, 0) == "plain"
    assert document_text({"text": "body", "title": "t"}, None, 0) == "body"
    doc = {"title": "Paris", "year": 2024, "tags": ["a", "é"]}
    assert document_text(doc, ["title", "year", "tags"], 0) == 'title: Paris\nyear: 2024\ntags: ["a", "é"]'


@pytest.mark.parametrize(
    "document,rank_fields,needle",
    [({"title": "x"}, None, "Document 3"), ({"text": 5}, None, "string 'text'"), ({"a": "x"}, ["b"], "'b'")],
)
def test_document_text_rejects_unusable_documents(document, rank_fields, needle):
    with pytest.raises(ValidationError) as error:
        document_text(document, rank_fields, 3)
    assert needle in error.value.message and error.value.status_code == 422


def test_score_request_pairs():
    assert score_request_pairs(ScoreRequest(pairs=[["q", "p"], ["q2", "p2"]])) == (["q", "q2"], ["p", "p2"])
    assert score_request_pairs(ScoreRequest(queries=["q"], documents=["p"])) == (["q"], ["p"])
    assert score_request_pairs(ScoreRequest(pairs=[])) == ([], [])
    for body, cls in [
        (ScoreRequest(pairs=[["q", "p"]], queries=["q"]), ValidationError),
        (ScoreRequest(pairs=[["q", "p", "x"]]), ValidationError),
        (ScoreRequest(queries=["q", "q"], documents=["p"]), ValidationError),
        (ScoreRequest(queries=[], documents=[]), EmptyInputError),
        (ScoreRequest(), EmptyInputError),
    ]:
        with pytest.raises(cls):
            score_request_pairs(body)


# ----- the ingress's one error path, on a tiny inline app ---------------------------------------


@pytest.fixture
def inline_app(monkeypatch):
    """The service's app factory (middleware, handlers) with routes that raise what the test sets."""
    from reranker.server import create_app
    from reranker.settings import RerankerSettings

    monkeypatch.delenv("RERANKER_API_KEYS", raising=False)
    app = create_app(RerankerSettings())
    raised = {}

    async def handle(request: Request):
        raise raised["exc"]

    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score"):
        app.add_api_route(path, handle, methods=["POST"])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, raised


SECRET = "secret internal detail at /srv/model/weights.bin line 42"


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank", "/score"])
def test_unexpected_errors_are_a_generic_500(inline_app, route):
    client, raised = inline_app
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        raised["exc"] = KeyError(SECRET)
        response = client.post(route, headers={"X-Request-ID": "req-500"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    expected = {"message": INTERNAL_ERROR_MESSAGE, "detail": INTERNAL_ERROR_MESSAGE} if route.startswith("/v") else {
        "error": INTERNAL_ERROR_MESSAGE, "error_type": "internal"}
    assert response.json() == expected
    assert SECRET not in response.text and "KeyError" not in response.text
    # The detail goes to the log, with the request id, for the operator.
    logged = [r for r in records if "req-500" in r.getMessage()]
    assert logged and logged[0].exc_info and SECRET in str(logged[0].exc_info[1])


@pytest.mark.parametrize("exc", [DeadlineExceededError("late"), OverloadedError("busy", retry_after_s=3)])
def test_project_errors_keep_their_status(inline_app, exc):
    client, raised = inline_app
    raised["exc"] = exc
    response = client.post("/v1/rerank")
    assert response.status_code == exc.status_code
    assert response.json() == {"message": exc.message, "detail": exc.message}
    if exc.retry_after_s:
        assert response.headers["retry-after"] == "3"


def test_last_exception_line_summarizes_a_serve_status_traceback():
    from reranker.pipeline import last_exception_line

    message = (
        "The deployment failed to start 3 times in a row.\n"
        "Traceback (most recent call last):\n"
        '  File "/x/model.py", line 3, in __init__\n'
        "    raise ModelLoadError(describe_load_failure(model, revision, exc)) from exc\n"
        "reranker.errors.ModelLoadError: Cannot load model 'x': OSError: no network. Check the hub id.\n"
    )
    assert last_exception_line(message) == "ModelLoadError: Cannot load model 'x': OSError: no network. Check the hub id."
    assert last_exception_line("replicas are starting") == "replicas are starting"
