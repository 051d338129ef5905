"""The error table, limits, `model` names and Cohere's legacy fields, through the real app over HTTP (tier 3)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from reference import reference_scores
from serving_helpers import deployed, poll, replica_log_lines, small_app

pytestmark = pytest.mark.serving

QUERY = "what is the capital of france"
TEXTS = ["paris is the capital and most populous city of france", "berlin ist die hauptstadt von deutschland"]
LIMITS = {"max_documents": 5, "max_document_chars": 200, "max_query_chars": 50, "max_body_bytes": 2048}
ALIAS = "tiny-reranker-alias"
DEADLINE_S = 0.5

TEI_KEYS = {"error", "error_type"}
# Cohere's SDK reads message, Jina's clients detail: the same text.
COHERE_KEYS = {"message", "detail"}


def rerank_body(route: str, query, documents, **extra) -> dict:
    """The body of `route` for a query and documents: TEI says texts, the others documents."""
    key = "texts" if route == "/rerank" else "documents"
    return {"query": query, key: documents, **extra}


def assert_family_error(response: httpx.Response, route: str, status: int, *needles: str) -> str:
    """The status, the route family's error body, and each needle in its message; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    if route in ("/rerank", "/score"):
        assert set(body) == TEI_KEYS, body
        message = body["error"]
    else:
        assert set(body) == COHERE_KEYS, body
        message = body["message"]
        assert body["detail"] == message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def slow_app(batch_wait_timeout_s: float) -> dict:
    return small_app(
        "errslow", "/errslow", args={"request_deadline_s": DEADLINE_S},
        scorer_user_config={"batch_wait_timeout_s": batch_wait_timeout_s},
    )


@pytest.fixture(scope="module")
def extra_apps(serve_cluster):
    """'errlimits': small limits and a model alias; 'errslow': a scorer that waits 10 s (the most allowed) to fill a batch.

    The slow app's readiness canary (3 s timeout) cannot finish, so the app stays not ready (503)
    until `slow_but_ready` shortens the wait; then any request misses its 0.5 s deadline (504).
    """
    limits = small_app("errlimits", "/errlimits", args={**LIMITS, "model_aliases": [ALIAS]})
    with deployed(serve_cluster, [limits, slow_app(10)], wait="running"):
        serve_cluster.wait_ready("/errlimits")
        yield {"limits": f"{serve_cluster.url}/errlimits", "slow": f"{serve_cluster.url}/errslow"}


@pytest.fixture(scope="module")
def slow_but_ready(serve_cluster, extra_apps):
    """The slow app reconfigured live (user_config) to wait 2.5 s: the canary passes, requests still miss 0.5 s."""
    serve_cluster.add_app(slow_app(2.5))
    serve_cluster.wait_ready("/errslow", timeout_s=60)
    return extra_apps["slow"]


# ----- 400 and 422 on the main app ------------------------------------------------------------


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_empty_documents_or_query_is_400_in_the_family_body(http, route):
    response = http.post(route, json=rerank_body(route, QUERY, []))
    assert_family_error(response, route, 400, "empty")
    if route == "/rerank":
        assert response.json()["error_type"] == "empty"
    blank = http.post(route, json=rerank_body(route, "   ", TEXTS))
    assert_family_error(blank, route, 400, "query is empty")


def test_empty_score_request_is_400(http):
    assert_family_error(http.post("/score", json={"pairs": []}), "/score", 400)
    assert_family_error(http.post("/score", json={}), "/score", 400)


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank", "/score"])
def test_validation_errors_are_422_in_the_family_body(http, route):
    missing_query = {"texts": TEXTS} if route == "/rerank" else {"documents": TEXTS}
    if route == "/score":
        missing_query = {"pairs": [["only one"]]}
    message = assert_family_error(http.post(route, json=missing_query), route, 422)
    assert "Traceback" not in message
    if route == "/rerank":
        assert http.post(route, json=missing_query).json()["error_type"] == "validation"


MALFORMED = {
    "truncated JSON": b'{"query": "a", "texts": [',
    "not an object": b'["a", "b"]',
    "invalid UTF-8": b'{"query": "\xff\xfe", "texts": ["a"], "documents": ["a"], "pairs": [["a", "b"]]}',
    "raw null byte": b'{"query": "a\x00b", "texts": ["a"], "documents": ["a"]}',
    "escaped null byte": b'{"query": "a\\u0000b", "texts": ["a"], "documents": ["a"], "pairs": [["a\\u0000", "b"]]}',
    "null byte in a document": b'{"query": "a", "texts": ["x\\u0000"], "documents": ["x\\u0000"], "pairs": [["a", "x\\u0000"]]}',
    "wrong types": b'{"query": 5, "texts": "abc", "documents": {"a": 1}, "pairs": "ab"}',
    "top_n zero": b'{"query": "a", "texts": ["a"], "documents": ["a"], "top_n": 0, "pairs": [[1, 2]]}',
    "empty body": b"",
}


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank", "/score"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_bodies_are_4xx_never_5xx(http, route, case):
    response = http.post(route, content=MALFORMED[case], headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert_family_error(response, route, response.status_code)


# ----- limits: configurable, named in the error, checked before tokenization -------------------


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_limits_name_the_setting_and_its_value(extra_apps, route):
    base = extra_apps["limits"]
    ok = httpx.post(base + route, json=rerank_body(route, "q" * 50, ["d" * 200] * 5), timeout=60)
    assert ok.status_code == 200, ok.text
    cases = [
        (rerank_body(route, QUERY, ["paris"] * 6), "max_documents (5)"),
        (rerank_body(route, QUERY, ["paris", "d" * 201]), "max_document_chars (200)"),
        (rerank_body(route, "q" * 51, ["paris"]), "max_query_chars (50)"),
    ]
    for body, needle in cases:
        assert_family_error(httpx.post(base + route, json=body, timeout=60), route, 413, needle)


def test_score_limits(extra_apps):
    base = extra_apps["limits"]
    too_many = {"pairs": [[QUERY, "paris"]] * 6}
    assert_family_error(httpx.post(base + "/score", json=too_many, timeout=60), "/score", 413, "max_documents (5)")
    long_query = {"queries": ["q" * 51], "documents": ["paris"]}
    assert_family_error(httpx.post(base + "/score", json=long_query, timeout=60), "/score", 413, "max_query_chars (50)")


def padded(body: dict, size: int) -> bytes:
    """A JSON body of exactly `size` bytes: the body, then JSON whitespace."""
    import json

    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank"])
def test_body_limit_with_content_length_and_chunked(extra_apps, route):
    url = extra_apps["limits"] + route
    body = rerank_body(route, QUERY, TEXTS)
    headers = {"content-type": "application/json"}
    fits = httpx.post(url, content=padded(body, 2048), headers=headers, timeout=60)
    assert fits.status_code == 200, fits.text
    declared = httpx.post(url, content=padded(body, 2049), headers=headers, timeout=60)
    assert_family_error(declared, route, 413, "max_body_bytes (2048 bytes)")

    def chunks(total: int):
        raw = padded(body, total)
        for start in range(0, len(raw), 500):
            yield raw[start: start + 500]

    # A generator body goes out with Transfer-Encoding: chunked and no Content-Length.
    request = httpx.Request("POST", url, content=chunks(3000), headers=headers)
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    with httpx.Client(timeout=60) as client:
        chunked = client.send(request)
        assert_family_error(chunked, route, 413, "max_body_bytes (2048 bytes)")
        fits_chunked = client.send(httpx.Request("POST", url, content=chunks(2048), headers=headers))
        assert fits_chunked.status_code == 200, fits_chunked.text


def test_limits_are_checked_before_tokenization(extra_apps):
    """Over-limit requests never reach the tokenizer: its replica log has no line with their request ids."""
    base = extra_apps["limits"]
    tag = uuid.uuid4().hex[:8]
    over_limit = {
        f"docs-{tag}": {"query": QUERY, "texts": ["paris"] * 6},
        f"chars-{tag}": {"query": QUERY, "texts": ["d" * 201]},
        f"query-{tag}": {"query": "q" * 51, "texts": ["paris"]},
    }
    for request_id, body in over_limit.items():
        response = httpx.post(base + "/rerank", json=body, headers={"X-Request-ID": request_id}, timeout=60)
        assert response.status_code == 413
    control = f"control-{tag}"
    assert httpx.post(base + "/rerank", json={"query": QUERY, "texts": TEXTS}, headers={"X-Request-ID": control}, timeout=60).status_code == 200

    def tokenizer_request_ids():
        ids = {line.get("request_id") for line in replica_log_lines("errlimits", "Tokenizer")}
        return ids if control in ids else None

    seen = poll(tokenizer_request_ids, 20, "the control request in the tokenizer log")
    assert not seen & set(over_limit)


# ----- 503 and 504 ----------------------------------------------------------------------------


def test_not_ready_is_503_with_retry_after(extra_apps):
    """Runs before the 504 test, which makes the slow app ready.

    Each request to an app that is not ready runs the ingress's readiness canary (3 s timeout),
    which waits in the slow scorer's 10 s window: the first canary starts that window, so only two
    requests fit in it with room to spare. A third (a /ready first, as this test once sent) ended
    past the window on a slowed host, and its canary passed. /ready's own 503 is checked in
    test_serving_lifecycle.py and test_faults.py."""
    for route in ("/rerank", "/v1/rerank"):
        response = httpx.post(extra_apps["slow"] + route, json=rerank_body(route, QUERY, TEXTS), timeout=60)
        assert_family_error(response, route, 503, "not ready")
        assert int(response.headers["retry-after"]) >= 1


def test_missed_deadline_is_504_in_the_family_body(slow_but_ready):
    """All routes at once, so all wait in one 2.5 s batch window and each misses its 0.5 s deadline."""
    import concurrent.futures

    routes = ["/rerank", "/v1/rerank", "/v2/rerank", "/score"]

    def call(route):
        body = {"pairs": [[QUERY, TEXTS[0]]]} if route == "/score" else rerank_body(route, QUERY, TEXTS)
        return httpx.post(slow_but_ready + route, json=body, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(len(routes)) as pool:
        responses = list(pool.map(call, routes))
    for route, response in zip(routes, responses):
        assert_family_error(response, route, 504, f"request_deadline_s ({DEADLINE_S} s)")
        assert response.elapsed.total_seconds() < 2.5
    assert responses[0].json()["error_type"] == "deadline"


# ----- model names ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank"])
def test_model_field_accepts_served_id_and_aliases(extra_apps, tiny_model_dir, route):
    url = extra_apps["limits"] + route
    for name in (str(tiny_model_dir), tiny_model_dir.name, ALIAS):
        response = httpx.post(url, json={"model": name, "query": QUERY, "documents": TEXTS}, timeout=60)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["model"] == str(tiny_model_dir)
    wrong = httpx.post(url, json={"model": "rerank-v3.5", "query": QUERY, "documents": TEXTS}, timeout=60)
    assert_family_error(wrong, route, 422, "rerank-v3.5", str(tiny_model_dir), ALIAS)


# ----- Cohere v2 legacy fields, max_tokens_per_doc and chunk mode -----------------------------

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "paris", "is", "capital", "and", "most", "populous", "city", "of", "france"]


def test_v2_honours_legacy_fields(http, tiny_model_dir):
    docs = [{"title": "paris", "body": TEXTS[0]}, {"title": "berlin", "body": TEXTS[1]}]
    texts = [f"title: {d['title']}\nbody: {d['body']}" for d in docs]
    _, normalized = reference_scores(tiny_model_dir, QUERY, texts)
    body = {"query": QUERY, "documents": docs, "rank_fields": ["title", "body"], "return_documents": True,
            "max_chunks_per_doc": 3}
    response = http.post("/v2/rerank", json=body)
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["document"]["text"] == texts[result["index"]]
        assert result["relevance_score"] == pytest.approx(normalized[result["index"]], abs=1e-4)
    plain = http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS}).json()["results"]
    assert all("document" not in result for result in plain)


def test_max_tokens_per_doc_scores_the_truncated_prefix(http, tiny_model_dir, tiny_tokenizer):
    words = (WORDS * 3)[:40]
    document = " ".join(words)
    prefix = " ".join(words[:10])
    assert len(tiny_tokenizer(document, add_special_tokens=False)["input_ids"]) == 40
    _, expected = reference_scores(tiny_model_dir, QUERY, [prefix, document])
    assert abs(expected[0] - expected[1]) > 1e-3, "the prefix must score differently from the whole document"
    response = http.post("/v2/rerank", json={"query": QUERY, "documents": [document], "max_tokens_per_doc": 10})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["relevance_score"] == pytest.approx(expected[0], abs=1e-4)
    via_score = http.post("/score", json={"pairs": [[QUERY, prefix]]}).json()["scores"][0]["score"]
    assert response.json()["results"][0]["relevance_score"] == pytest.approx(via_score, abs=1e-5)


CHUNK_QUERY = "capital of france"
FILLER = 600  # "paris" tokens ahead of the relevant tail


def windows(tokens: list[str], budget: int, overlap: int = 32) -> list[list[str]]:
    """The tokenizer's windows: stride budget - overlap, and a last one that ends at the end."""
    stride = budget - overlap
    starts = list(range(0, len(tokens) - budget, stride)) + [len(tokens) - budget]
    return [tokens[start: start + budget] for start in starts]


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank"])
def test_chunk_mode_scores_the_best_window(http, tiny_model_dir, tiny_tokenizer, route):
    """A passage past 512 tokens whose relevant part is at its end gets the max over its windows."""
    budget = 512 - len(tiny_tokenizer(CHUNK_QUERY, add_special_tokens=False)["input_ids"]) - 3
    candidates = [line for line in ("the quick brown fox jumps over the lazy dog",
                                    "paris is the capital and most populous city of france",
                                    "what is the capital of france")]
    chosen = None
    for tail in candidates:
        tokens = ["paris"] * FILLER + tail.split()
        texts = [" ".join(w) for w in windows(tokens, budget)]
        _, scores = reference_scores(tiny_model_dir, CHUNK_QUERY, texts)
        if scores[-1] > max(scores[:-1]) + 1e-3:
            chosen = tokens, texts, scores
            break
    assert chosen, "no candidate tail makes the last window the best one"
    tokens, texts, scores = chosen
    passage = " ".join(tokens)
    assert len(tiny_tokenizer(passage, add_special_tokens=False)["input_ids"]) == len(tokens) > 512
    assert len(texts) == 2

    chunked = http.post(route, json={"query": CHUNK_QUERY, "documents": [passage, "paris"], "max_chunks_per_doc": 4})
    assert chunked.status_code == 200, chunked.text
    score = {r["index"]: r["relevance_score"] for r in chunked.json()["results"]}[0]
    last_window = http.post("/score", json={"pairs": [[CHUNK_QUERY, texts[-1]]]}).json()["scores"][0]["score"]
    assert score == pytest.approx(last_window, abs=1e-5)
    assert score == pytest.approx(scores[-1], abs=1e-4)
    # Without chunking the passage is cut at the model's length: the first window's score.
    truncated = http.post(route, json={"query": CHUNK_QUERY, "documents": [passage]}).json()["results"][0]
    assert truncated["relevance_score"] == pytest.approx(scores[0], abs=1e-4)
