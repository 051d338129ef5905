"""The simulated GPU through the served app (tier 3): scores over HTTP equal the in-process scorer's,
and the two stage CPU counters that benchmarks/gpu_serving_bench.py subtracts from each process's CPU
(tokenization and the forward) reach /metrics.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY
from reference import Ours
from serving_helpers import deployed, metric_sum, poll, small_app

pytestmark = pytest.mark.serving

APP = "simgpu"


def test_simulated_gpu_scores_over_http_equal_the_in_process_scorer(serve_cluster, tiny_model_dir):
    app = small_app(APP, "/" + APP, args={"backend": "simulated-gpu"})
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
            )

        poll(stage_cpu_recorded, 30, "the tokenizer's and the scorer's stage CPU seconds in /metrics")
    assert expected_pairs.num_pairs == len(MULTILINGUAL_TEXTS)
