"""The environment every benchmark script sets up before its other imports.

    import bench_env  # first, before numpy, torch, ray or the project

`python benchmarks/<script>.py` puts `benchmarks/` on sys.path, so this module is importable as is;
importing it then puts the repository root (the `reranker` and `deployments` packages) and `tests/`
(the tiny models and the cluster rehearsal) there too, and keeps transformers and huggingface_hub
off the network: benchmarks build their models locally, and a hub lookup would only add time and
fail offline. Scripts that tokenize in their own process also set TOKENIZERS_PARALLELISM
themselves; it is not set here, because a served app inherits the driver's environment and should
tokenize as the Run command does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
TESTS_DIR = REPO_ROOT / "tests"

for _path in (TESTS_DIR, REPO_ROOT, BENCH_DIR):  # the last one inserted is searched first
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
