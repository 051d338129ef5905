"""TEI's gRPC Rerank through Ray Serve's gRPC proxy on the session's real app (tier 3): a grpcio client
built from reranker/proto/tei.proto gets the same ranks and scores as HTTP `/rerank`, the same errors
as gRPC status codes, and is counted and logged like HTTP."""

from __future__ import annotations

import uuid

import grpc
import httpx
import numpy as np
import pytest
from conftest import LONG_PASSAGE, MULTILINGUAL_TEXTS, QUERY
from serving_helpers import metric_sum, poll, replica_log_lines

from reranker.proto import tei_pb2, tei_pb2_grpc

pytestmark = pytest.mark.serving

APP = "reranker"
# Serve's gRPC proxy routes by the `application` metadata; with one application it is optional,
# but other test modules deploy more beside the session's.
ROUTE = (("application", APP),)
TEXTS = [*MULTILINGUAL_TEXTS, LONG_PASSAGE, ""]
DIRECTIONS = {"right": tei_pb2.TRUNCATION_DIRECTION_RIGHT, "left": tei_pb2.TRUNCATION_DIRECTION_LEFT}


@pytest.fixture(scope="module")
def stub(serve_cluster):
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    yield tei_pb2_grpc.RerankStub(channel)
    channel.close()


def rerank(stub, request, request_id: str | None = None):
    """(response, trailing metadata) of one Rerank call."""
    metadata = ROUTE + ((("request_id", request_id),) if request_id else ())
    response, call = stub.Rerank.with_call(request, metadata=metadata, timeout=60)
    return response, dict(call.trailing_metadata())


def rerank_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        stub.Rerank(request, metadata=ROUTE, timeout=60)
    return failure.value


def as_tuples(ranks) -> list[tuple]:
    return [(r.index, r.score, r.text if r.HasField("text") else None) for r in ranks]


def http_as_tuples(body: list) -> list[tuple]:
    """A TEI /rerank answer at the precision of TEI's protobuf `float score`."""
    return [(item["index"], float(np.float32(item["score"])), item.get("text")) for item in body]


@pytest.mark.parametrize(
    "options",
    [{}, {"raw_scores": True}, {"return_text": True}, {"truncation_direction": "left", "raw_scores": True}],
    ids=["normalized", "raw", "text", "left"],
)
def test_rerank_equals_http_rerank(stub, http, options):
    body = {"query": QUERY, "texts": TEXTS, "truncate": True, **options}
    expected = http.post("/rerank", json=body)
    assert expected.status_code == 200, expected.text
    request = tei_pb2.RerankRequest(
        query=QUERY,
        texts=TEXTS,
        truncate=True,
        raw_scores=options.get("raw_scores", False),
        return_text=options.get("return_text", False),
        truncation_direction=DIRECTIONS[options.get("truncation_direction", "right")],
    )
    response, _ = rerank(stub, request)
    ranks = as_tuples(response.ranks)
    assert ranks == http_as_tuples(expected.json())
    assert sorted(index for index, _, _ in ranks) == list(range(len(TEXTS)))
    assert [score for _, score, _ in ranks] == sorted((score for _, score, _ in ranks), reverse=True)
    if options.get("return_text"):
        assert all(text == TEXTS[index] for index, _, text in ranks)
    assert response.metadata.compute_tokens > len(TEXTS) and response.metadata.total_time_ns > 0
    assert response.metadata.compute_chars == len(QUERY) * len(TEXTS) + sum(len(t) for t in TEXTS)


def test_truncate_false_rejects_a_long_text_as_http_does(stub, http):
    expected = http.post("/rerank", json={"query": QUERY, "texts": [LONG_PASSAGE], "truncate": False})
    assert expected.status_code == 413
    error = rerank_error(stub, tei_pb2.RerankRequest(query=QUERY, texts=[LONG_PASSAGE]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == expected.json()["error"]


@pytest.mark.parametrize(
    "request_fields, http_status",
    [
        ({"query": " ", "texts": ["paris"]}, 400),
        ({"query": QUERY, "texts": []}, 400),
        ({"query": QUERY, "texts": [""] * 1001}, 413),
        ({"query": QUERY, "texts": ["a\x00b"]}, 422),
    ],
    ids=["empty-query", "no-texts", "too-many-documents", "null-byte"],
)
def test_errors_are_the_http_errors_as_status_codes(stub, http, request_fields, http_status):
    expected = http.post("/rerank", json=request_fields)
    assert expected.status_code == http_status, expected.text
    error = rerank_error(stub, tei_pb2.RerankRequest(truncate=True, **request_fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == expected.json()["error"]


def test_unknown_truncation_direction_is_invalid_argument(stub):
    error = rerank_error(stub, tei_pb2.RerankRequest(query=QUERY, texts=["paris"], truncation_direction=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncation_direction 5" in error.details()


def test_rerank_stream_equals_rerank(stub):
    unary, _ = rerank(stub, tei_pb2.RerankRequest(query=QUERY, texts=TEXTS, truncate=True, return_text=True))
    messages = [tei_pb2.RerankStreamRequest(query=QUERY, text=t, truncate=True, return_text=True) for t in TEXTS]
    streamed = stub.RerankStream(iter(messages), metadata=ROUTE, timeout=60)
    assert as_tuples(streamed.ranks) == as_tuples(unary.ranks)


def test_rerank_stream_pairs_each_text_with_its_own_query(stub, http):
    pairs = [(QUERY, TEXTS[0]), ("東京", TEXTS[3]), (QUERY, TEXTS[1]), ("東京", TEXTS[2])]
    expected = http.post("/score", json={"pairs": [list(p) for p in pairs]}).json()["scores"]
    messages = [tei_pb2.RerankStreamRequest(query=q, text=t, raw_scores=True) for q, t in pairs]
    streamed = stub.RerankStream(iter(messages), metadata=ROUTE, timeout=60)
    assert {r.index: r.score for r in streamed.ranks} == pytest.approx(
        {s["index"]: s["raw_score"] for s in expected}, abs=1e-5
    )


def test_rerank_stream_errors(stub):
    for messages in (
        [],
        [tei_pb2.RerankStreamRequest(query=QUERY, text="a", truncate=True),
         tei_pb2.RerankStreamRequest(query=QUERY, text="b")],
        [tei_pb2.RerankStreamRequest(query="", text="a")],
    ):
        with pytest.raises(grpc.RpcError) as failure:
            stub.RerankStream(iter(messages), metadata=ROUTE, timeout=60)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()


def test_server_reflection_lists_the_rerank_service(serve_cluster):
    """grpcurl and grpcui discover the service through reflection (Serve's gRPC proxy enables it)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "tei.v1.Rerank" in database.get_services()
        methods = database.FindFileContainingSymbol("tei.v1.Rerank").service[0].method
        assert {m.name for m in methods} == {"Rerank", "RerankStream"}


def grpc_counts(url: str) -> dict:
    text = httpx.get(url + "/metrics", timeout=30).text

    def requests(code: str) -> float:
        return metric_sum(text, "ray_reranker_requests_total", application=APP, route="grpc:Rerank", status_code=code)

    return {
        "ok": requests("200"),
        "empty": requests("400"),
        "durations": metric_sum(text, "ray_reranker_request_duration_seconds_count", application=APP, route="grpc:Rerank"),
        "failures_empty": metric_sum(text, "ray_reranker_failures_total", application=APP, reason="empty"),
    }


def test_grpc_calls_are_counted_and_logged(stub, serve_cluster):
    # Make every series exist, then wait until the counters stop moving before the baseline.
    rerank(stub, tei_pb2.RerankRequest(query=QUERY, texts=["paris"]))
    rerank_error(stub, tei_pb2.RerankRequest(query=QUERY))
    previous = {}

    def settled():
        nonlocal previous
        current = grpc_counts(serve_cluster.url)
        stable = current == previous and current["ok"] >= 1 and current["empty"] >= 1
        previous = current
        return current if stable else None

    baseline = poll(settled, 30, "gRPC counters to settle", interval_s=1.2)

    request_id = f"grpc-{uuid.uuid4().hex}"
    response, trailing = rerank(stub, tei_pb2.RerankRequest(query=QUERY, texts=TEXTS[:3]), request_id=request_id)
    assert len(response.ranks) == 3 and trailing["request_id"] == request_id
    rerank(stub, tei_pb2.RerankRequest(query=QUERY, texts=TEXTS[:2]))
    assert rerank_error(stub, tei_pb2.RerankRequest(query=QUERY)).code() == grpc.StatusCode.INVALID_ARGUMENT

    expected = {
        "ok": baseline["ok"] + 2,
        "empty": baseline["empty"] + 1,
        "durations": baseline["durations"] + 3,
        "failures_empty": baseline["failures_empty"] + 1,
    }
    poll(lambda: grpc_counts(serve_cluster.url) == expected, 30, f"gRPC counters to reach {expected}", interval_s=1.2)

    def access_line():
        for line in replica_log_lines(APP, "Ingress"):
            if line.get("request_id") == request_id and '"event": "access"' in line.get("message", ""):
                return line["message"]
        return None

    line = poll(access_line, 20, "the gRPC call's access line")
    assert '"route": "grpc:Rerank"' in line and '"status": 200' in line and '"passages": 3' in line
