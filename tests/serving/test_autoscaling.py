"""Autoscaling is real: under bounded load the Tokenizer and Scorer scale past one replica, and back
to one after it, as Serve's own status API reports. Runs in its own application with fast delays.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time

import httpx
import pytest
from conftest import reranker_app

pytestmark = [pytest.mark.serving, pytest.mark.slow]

APP, PREFIX = "autoscale", "/autoscale"
CLIENTS = 16
MAX_LOAD_S = 30
WORDS = ["paris", "is", "the", "capital", "and", "most", "populous", "city", "of", "france", "berlin", "ist", "die", "hauptstadt", "von", "deutschland", "столица", "россии", "москва", "東京は日本の首都です", "القاهرة", "هي", "عاصمة", "مصر", "नई", "दिल्ली", "भारत", "की", "राजधानी", "है", "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "relevant", "passage", "about", "neural", "rerankers", "and", "search", "engines"]


def fast_autoscaling(target: float) -> dict:
    return {
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": target,
            "upscale_delay_s": 1,
            "downscale_delay_s": 3,
            # Serve averages ongoing requests over this window; its 30 s default would slow the test.
            "look_back_period_s": 2,
            "metrics_interval_s": 0.5,
        }
    }


@pytest.fixture(scope="module")
def autoscale_app(serve_cluster):
    app = reranker_app(
        APP,
        PREFIX,
        Ingress={"num_replicas": 1, "autoscaling_config": None},
        Tokenizer=fast_autoscaling(1),
        Scorer={**fast_autoscaling(2), "ray_actor_options": {"num_cpus": 0.05, "num_gpus": 0}},
    )
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    del ingress["autoscaling_config"]
    serve_cluster.add_app(app)
    try:
        serve_cluster.wait_ready(PREFIX, timeout_s=180)
        yield serve_cluster
    finally:
        serve_cluster.remove_app(APP)


def running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.deployments[deployment].replica_states.get("RUNNING", 0) if app else 0


@pytest.mark.timeout(200)
def test_tokenizer_and_scorer_scale_up_under_load_and_back_down(autoscale_app):
    url = autoscale_app.url + PREFIX
    assert running("Tokenizer") == 1 and running("Scorer") == 1
    stop = threading.Event()
    codes: list[int] = []
    peak = {"Tokenizer": 1, "Scorer": 1}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                passages = [" ".join(rng.choices(WORDS, k=rng.randint(30, 120))) for _ in range(50)]
                response = http.post("/rerank", json={"query": " ".join(rng.choices(WORDS, k=6)), "texts": passages})
                codes.append(response.status_code)

    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        workers = [pool.submit(client, seed) for seed in range(CLIENTS)]
        deadline = time.monotonic() + MAX_LOAD_S
        try:
            while time.monotonic() < deadline and min(peak.values()) < 2:
                for name in peak:
                    peak[name] = max(peak[name], running(name))
                time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.result(timeout=90)

    assert peak == {"Tokenizer": 2, "Scorer": 2}, f"peak RUNNING replicas under {MAX_LOAD_S} s of load: {peak}"
    assert codes and set(codes) == {200}, f"non-200 responses while scaling: {sorted(set(codes))}"

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (running("Tokenizer"), running("Scorer")) != (1, 1):
        time.sleep(1)
    after = {"Tokenizer": running("Tokenizer"), "Scorer": running("Scorer")}
    assert after == {"Tokenizer": 1, "Scorer": 1}, f"replicas 90 s after the load stopped: {after}"
    # Still serving after the downscale.
    response = httpx.post(f"{url}/rerank", json={"query": "capital", "texts": ["paris", "berlin"]}, timeout=30)
    assert response.status_code == 200
