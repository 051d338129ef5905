"""The simulated GPU through the served app (tier 3): scores over HTTP equal the in-process scorer's,
also when concurrent requests share tokenizer and scorer calls, and the two stage CPU counters that
benchmarks/gpu_serving_bench.py subtracts from each process's CPU (tokenization and the forward)
reach /metrics.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY
from reference import Ours
from serving_helpers import deployed, metric_samples, metric_sum, poll, small_app

pytestmark = pytest.mark.serving

APP = "simgpu"


def test_simulated_gpu_scores_over_http_equal_the_in_process_scorer(serve_cluster, tiny_model_dir):
    # One call in flight per callee: concurrent requests below must share calls (reranker/coalescing.py).
    app = small_app(APP, "/" + APP, args={"backend": "simulated-gpu", "handle_calls_in_flight": 1})
    expected_pairs, expected = Ours(tiny_model_dir, backend="simulated-gpu").score(QUERY, MULTILINGUAL_TEXTS)
    with deployed(serve_cluster, [app]):
        base = f"{serve_cluster.url}/{APP}"
        with httpx.Client(base_url=base, timeout=60) as client:
            answer = client.post("/rerank", json={"query": QUERY, "texts": MULTILINGUAL_TEXTS, "raw_scores": True})
            assert answer.status_code == 200, answer.text
            got = np.empty(len(MULTILINGUAL_TEXTS))
            for item in answer.json():
                got[item["index"]] = item["score"]
            np.testing.assert_array_equal(got, expected.raw.astype(np.float64))
            [scorer] = client.get("/info").json()["scorers"]
            assert (scorer["backend"], scorer["device"], scorer["max_batch_tokens"]) == ("simulated-gpu", "cpu", 32768)

        def stage_cpu_recorded():
            text = httpx.get(base + "/metrics", timeout=30).text
            return all(
                metric_sum(text, "ray_reranker_stage_cpu_seconds_total", application=APP, stage=stage) > 0
                for stage in ("tokenization", "inference")
            ) and metric_sum(text, "ray_reranker_padded_tokens_total", application=APP) >= expected_pairs.total_tokens

        poll(stage_cpu_recorded, 30, "the stage CPU seconds and the padded tokens in /metrics")

        # 24 concurrent requests, each its own rotation of the passages: every answer is its own.
        ours = Ours(tiny_model_dir, backend="simulated-gpu")
        variants = [MULTILINGUAL_TEXTS[i % 5:] + MULTILINGUAL_TEXTS[: i % 5] for i in range(24)]
        queries = [f"{QUERY} {i}" for i in range(24)]

        def rerank(i: int) -> np.ndarray:
            answer = httpx.post(base + "/rerank", json={"query": queries[i], "texts": variants[i], "raw_scores": True}, timeout=60)
            assert answer.status_code == 200, answer.text
            got = np.empty(len(variants[i]))
            for item in answer.json():
                got[item["index"]] = item["score"]
            return got

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(rerank, range(24)))
        for i, got in enumerate(answers):
            np.testing.assert_array_equal(got, ours.score(queries[i], variants[i])[1].raw.astype(np.float64))

        def calls_carrying_several_parts():
            """Per callee: (calls, calls with one part), once some call carried more than one part."""
            text = httpx.get(base + "/metrics", timeout=30).text
            found = {}
            for callee in ("Tokenizer", "Scorer"):
                labels = {"application": APP, "callee": callee}
                calls = metric_sum(text, "ray_reranker_parts_per_call_count", **labels)
                single = sum(
                    sample.value
                    for sample in metric_samples(text, "ray_reranker_parts_per_call_bucket", **labels)
                    if float(sample.labels["le"]) == 1
                )
                if not single < calls:
                    return None
                found[callee] = (calls, single)
            return found

        # Ray's exported histogram _sum is not exact (20.5 for 25 parts here), so count calls, not parts.
        for callee, (calls, single) in poll(calls_carrying_several_parts, 30, "a coalesced call per callee").items():
            assert 1 <= calls < 25, (callee, calls, single)
    assert expected_pairs.num_pairs == len(MULTILINGUAL_TEXTS)
