"""Rerank clients as their docs tell a user to point them at a self-hosted server, through the real app
over HTTP (tier 3): one test per client of issue 15's table.

Real libraries where they install beside the rest of the `test` extra (tei-client, LiteLLM,
LlamaIndex's Jina reranker). Replayed with the exact body the library sends, and its answer read
the way the library reads it, where it cannot be installed here: `infinity_client` pins
httpx<0.28 (the suite pins 0.28.1), so it and LangChain's `InfinityRerank` (built on it) are
replayed; LangChain's `JinaRerank` posts to a hard-coded api.jina.ai URL; Weaviate's module is Go.
"""

from __future__ import annotations

import concurrent.futures
import os

import httpx
import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY
from reference import reference_scores

pytestmark = pytest.mark.serving

TEXTS = MULTILINGUAL_TEXTS


def by_score(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


# ----- Infinity and vLLM bodies on /rerank ------------------------------------------------------


def infinity_client_body(query: str, documents: list[str], **fields) -> dict:
    """What infinity_client 0.0.78 posts to /rerank: `RerankInput(...).to_dict()`
    (infinity_client/models/rerank_input.py): return_documents, raw_scores and model always, with
    their defaults False, False and "default/not-specified"; top_n only when set."""
    return {"query": query, "documents": documents, "return_documents": False, "raw_scores": False,
            "model": "default/not-specified", **fields}


def parse_infinity_result(body: dict) -> dict:
    """What infinity_client's `ReRankResult.from_dict` requires: results (relevance_score, index),
    model, and usage with prompt_tokens and total_tokens; object, id and created optional."""
    results = [{"relevance_score": r["relevance_score"], "index": r["index"], "document": r.get("document")}
               for r in body["results"]]
    return {"results": results, "model": body["model"], "usage": (body["usage"]["prompt_tokens"], body["usage"]["total_tokens"]),
            "object": body.get("object"), "id": body.get("id"), "created": body.get("created")}


def test_infinity_client_body(http, tiny_model_dir):
    raw, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    response = http.post("/rerank", json=infinity_client_body(QUERY, TEXTS), headers={"X-Request-ID": "inf-1"})
    assert response.status_code == 200, response.text
    parsed = parse_infinity_result(response.json())
    assert [r["index"] for r in parsed["results"]] == by_score(normalized)
    for result in parsed["results"]:
        assert result["relevance_score"] == pytest.approx(normalized[result["index"]], abs=1e-4)
        assert result["document"] is None and "document" not in response.json()["results"][0]
    assert parsed["model"] == str(tiny_model_dir) and parsed["object"] == "rerank" and parsed["id"] == "inf-1"
    assert isinstance(parsed["created"], int)
    prompt_tokens, total_tokens = parsed["usage"]
    assert prompt_tokens == total_tokens > len(TEXTS)

    # return_documents: a plain string; raw_scores: the logits; top_n: the best n.
    both = http.post("/rerank", json=infinity_client_body(QUERY, TEXTS, return_documents=True, raw_scores=True, top_n=3))
    results = parse_infinity_result(both.json())["results"]
    assert [r["index"] for r in results] == by_score(raw)[:3]
    for result in results:
        assert result["document"] == TEXTS[result["index"]]
        assert result["relevance_score"] == pytest.approx(raw[result["index"]], abs=1e-4)


def test_langchain_infinity_rerank_body(http, tiny_model_dir):
    """LangChain's InfinityRerank (langchain_community/document_compressors/infinity_rerank.py) sends
    `RerankInput(query, documents, model)` through infinity_client, reads index and relevance_score,
    sorts by score and keeps its top_n (3)."""
    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    body = infinity_client_body(QUERY, TEXTS, model=tiny_model_dir.name)
    results = parse_infinity_result(http.post("/rerank", json=body).json())["results"]
    kept = sorted(({"index": r["index"], "relevance_score": r["relevance_score"]} for r in results),
                  key=lambda r: r["relevance_score"], reverse=True)[:3]
    assert [r["index"] for r in kept] == by_score(normalized)[:3]
    # A model this server does not serve is named in a 422 (Infinity itself would use its one model).
    wrong = http.post("/rerank", json=infinity_client_body(QUERY, TEXTS, model="BAAI/bge-reranker-base"))
    assert wrong.status_code == 422 and "BAAI/bge-reranker-base" in wrong.json()["error"]


def test_vllm_top_n_zero_means_every_document(http):
    body = {"model": None, "query": QUERY, "documents": TEXTS[:3], "top_n": 0, "truncate_prompt_tokens": 100}
    response = http.post("/rerank", json=body)
    assert response.status_code == 200, response.text
    assert sorted(r["index"] for r in response.json()["results"]) == [0, 1, 2]


def test_rerank_takes_one_body_shape_and_tei_answers_stay_exact(http):
    both = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "documents": TEXTS})
    assert both.status_code == 422 and both.json()["error_type"] == "validation"
    assert "'texts' and 'documents'" in both.json()["error"], both.json()
    neither = http.post("/rerank", json={"query": QUERY, "passages": TEXTS})
    assert neither.status_code == 422 and "needs 'texts' (TEI) or 'documents'" in neither.json()["error"]
    field = http.post("/rerank", json={"query": 5, "texts": TEXTS})
    assert field.status_code == 422 and field.json()["error"].startswith("Invalid request: query:"), field.json()
    # Elasticsearch rejects any field it does not know: a TEI answer is a bare list of index and score.
    tei = http.post("/rerank", json={"query": QUERY, "texts": TEXTS[:3], "return_text": False})
    assert all(set(item) == {"index", "score"} for item in tei.json())


@pytest.fixture(scope="module")
def litellm_module():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list
    import litellm

    return litellm


def test_litellm_infinity_provider(serve_cluster, tiny_model_dir, litellm_module):
    """LiteLLM's infinity/ provider with the server root (its docs) and with .../v1 as api_base."""
    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    model = f"infinity/{tiny_model_dir.name}"
    root = litellm_module.rerank(model=model, api_base=serve_cluster.url, query=QUERY, documents=TEXTS, top_n=3)
    assert [r["index"] for r in root.results] == by_score(normalized)[:3]
    assert [r["document"]["text"] for r in root.results] == [TEXTS[i] for i in by_score(normalized)[:3]]
    assert root.meta["tokens"]["input_tokens"] > len(TEXTS)
    v1 = litellm_module.rerank(model=model, api_base=serve_cluster.url + "/v1", query=QUERY, documents=TEXTS,
                               return_documents=False)
    assert [r["index"] for r in v1.results] == by_score(normalized)
    # /v1/rerank's usage now has prompt_tokens, which LiteLLM reports as input tokens (0 without it).
    assert v1.meta["tokens"]["input_tokens"] == v1.meta["billed_units"]["total_tokens"] > len(TEXTS)


def test_litellm_hosted_vllm_provider(serve_cluster, tiny_model_dir, litellm_module):
    """LiteLLM's hosted_vllm/ provider reads `document` as vLLM's {"text"} object: with documents
    returned it needs the Cohere-shaped /v1/rerank (api_base .../v1); without, the root works too."""
    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    model = f"hosted_vllm/{tiny_model_dir.name}"
    v1 = litellm_module.rerank(model=model, api_base=serve_cluster.url + "/v1", query=QUERY, documents=TEXTS, top_n=2)
    assert [r["document"]["text"] for r in v1.results] == [TEXTS[i] for i in by_score(normalized)[:2]]
    assert v1.results[0]["relevance_score"] == pytest.approx(max(normalized), abs=1e-4)
    root = litellm_module.rerank(model=model, api_base=serve_cluster.url, query=QUERY, documents=TEXTS,
                                 return_documents=False)
    assert [r["index"] for r in root.results] == by_score(normalized)
    for result in root.results:
        assert result["relevance_score"] == pytest.approx(normalized[result["index"]], abs=1e-4)


# ----- Cohere and Jina answers and errors -------------------------------------------------------


def test_cohere_and_jina_answers_carry_prompt_tokens(http):
    for route in ("/v1/rerank", "/v2/rerank"):
        usage = http.post(route, json={"query": QUERY, "documents": TEXTS[:2]}).json()["usage"]
        assert usage["prompt_tokens"] == usage["total_tokens"] > 2


def test_llamaindex_jina_rerank_reads_detail(serve_cluster, tiny_model_dir):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in TEXTS]
    base = serve_cluster.url + "/v1"
    ranked = JinaRerank(api_key="unused", base_url=base, model=tiny_model_dir.name, top_n=3).postprocess_nodes(
        nodes, QueryBundle(QUERY)
    )
    assert [node.score for node in ranked] == pytest.approx(sorted(normalized, reverse=True)[:3], abs=1e-4)
    with pytest.raises(RuntimeError, match="Unknown model 'jina-reranker-v2-base-multilingual'"):
        JinaRerank(api_key="unused", base_url=base, model="jina-reranker-v2-base-multilingual").postprocess_nodes(
            nodes, QueryBundle(QUERY)
        )


def test_langchain_jina_rerank_reads_detail(http):
    """LangChain's JinaRerank (langchain_community/document_compressors/jina_rerank.py) posts
    {query, documents, model, top_n} to a fixed api.jina.ai URL and raises RuntimeError(resp["detail"])
    when the answer has no results."""
    answer = http.post("/v1/rerank", json={"query": QUERY, "documents": [], "model": None, "top_n": 3}).json()
    assert "results" not in answer and "No documents to rank" in answer["detail"]


# ----- tei-client: /info then /rerank ---------------------------------------------------------


TEI_CLIENT_SCRIPT = """
import json, sys
from tei_client import HttpClient, ModelType
client = HttpClient(sys.argv[1], timeout=60)
info = client.info()
result = client.rerank(sys.argv[2], json.loads(sys.argv[3]), return_text=True, raw_scores=True)
print(json.dumps({
    "reranker": info.server_model_type == ModelType.Reranker,
    "info": info.model_dump(mode="json"),
    "ranks": [rank.model_dump() for rank in result.ranks],
}))
"""


def test_tei_client_reads_info_and_reranks(serve_cluster, tiny_model_dir):
    """tei-client's HttpClient: /info (it refuses to rerank unless model_type is reranker), then /rerank.

    In its own process: importing tei_client registers TEI's proto messages in protobuf's default
    pool, and this service's gRPC modules (imported by other tests) register the same names.
    """
    import json
    import subprocess
    import sys

    from ray import serve

    def running() -> dict:
        deployments = serve.status().applications["reranker"].deployments
        return {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}

    raw, _ = reference_scores(tiny_model_dir, QUERY, TEXTS)
    before = running()  # replica counts: read on both sides of the call, as autoscaling may move them
    done = subprocess.run([sys.executable, "-c", TEI_CLIENT_SCRIPT, serve_cluster.url, QUERY, json.dumps(TEXTS)],
                          capture_output=True, text=True, timeout=120)
    after = running()
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    info = answer["info"]
    assert answer["reranker"]
    assert info["server_model_metadata"] == {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
    assert info["server_model_id"] == str(tiny_model_dir) and info["server_model_sha"] is None  # a local directory
    assert info["server_model_dtype"] == "float32"
    assert info["max_input_length"] == 512 and info["max_client_batch_size"] == 1000
    assert info["max_batch_tokens"] > 0 and info["max_batch_requests"] > 0
    assert info["tokenization_workers"] in (before["Tokenizer"], after["Tokenizer"])
    ingress = serve_cluster.base_config["applications"][0]["deployments"][0]
    assert info["max_concurrent_requests"] in {
        ingress["max_ongoing_requests"] * counts["Ingress"] + ingress["max_queued_requests"] for counts in (before, after)
    }

    assert [rank["index"] for rank in answer["ranks"]] == by_score(raw)
    for rank in answer["ranks"]:
        assert rank["score"] == pytest.approx(raw[rank["index"]], abs=1e-4) and rank["text"] == TEXTS[rank["index"]]


# ----- Weaviate's reranker-transformers module ------------------------------------------------

WEAVIATE_MAX_DOCUMENTS = 32  # the module's maxDocuments per request (clients/ranker.go)


def weaviate_rank(origin: str, query: str, documents: list[str]) -> list[tuple[str, float]]:
    """The module's client (modules/reranker-transformers/clients/ranker.go): documents in chunks of
    32, one POST {origin}/rerank per chunk ({"query", "documents", "property": ""}), concurrently;
    `scores` appended in chunk order; a non-200 fails with its `error`."""
    chunks = [documents[i: i + WEAVIATE_MAX_DOCUMENTS] for i in range(0, len(documents), WEAVIATE_MAX_DOCUMENTS)]

    def perform(chunk):
        response = httpx.post(origin + "/rerank", json={"query": query, "documents": chunk, "property": ""}, timeout=60)
        body = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"fail with status {response.status_code}: {body.get('error', '')}")
        return body["scores"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(perform, chunks))
    return [(score["document"], score["score"]) for answer in answers for score in answer]


def test_weaviate_reranker_transformers_module(serve_cluster, tiny_model_dir):
    origin = serve_cluster.url + "/weaviate"  # RERANKER_INFERENCE_API
    # WaitForStartup: GET /.well-known/ready until a status <= 299; MetaInfo: GET /meta, any JSON object.
    assert httpx.get(origin + "/.well-known/ready", timeout=60).status_code == 204
    assert httpx.get(origin + "/.well-known/live", timeout=60).status_code == 204
    meta = httpx.get(origin + "/meta", timeout=60).json()
    assert meta["model"]["model_id"] == str(tiny_model_dir)

    documents = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(70)]  # three chunks
    _, normalized = reference_scores(tiny_model_dir, QUERY, documents)
    ranked = weaviate_rank(origin, QUERY, documents)
    assert [document for document, _ in ranked] == documents
    assert np.allclose([score for _, score in ranked], normalized, atol=1e-4)

    # The inference container's single-property form.
    single = httpx.post(origin + "/rerank", json={"query": QUERY, "property": TEXTS[0]}, timeout=60).json()
    _, expected = reference_scores(tiny_model_dir, QUERY, TEXTS[:1])
    assert single["property"] == TEXTS[0] and single["score"] == pytest.approx(expected[0], abs=1e-4)
    with pytest.raises(RuntimeError, match="fail with status 400: The query is empty"):
        weaviate_rank(origin, "  ", documents[:2])
