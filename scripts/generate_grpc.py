"""Generates the Python gRPC modules of reranker/proto/tei.proto beside it (grpcio-tools, test extra).

`python scripts/generate_grpc.py` rewrites reranker/proto/tei_pb2.py, tei_pb2.pyi and tei_pb2_grpc.py;
tests/unit/test_grpc_proto.py checks that the committed modules equal a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Relative to the repository root, so the generated modules import each other as `reranker.proto.*`.
PROTO = "reranker/proto/tei.proto"


def generate(out_root: Path) -> list[Path]:
    """Runs protoc on the proto; the modules land under out_root/reranker/proto/. Returns their paths."""
    import grpc_tools
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(REPO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    out_dir = out_root / Path(PROTO).parent
    return [out_dir / name for name in ("tei_pb2.py", "tei_pb2.pyi", "tei_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    sys.exit(0)
