"""The scoring core: loads the cross-encoder once and scores encoded pairs. Usable without Ray.

Only the scorer process imports this module. It imports torch only for a backend that needs it:
a CPU scorer on ONNX Runtime never does (torch alone is about 140 MiB of a replica's memory).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
import numpy as np

from reranker.backends import backend_name, build_backend
from reranker.backends.cuda_graphs import graph_shapes, width_step
from reranker.batching import collate, plan_batches
from reranker.errors import SettingsError
from reranker.messages import EncodedPairs
from reranker.model_files import read_model_config, resolve_max_length
from reranker.relevance import check_architecture, relevance_from_logits, relevance_head
from reranker.settings import BatchSettings, RerankerSettings, available_cpus

logger = logging.getLogger("ray.serve")

DTYPES = ("float32", "float16", "bfloat16")
# Device files of a GPU that torch could use (NVIDIA, WSL, ROCm). Without any, `device: auto` is
# CPU without importing torch.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")

# Batch budgets where a setting leaves them unset, per device (benchmarks/RESULTS.md): on 2 CPU
# cores 8 length-sorted pairs per pass beat 16 and 32; an H200 peaks near 32k padded tokens.
DEVICE_BATCH_DEFAULTS = {
    "cpu": {"max_batch_size": 8, "max_batch_tokens": 4096, "batch_window_forwards": 1},
    "cuda": {"max_batch_size": 256, "max_batch_tokens": 32768, "batch_window_forwards": 2},
}


@dataclass
class BatchStats:
    """What one forward pass cost: pairs, real tokens and padded tokens."""

    pairs: int
    real_tokens: int
    padded_tokens: int


@dataclass
class PairScores:
    """Per-pair scores in the caller's pair order, and the forward batches that made them."""

    raw: np.ndarray
    normalized: np.ndarray
    batches: list[BatchStats] = field(default_factory=list)


@dataclass
class LaunchedPairs:
    """Forward batches of one call, launched and not yet fetched: the plan, the backend's handles, their stats."""

    num_pairs: int
    plan: list[np.ndarray]
    batches: list = field(default_factory=list)
    stats: list[BatchStats] = field(default_factory=list)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device; False without importing torch on a machine with no GPU device files."""
    if not any(os.path.exists(path) for path in GPU_DEVICE_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if cuda_available() else "cpu"
    if setting == "cuda" and not cuda_available():
        raise SettingsError("device is 'cuda' but CUDA is not available on this replica")
    return setting


def resolve_dtype(setting: str, device: str) -> str:
    """The compute dtype's name (a torch backend turns it into torch's dtype)."""
    if setting == "auto":
        # float16 over bfloat16 on GPU: same speed, and its 10-bit mantissa ranks closer to fp32
        # (benchmarks/RESULTS.md, GPU section).
        return "float16" if device == "cuda" else "float32"
    if device == "cpu" and setting != "float32":
        raise SettingsError(f"dtype {setting} is for GPU; the CPU path is float32 (bf16 without native support is ~5x slower)")
    return setting


class ModelScorer:
    """Loads the cross-encoder once (with a warm-up pass) and scores EncodedPairs in batches."""

    def __init__(self, settings: RerankerSettings):
        started = time.perf_counter()
        self.settings = settings
        config = read_model_config(settings.model, settings.revision)
        check_architecture(config)
        self.head = relevance_head(config, settings.relevant_label)
        self.max_length = resolve_max_length(config, settings.max_length)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.threads = settings.torch_threads or available_cpus()
        if backend_name(settings.backend, self.device) == "torch":
            import torch

            # Ray sets OMP_NUM_THREADS to the replica's num_cpus (min 1); set the pool explicitly.
            torch.set_num_threads(self.threads)
        # The simulated GPU (benchmarks and tests on CPU) batches like the GPU it stands in for.
        name = backend_name(settings.backend, self.device)
        batches_like = "cuda" if name == "simulated-gpu" else self.device
        if settings.cuda_graphs and batches_like != "cuda":
            raise SettingsError(f"cuda_graphs needs a CUDA device (or the simulated GPU); this scorer runs {name} on {self.device}")
        self.pad_to_multiple_of = settings.pad_to_multiple_of or (8 if batches_like == "cuda" else 1)
        if settings.cuda_graphs:
            # Widths in steps of at least 32: 16 captured widths up to 512 tokens (cuda_graphs.py).
            self.pad_to_multiple_of = width_step(self.pad_to_multiple_of)
        unset = {k: v for k, v in DEVICE_BATCH_DEFAULTS[batches_like].items() if k not in settings.model_fields_set}
        self.batching = settings.batch_settings().model_copy(update=unset)
        self.backend = build_backend(settings, self.device, self.dtype)
        self.graph_shapes: list[tuple[int, int]] = []
        self.graph_capture_seconds = 0.0
        if settings.cuda_graphs:
            self.graph_shapes = graph_shapes(
                self.max_length, self.batching.max_batch_tokens, self.batching.max_batch_size, self.pad_to_multiple_of
            )
            self.graph_capture_seconds = self.backend.capture_graphs(self.graph_shapes)
        self.warm_up()
        self.forward_tokens_per_s = self.measure_forward_rate()
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "Loaded %s on %s (%s, backend %s) in %.1f s",
            settings.model, self.device, self.dtype, self.backend.name, self.load_seconds,
        )

    def reconfigure(self, batching: BatchSettings) -> None:
        """New batch budgets; with CUDA graphs, a batch beyond the budgets captured at load runs eagerly."""
        self.batching = batching

    def warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay for lazy initialization.

        Token id 0 exists in every vocabulary; the scores are thrown away.
        """
        ids = np.zeros((1, 3), np.int32)
        self.forward_logits(ids, np.ones_like(ids), ids)

    def measure_forward_rate(self, pair_tokens: int = 128) -> float:
        """Tokens per second of one full forward batch of `pair_tokens`-token pairs, timed once at load.

        The ingress's admission uses it until it has measured the service itself.
        """
        tokens = min(pair_tokens, self.max_length)
        pairs = max(1, min(self.batching.max_batch_size, self.batching.max_batch_tokens // tokens))
        ids = np.zeros((pairs, tokens), np.int32)
        started = time.perf_counter()
        self.forward_logits(ids, np.ones_like(ids), ids)
        return ids.size / max(time.perf_counter() - started, 1e-9)

    def forward_logits(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        """Logits of one padded batch, waited for."""
        return self.backend.fetch([self.backend.launch(input_ids, attention_mask, token_type_ids)])[0]

    def score_pairs(self, pairs: EncodedPairs) -> PairScores:
        """Scores every pair, in length-sorted batches under the token budget, in input order."""
        return self.finish_pairs(self.launch_pairs(pairs))

    def launch_pairs(self, pairs: EncodedPairs) -> LaunchedPairs:
        """Collates and launches every forward batch of the pairs; on a GPU it returns before they run."""
        plan = plan_batches(
            pairs.lengths, self.batching.max_batch_tokens, self.batching.max_batch_size, self.pad_to_multiple_of
        )
        launched = LaunchedPairs(num_pairs=pairs.num_pairs, plan=plan)
        for indices in plan:
            input_ids, attention_mask, token_type_ids = collate(
                pairs, indices, self.pad_to_multiple_of, self.backend.pad_token_id
            )
            launched.batches.append(self.backend.launch(input_ids, attention_mask, token_type_ids))
            launched.stats.append(
                BatchStats(
                    pairs=len(indices),
                    real_tokens=int(pairs.lengths[indices].sum()),
                    padded_tokens=int(input_ids.size),
                )
            )
        return launched

    def finish_pairs(self, launched: LaunchedPairs) -> PairScores:
        """Waits for launched batches and returns their scores in the pairs' input order."""
        raw = np.empty(launched.num_pairs, np.float32)
        normalized = np.empty(launched.num_pairs, np.float32)
        for indices, logits in zip(launched.plan, self.backend.fetch(launched.batches)):
            raw[indices], normalized[indices] = relevance_from_logits(logits, self.head)
        return PairScores(raw=raw, normalized=normalized, batches=launched.stats)

    def describe(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "backend": self.backend.name,
            "max_length": self.max_length,
            "num_labels": self.head.num_labels,
            "score": self.head.describe(),
            "load_seconds": round(self.load_seconds, 3),
            "forward_tokens_per_s": round(self.forward_tokens_per_s, 1),
            "torch_threads": self.threads,
            "cuda_graphs": len(self.graph_shapes),
            "graph_capture_seconds": round(self.graph_capture_seconds, 3),
        }
