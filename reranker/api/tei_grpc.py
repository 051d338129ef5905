"""TEI's gRPC `Rerank` service (package `tei.v1`, reranker/proto/tei.proto): protobuf requests to
pairs, and scores to TEI's `RerankResponse`, with the same validation and ranking as HTTP `/rerank`.

Pure: no Ray and no gRPC server. The ingress's `Rerank` and `RerankStream` methods call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable
from dataclasses import dataclass

from reranker.api import ApiContext, ranking
from reranker.api.tei import API as TEI_API
from reranker.api.tei import TEIRerankRequest
from reranker.errors import EmptyInputError, PayloadTooLargeError, ValidationError
from reranker.messages import DocScores, PairRequest
from reranker.proto import tei_pb2
from reranker.settings import RerankerSettings

TRUNCATION_DIRECTIONS = {
    tei_pb2.TRUNCATION_DIRECTION_RIGHT: "right",
    tei_pb2.TRUNCATION_DIRECTION_LEFT: "left",
}


@dataclass(frozen=True)
class GrpcRerank:
    """One Rerank or RerankStream call: the pairs to score and how to answer them."""

    pairs: PairRequest
    raw_scores: bool
    return_text: bool


def truncation_direction(value: int) -> str:
    """TEI's enum as this service's direction; proto3 enums are open, so any other number is a 422."""
    direction = TRUNCATION_DIRECTIONS.get(value)
    if direction is None:
        raise ValidationError(f"Invalid request: truncation_direction {value} is neither RIGHT (0) nor LEFT (1).")
    return direction


def check_message_bytes(size_bytes: int, settings: RerankerSettings) -> None:
    """The HTTP body limit, applied to the serialized request message(s) of one call."""
    if size_bytes > settings.max_body_bytes:
        raise PayloadTooLargeError(f"Request message exceeds max_body_bytes ({settings.max_body_bytes} bytes).")


def from_request(request: tei_pb2.RerankRequest, context: ApiContext) -> GrpcRerank:
    """A unary Rerank call, mapped through the TEI family exactly as a `/rerank` body with the same fields.

    proto3 has no "unset" for bool: `truncate` is what the client sent, false unless it set it (TEI's
    gRPC server reads it the same way), so a too-long text is rejected unless `truncate` is true.
    """
    body = TEIRerankRequest(
        query=request.query,
        texts=list(request.texts),
        truncate=request.truncate,
        truncation_direction=truncation_direction(request.truncation_direction),
        raw_scores=request.raw_scores,
        return_text=request.return_text,
    )
    return GrpcRerank(TEI_API.to_pair_request(body, context), body.raw_scores, body.return_text)


def from_stream(messages: list[tei_pb2.RerankStreamRequest], context: ApiContext) -> GrpcRerank:
    """A RerankStream call: one (query, text) pair per message, answered together as TEI does.

    As in TEI, `raw_scores` and `return_text` come from the first message, and each message may
    carry its own query. `truncate` and `truncation_direction` apply to a whole call here, so
    messages that disagree on them are a 422 instead of being silently unified.
    """
    if not messages:
        raise EmptyInputError("No documents to rank: the stream carried no message.")
    first = messages[0]
    for index, message in enumerate(messages):
        if (message.truncate, message.truncation_direction) != (first.truncate, first.truncation_direction):
            raise ValidationError(
                f"Invalid request: message {index} sets truncate or truncation_direction unlike message 0; "
                "this service applies one setting to a whole stream."
            )
    positions: dict[str, int] = {}
    query_of_passage = [positions.setdefault(message.query, len(positions)) for message in messages]
    body = TEIRerankRequest(
        query=first.query,
        texts=[message.text for message in messages],
        truncate=first.truncate,
        truncation_direction=truncation_direction(first.truncation_direction),
    )
    pairs = TEI_API.to_pair_request(body, context)
    if len(positions) > 1:
        pairs = dataclasses.replace(pairs, queries=list(positions), query_of_passage=query_of_passage)
    return GrpcRerank(pairs, first.raw_scores, first.return_text)


async def read_stream(
    messages: AsyncIterable[tei_pb2.RerankStreamRequest], settings: RerankerSettings
) -> list[tei_pb2.RerankStreamRequest]:
    """Every message of a client stream, stopping with a 413 as soon as it passes max_documents or max_body_bytes."""
    received: list[tei_pb2.RerankStreamRequest] = []
    size_bytes = 0
    async for message in messages:
        received.append(message)
        if len(received) > settings.max_documents:
            raise PayloadTooLargeError(f"The stream has more than max_documents ({settings.max_documents}) documents.")
        size_bytes += message.ByteSize()
        check_message_bytes(size_bytes, settings)
    return received


def compute_chars(pairs: PairRequest) -> int:
    """TEI's `Metadata.compute_chars`: the characters of every (query, text) pair."""
    if pairs.query_of_passage is None:
        return len(pairs.queries[0]) * len(pairs.passages) + sum(len(text) for text in pairs.passages)
    return sum(len(pairs.queries[q]) + len(text) for q, text in zip(pairs.query_of_passage, pairs.passages))


def build_response(call: GrpcRerank, scores: DocScores, total_time_ns: int) -> tei_pb2.RerankResponse:
    """TEI's RerankResponse: ranks by descending score (ties by index), as `/rerank` orders them.

    `Metadata` carries what this service measures per call (characters, tokens, total time); its
    tokenization, queue and inference times stay 0, because batches mix requests.
    """
    values = scores.raw if call.raw_scores else scores.normalized
    ranks = []
    for i in ranking(values, None):
        rank = tei_pb2.Rank(index=int(i), score=float(values[i]))
        if call.return_text:
            rank.text = call.pairs.passages[i]
        ranks.append(rank)
    metadata = tei_pb2.Metadata(
        compute_chars=compute_chars(call.pairs),
        compute_tokens=scores.total_tokens,
        total_time_ns=total_time_ns,
    )
    return tei_pb2.RerankResponse(ranks=ranks, metadata=metadata)
