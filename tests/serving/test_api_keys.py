"""API keys: `RERANKER_API_KEYS` guards the rerank and score routes only (tier 3, plus one code-level check)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from serving_helpers import deployed, files_containing, logs_dir, small_app

serving = pytest.mark.serving

QUERY = "what is the capital of france"
TEXTS = ["paris is the capital and most populous city of france", "berlin ist die hauptstadt von deutschland"]
ENV_KEYS = ["key-one", "key-two"]
# Unique, so a search of every log file of the session finds only leaks of these.
FILE_KEYS = [f"file-key-{uuid.uuid4().hex}", f"file-key-{uuid.uuid4().hex}"]

GUARDED = {
    "/rerank": {"query": QUERY, "texts": TEXTS},
    "/v1/rerank": {"query": QUERY, "documents": TEXTS},
    "/v2/rerank": {"query": QUERY, "documents": TEXTS},
    "/score": {"pairs": [[QUERY, TEXTS[0]]]},
    "/weaviate/rerank": {"query": QUERY, "documents": TEXTS, "property": ""},
}


@pytest.fixture(scope="module")
def keyed_apps(serve_cluster, tmp_path_factory):
    """'keys': keys from a comma-separated variable; 'keyfile': keys from a file, one per line."""
    key_file = tmp_path_factory.mktemp("keys") / "api_keys.txt"
    key_file.write_text(f"# one key per line\n{FILE_KEYS[0]}\n\n  {FILE_KEYS[1]}  \n", encoding="utf-8")
    apps = [
        small_app("keys", "/keys", env={"RERANKER_API_KEYS": ",".join(ENV_KEYS)}),
        small_app("keyfile", "/keyfile", env={"RERANKER_API_KEYS": str(key_file)}),
    ]
    with deployed(serve_cluster, apps):
        yield {"keys": f"{serve_cluster.url}/keys", "keyfile": f"{serve_cluster.url}/keyfile"}


def assert_unauthenticated(response: httpx.Response, route: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    if route in ("/rerank", "/score", "/weaviate/rerank"):
        assert body["error_type"] == "unauthenticated" and set(body) == {"error", "error_type"}
    else:
        assert set(body) == {"message", "detail"} and "API key" in body["message"] and body["detail"] == body["message"]


@serving
@pytest.mark.parametrize("route", list(GUARDED))
def test_guarded_routes_need_a_key(keyed_apps, route):
    url = keyed_apps["keys"] + route
    body = GUARDED[route]
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "wrong-key"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "key-one-and-more"},
        {"Authorization": "Bearer key-one-and-more"},
        {"Authorization": "Bearer key-on"},
        {"Authorization": "key-on"},
    ):
        assert_unauthenticated(httpx.post(url, json=body, headers=headers, timeout=60), route)
    for key in ENV_KEYS:
        # `Bearer <key>`, and the bare key that LlamaIndex's TEI clients send.
        for header in (f"Bearer {key}", key):
            response = httpx.post(url, json=body, headers={"Authorization": header}, timeout=60)
            assert response.status_code == 200, (header, response.text)
    # The scheme is case-insensitive (RFC 7235).
    assert httpx.post(url, json=body, headers={"Authorization": "bearer key-two"}, timeout=60).status_code == 200


@serving
def test_auth_is_checked_before_validation(keyed_apps):
    """Without a key, a bad body is still 401: nothing about the request is judged first."""
    url = keyed_apps["keys"]
    assert_unauthenticated(httpx.post(url + "/rerank", json={"query": QUERY, "texts": []}, timeout=60), "/rerank")
    # Not even the schema: a body that fails validation, or is not JSON, gets 401 without a key.
    assert_unauthenticated(httpx.post(url + "/rerank", json={"texts": 5}, timeout=60), "/rerank")
    assert_unauthenticated(httpx.post(url + "/v2/rerank", content=b"{not json", timeout=60), "/v2/rerank")


@serving
def test_operations_routes_stay_open(keyed_apps):
    base = keyed_apps["keys"]
    assert httpx.get(base + "/health", timeout=60).json() == {"status": "ok"}
    assert httpx.get(base + "/ready", timeout=60).status_code == 200
    metrics = httpx.get(base + "/metrics", timeout=60)
    assert metrics.status_code == 200 and "ray_reranker_requests_total" in metrics.text
    # Weaviate's module sends no key: its readiness and meta paths stay open (its /rerank does not).
    assert httpx.get(base + "/weaviate/.well-known/ready", timeout=60).status_code == 204
    assert httpx.get(base + "/weaviate/.well-known/live", timeout=60).status_code == 204
    assert httpx.get(base + "/weaviate/meta", timeout=60).json()["model"]["max_length"] == 512


@serving
def test_llamaindex_tei_reranker_sends_the_bare_key(keyed_apps, tiny_model_dir):
    """LlamaIndex's TEI reranker puts `auth_token` in Authorization as it is, without `Bearer`.

    (A wrong bare key is a 401: test_guarded_routes_need_a_key.)
    """
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference
    from reference import reference_scores

    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in TEXTS]
    reranker = TextEmbeddingInference(base_url=keyed_apps["keys"], auth_token="key-two", top_n=2)
    ranked = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [node.score for node in ranked] == pytest.approx(sorted(normalized, reverse=True), abs=1e-4)
    assert [node.text for node in ranked] == [TEXTS[i] for i in sorted(range(2), key=lambda i: -normalized[i])]


@serving
def test_cohere_sdk_with_an_api_key(keyed_apps, tiny_model_dir):
    import cohere

    base = keyed_apps["keys"]
    v1 = cohere.Client(api_key="key-one", base_url=base)
    assert len(v1.rerank(query=QUERY, documents=TEXTS, model=str(tiny_model_dir)).results) == 2
    v2 = cohere.ClientV2(api_key="key-two", base_url=base)
    assert len(v2.rerank(model=str(tiny_model_dir), query=QUERY, documents=TEXTS, top_n=1).results) == 1
    for client in (cohere.Client(api_key="not-a-key", base_url=base), cohere.ClientV2(api_key="not-a-key", base_url=base)):
        with pytest.raises(cohere.core.api_error.ApiError) as error:
            client.rerank(model=str(tiny_model_dir), query=QUERY, documents=TEXTS)
        assert error.value.status_code == 401


@serving
def test_keys_from_a_file(keyed_apps):
    url = keyed_apps["keyfile"] + "/v2/rerank"
    body = GUARDED["/v2/rerank"]
    for key in FILE_KEYS:
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code == 200
    for wrong in ("key-one", "# one key per line", "one"):
        assert_unauthenticated(httpx.post(url, json=body, headers={"Authorization": f"Bearer {wrong}"}, timeout=60), "/v2/rerank")


@serving
def test_grpc_rerank_needs_a_key(keyed_apps, serve_cluster):
    """TEI's gRPC Rerank reads the key from metadata `authorization`, with the same check as HTTP; it
    is never logged."""
    import time

    import grpc

    from reranker.proto import tei_pb2, tei_pb2_grpc

    request = tei_pb2.RerankRequest(query=QUERY, texts=TEXTS)
    app = ("application", "keyfile")
    with grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}") as channel:
        stub = tei_pb2_grpc.RerankStub(channel)
        for metadata in ((), (("authorization", f"Bearer wrong-{FILE_KEYS[0]}"),), (("authorization", "Bearer"),)):
            with pytest.raises(grpc.RpcError) as failure:
                stub.Rerank(request, metadata=(app, *metadata), timeout=60)
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, failure.value.details()
            assert "API key" in failure.value.details()
        stream = iter([tei_pb2.RerankStreamRequest(query=QUERY, text=TEXTS[0])])
        with pytest.raises(grpc.RpcError) as failure:
            stub.RerankStream(stream, metadata=(app,), timeout=60)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for key in FILE_KEYS:
            response = stub.Rerank(request, metadata=(app, ("authorization", f"Bearer {key}")), timeout=60)
            assert sorted(rank.index for rank in response.ranks) == [0, 1]
    time.sleep(1.5)
    leaks = files_containing(FILE_KEYS + [f"wrong-{FILE_KEYS[0]}"])
    assert not any(leaks.values()), leaks


@serving
def test_keys_never_reach_the_logs(keyed_apps):
    # Requests with right and wrong keys, on every guarded route, then a look at every log file.
    for base, keys in ((keyed_apps["keys"], ENV_KEYS), (keyed_apps["keyfile"], FILE_KEYS)):
        for route, body in GUARDED.items():
            for key in keys + ["wrong-" + keys[0]]:
                httpx.post(base + route, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    # Ray's own logs may record the application's runtime_env (which holds the comma-separated keys),
    # so those are searched where requests are handled: the proxy's and replicas' logs. The file's
    # keys appear in no configuration, so every file of the session is searched for them.
    import time

    time.sleep(1.5)
    leaks = files_containing(FILE_KEYS + ["wrong-" + FILE_KEYS[0]])
    assert not any(leaks.values()), leaks
    serve_logs = logs_dir() / "serve"
    leaks = files_containing(ENV_KEYS + ["wrong-key-one"], serve_logs)
    handled = {k: [f for f in v if f.startswith(("proxy_", "replica_"))] for k, v in leaks.items()}
    assert not any(handled.values()), handled


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    """Code-level: hmac.compare_digest against every configured key, whether or not one matches."""
    from reranker import server

    calls = []

    def compare(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(server.hmac, "compare_digest", compare)
    keys = [b"key-one", b"key-two", b"key-three"]

    server.check_api_key("Bearer key-one", keys)  # matches the first key, still compared with all three
    assert [b for _, b in calls] == keys and all(a == b"key-one" for a, _ in calls)
    calls.clear()
    server.check_api_key("key-two", keys)  # the bare key: the same comparisons
    assert [b for _, b in calls] == keys and all(a == b"key-two" for a, _ in calls)
    for header in ("Bearer nope", "", "Basic key-one", "nope", "Bearer"):
        calls.clear()
        with pytest.raises(server.UnauthenticatedError):
            server.check_api_key(header, keys)
        assert [b for _, b in calls] == keys
