"""Every metric of the service, recorded with `ray.serve.metrics` so each node's metrics agent
sums all replicas (a prometheus_client registry in a replica would only see that process).

Ray exports them with a `ray_` prefix; a Counter `reranker_requests` is `ray_reranker_requests_total`.
Objects are built per replica (in the deployment's constructor), never at import: a module-level
metric object would break pickling of the deployment.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ray.serve import metrics

LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
TOKEN_BOUNDARIES = [8, 16, 32, 64, 96, 128, 192, 256, 384, 512]
BATCH_PAIRS_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BATCH_TOKEN_BOUNDARIES = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
RATIO_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
CHUNK_BOUNDARIES = [1, 2, 3, 4, 5, 10, 20, 50]
PARTS_PER_CALL_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]

def stage_duration() -> metrics.Histogram:
    return metrics.Histogram(
        "reranker_stage_duration_seconds",
        description="Seconds spent in one stage of a request: validation, tokenization, queue_wait, inference, response.",
        boundaries=LATENCY_BOUNDARIES_S,
        tag_keys=("stage",),
    )


def stage_cpu() -> metrics.Counter:
    return metrics.Counter(
        "reranker_stage_cpu_seconds",
        description="CPU seconds of the thread that ran a stage: tokenization, inference (collation and the forward's launch).",
        tag_keys=("stage",),
    )


def with_thread_cpu(function: Callable, *args) -> tuple[Any, float]:
    """Calls function(*args); returns its result and the CPU seconds this thread spent in it."""
    started = time.thread_time()
    result = function(*args)
    return result, time.thread_time() - started


class HttpMetrics:
    """HTTP-level metrics, recorded by the ingress's request middleware."""

    def __init__(self):
        self.requests = metrics.Counter(
            "reranker_requests",
            description="HTTP requests by route and status code.",
            tag_keys=("route", "status_code"),
        )
        self.request_duration = metrics.Histogram(
            "reranker_request_duration_seconds",
            description="Whole-request latency by route.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("route",),
        )
        self.failures = metrics.Counter(
            "reranker_failures",
            description="Failed requests by reason (a closed set; see reranker/errors.py).",
            tag_keys=("reason",),
        )
        self.in_flight = metrics.Gauge(
            "reranker_requests_in_flight",
            description="Requests being handled by this ingress replica.",
        )


class IngressStageMetrics:
    """Validation and response stages, windows per document and parts per handle call, recorded by the ingress."""

    def __init__(self):
        self.stage_duration = stage_duration()
        self.parts_per_call = metrics.Histogram(
            "reranker_parts_per_call",
            description="Request parts one tokenizer or scorer call of the ingress carries (more than 1 when coalesced under load).",
            boundaries=PARTS_PER_CALL_BOUNDARIES,
            tag_keys=("callee",),
        )
        self.chunks_per_document = metrics.Histogram(
            "reranker_chunks_per_document",
            description="Windows scored per document (1 unless chunk mode splits it).",
            boundaries=CHUNK_BOUNDARIES,
        )


class TokenizerMetrics:
    """Tokenization metrics, recorded by the tokenizer."""

    def __init__(self):
        self.stage_duration = stage_duration()
        self.stage_cpu = stage_cpu()
        self.pair_tokens = metrics.Histogram(
            "reranker_pair_tokens",
            description="Tokens per (query, passage) pair, special tokens included.",
            boundaries=TOKEN_BOUNDARIES,
        )


class ScorerMetrics:
    """Batch and inference metrics, recorded by the scorer."""

    def __init__(self):
        self.stage_duration = stage_duration()
        self.stage_cpu = stage_cpu()
        self.pairs_scored = metrics.Counter("reranker_pairs_scored", description="Pairs scored by the model.")
        # Exact totals beside the histograms: Ray exports a histogram's _sum from bucket midpoints.
        self.padded_tokens = metrics.Counter(
            "reranker_padded_tokens", description="Padded tokens (longest pair x pairs) of every forward batch."
        )
        self.batch_pairs = metrics.Histogram(
            "reranker_batch_pairs", description="Pairs per forward batch.", boundaries=BATCH_PAIRS_BOUNDARIES
        )
        self.batch_padded_tokens = metrics.Histogram(
            "reranker_batch_padded_tokens",
            description="Padded tokens (longest pair x pairs) per forward batch.",
            boundaries=BATCH_TOKEN_BOUNDARIES,
        )
        self.padding_efficiency = metrics.Histogram(
            "reranker_padding_efficiency_ratio",
            description="Real tokens / padded tokens per forward batch.",
            boundaries=RATIO_BOUNDARIES,
        )
        self.model_load_seconds = metrics.Gauge(
            "reranker_model_load_seconds", description="Seconds the scorer took to load and warm up the model."
        )
