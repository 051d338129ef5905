"""TEI's gRPC API (tei.proto) and the Python modules protoc generates from it (scripts/generate_grpc.py)."""
