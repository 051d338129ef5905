"""reranker/proto: the committed Python modules equal protoc's output for tei.proto, and the proto keeps
TEI's package, service, message and field names and numbers, so clients generated from TEI's own
proto (huggingface/text-embeddings-inference proto/tei.proto) talk to this service unchanged (tier 1)."""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor as F

from reranker.proto import tei_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import generate_grpc  # noqa: E402

# TEI's tei.v1 messages as (field name, number, type, repeated) -- the wire contract.
TEI_MESSAGES = {
    "RerankRequest": [
        ("query", 1, F.TYPE_STRING, False),
        ("texts", 2, F.TYPE_STRING, True),
        ("truncate", 3, F.TYPE_BOOL, False),
        ("raw_scores", 4, F.TYPE_BOOL, False),
        ("return_text", 5, F.TYPE_BOOL, False),
        ("truncation_direction", 6, F.TYPE_ENUM, False),
    ],
    "RerankStreamRequest": [
        ("query", 1, F.TYPE_STRING, False),
        ("text", 2, F.TYPE_STRING, False),
        ("truncate", 3, F.TYPE_BOOL, False),
        ("raw_scores", 4, F.TYPE_BOOL, False),
        ("return_text", 5, F.TYPE_BOOL, False),
        ("truncation_direction", 6, F.TYPE_ENUM, False),
    ],
    "Rank": [("index", 1, F.TYPE_UINT32, False), ("text", 2, F.TYPE_STRING, False), ("score", 3, F.TYPE_FLOAT, False)],
    "RerankResponse": [("ranks", 1, F.TYPE_MESSAGE, True), ("metadata", 2, F.TYPE_MESSAGE, False)],
    "Metadata": [
        ("compute_chars", 1, F.TYPE_UINT32, False),
        ("compute_tokens", 2, F.TYPE_UINT32, False),
        ("total_time_ns", 3, F.TYPE_UINT64, False),
        ("tokenization_time_ns", 4, F.TYPE_UINT64, False),
        ("queue_time_ns", 5, F.TYPE_UINT64, False),
        ("inference_time_ns", 6, F.TYPE_UINT64, False),
    ],
}


def test_committed_modules_equal_a_fresh_generation(tmp_path):
    fresh = generate_grpc.generate(tmp_path)
    for path in fresh:
        committed = REPO_ROOT / "reranker" / "proto" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(REPO_ROOT)} is stale: run `python scripts/generate_grpc.py`"
        )


def test_proto_keeps_tei_names_and_numbers():
    descriptor = tei_pb2.DESCRIPTOR
    assert descriptor.package == "tei.v1"
    service = descriptor.services_by_name["Rerank"]
    assert service.full_name == "tei.v1.Rerank"
    rerank, stream = service.methods_by_name["Rerank"], service.methods_by_name["RerankStream"]
    assert (rerank.input_type.name, rerank.output_type.name) == ("RerankRequest", "RerankResponse")
    assert not rerank.client_streaming and not rerank.server_streaming
    assert (stream.input_type.name, stream.output_type.name) == ("RerankStreamRequest", "RerankResponse")
    assert stream.client_streaming and not stream.server_streaming
    for name, fields in TEI_MESSAGES.items():
        message = descriptor.message_types_by_name[name]
        found = [(f.name, f.number, f.type, f.is_repeated) for f in message.fields]
        assert found == fields, name
    assert descriptor.message_types_by_name["Rank"].fields_by_name["text"].has_presence  # `optional string`
    direction = descriptor.enum_types_by_name["TruncationDirection"]
    assert [(v.name, v.number) for v in direction.values] == [
        ("TRUNCATION_DIRECTION_RIGHT", 0),
        ("TRUNCATION_DIRECTION_LEFT", 1),
    ]
