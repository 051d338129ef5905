"""TEI's gRPC Rerank without Ray (tier 1): protobuf to pairs, scores to RerankResponse, the gRPC status
table, and a whole call through GrpcCalls with the context class Serve hands to a deployment."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from ray.serve.grpc_util import RayServegRPCContext

from reranker.api import ApiContext
from reranker.api import tei_grpc
from reranker.errors import (
    GRPC_STATUS_CODES,
    INTERNAL_ERROR_MESSAGE,
    DeadlineExceededError,
    EmptyInputError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RerankerError,
    UnauthenticatedError,
    ValidationError,
    grpc_status,
)
from reranker.grpc_server import GrpcCalls
from reranker.messages import DocScores
from reranker.proto import tei_pb2
from reranker.settings import RerankerSettings
from reranker.validation import check_pair_request

SETTINGS = RerankerSettings(model="org/tiny", max_documents=4, max_body_bytes=2048)
CONTEXT = ApiContext(SETTINGS, frozenset({"org/tiny", "tiny"}), "req-1")


def doc_scores(raw: list[float], normalized: list[float], tokens: int = 30) -> DocScores:
    return DocScores(
        raw=np.array(raw, dtype=np.float32),
        normalized=np.array(normalized, dtype=np.float32),
        chunks_per_doc=np.ones(len(raw), dtype=np.int64),
        total_tokens=tokens,
        query_truncated=False,
    )


# ----- request to pairs ---------------------------------------------------------------------------


def test_unary_request_maps_like_a_tei_body():
    request = tei_pb2.RerankRequest(
        query="q", texts=["a", "bb"], truncate=True, truncation_direction=tei_pb2.TRUNCATION_DIRECTION_LEFT,
        raw_scores=True, return_text=True,
    )
    call = tei_grpc.from_request(request, CONTEXT)
    assert call.pairs.queries == ["q"] and call.pairs.passages == ["a", "bb"]
    assert call.pairs.truncate is True and call.pairs.truncation_direction == "left"
    assert call.pairs.query_of_passage is None
    assert call.raw_scores and call.return_text


def test_unset_fields_are_protobuf_defaults():
    """proto3: an unset bool is false, so `truncate` is off unless the client sets it (as in TEI)."""
    call = tei_grpc.from_request(tei_pb2.RerankRequest(query="q", texts=["a"]), CONTEXT)
    assert call.pairs.truncate is False and call.pairs.truncation_direction == "right"
    assert not call.raw_scores and not call.return_text


def test_chunk_mode_follows_the_settings():
    settings = RerankerSettings(model="org/tiny", long_passage_mode="chunk", max_chunks_per_doc=3)
    call = tei_grpc.from_request(tei_pb2.RerankRequest(query="q", texts=["a"]), ApiContext(settings, frozenset(), "r"))
    assert call.pairs.chunk is True and call.pairs.max_chunks == 3


def test_unknown_truncation_direction_is_a_validation_error():
    request = tei_pb2.RerankRequest(query="q", texts=["a"], truncation_direction=7)
    with pytest.raises(ValidationError, match="truncation_direction 7"):
        tei_grpc.from_request(request, CONTEXT)


def test_stream_with_one_query():
    messages = [tei_pb2.RerankStreamRequest(query="q", text=t, truncate=True, raw_scores=True) for t in ("a", "b")]
    call = tei_grpc.from_stream(messages, CONTEXT)
    assert call.pairs.queries == ["q"] and call.pairs.passages == ["a", "b"]
    assert call.pairs.query_of_passage is None and call.pairs.truncate is True
    assert call.raw_scores and not call.return_text


def test_stream_pairs_each_text_with_its_own_query():
    messages = [tei_pb2.RerankStreamRequest(query=q, text=t) for q, t in (("q1", "a"), ("q2", "b"), ("q1", "c"))]
    call = tei_grpc.from_stream(messages, CONTEXT)
    assert call.pairs.queries == ["q1", "q2"] and call.pairs.query_of_passage == [0, 1, 0]
    assert tei_grpc.compute_chars(call.pairs) == 2 + 1 + 2 + 1 + 2 + 1


def test_stream_options_come_from_the_first_message():
    messages = [
        tei_pb2.RerankStreamRequest(query="q", text="a", raw_scores=True, return_text=True),
        tei_pb2.RerankStreamRequest(query="q", text="b", raw_scores=False, return_text=False),
    ]
    call = tei_grpc.from_stream(messages, CONTEXT)
    assert call.raw_scores and call.return_text


def test_stream_that_mixes_truncation_settings_is_rejected():
    messages = [
        tei_pb2.RerankStreamRequest(query="q", text="a", truncate=True),
        tei_pb2.RerankStreamRequest(query="q", text="b", truncate=False),
    ]
    with pytest.raises(ValidationError, match="message 1"):
        tei_grpc.from_stream(messages, CONTEXT)


def test_empty_stream_is_empty_input():
    with pytest.raises(EmptyInputError):
        tei_grpc.from_stream([], CONTEXT)


def test_limits_are_the_http_limits():
    """The same check_pair_request as HTTP: emptiness, max_documents, null bytes."""
    for request, error in (
        (tei_pb2.RerankRequest(query=" ", texts=["a"]), EmptyInputError),
        (tei_pb2.RerankRequest(query="q"), EmptyInputError),
        (tei_pb2.RerankRequest(query="q", texts=["a"] * 5), PayloadTooLargeError),
        (tei_pb2.RerankRequest(query="q", texts=["a\x00"]), ValidationError),
    ):
        with pytest.raises(error):
            check_pair_request(tei_grpc.from_request(request, CONTEXT).pairs, SETTINGS)
    big = tei_pb2.RerankRequest(query="q", texts=["x" * 3000])
    with pytest.raises(PayloadTooLargeError, match="max_body_bytes"):
        tei_grpc.check_message_bytes(big.ByteSize(), SETTINGS)


async def _stream(messages):
    for message in messages:
        yield message


def test_read_stream_stops_past_the_limits():
    ok = [tei_pb2.RerankStreamRequest(query="q", text="a")] * 4
    assert len(asyncio.run(tei_grpc.read_stream(_stream(ok), SETTINGS))) == 4

    consumed = []

    async def endless():
        while True:
            consumed.append(1)
            yield tei_pb2.RerankStreamRequest(query="q", text="a")

    with pytest.raises(PayloadTooLargeError, match="max_documents"):
        asyncio.run(tei_grpc.read_stream(endless(), SETTINGS))
    assert len(consumed) == SETTINGS.max_documents + 1
    large = [tei_pb2.RerankStreamRequest(query="q", text="x" * 1500)] * 2
    with pytest.raises(PayloadTooLargeError, match="max_body_bytes"):
        asyncio.run(tei_grpc.read_stream(_stream(large), SETTINGS))


# ----- scores to the answer -----------------------------------------------------------------------


def test_response_is_ranked_like_tei_rerank():
    call = tei_grpc.from_request(tei_pb2.RerankRequest(query="qq", texts=["a", "b", "c"], return_text=True), CONTEXT)
    scores = doc_scores(raw=[-1.0, 2.5, 2.5], normalized=[0.1, 0.7, 0.7], tokens=21)
    response = tei_grpc.build_response(call, scores, total_time_ns=1234)
    assert [rank.index for rank in response.ranks] == [1, 2, 0]
    assert [rank.score for rank in response.ranks] == [np.float32(0.7), np.float32(0.7), np.float32(0.1)]
    assert [rank.text for rank in response.ranks] == ["b", "c", "a"]
    assert response.metadata.compute_chars == 2 * 3 + 3
    assert response.metadata.compute_tokens == 21 and response.metadata.total_time_ns == 1234


def test_raw_scores_and_no_text():
    call = tei_grpc.from_request(tei_pb2.RerankRequest(query="q", texts=["a", "b"], raw_scores=True), CONTEXT)
    response = tei_grpc.build_response(call, doc_scores(raw=[3.0, -2.0], normalized=[0.9, 0.1]), total_time_ns=1)
    assert [(rank.index, rank.score) for rank in response.ranks] == [(0, 3.0), (1, -2.0)]
    assert not any(rank.HasField("text") for rank in response.ranks)


# ----- errors as gRPC status codes ------------------------------------------------------------------


def test_every_error_status_has_a_grpc_code():
    statuses = {cls.status_code for cls in (EmptyInputError, UnauthenticatedError, PayloadTooLargeError,
                                             ValidationError, OverloadedError, NotReadyError,
                                             DeadlineExceededError, RerankerError)}
    assert statuses <= set(GRPC_STATUS_CODES)
    assert all(name in grpc.StatusCode.__members__ for name in GRPC_STATUS_CODES.values())
    assert grpc_status(EmptyInputError("empty")) == ("INVALID_ARGUMENT", "empty")
    assert grpc_status(UnauthenticatedError("key")) == ("UNAUTHENTICATED", "key")
    assert grpc_status(OverloadedError("busy"))[0] == "RESOURCE_EXHAUSTED"
    assert grpc_status(NotReadyError("loading"))[0] == "UNAVAILABLE"
    assert grpc_status(DeadlineExceededError("late"))[0] == "DEADLINE_EXCEEDED"
    assert grpc_status(RerankerError("secret detail")) == ("INTERNAL", INTERNAL_ERROR_MESSAGE)


class ServicerContext:
    """The few methods of a grpc.aio servicer context that RayServegRPCContext copies."""

    def __init__(self, metadata):
        self.metadata = metadata

    def auth_context(self):
        return {}

    def code(self):
        return None

    def details(self):
        return None

    def invocation_metadata(self):
        return self.metadata

    def peer(self):
        return "ipv4:127.0.0.1:5000"

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    def trailing_metadata(self):
        return []


def run_call(answer, metadata=(), keys: str | None = None, monkeypatch=None):
    if keys is not None:
        monkeypatch.setenv("RERANKER_API_KEYS", keys)
    context = RayServegRPCContext(ServicerContext(list(metadata)))
    # Serve's proxy puts its request id in the trailing metadata before the call reaches the replica.
    context.set_trailing_metadata([("request_id", "req-7")])
    response = asyncio.run(GrpcCalls().run("Rerank", context, "req-7", answer, tei_pb2.RerankResponse))
    return response, context


def test_call_answers_when_no_keys_are_set(monkeypatch):
    monkeypatch.delenv("RERANKER_API_KEYS", raising=False)

    async def answer(state):
        state.passages = 2
        return tei_pb2.RerankResponse(ranks=[tei_pb2.Rank(index=0, score=1.0)])

    response, context = run_call(answer)
    assert len(response.ranks) == 1 and not context.code()


def test_call_needs_a_key_when_keys_are_set(monkeypatch):
    called = []

    async def answer(state):
        called.append(state.request_id)
        return tei_pb2.RerankResponse()

    for metadata in ((), (("authorization", "Bearer wrong"),)):
        response, context = run_call(answer, metadata, keys="k1,k2", monkeypatch=monkeypatch)
        assert context.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in context.details()
        assert response == tei_pb2.RerankResponse()
    assert called == []
    _, context = run_call(answer, (("authorization", "Bearer k2"),), keys="k1,k2", monkeypatch=monkeypatch)
    assert not context.code() and called == ["req-7"]


def test_errors_become_status_codes_and_trailing_metadata(monkeypatch):
    monkeypatch.delenv("RERANKER_API_KEYS", raising=False)

    async def overloaded(state):
        raise OverloadedError("The ingress queue is full.", retry_after_s=2)

    _, context = run_call(overloaded)
    assert context.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert context.details() == "The ingress queue is full."
    assert context.trailing_metadata() == [("request_id", "req-7"), ("retry-after", "2")]


def test_unexpected_error_is_a_generic_internal(monkeypatch):
    monkeypatch.delenv("RERANKER_API_KEYS", raising=False)

    async def broken(state):
        raise RuntimeError("secret detail /srv/model.bin")

    response, context = run_call(broken)
    assert context.code() == grpc.StatusCode.INTERNAL
    assert context.details() == INTERNAL_ERROR_MESSAGE
    assert response == tei_pb2.RerankResponse()
