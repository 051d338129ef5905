"""Scorer deployment (GPU where present, CPU otherwise): batches pairs by padded tokens and scores them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from reranker.batching import max_by_doc, padded_tokens, split_by_budget, unbatch
from reranker.messages import DocScores, EncodedPairs
from reranker.metrics import ScorerMetrics, with_thread_cpu
from reranker.settings import BatchSettings, RerankerSettings

logger = logging.getLogger("ray.serve")


@dataclass
class ScoreItem:
    """One part of a request waiting in the Serve batch queue."""

    pairs: EncodedPairs
    enqueued_at: float


def batch_padded_tokens(items: list[ScoreItem]) -> int:
    """Serve's batch_size_fn: the padded tokens of the items as one batch. Never raises.

    An exception here would stall Ray's batcher (ray#66140), so any failure counts as 0.
    """
    try:
        return padded_tokens(np.concatenate([item.pairs.lengths for item in items]))
    except Exception:  # noqa: BLE001 - must never raise, see docstring
        return 0


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Scorer:
    """Scores encoded pairs with the cross-encoder; batch settings change live via user_config."""

    def __init__(self, settings: RerankerSettings):
        from reranker.scoring import ModelScorer

        self.metrics = ScorerMetrics()
        self.core = ModelScorer(settings)
        self.metrics.model_load_seconds.set(self.core.load_seconds)
        # The core resolved the device's batch defaults; user_config, if any, arrives next.
        self.reconfigure({})

    def reconfigure(self, user_config: dict) -> None:
        """Applies max_batch_tokens, max_batch_size and batch_wait_timeout_s without a restart."""
        batching = BatchSettings(**{**self.core.batching.model_dump(), **(user_config or {})})
        self.core.reconfigure(batching)
        self._score_batch.set_max_batch_size(batching.max_batch_tokens)
        self._score_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        logger.info("Batch settings: %s", batching.model_dump())

    async def score(self, pairs: EncodedPairs) -> DocScores:
        """Scores every pair of a request part and reduces them to one score per document."""
        now = time.perf_counter()
        parts = split_by_budget(pairs, self.core.batching.max_batch_tokens) if pairs.num_pairs else []
        results = await asyncio.gather(*(self._score_batch(ScoreItem(pairs.select(idx), now)) for idx in parts))
        raw = np.empty(pairs.num_pairs, np.float32)
        normalized = np.empty(pairs.num_pairs, np.float32)
        for idx, (part_raw, part_normalized) in zip(parts, results):
            raw[idx], normalized[idx] = part_raw, part_normalized
        return DocScores(
            raw=max_by_doc(pairs.doc_index, pairs.num_docs, raw),
            normalized=max_by_doc(pairs.doc_index, pairs.num_docs, normalized),
            chunks_per_doc=pairs.chunks_per_doc(),
            total_tokens=pairs.total_tokens,
            query_truncated=pairs.query_truncated,
            max_batch_tokens=self.core.batching.max_batch_tokens,
            forward_tokens_per_s=self.core.forward_tokens_per_s,
        )

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.005, batch_size_fn=batch_padded_tokens)
    async def _score_batch(self, items: list[ScoreItem]) -> list[tuple[np.ndarray, np.ndarray]]:
        started = time.perf_counter()
        for item in items:
            self.metrics.stage_duration.observe(started - item.enqueued_at, tags={"stage": "queue_wait"})
        merged = EncodedPairs.concat([item.pairs for item in items])
        # The forward pass runs off the event loop so health checks and new arrivals are served.
        scores, cpu_s = await asyncio.to_thread(with_thread_cpu, self.core.score_pairs, merged)
        self.metrics.stage_cpu.inc(cpu_s, tags={"stage": "inference"})
        self.metrics.stage_duration.observe(time.perf_counter() - started, tags={"stage": "inference"})
        self.metrics.pairs_scored.inc(merged.num_pairs)
        for batch in scores.batches:
            self.metrics.batch_pairs.observe(batch.pairs)
            self.metrics.batch_padded_tokens.observe(batch.padded_tokens)
            self.metrics.padding_efficiency.observe(batch.real_tokens / max(batch.padded_tokens, 1))
        counts = [item.pairs.num_pairs for item in items]
        return list(zip(unbatch(scores.raw, counts), unbatch(scores.normalized, counts)))

    def check_health(self) -> None:
        """A tiny forward pass: a wedged device or a broken model fails the replica's health check."""
        self.core.warm_up()

    def describe(self) -> dict:
        context = serve.get_replica_context()
        return {"replica": context.replica_id.unique_id, **self.core.describe(), **self.core.batching.model_dump()}

