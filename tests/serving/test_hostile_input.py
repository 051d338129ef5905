"""Hostile and malformed input against the session app: every case gets its documented 4xx, fast.

TEI routes (`/rerank`, `/score`) answer `{"error", "error_type"}`; Cohere routes (`/v1/rerank`,
`/v2/rerank`) answer `{"message", "detail"}`. After the whole corpus, `/health` and a normal rerank still work.

Decisions this file pins down:
- An empty or whitespace-only document inside a non-empty list is scored as an empty passage,
  not rejected: search engines send documents whose field is empty, and one of them must not fail
  the whole request. Only an empty documents list (400) or an empty query (400) is rejected.
- Zero-width and right-to-left characters are ordinary text (200). Null bytes and unpaired UTF-16
  surrogates (JSON `"\\ud800"`) are not text a tokenizer can take: 422.
- `top_n` below 1 is 422; `top_n` above the number of documents returns every document.
- A body that is not valid UTF-8 JSON (bad bytes, syntax, or nesting deeper than the parser's
  recursion limit) is 422, like any other invalid body; over the size or count limits it is 413.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.timeout(120)]

QUERY = "what is the capital of france"
TEXTS = ["paris is the capital and most populous city of france", "berlin ist die hauptstadt von deutschland"]
JSON = {"content-type": "application/json"}

# (route, documents field) per API family.
TEI = ("/rerank", "texts")
V1 = ("/v1/rerank", "documents")
V2 = ("/v2/rerank", "documents")
RERANK_ROUTES = [TEI, V1, V2]


def check_error(response, status: int, route: str, contains: str = "") -> None:
    """The status and the route family's JSON error body."""
    assert response.status_code == status, f"{route}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if route.startswith(("/v1/", "/v2/")):
        assert set(body) == {"message", "detail"}, body
        message = body["message"]
        assert body["detail"] == message
    else:
        assert set(body) == {"error", "error_type"}, body
        message = body["error"]
    assert contains.lower() in message.lower(), f"{route}: {contains!r} not in {message!r}"
    assert "Traceback" not in message


def body(route_field, query=QUERY, documents=TEXTS, **extra) -> dict:
    _, field = route_field
    return {"query": query, field: documents, **extra}


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_unparseable_bodies_are_422(http, route_field):
    route, field = route_field
    cases = {
        "invalid JSON": b'{"query": "a", ',
        "invalid UTF-8": b'{"query": "\xff\xfe\xfd", "' + field.encode() + b'": ["a"]}',
        "deep nesting": b'{"query": "a", "' + field.encode() + b'": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "deep array body": b"[" * 10_000 + b"]" * 10_000,
        "JSON array body": b"[1, 2]",
        "empty body": b"",
    }
    for content in cases.values():
        response = http.post(route, content=content, headers=JSON)
        check_error(response, 422, route, "invalid request")


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_null_bytes_and_unpaired_surrogates_are_422(http, route_field):
    route, field = route_field
    check_error(http.post(route, json=body(route_field, query="capital\x00 of france")), 422, route, "null byte")
    check_error(http.post(route, json=body(route_field, documents=["ok", "bad\x00doc"])), 422, route, "document 1")
    # json.dumps escapes a lone surrogate as \ud800, which json.loads on the server turns back into one.
    escaped = ('{"query": "\\ud800 capital", "%s": ["a"]}' % field).encode()
    check_error(http.post(route, content=escaped, headers=JSON), 422, route, "surrogate")
    escaped = ('{"query": "capital", "%s": ["a", "\\udfff"]}' % field).encode()
    check_error(http.post(route, content=escaped, headers=JSON), 422, route, "document 1")
    # A correctly paired surrogate escape is an ordinary emoji.
    paired = ('{"query": "capital \\ud83d\\ude42", "%s": ["a"]}' % field).encode()
    assert http.post(route, content=paired, headers=JSON).status_code == 200


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_limits_answer_413_without_scoring(http, route_field):
    route, _ = route_field
    info = http.get("/info").json()["limits"]
    too_long = "x" * (info["max_document_chars"] + 1)
    check_error(http.post(route, json=body(route_field, documents=["ok", too_long])), 413, route, "max_document_chars")
    check_error(http.post(route, json=body(route_field, query="q" * (info["max_query_chars"] + 1))), 413, route, "max_query_chars")
    # 100k tiny documents fit in the body limit, so the count limit answers.
    check_error(http.post(route, json=body(route_field, documents=["x"] * 100_000)), 413, route, "max_documents")
    # Past max_body_bytes the middleware answers from Content-Length, before reading or parsing.
    huge = ["y" * 40_000] * (info["max_body_bytes"] // 40_000 + 2)
    check_error(http.post(route, json=body(route_field, documents=huge)), 413, route, "max_body_bytes")


def test_body_limit_applies_to_chunked_bodies_without_content_length(http):
    """A streamed body without Content-Length is counted as it arrives and cut off at the limit."""
    limit = http.get("/info").json()["limits"]["max_body_bytes"]
    chunk = b"x" * 65_536

    def stream():
        yield b'{"query": "a", "texts": ["'
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b'"]}'

    response = http.post("/rerank", content=stream(), headers=JSON)
    check_error(response, 413, "/rerank", "max_body_bytes")


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_wrong_types_are_422(http, route_field):
    route, field = route_field
    for bad in ("a single string", 42, None, {"text": "an object, not a list"}, [["nested"]], [1, 2.5], [None]):
        check_error(http.post(route, json=body(route_field, documents=bad)), 422, route, field)
    for bad in (None, 5, ["a list"], {"q": 1}):
        check_error(http.post(route, json=body(route_field, query=bad)), 422, route, "query")
    check_error(http.post(route, json={field: TEXTS}), 422, route, "query")
    check_error(http.post(route, json={"query": QUERY}), 422, route, field)


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_top_n_bounds(http, route_field):
    route, _ = route_field
    for bad in (-1, 0, 1.5, "two", -(10**30)):
        check_error(http.post(route, json=body(route_field, top_n=bad)), 422, route, "top_n")
    for huge in (len(TEXTS) + 1, 10**12, 10**30):
        response = http.post(route, json=body(route_field, top_n=huge))
        assert response.status_code == 200, response.text
        results = response.json() if route == "/rerank" else response.json()["results"]
        assert sorted(r["index"] for r in results) == list(range(len(TEXTS)))


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_empty_query_or_empty_list_is_400_but_empty_documents_are_scored(http, route_field):
    route, _ = route_field
    for query in ("", " ", " \t\n\r ", "\u3000"):
        check_error(http.post(route, json=body(route_field, query=query)), 400, route, "query is empty")
    check_error(http.post(route, json=body(route_field, documents=[])), 400, route, "empty")
    # Empty and whitespace-only documents inside a non-empty list are scored, in their slots.
    response = http.post(route, json=body(route_field, documents=["", "   ", TEXTS[0], "\n"]))
    assert response.status_code == 200, response.text
    results = response.json() if route == "/rerank" else response.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]


def test_score_route_shapes(http):
    check_error(http.post("/score", json={}), 400, "/score")
    check_error(http.post("/score", json={"queries": ["a"], "documents": ["a", "b"]}), 422, "/score")
    check_error(http.post("/score", json={"pairs": [["only a query"]]}), 422, "/score", "pair 0")
    check_error(http.post("/score", json={"pairs": "not pairs"}), 422, "/score", "pairs")
    check_error(http.post("/score", json={"pairs": [[QUERY, "x\x00"]]}), 422, "/score", "null byte")
    check_error(http.post("/score", json={"pairs": [["", "x"]]}), 400, "/score", "query is empty")
    check_error(http.post("/score", content=b"\xff", headers=JSON), 422, "/score", "invalid request")


@pytest.mark.parametrize("route_field", RERANK_ROUTES, ids=lambda rf: rf[0])
def test_zero_width_and_rtl_text_is_valid(http, route_field):
    route, _ = route_field
    documents = [
        "\u200b\u200c\u200d\ufeff",  # zero-width space, non-joiner, joiner, BOM
        "\u202eecnarf fo latipac\u202c",  # right-to-left override
        "שלום עולם \u200f",  # Hebrew with a right-to-left mark
        "القاهرة هي عاصمة مصر \u2067isolate\u2069",
        "e\u0301\u0301\u0301 combining marks",
    ]
    response = http.post(route, json=body(route_field, query="\u200bcapital\u200f", documents=documents))
    assert response.status_code == 200, response.text
    results = response.json() if route == "/rerank" else response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(documents)))


def test_unknown_route_and_method(http):
    assert http.post("/no-such-route", json={}).status_code == 404
    assert http.get("/rerank").status_code == 405


def test_service_is_healthy_after_the_corpus(http):
    """Runs last in this file (pytest keeps file order): nothing above broke the replicas."""
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").status_code == 200
    response = http.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert response.status_code == 200
    assert sorted(r["index"] for r in response.json()) == [0, 1]
