"""Pure unit tests of the Infinity, Weaviate and dispatching families and of TEI's /info fields (tier 1)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from reranker.api import ROUTES_BY_PATH, ApiContext
from reranker.api import infinity, tei, weaviate
from reranker.errors import ValidationError
from reranker.messages import DocScores
from reranker.model_files import labels
from reranker.server import presented_key
from reranker.settings import RerankerSettings

SETTINGS = RerankerSettings(model="org/served-model", model_aliases=["alias"])
CONTEXT = ApiContext(SETTINGS, frozenset({"org/served-model", "served-model", "alias"}), "req-1")
RERANK = ROUTES_BY_PATH["/rerank"].api


def scores(raw: list[float]) -> DocScores:
    raw_array = np.asarray(raw, dtype=np.float32)
    return DocScores(raw=raw_array, normalized=1 / (1 + np.exp(-raw_array)), chunks_per_doc=np.ones(len(raw), int),
                     total_tokens=42, query_truncated=False)


def parse(body):
    return TypeAdapter(RERANK.request_model).validate_python(body)


def test_rerank_hands_each_body_to_its_family():
    assert isinstance(parse({"query": "q", "texts": ["a"]}), tei.TEIRerankRequest)
    assert isinstance(parse({"query": "q", "documents": ["a"]}), infinity.InfinityRerankRequest)
    assert RERANK.family(parse({"query": "q", "documents": ["a"]})) is infinity.API
    assert RERANK.error_family == "tei"


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"query": "q", "texts": ["a"], "documents": ["a"]}, "has 'texts' and 'documents'; send only one"),
        ({"query": "q"}, "needs 'texts' (TEI) or 'documents' (Infinity, vLLM)"),
    ],
)
def test_both_or_neither_key_says_which(body, needle):
    with pytest.raises(PydanticValidationError) as error:
        parse(body)
    assert needle in error.value.errors()[0]["msg"]


def test_infinity_answer_shape():
    body = infinity.InfinityRerankRequest(query="q", documents=["a", "b", "c"], return_documents=True, top_n=2)
    pairs = infinity.API.to_pair_request(body, CONTEXT)
    answer = infinity.API.build_response(body, pairs, scores([0.1, 2.0, -1.0]), CONTEXT).model_dump(exclude_none=True)
    assert answer["object"] == "rerank" and answer["id"] == "req-1" and answer["model"] == "org/served-model"
    assert [(r["index"], r["document"]) for r in answer["results"]] == [(1, "b"), (0, "a")]
    assert answer["usage"] == {"prompt_tokens": 42, "total_tokens": 42}
    plain = infinity.InfinityRerankRequest(query="q", documents=["a", "b"], raw_scores=True)
    results = infinity.API.build_response(plain, pairs, scores([0.5, 1.5]), CONTEXT).model_dump(exclude_none=True)["results"]
    assert results == [{"relevance_score": 1.5, "index": 1}, {"relevance_score": 0.5, "index": 0}]


@pytest.mark.parametrize("model", [None, "default/not-specified", "org/served-model", "served-model", "alias"])
def test_infinity_model_names_it_accepts(model):
    infinity.API.to_pair_request(infinity.InfinityRerankRequest(query="q", documents=["a"], model=model), CONTEXT)


def test_infinity_rejects_another_model():
    with pytest.raises(ValidationError, match="Unknown model 'BAAI/bge-reranker-base'"):
        infinity.API.to_pair_request(infinity.InfinityRerankRequest(query="q", documents=["a"], model="BAAI/bge-reranker-base"), CONTEXT)


def test_weaviate_scores_in_document_order_and_one_property():
    body = weaviate.WeaviateRankRequest(query="q", documents=["a", "b"], property="")
    pairs = weaviate.API.to_pair_request(body, CONTEXT)
    assert pairs.passages == ["a", "b"]
    answer = weaviate.API.build_response(body, pairs, scores([0.0, 2.0]), CONTEXT).model_dump(exclude_none=True)
    assert answer["query"] == "q" and [s["document"] for s in answer["scores"]] == ["a", "b"]
    assert answer["scores"][0]["score"] == pytest.approx(0.5)
    single = weaviate.WeaviateRankRequest(query="q", property="p")
    assert weaviate.API.to_pair_request(single, CONTEXT).passages == ["p"]
    answer = weaviate.API.build_response(single, pairs, scores([0.0]), CONTEXT).model_dump(exclude_none=True)
    assert answer == {"query": "q", "property": "p", "score": 0.5}
    with pytest.raises(ValidationError, match="'documents'"):
        weaviate.API.to_pair_request(weaviate.WeaviateRankRequest(query="q"), CONTEXT)


def test_tei_info_fields():
    tokenizer = {"max_length": 512, "model_sha": "abc123", "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    scorer = {"dtype": "float16", "max_batch_tokens": 32768, "max_batch_size": 256}
    info = tei.tei_info(SETTINGS, tokenizer, scorer, {"Ingress": 2, "Tokenizer": 3},
                        {"max_ongoing_requests": 16, "max_queued_requests": 40}, "1.2.3").model_dump()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert info["model_sha"] == "abc123" and info["model_dtype"] == "float16"
    assert info["max_concurrent_requests"] == 16 * 2 + 40 and info["tokenization_workers"] == 3
    assert info["max_batch_tokens"] == 32768 and info["max_batch_requests"] == 256
    assert info["max_client_batch_size"] == SETTINGS.max_documents and info["auto_truncate"] is True
    assert info["sha"] is None and info["docker_label"] is None and info["version"] == "1.2.3"
    # An unbounded proxy queue (-1) adds nothing.
    unbounded = tei.tei_info(SETTINGS, tokenizer, scorer, {}, {"max_ongoing_requests": 8, "max_queued_requests": -1}, "1")
    assert unbounded.max_concurrent_requests == 8


def test_labels_as_tei_gives_them():
    assert labels({"id2label": {0: "no", 1: "yes"}}) == ({"0": "no", "1": "yes"}, {"no": 0, "yes": 1})
    assert labels({"num_labels": 1}) == ({"0": "LABEL_0"}, {"LABEL_0": 0})


@pytest.mark.parametrize(
    "header,key",
    [("Bearer k1", b"k1"), ("bearer  k1 ", b"k1"), ("k1", b"k1"), ("Basic k1", b"Basic k1"), ("Bearer", b"Bearer"), ("", b"")],
)
def test_presented_key(header, key):
    assert presented_key(header) == key


def test_rerank_request_model_survives_pickling():
    """Ray pickles the app's endpoints to the ingress replicas; the union must come back working."""
    import pickle

    import cloudpickle

    model = pickle.loads(cloudpickle.dumps(RERANK.request_model))
    assert isinstance(TypeAdapter(model).validate_python({"query": "q", "documents": ["a"]}), infinity.InfinityRerankRequest)
    with pytest.raises(PydanticValidationError, match="send only one"):
        TypeAdapter(model).validate_python({"query": "q", "texts": ["a"], "documents": ["a"]})
