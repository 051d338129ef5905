"""The real application on a real local Ray, reached over HTTP on 127.0.0.1 (tier 3)."""

from __future__ import annotations

import concurrent.futures
import random

import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY
from reference import Ours, reference_scores

pytestmark = pytest.mark.serving

TEXTS = MULTILINGUAL_TEXTS


def expected_order(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def assert_ranked(body: list, scores: np.ndarray, tolerance: float) -> None:
    """A TEI /rerank answer: every passage once, in the order of `scores`, each with its score."""
    assert [item["index"] for item in body] == expected_order(scores)
    for item in body:
        assert item["score"] == pytest.approx(scores[item["index"]], abs=tolerance)


def test_health_ready_and_info(http, tiny_model_dir):
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").status_code == 200
    info = http.get("/info").json()
    assert info["model_id"] == str(tiny_model_dir)
    assert info["num_labels"] == 2 and "logit[1]" in info["score"]
    assert info["max_length"] == 512
    assert info["tokenizer"]["torch_imported"] is False
    assert info["scorers"] and info["scorers"][0]["device"] == "cpu" and info["scorers"][0]["dtype"] == "float32"


def test_tei_rerank_matches_reference(http, tiny_model_dir):
    raw, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    response = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "return_text": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_ranked(body, normalized, 1e-4)
    assert all(item["text"] == TEXTS[item["index"]] for item in body)
    raw_body = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True}).json()
    assert_ranked(raw_body, raw, 1e-4)
    assert all("text" not in item for item in raw_body)


def test_elasticsearch_hugging_face_body(http, tiny_model_dir):
    """The exact body Elasticsearch's `hugging_face` rerank service sends."""
    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS[:4])
    body = {"query": QUERY, "texts": TEXTS[:4], "return_text": False, "top_n": 2}
    response = http.post("/rerank", json=body)
    assert response.status_code == 200
    assert [item["index"] for item in response.json()] == expected_order(normalized)[:2]


def test_cohere_v1_v2_and_score(http, tiny_model_dir):
    raw, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    v1 = http.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "top_n": 3, "return_documents": True}).json()
    assert [r["index"] for r in v1["results"]] == expected_order(normalized)[:3]
    assert v1["results"][0]["document"]["text"] == TEXTS[v1["results"][0]["index"]]
    assert 0 <= v1["results"][0]["relevance_score"] <= 1
    assert v1["meta"]["api_version"]["version"] == "1" and v1["usage"]["total_tokens"] > 0
    v2 = http.post("/v2/rerank", json={"model": str(tiny_model_dir), "query": QUERY, "documents": TEXTS}).json()
    assert [r["index"] for r in v2["results"]] == expected_order(normalized)
    for result in v2["results"]:
        assert result["relevance_score"] == pytest.approx(normalized[result["index"]], abs=1e-4)
    scored = http.post("/score", json={"pairs": [[QUERY, t] for t in TEXTS]}).json()["scores"]
    assert [s["index"] for s in scored] == list(range(len(TEXTS)))
    assert np.allclose([s["raw_score"] for s in scored], raw, atol=1e-4)
    split = http.post("/score", json={"queries": [QUERY] * len(TEXTS), "documents": TEXTS}).json()["scores"]
    assert np.allclose([s["score"] for s in split], normalized, atol=1e-4)


def test_cohere_rank_fields_and_object_documents(http, tiny_model_dir):
    docs = [{"title": "paris", "body": TEXTS[0]}, {"title": "berlin", "body": TEXTS[1]}]
    texts = [f"title: {d['title']}\nbody: {d['body']}" for d in docs]
    _, normalized = reference_scores(tiny_model_dir, QUERY, texts)
    response = http.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "body"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == expected_order(normalized)
    objects = http.post("/v2/rerank", json={"query": QUERY, "documents": [{"text": t} for t in TEXTS[:2]]})
    assert objects.status_code == 200
    missing = http.post("/v1/rerank", json={"query": QUERY, "documents": [{"title": "x"}]})
    assert missing.status_code == 422 and "text" in missing.json()["message"]


def test_fifty_concurrent_requests_each_get_their_own_ranking(http, tiny_model_dir):
    rng = random.Random(7)
    words = " ".join(TEXTS).split()
    requests = []
    for i in range(50):
        size = rng.choice([1, 3, 10, 40])
        passages = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(size)]
        requests.append((f"query {i} " + rng.choice(words), passages))

    def call(request):
        query, passages = request
        return http.post("/rerank", json={"query": query, "texts": passages, "raw_scores": True})

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(call, requests))
    for (query, passages), response in zip(requests, responses):
        assert response.status_code == 200, response.text
        raw, _ = reference_scores(tiny_model_dir, query, passages)
        body = response.json()
        assert sorted(item["index"] for item in body) == list(range(len(passages)))
        for item in body:
            assert item["score"] == pytest.approx(raw[item["index"]], abs=1e-4)
        got = [item["score"] for item in body]
        assert got == sorted(got, reverse=True)


def test_large_request_is_split_and_keeps_order(http, tiny_model_dir):
    """Hundreds of passages spread over sub-requests; scores come back in the right slots."""
    rng = random.Random(3)
    words = " ".join(TEXTS).split()
    passages = [" ".join(rng.choices(words, k=rng.randint(20, 80))) for _ in range(300)]
    raw, _ = reference_scores(tiny_model_dir, QUERY, passages)
    scored = http.post("/score", json={"queries": [QUERY] * len(passages), "documents": passages}).json()["scores"]
    assert np.allclose([s["raw_score"] for s in scored], raw, atol=1e-4)


def test_request_id_is_echoed(http):
    response = http.post("/rerank", json={"query": QUERY, "texts": TEXTS[:2]}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert http.get("/health").headers.get("x-request-id")


def test_openapi_documents_every_route(http):
    spec = http.get("/openapi.json").json()
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/health", "/ready", "/info", "/metrics",
                 "/weaviate/rerank", "/weaviate/.well-known/ready", "/weaviate/.well-known/live", "/weaviate/meta"):
        assert path in spec["paths"], path
    assert http.get("/docs").status_code == 200


def test_cohere_sdk_clients(serve_cluster, tiny_model_dir):
    import cohere

    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    v1 = cohere.Client(api_key="unused", base_url=serve_cluster.url)
    result = v1.rerank(query=QUERY, documents=TEXTS, top_n=3, model=str(tiny_model_dir))
    assert [r.index for r in result.results] == expected_order(normalized)[:3]
    v2 = cohere.ClientV2(api_key="unused", base_url=serve_cluster.url)
    result = v2.rerank(model=str(tiny_model_dir), query=QUERY, documents=TEXTS)
    assert [r.index for r in result.results] == expected_order(normalized)
    assert result.results[0].relevance_score == pytest.approx(normalized[result.results[0].index], abs=1e-4)
    with pytest.raises(cohere.core.api_error.ApiError) as error:
        v2.rerank(model="some-other-model", query=QUERY, documents=TEXTS)
    assert error.value.status_code == 422 and str(tiny_model_dir) in str(error.value.body)


def test_unknown_route_and_wrong_method_use_the_family_error_body(http):
    missing = http.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error_type"] == "not_found" and "/nope" in missing.json()["error"]
    wrong = http.get("/v1/rerank")
    assert wrong.status_code == 405
    assert set(wrong.json()) == {"message", "detail"} and "POST" in wrong.headers["allow"]


def test_opt_in_int8_backend_serves_its_own_scores(serve_cluster, tiny_model_dir):
    """backend onnx-int8 through the whole app: /info names it, and /rerank returns the int8 model's
    raw scores, sorted (the scorer and the in-process one here read the session's export cache)."""
    import httpx
    from serving_helpers import deployed, small_app

    int8 = Ours(tiny_model_dir, backend="onnx-int8").score(QUERY, TEXTS)[1].raw
    fp32, _ = reference_scores(tiny_model_dir, QUERY, TEXTS)
    assert np.max(np.abs(int8 - fp32)) > 1e-4  # int8 is not the fp32 model: the check below can tell them apart

    with deployed(serve_cluster, [small_app("int8", "/int8", args={"backend": "onnx-int8"})]):
        with httpx.Client(base_url=serve_cluster.url + "/int8", timeout=60) as client:
            assert client.get("/info").json()["scorers"][0]["backend"] == "onnx-int8"
            response = client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
    assert response.status_code == 200, response.text
    assert_ranked(response.json(), int8, 1e-5)
