"""Autoscaling is real, and adds replicas only where they add capacity: under bounded load the
Tokenizer scales past one replica and back to one after it, as Serve's own status API reports; the
Scorer's autoscaler asks for a second replica too, but the shipped `max_replicas_per_node: 1` keeps
it pending on this one node (a CPU scorer already uses every core), so two scorers never run side by
side. Runs in its own application with fast delays; the scorer reserves only 0.05 CPU, so Serve's
placement rule, not a lack of CPUs, is what keeps the second one out.
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
# The load stops as soon as the tokenizer has scaled (about 15 s); the bound leaves room for a host
# that slows the CPU about threefold, where 30 s was once too short.
MAX_LOAD_S = 60
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
    scorer = next(d for d in app["deployments"] if d["name"] == "Scorer")
    assert scorer["max_replicas_per_node"] == 1, "serve_config.yaml's per-node cap is what this test checks"
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


def scorer_actors() -> dict[str, int]:
    """State -> count of this app's scorer replica actors in Ray's GCS (ALIVE, PENDING_CREATION, ...)."""
    import ray

    states: dict[str, int] = {}
    for actor in ray._private.state.state.actor_table(None).values():
        if actor["ActorClassName"] == f"ServeReplica:{APP}:Scorer" and actor["State"] != "DEAD":
            states[actor["State"]] = states.get(actor["State"], 0) + 1
    return states


@pytest.mark.timeout(300)
def test_tokenizer_scales_up_and_back_down_and_a_second_scorer_never_joins_the_node(autoscale_app):
    url = autoscale_app.url + PREFIX
    assert running("Tokenizer") == 1 and running("Scorer") == 1
    stop = threading.Event()
    codes: list[int] = []
    peak = {"Tokenizer": 1, "Scorer": 1}
    scorer_alive_peak, scorer_pending_peak = 1, 0

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
        asked_at = None
        try:
            # Until the tokenizer has scaled and the scorer's second replica has waited 3 s in Ray.
            while time.monotonic() < deadline and (peak["Tokenizer"] < 2 or asked_at is None or time.monotonic() < asked_at + 3):
                for name in peak:
                    peak[name] = max(peak[name], running(name))
                states = scorer_actors()
                scorer_alive_peak = max(scorer_alive_peak, states.get("ALIVE", 0))
                scorer_pending_peak = max(scorer_pending_peak, states.get("PENDING_CREATION", 0))
                if asked_at is None and states.get("PENDING_CREATION"):
                    asked_at = time.monotonic()
                time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.result(timeout=90)

    assert peak == {"Tokenizer": 2, "Scorer": 1}, f"peak RUNNING replicas under {MAX_LOAD_S} s of load: {peak}"
    # Serve's autoscaler did ask for a second scorer; Ray could not place it beside the first.
    assert scorer_pending_peak == 1, "the scorer's autoscaler never asked for a second replica under this load"
    assert scorer_alive_peak == 1, f"{scorer_alive_peak} scorer replicas were alive at once on one node"
    assert codes and set(codes) == {200}, f"non-200 responses while scaling: {sorted(set(codes))}"

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (
        (running("Tokenizer"), running("Scorer")) != (1, 1) or scorer_actors() != {"ALIVE": 1}
    ):
        time.sleep(1)
    after = {"Tokenizer": running("Tokenizer"), "Scorer": running("Scorer")}
    assert after == {"Tokenizer": 1, "Scorer": 1}, f"replicas 90 s after the load stopped: {after}"
    assert scorer_actors() == {"ALIVE": 1}, f"the pending scorer replica was not dropped after the load: {scorer_actors()}"
    # Still serving after the downscale.
    response = httpx.post(f"{url}/rerank", json={"query": "capital", "texts": ["paris", "berlin"]}, timeout=30)
    assert response.status_code == 200
