"""Faults on a real local Ray: a replica dies, the model cannot load, a deadline passes, a client
goes away, the front door overflows. Each scenario runs in its own application beside the session
app and is bounded in time; the applications are removed when the module ends.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY, reranker_app
from reference import reference_scores
from serving_helpers import files_containing, logs_dir, metric_samples, metric_sum, poll, settled_pairs_scored

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TEXTS = MULTILINGUAL_TEXTS
# Scorers of these apps reserve little CPU, so they fit beside the session app on 2 cores.
SMALL_SCORER = {"num_cpus": 0.05, "num_gpus": 0}
# Batch windows long enough that a request deterministically waits in the Scorer's queue past a
# deadline or a hang-up, and short enough for the ingress's 3 s readiness canary.
DEADLINE_S = 0.5
DEADLINE_WINDOW = {"batch_wait_timeout_s": 1.5}
DISCONNECT_WINDOW = {"batch_wait_timeout_s": 2.0}

APPS = {
    "faults_kill": "/faults-kill",
    "faults_broken": "/faults-broken",
    "faults_deadline": "/faults-deadline",
    "faults_disconnect": "/faults-disconnect",
    "faults_overload": "/faults-overload",
}


def fixed(replicas: int, **extra) -> dict:
    """Deployment overrides: a fixed replica count instead of serve_config.yaml's autoscaling."""
    return {"num_replicas": replicas, "autoscaling_config": None, **extra}


def app_entry(name: str, args: dict | None = None, env: dict | None = None, **overrides) -> dict:
    entry = reranker_app(
        name,
        APPS[name],
        args=args,
        env=env,
        Ingress=overrides.get("Ingress", fixed(1)),
        Tokenizer=overrides.get("Tokenizer", fixed(1)),
        Scorer=overrides.get("Scorer", fixed(1, ray_actor_options=SMALL_SCORER)),
    )
    for deployment in entry["deployments"]:
        if deployment.get("autoscaling_config", "") is None:
            del deployment["autoscaling_config"]
    return entry


@pytest.fixture(scope="module")
def broken_model_dir(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model whose weights file is truncated: config and tokenizer still load."""
    target = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_model_dir, target)
    weights = target / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(100)
    return target


def fault_app_entries(broken_model_dir) -> list[dict]:
    return [
        # Two tiny scorers on the one test node: lift the shipped cap of one per node.
        app_entry("faults_kill", Scorer=fixed(2, ray_actor_options=SMALL_SCORER, max_replicas_per_node=2)),
        app_entry("faults_broken", env={"RERANKER_MODEL": str(broken_model_dir)}),
        app_entry(
            "faults_deadline",
            args={"request_deadline_s": DEADLINE_S},
            Scorer=fixed(1, ray_actor_options=SMALL_SCORER, user_config=DEADLINE_WINDOW),
        ),
        # Every request here waits out a 2 s batch window, so the measured service rate is tiny and
        # admission (reranker/admission.py) would refuse the neighbour behind the abandoned request
        # at the default deadline: a longer deadline keeps both admitted.
        app_entry(
            "faults_disconnect",
            args={"request_deadline_s": 120},
            Scorer=fixed(1, ray_actor_options=SMALL_SCORER, user_config=DISCONNECT_WINDOW),
        ),
        app_entry(
            "faults_overload",
            Ingress=fixed(
                1,
                max_ongoing_requests=2,
                max_queued_requests=2,
                backpressure_config={"status_code": 429, "retry_after_s": 1},
            ),
        ),
    ]


@pytest.fixture(scope="module")
def fault_apps(serve_cluster, broken_model_dir):
    """Deploys every fault application at once (they start in parallel) and removes them after."""
    apps = fault_app_entries(broken_model_dir)
    for app in apps:
        serve_cluster.add_app(app)
    try:
        for name in ("faults_kill", "faults_deadline", "faults_disconnect", "faults_overload"):
            serve_cluster.wait_ready(APPS[name], timeout_s=240)
        yield serve_cluster
    finally:
        for name in APPS:
            serve_cluster.remove_app(name)


def expected_order(scores) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def scorer_actors(app: str) -> dict[str, int]:
    """Replica actor name -> pid of the app's ALIVE scorer replicas.

    `ray.util.state.list_actors` asks the dashboard, which the session Ray does not run; the GCS actor
    table it reads from has the same class name, state and pid.
    """
    import ray

    table = ray._private.state.state.actor_table(None)
    return {
        actor["Name"]: actor["Pid"]
        for actor in table.values()
        if actor["ActorClassName"] == f"ServeReplica:{app}:Scorer" and actor["State"] == "ALIVE"
    }


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return status.deployments[deployment].replica_states.get("RUNNING", 0)


@pytest.mark.timeout(180)
def test_scorer_replica_killed_mid_load_loses_no_request(fault_apps, tiny_model_dir):
    """SIGKILL one of two scorer replicas under steady load: every request still gets its correct
    ranking (the ingress retries a lost part once on another replica) and Serve starts a new one."""
    url = fault_apps.url + APPS["faults_kill"]
    variants = [(f"{QUERY} {i}", TEXTS[i:] + TEXTS[:i]) for i in range(4)]
    expected = {query: expected_order(reference_scores(tiny_model_dir, query, texts)[1]) for query, texts in variants}
    before = poll(lambda: (a := scorer_actors("faults_kill")) and len(a) == 2 and a, 60, "two scorer replicas")

    stop = threading.Event()
    outcomes: list[tuple[str, int, object]] = []

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            sent = 0
            while not stop.is_set():
                query, texts = variants[(worker + sent) % len(variants)]
                response = http.post("/rerank", json={"query": query, "texts": texts})
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else response.text
                outcomes.append((query, response.status_code, body))
                sent += 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        workers = [pool.submit(client, i) for i in range(6)]
        try:
            poll(lambda: len(outcomes) >= 30, 60, "steady load before the kill")
            victim_name, victim_pid = sorted(before.items())[0]
            os.kill(victim_pid, signal.SIGKILL)
            killed_at = len(outcomes)
            # Serve notices the death and starts a replacement under a new replica id.
            replacement = poll(
                lambda: [name for name in scorer_actors("faults_kill") if name not in before]
                and running_replicas("faults_kill", "Scorer") == 2,
                120,
                "Serve did not replace the killed scorer replica",
            )
            assert replacement
            # Keep the load on the replacement for a moment.
            poll(lambda: len(outcomes) >= killed_at + 60, 60, "load after the replacement")
        finally:
            stop.set()
            for worker in workers:
                worker.result(timeout=90)

    assert victim_name not in scorer_actors("faults_kill")
    failures = [(query, code, str(body)[:200]) for query, code, body in outcomes if code != 200]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    for query, _, body in outcomes:
        assert [item["index"] for item in body] == expected[query]
    assert len(outcomes) > killed_at

    # Ray's agent keeps the killed replica's counters (Ray 2.60 evicts only gauges); /metrics passes
    # on the series of running replicas only, so replicas that come and go do not pile up there.
    victim, survivor = (name.rsplit("#", 1)[-1] for name in sorted(before))

    def scored_by(text: str) -> set[str]:
        return {s.labels["replica"] for s in metric_samples(text, "ray_reranker_pairs_scored_total", application="faults_kill")}

    assert victim in scored_by(httpx.get(f"http://127.0.0.1:{fault_apps.metrics_port}/metrics", timeout=30).text)
    shown = poll(lambda: (r := scored_by(httpx.get(url + "/metrics", timeout=30).text)) and victim not in r and r,
                 30, "the killed replica's series to leave /metrics")
    assert survivor in shown, shown


@pytest.mark.timeout(240)
def test_model_that_cannot_load_keeps_the_app_not_ready(fault_apps, broken_model_dir):
    """Truncated weights: the scorer never starts. /health stays 200, /ready and rerank answer 503
    with a reason, and Serve's status names the load failure."""
    from ray import serve

    url = fault_apps.url + APPS["faults_broken"]

    def scorer_failed():
        app = serve.status().applications.get("faults_broken")
        scorer = app and app.deployments.get("Scorer")
        return scorer if scorer and scorer.status == "DEPLOY_FAILED" else None

    scorer = poll(scorer_failed, 200, "the Scorer of a truncated model never reached DEPLOY_FAILED", 1)
    assert "Cannot load model" in scorer.message and str(broken_model_dir) in scorer.message, scorer.message
    # The same message is in Serve's logs (the controller logs each failed replica start), not only
    # in its status.
    logged = files_containing([f"Cannot load model '{broken_model_dir}'"], logs_dir() / "serve")
    assert any(name.startswith("controller_") for name in next(iter(logged.values()))), logged
    with httpx.Client(base_url=url, timeout=30) as http:
        # The ingress and tokenizer load fine (they never read the weights).
        poll(lambda: http.get("/health").status_code == 200, 60, "/health of the broken app")
        for _ in range(2):
            ready = http.get("/ready")
            assert ready.status_code == 503, ready.text
            assert ready.headers.get("retry-after")
            reason = ready.json()["reason"]
            assert "Scorer" in reason and "Cannot load model" in reason, reason
        for route, payload in (
            ("/rerank", {"query": QUERY, "texts": TEXTS}),
            ("/v2/rerank", {"query": QUERY, "documents": TEXTS}),
        ):
            response = http.post(route, json=payload)
            assert response.status_code == 503, f"{route}: {response.status_code} {response.text}"
            assert response.headers.get("retry-after")
        assert http.get("/health").json() == {"status": "ok"}


@pytest.mark.timeout(90)
def test_deadline_is_504_and_its_batch_neighbours_still_answer(fault_apps, tiny_model_dir):
    """The scorer's batch window (1.5 s) outlasts the app's request_deadline_s (0.5 s), so an HTTP request
    deterministically passes its deadline while queued: 504. A call that joined the same batch window
    through a deployment handle (no ingress deadline) is answered, correctly, after that 504."""
    from ray import serve

    from reranker.messages import PairRequest

    url = fault_apps.url + APPS["faults_deadline"]
    tokenizer = serve.get_deployment_handle("Tokenizer", app_name="faults_deadline")
    scorer = serve.get_deployment_handle("Scorer", app_name="faults_deadline")
    _, normalized = reference_scores(tiny_model_dir, QUERY, TEXTS)
    finished: dict[str, float] = {}

    def http_request():
        with httpx.Client(base_url=url, timeout=30) as http:
            response = http.post("/rerank", json={"query": QUERY, "texts": TEXTS[:2]})
        finished["http"] = time.monotonic()
        return response

    def neighbour():
        encoded = tokenizer.encode.remote(PairRequest(queries=[QUERY], passages=TEXTS))
        result = scorer.score.remote(encoded).result(timeout_s=30)
        finished["neighbour"] = time.monotonic()
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        late = pool.submit(http_request)
        time.sleep(0.2)
        other = pool.submit(neighbour)
        response = late.result(timeout=30)
        result = other.result(timeout=30)

    assert response.status_code == 504, response.text
    assert response.json()["error_type"] == "deadline" and "request_deadline_s" in response.json()["error"]
    # The neighbour was still waiting in the batch when the 504 went out, then got its answer.
    assert finished["neighbour"] > finished["http"]
    assert np.allclose(result.normalized, normalized, atol=1e-4)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        cohere = http.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})
        assert cohere.status_code == 504 and set(cohere.json()) == {"message", "detail"}


@pytest.mark.timeout(120)
def test_client_disconnect_cancels_its_work(fault_apps, tiny_model_dir):
    """A client that hangs up while its request waits in the scorer's batch window: its pairs are
    never scored (the scorer's pairs counter moves only by the neighbour's pairs), the neighbour in
    the same window gets its correct answer, and the app stays healthy."""
    url = fault_apps.url + APPS["faults_disconnect"]
    metrics_url = f"http://127.0.0.1:{fault_apps.metrics_port}/metrics"
    neighbour_texts = TEXTS[:3]
    abandoned_texts = [f"{text} {i}" for i in range(25) for text in TEXTS[:2]]  # 50 pairs
    _, normalized = reference_scores(tiny_model_dir, QUERY, neighbour_texts)

    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/rerank", json={"query": QUERY, "texts": neighbour_texts}).status_code == 200
        baseline = settled_pairs_scored(metrics_url, "faults_disconnect")

        def neighbour():
            time.sleep(0.2)
            return http.post("/rerank", json={"query": QUERY, "texts": neighbour_texts})

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            other = pool.submit(neighbour)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/rerank", json={"query": QUERY, "texts": abandoned_texts}, timeout=0.5)
            response = other.result(timeout=30)

        assert response.status_code == 200, response.text
        assert [item["index"] for item in response.json()] == expected_order(normalized)
        expected = baseline + len(neighbour_texts)
        counted = settled_pairs_scored(metrics_url, "faults_disconnect")
        assert counted == expected, f"{counted - baseline} pairs scored; the abandoned request's 50 were not cancelled"
        assert http.get("/health").status_code == 200
        assert http.post("/rerank", json={"query": QUERY, "texts": neighbour_texts}).status_code == 200

    # The abandoned request is counted as 499 (client closed request), never as a server error.
    def statuses() -> dict:
        text = httpx.get(metrics_url, timeout=10).text
        return {
            code: metric_sum(text, "ray_reranker_requests_total", application="faults_disconnect", status_code=code)
            for code in ("499", "500")
        }

    poll(lambda: statuses()["499"] >= 1, 30, "the abandoned request counted as 499")
    assert statuses() == {"499": 1, "500": 0}


@pytest.mark.timeout(120)
def test_overload_at_the_queue_limit_is_429_with_retry_after(fault_apps, tiny_model_dir):
    """40 concurrent requests against an ingress that takes 2 and queues 2: each one gets its correct
    ranking or a 429 (or 503) with Retry-After, promptly; nothing else, no hang."""
    url = fault_apps.url + APPS["faults_overload"]
    texts = [f"{text} {i}" for i in range(6) for text in TEXTS]  # 48 passages
    _, normalized = reference_scores(tiny_model_dir, QUERY, texts)
    barrier = threading.Barrier(40, timeout=30)

    def call(_):
        with httpx.Client(base_url=url, timeout=30) as http:
            barrier.wait()
            return http.post("/rerank", json={"query": QUERY, "texts": texts})

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(pool.map(call, range(40)))

    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    for response in responses:
        if response.status_code == 200:
            assert [item["index"] for item in response.json()] == expected_order(normalized)
        else:
            retry_after = response.headers.get("retry-after")
            assert retry_after and re.fullmatch(r"\d+", retry_after), response.headers
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/rerank", json={"query": QUERY, "texts": TEXTS}).status_code == 200
    # What the RerankerOverloaded alert reads: the proxy counts the 429s it answered itself, which
    # the ingress's own metrics never see.
    def proxy_refusals(text: str) -> float:
        return metric_sum(text, "ray_serve_num_http_requests_total", application="faults_overload", status_code="429")

    with httpx.Client(base_url=fault_apps.url, timeout=30) as http:
        poll(lambda: proxy_refusals(http.get("/metrics").text) >= codes.count(429), 30, "the proxy's 429s in /metrics")
        assert proxy_refusals(http.get("/metrics").text) == codes.count(429)
