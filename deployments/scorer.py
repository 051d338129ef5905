"""Scorer deployment (GPU where present, CPU otherwise): batches pairs by padded tokens and scores them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from reranker.batching import max_by_doc, padded_tokens, split_by_budget
from reranker.messages import DocScores, EncodedPairs
from reranker.metrics import ScorerMetrics, with_thread_cpu
from reranker.settings import BatchSettings, RerankerSettings

logger = logging.getLogger("ray.serve")


# Batch windows launched and not yet fetched, at most: the next window is collated and launched
# while the previous one runs on the GPU (a CPU backend computes inside the launch, so there it
# changes nothing); more would only hold device memory.
WINDOWS_IN_FLIGHT = 2


def launches_when_idle(core) -> bool:
    """Whether an idle scorer (no window launched and unfinished) launches what it has at once.

    Only where a launch is a CUDA graph's replay (`cuda_graphs`, GPU scorers only), after which the
    device runs the batch on its own. Waiting then would only leave the device idle: a lone request
    saves the batch wait (5 ms, beside a forward of a few ms). With eager launches (5-8 ms of a core
    per forward on the H200 host) the wait stays: under moderate load skipping it makes windows
    smaller, so more launches per request on the scorer's one busy core (benchmarks/RESULTS.md
    7.10). A CPU forward takes seconds, beside which the wait is nothing, and it lets concurrent
    parts share a window.
    """
    return bool(core.graph_shapes)


@dataclass
class ScoreItem:
    """One part of a request waiting in the Serve batch queue."""

    pairs: EncodedPairs
    enqueued_at: float


@dataclass
class WindowShare:
    """One item's pairs in a launched batch window: `window` resolves to the whole window's PairScores."""

    window: asyncio.Future
    start: int
    count: int

    async def scores(self) -> tuple[np.ndarray, np.ndarray]:
        # Shielded: a cancelled caller must not cancel the window its neighbours wait for.
        scores = await asyncio.shield(self.window)
        end = self.start + self.count
        return scores.raw[self.start:end], scores.normalized[self.start:end]


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
        self.windows_in_flight = asyncio.Semaphore(WINDOWS_IN_FLIGHT)
        self.windows_running = 0  # launched and not yet finished
        self.batch_wait_timeout_s = 0.0
        self.core = ModelScorer(settings)
        self.launches_when_idle = launches_when_idle(self.core)
        self.metrics.model_load_seconds.set(self.core.load_seconds)
        # The core resolved the device's batch defaults; user_config, if any, arrives next.
        self.reconfigure({})

    def reconfigure(self, user_config: dict) -> None:
        """Applies the batch settings (BatchSettings' fields) without a restart."""
        batching = BatchSettings(**{**self.core.batching.model_dump(), **(user_config or {})})
        self.core.reconfigure(batching)
        self._score_batch.set_max_batch_size(batching.max_batch_tokens * batching.batch_window_forwards)
        self.batch_wait_timeout_s = batching.batch_wait_timeout_s
        self._set_batch_wait()
        logger.info("Batch settings: %s", batching.model_dump())

    async def score(self, pairs: EncodedPairs) -> DocScores:
        """Scores every pair of a request part and reduces them to one score per document."""
        now = time.perf_counter()
        budget = self.core.batching.max_batch_tokens
        if not pairs.num_pairs:
            parts = []
        elif padded_tokens(pairs.lengths) <= budget:
            parts = [None]  # the usual case: the ingress sizes parts by this budget; no copy
        else:
            parts = split_by_budget(pairs, budget)
        shares = await asyncio.gather(
            *(self._score_batch(ScoreItem(pairs if idx is None else pairs.select(idx), now)) for idx in parts)
        )
        raw = np.empty(pairs.num_pairs, np.float32)
        normalized = np.empty(pairs.num_pairs, np.float32)
        for idx, share in zip(parts, shares):
            part_raw, part_normalized = await share.scores()
            if idx is None:
                raw, normalized = part_raw, part_normalized
            else:
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

    async def score_many(self, parts: list[EncodedPairs]) -> list:
        """Scores several requests' parts sent in one call by the ingress (coalesced under load).

        One result per part, in order: its DocScores, or the exception that belongs to it alone. The
        parts join the batch queue like parts of separate calls, so windows pack them by tokens.
        """
        return list(await asyncio.gather(*(self.score(pairs) for pairs in parts), return_exceptions=True))

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.005, batch_size_fn=batch_padded_tokens)
    async def _score_batch(self, items: list[ScoreItem]) -> list[WindowShare]:
        """Launches one batch window and returns as soon as it is launched: each item's share of it.

        The batcher then gathers the next window while this one runs on the device; the wait for
        the device happens in `_finish_window`, off the event loop like the launch.
        """
        await self.windows_in_flight.acquire()
        self._window_started()
        try:
            started = time.perf_counter()
            for item in items:
                self.metrics.stage_duration.observe(started - item.enqueued_at, tags={"stage": "queue_wait"})
            merged = EncodedPairs.concat([item.pairs for item in items]) if len(items) > 1 else items[0].pairs
            launched, cpu_s = await asyncio.to_thread(with_thread_cpu, self.core.launch_pairs, merged)
        except BaseException:
            self._window_ended()
            raise
        window = asyncio.ensure_future(self._finish_window(launched, started, cpu_s))
        starts = np.cumsum([0] + [item.pairs.num_pairs for item in items]).tolist()
        return [WindowShare(window, start, item.pairs.num_pairs) for start, item in zip(starts, items)]

    async def _finish_window(self, launched, started: float, launch_cpu_s: float):
        """Waits for a launched window (off the event loop), records its metrics, frees its slot."""
        try:
            scores, cpu_s = await asyncio.to_thread(with_thread_cpu, self.core.finish_pairs, launched)
        finally:
            self._window_ended()
        self.metrics.stage_cpu.inc(launch_cpu_s + cpu_s, tags={"stage": "inference"})
        self.metrics.stage_duration.observe(time.perf_counter() - started, tags={"stage": "inference"})
        self.metrics.pairs_scored.inc(launched.num_pairs)
        self.metrics.padded_tokens.inc(sum(batch.padded_tokens for batch in scores.batches))
        for batch in scores.batches:
            self.metrics.batch_pairs.observe(batch.pairs)
            self.metrics.batch_padded_tokens.observe(batch.padded_tokens)
            self.metrics.padding_efficiency.observe(batch.real_tokens / max(batch.padded_tokens, 1))
        return scores

    def _window_started(self) -> None:
        self.windows_running += 1
        self._set_batch_wait()

    def _window_ended(self) -> None:
        self.windows_in_flight.release()
        self.windows_running -= 1
        self._set_batch_wait()

    def _set_batch_wait(self) -> None:
        """The next batch window waits for more parts, unless the scorer is idle and launches at once."""
        idle = not self.windows_running and self.launches_when_idle
        self._score_batch.set_batch_wait_timeout_s(0.0 if idle else self.batch_wait_timeout_s)

    def check_health(self) -> None:
        """A tiny forward pass: a wedged device or a broken model fails the replica's health check."""
        self.core.warm_up()

    def describe(self) -> dict:
        context = serve.get_replica_context()
        return {"replica": context.replica_id.unique_id, **self.core.describe(), **self.core.batching.model_dump()}

