"""Readiness and live reconfiguration of the real application (tier 3)."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import reranker_app
from reference import reference_scores
from serving_helpers import poll

pytestmark = pytest.mark.serving

QUERY = "what is the capital of france"
TEXTS = ["paris is the capital and most populous city of france", "столица россии москва", "東京は日本の首都です"]
SMALL_SCORER = {"num_cpus": 0.1, "num_gpus": 0}


@pytest.mark.timeout(180)
def test_ready_is_503_until_the_scorer_has_loaded(serve_cluster):
    # The scorer asks for a resource no node has, so it cannot start: the app must say "not ready".
    blocked = reranker_app(
        "lifecycle_ready", "/lifecycle-ready",
        Scorer={"ray_actor_options": {**SMALL_SCORER, "resources": {"not_on_this_node": 1}}},
    )
    serve_cluster.add_app(blocked)
    base = f"{serve_cluster.url}/lifecycle-ready"
    try:
        poll(lambda: httpx.get(f"{base}/health", timeout=10).status_code == 200, 60, "the ingress to serve /health")
        for _ in range(3):
            response = httpx.get(f"{base}/ready", timeout=30)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
            assert response.json()["status"] == "not_ready" and response.json()["reason"]
            time.sleep(0.5)
        rerank = httpx.post(f"{base}/rerank", json={"query": QUERY, "texts": TEXTS}, timeout=60)
        assert rerank.status_code == 503, rerank.text
        # Once the scorer can be placed, the canary scores and /ready turns 200.
        serve_cluster.add_app(reranker_app("lifecycle_ready", "/lifecycle-ready", Scorer={"ray_actor_options": SMALL_SCORER}))
        poll(lambda: httpx.get(f"{base}/ready", timeout=30).status_code == 200, 120, "/ready to turn 200")
        assert httpx.post(f"{base}/rerank", json={"query": QUERY, "texts": TEXTS}, timeout=60).status_code == 200
    finally:
        serve_cluster.remove_app("lifecycle_ready")


@pytest.mark.timeout(180)
def test_reconfigure_changes_batch_settings_without_restart(serve_cluster, tiny_model_dir):
    first = {"max_batch_tokens": 4096, "max_batch_size": 16, "batch_wait_timeout_s": 0.005}
    second = {"max_batch_tokens": 1024, "max_batch_size": 2, "batch_wait_timeout_s": 0.02}
    app = reranker_app("lifecycle_reconf", "/lifecycle-reconf", Scorer={"ray_actor_options": SMALL_SCORER, "user_config": first})
    serve_cluster.add_app(app)
    base = f"{serve_cluster.url}/lifecycle-reconf"
    try:
        serve_cluster.wait_ready("/lifecycle-reconf")
        before = httpx.get(f"{base}/info", timeout=30).json()["scorers"][0]
        assert before["max_batch_size"] == 16 and before["max_batch_tokens"] == 4096
        app["deployments"][-1]["user_config"] = second
        serve_cluster.add_app(app)

        def reconfigured():
            scorer = httpx.get(f"{base}/info", timeout=30).json()["scorers"][0]
            return scorer if scorer["max_batch_size"] == 2 else None

        after = poll(reconfigured, 60, "the new user_config to apply")
        assert after["max_batch_tokens"] == 1024 and after["batch_wait_timeout_s"] == 0.02
        assert after["replica"] == before["replica"], "reconfigure must not restart the scorer"
        _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
        body = httpx.post(f"{base}/rerank", json={"query": QUERY, "texts": TEXTS}, timeout=60).json()
        for item in body:
            assert item["score"] == pytest.approx(normalized[item["index"]], abs=1e-4)
    finally:
        serve_cluster.remove_app("lifecycle_reconf")
