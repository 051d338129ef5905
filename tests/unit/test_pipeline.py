"""Tier 1: the fan-out engine, the backend table, the route table and the request middleware (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient
from handle_fakes import FakeEncoded, FakeMethod

from reranker.api import PUBLIC_PATHS, RERANK_ROUTES
from reranker.backends import BACKENDS, backend_class, build_backend
from reranker.errors import NotReadyError, SettingsError, error_headers
from reranker.messages import DocScores, PairRequest
from reranker.pipeline import Pipeline, split_request
from reranker.settings import RerankerSettings


class FakeTokenizer:
    def __init__(self):
        self.encode = FakeMethod(lambda request: request)  # the fake scorer reads the PairRequest itself
        self.encode_many = FakeMethod(lambda requests: [FakeEncoded(request) for request in requests])
        self.describe = FakeMethod(lambda: {"max_length": 64})


class FakeScorer:
    """Scores each passage by its length; answers with the budget it is configured with."""

    def __init__(self, budget: int):
        self.budget = budget
        self.score = FakeMethod(lambda response: self._scores(response.value))  # the canary
        self.score_many = FakeMethod(lambda parts: [self._scores(part.request) for part in parts])

    def _scores(self, request: PairRequest) -> DocScores:
        raw = np.array([float(len(p)) for p in request.passages], np.float32)
        return DocScores(raw, raw / 100, np.ones(len(raw), np.int64), 10 * len(raw), False, self.budget)


def texts(count: int, chars: int = 60) -> list[str]:
    return [f"{i:03d} " + "x" * chars for i in range(count)]


def test_split_request_keeps_order_and_follows_the_budget():
    request = PairRequest(queries=["q"], passages=texts(40))
    small = split_request(request, budget_tokens=100, max_length=512)
    large = split_request(request, budget_tokens=10_000, max_length=512)
    assert len(small) > 1 and len(large) == 1
    assert [p for part in small for p in part.passages] == request.passages
    # /score's query per passage travels with its passages.
    scored = PairRequest(queries=["a", "b"], passages=texts(40), query_of_passage=[i % 2 for i in range(40)])
    parts = split_request(scored, budget_tokens=100, max_length=512)
    assert [q for part in parts for q in part.query_of_passage] == scored.query_of_passage


def test_parts_follow_the_scorers_live_budget():
    """The ingress sizes parts by the budget the scorer reports, not by its own setting."""
    tokenizer, scorer = FakeTokenizer(), FakeScorer(budget=32768)
    pipeline = Pipeline(tokenizer, scorer, RerankerSettings(max_batch_tokens=256))
    request = PairRequest(queries=["q"], passages=texts(200))
    assert len(pipeline.split(request)) > 1  # before the canary: the ingress's own setting
    asyncio.run(pipeline.ensure_ready())
    assert pipeline.ready and pipeline.max_length == 64
    parts = pipeline.split(request)
    assert len(parts) == 1
    scores = asyncio.run(pipeline.score(parts))
    assert scores.raw.tolist() == [float(len(p)) for p in request.passages]
    scorer.budget = 128  # changed live through user_config
    asyncio.run(pipeline.score(pipeline.split(request)))
    parts = pipeline.split(request)
    assert len(parts) > 10
    scores = asyncio.run(pipeline.score(parts))
    assert scores.raw.tolist() == [float(len(p)) for p in request.passages]


@pytest.mark.parametrize("calls_in_flight", [None, 2])
def test_concurrent_requests_share_calls_only_when_coalescing_is_set(calls_in_flight):
    """handle_calls_in_flight unset: one tokenizer and one scorer call per part, as before. Set: the
    parts that would wait behind 2 calls share one call per stage; every request gets its own scores."""

    async def scenario():
        tokenizer, scorer = FakeTokenizer(), FakeScorer(budget=32768)
        pipeline = Pipeline(tokenizer, scorer, RerankerSettings(handle_calls_in_flight=calls_in_flight))
        await pipeline.ensure_ready()
        requests = [PairRequest(queries=[f"q{i}"], passages=texts(3 + i, chars=10 + i)) for i in range(6)]
        results = await asyncio.gather(*(pipeline.score(pipeline.split(request)) for request in requests))
        for request, scores in zip(requests, results):
            assert scores.raw.tolist() == [float(len(p)) for p in request.passages]
        return [len(args[0]) for args in tokenizer.encode_many.calls], [len(args[0]) for args in scorer.score_many.calls]

    encode_calls, score_calls = asyncio.run(scenario())
    if calls_in_flight is None:
        assert encode_calls == score_calls == [1] * 6
    else:
        # The first two go alone; what waited behind them goes together (how it splits depends on
        # when each call returns).
        for calls in (encode_calls, score_calls):
            assert calls[:2] == [1, 1] and sum(calls) == 6 and len(calls) < 6, calls


def test_describe_of_a_tokenizer_that_failed_to_deploy_is_not_ready(monkeypatch):
    """/info and Weaviate's /meta: Serve's DeploymentUnavailableError becomes a 503 with the reason
    and Retry-After (it answered a plain-text 503 before, outside the one error path)."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    import reranker.pipeline as pipeline_module

    async def unavailable():
        raise DeploymentUnavailableError(DeploymentID(name="Tokenizer", app_name="reranker"))

    tokenizer = FakeTokenizer()
    tokenizer.describe = FakeMethod(unavailable)
    pipeline = Pipeline(tokenizer, FakeScorer(4096), RerankerSettings())
    monkeypatch.setattr(pipeline_module, "app_deployments", lambda: {"Tokenizer": DeploymentStatus("DEPLOY_FAILED")})
    with pytest.raises(NotReadyError, match="not ready: Tokenizer is DEPLOY_FAILED: ModelLoadError: no hub") as caught:
        asyncio.run(pipeline.describe())
    assert caught.value.status_code == 503 and error_headers(caught.value)["Retry-After"] == "5"


class DeploymentStatus:
    """The fields of Serve's DeploymentStatusInfo that the pipeline reads."""

    def __init__(self, status: str):
        self.status = status
        self.message = "Traceback ...\nModelLoadError: no hub"
        self.replica_states = {}


def test_backend_table():
    for name in BACKENDS:
        cls = backend_class(name)
        for member in ("launch", "fetch", "load", "devices", "name"):
            assert hasattr(cls, member), (name, member)
    with pytest.raises(SettingsError, match="unknown backend"):
        backend_class("tensorrt")
    with pytest.raises(SettingsError, match="runs on cpu only"):
        build_backend(RerankerSettings(backend="onnx"), "cuda", None)


def test_route_table_is_consistent():
    paths = [route.path for route in RERANK_ROUTES]
    assert len(paths) == len(set(paths)) and not set(paths) & PUBLIC_PATHS
    for route in RERANK_ROUTES:
        api = route.api
        assert api.error_family in ("tei", "cohere") and api.summary
        assert callable(api.to_pair_request) and callable(api.build_response)


@pytest.fixture
def routed_app(monkeypatch):
    from deployments.ingress import build_routes
    from reranker.server import create_app

    monkeypatch.setenv("RERANKER_API_KEYS", "k1,k2")
    with TestClient(build_routes(create_app(RerankerSettings())), raise_server_exceptions=False) as client:
        yield client


def test_authentication_is_the_default_and_public_paths_are_listed(routed_app):
    assert routed_app.get("/health").status_code == 200
    assert routed_app.get("/openapi.json").status_code == 200
    for method, path in (("post", "/rerank"), ("post", "/v1/rerank"), ("post", "/score"), ("get", "/not-a-route")):
        response = getattr(routed_app, method)(path)
        assert response.status_code == 401, path
    assert routed_app.get("/not-a-route", headers={"Authorization": "Bearer k2"}).status_code == 404


def test_a_client_that_went_away_is_499_not_a_server_error(monkeypatch):
    from reranker import server

    recorded = []
    monkeypatch.setattr(server.RequestContextMiddleware, "record", lambda self, *args: recorded.append(args))

    async def abandoned(scope, receive, send):
        raise asyncio.CancelledError  # what Serve does to a request whose client disconnected

    middleware = server.RequestContextMiddleware(abandoned, max_body_bytes=1024)
    scope = {"type": "http", "method": "GET", "path": "/ready", "headers": []}
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(middleware(scope, None, None))
    assert recorded and recorded[0][3] == 499  # (scope, route, request_id, code, ...)


def test_errors_keep_retry_after_when_they_travel_as_values():
    """A coalesced call answers a list in which an error is a value (pickled by Serve): it keeps its
    Retry-After and headers, so the client's answer is the one a raised error would give."""
    import pickle

    from reranker.errors import OverloadedError, ValidationError

    for error in (OverloadedError("busy", retry_after_s=3), ValidationError("bad input", headers={"X-Why": "test"})):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.retry_after_s, copy.headers, copy.status_code) == (error.retry_after_s, error.headers, error.status_code)


def test_a_failed_part_stops_the_other_parts_of_its_request():
    """One part's error answers the request at once, and its other parts go no further: the parts
    that waited behind the failing call never reach the scorer."""
    from reranker.errors import ValidationError

    async def scenario():
        tokenizer, scorer = FakeTokenizer(), FakeScorer(budget=32768)
        gate, never = asyncio.Event(), asyncio.Event()
        cancelled_calls = []

        async def encode_many(requests):
            try:
                await (gate if len(tokenizer.encode_many.calls) == 1 else never).wait()
            except asyncio.CancelledError:
                cancelled_calls.append(len(requests))
                raise
            return [ValidationError("bad part") if r.passages[0].startswith("000") else FakeEncoded(r) for r in requests]

        tokenizer.encode_many = FakeMethod(encode_many)
        pipeline = Pipeline(tokenizer, scorer, RerankerSettings(handle_calls_in_flight=1))
        await pipeline.ensure_ready()
        request = PairRequest(queries=["q"], passages=texts(3))
        parts = split_request(request, budget_tokens=30, max_length=512)  # one passage per part
        assert len(parts) == 3
        scoring = asyncio.create_task(pipeline.score(parts))
        await asyncio.sleep(0.01)
        assert len(tokenizer.encode_many.calls) == 1  # the first part; the others wait behind it
        gate.set()
        with pytest.raises(ValidationError, match="bad part"):
            await scoring
        await asyncio.sleep(0.01)
        # The two that waited went out together when the first call returned, and that call was
        # cancelled once the request had failed: nobody waited for it any more.
        assert cancelled_calls == [2] and scorer.score_many.calls == []
        assert pipeline.admission.in_flight == 0 and pipeline.encode_calls.in_flight == 0

    asyncio.run(scenario())


def test_a_shared_call_whose_replica_dies_is_retried_for_each_of_its_parts():
    """A scorer replica lost under a coalesced call fails every part in it; each part is retried
    once (sharing a call again) and every request still gets its own scores."""
    from ray.exceptions import ActorDiedError

    async def scenario():
        tokenizer, scorer = FakeTokenizer(), FakeScorer(budget=32768)
        answer = scorer.score_many.fn
        lost = []

        def score_many(parts):
            if len(parts) > 1 and not lost:  # the first call that carries several parts
                lost.append(len(parts))
                raise ActorDiedError()
            return answer(parts)

        scorer.score_many = FakeMethod(score_many)
        pipeline = Pipeline(tokenizer, scorer, RerankerSettings(handle_calls_in_flight=1))
        await pipeline.ensure_ready()
        requests = [PairRequest(queries=[f"q{i}"], passages=texts(2 + i)) for i in range(4)]
        results = await asyncio.gather(*(pipeline.score(pipeline.split(request)) for request in requests))
        for request, scores in zip(requests, results):
            assert scores.raw.tolist() == [float(len(p)) for p in request.passages]
        assert lost and lost[0] > 1
        assert sum(len(args[0]) for args in scorer.score_many.calls) == 4 + lost[0]  # each lost part once more

    asyncio.run(scenario())
