"""Tokenizer deployment (CPU): turns queries and passages into numpy int32 pair arrays.

Never imports torch (see reranker/model_files.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from reranker.metrics import TokenizerMetrics, with_thread_cpu
from reranker.relevance import check_architecture
from reranker.settings import RerankerSettings
from reranker.messages import EncodedPairs, PairRequest
from reranker.tokenization import PairEncoder
from reranker.model_files import labels, load_tokenizer, model_commit, read_model_config, resolve_max_length

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Tokenizer:
    """Encodes requests in batches: one tokenizer call for all queries and passages in the batch."""

    def __init__(self, settings: RerankerSettings):
        config = read_model_config(settings.model, settings.revision)
        check_architecture(config)
        self.max_length = resolve_max_length(config, settings.max_length)
        self.id2label, self.label2id = labels(config)
        self.model_sha = model_commit(settings.model, settings.revision)
        self.encoder = PairEncoder(
            load_tokenizer(settings.model, settings.revision),
            self.max_length,
            settings.max_query_tokens,
            settings.chunk_overlap_tokens,
        )
        self.metrics = TokenizerMetrics()

    async def encode(self, request: PairRequest) -> EncodedPairs:
        """Encodes one request; a bad request fails alone, never its batch neighbours."""
        result = await self._encode_batch(request)
        if isinstance(result, Exception):
            raise result
        return result

    async def encode_many(self, requests: list[PairRequest]) -> list:
        """Encodes several requests' parts sent in one call by the ingress (coalesced under load).

        One result per request, in order: its EncodedPairs, or the exception that belongs to it alone.
        """
        return list(await asyncio.gather(*(self._encode_batch(request) for request in requests), return_exceptions=True))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _encode_batch(self, requests: list[PairRequest]) -> list:
        started = time.perf_counter()
        # Off the event loop (the Rust tokenizer releases the GIL), so arrivals keep queueing;
        # one batch at a time, so the tokenizer is never used from two threads at once.
        results, cpu_s = await asyncio.to_thread(with_thread_cpu, self._encode_each, requests)
        elapsed = time.perf_counter() - started
        self.metrics.stage_cpu.inc(cpu_s, tags={"stage": "tokenization"})
        for result in results:
            if isinstance(result, EncodedPairs):
                self.metrics.stage_duration.observe(elapsed, tags={"stage": "tokenization"})
                for length in result.lengths.tolist():
                    self.metrics.pair_tokens.observe(length)
        return results

    def _encode_each(self, requests: list[PairRequest]) -> list:
        """All requests in one tokenizer pass; if that fails, one by one, so an error stays with its request."""
        try:
            return self.encoder.encode_many(requests)
        except Exception:  # noqa: BLE001 - retried one by one, so each error reaches its own caller
            results = []
            for request in requests:
                try:
                    results.append(self.encoder.encode_request(request))
                except Exception as exc:  # noqa: BLE001 - delivered to its own caller only
                    results.append(exc)
            return results

    def describe(self) -> dict:
        import sys

        return {
            "max_length": self.max_length,
            "torch_imported": "torch" in sys.modules,
            "model_sha": self.model_sha,
            "id2label": self.id2label,
            "label2id": self.label2id,
        }
