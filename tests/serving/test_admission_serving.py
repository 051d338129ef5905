"""Deadline-aware admission on a real local Ray: a burst larger than the service can finish within
the deadline is answered with 200s and with 429s carrying Retry-After, refused at the door; no
admitted request times out (no 504), and the refusals go through the one error path (the failures
metric with reason="overloaded"). A request that would need more than twice the deadline even alone
is refused with 413 before any of it is tokenized or scored.

The scorer is the simulated GPU backend with one pair per forward batch: each pair costs its fixed
CPU launch time (about 5 ms), so the service has a bounded, steady rate a burst can exceed.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading

import httpx
import pytest
from conftest import MULTILINGUAL_TEXTS, QUERY
from serving_helpers import deployed, metric_sum, poll, settled_pairs_scored, small_app

pytestmark = [pytest.mark.serving, pytest.mark.slow]

APP, PREFIX = "admission", "/admission"
DEADLINE_S = 4
BURST = 40
TEXTS = [f"{text} {i}" for i in range(6) for text in MULTILINGUAL_TEXTS]  # 48 passages


def admission_app() -> dict:
    # Half the deadline as the admission limit: the rate a burst meets on 2 shared cores may drop
    # below the one measured just before it, and the test must not turn that into a 504.
    return small_app(
        APP,
        PREFIX,
        args={"backend": "simulated-gpu", "request_deadline_s": DEADLINE_S, "admission_max_wait_fraction": 0.5},
        scorer_user_config={"max_batch_size": 1},
    )


def failures(metrics_url: str, reason: str) -> float:
    return metric_sum(httpx.get(metrics_url, timeout=10).text, "ray_reranker_failures_total", application=APP, reason=reason)


@pytest.fixture(scope="module")
def admission_cluster(serve_cluster):
    with deployed(serve_cluster, [admission_app()], timeout_s=180):
        yield serve_cluster


@pytest.mark.timeout(240)
def test_a_burst_gets_200s_and_429s_with_retry_after_and_no_504(admission_cluster):
    url = admission_cluster.url + PREFIX
    metrics_url = f"http://127.0.0.1:{admission_cluster.metrics_port}/metrics"
    body = {"query": QUERY, "texts": TEXTS}
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(3):  # the ingress measures the service rate on these
            assert http.post("/rerank", json=body).status_code == 200
    before = failures(metrics_url, "overloaded")
    barrier = threading.Barrier(BURST, timeout=30)

    def call(_):
        with httpx.Client(base_url=url, timeout=60) as client:
            barrier.wait()
            return client.post("/rerank", json=body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=BURST) as pool:
        responses = list(pool.map(call, range(BURST)))

    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(504) == 0
    assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
    for response in responses:
        if response.status_code == 200:
            assert sorted(item["index"] for item in response.json()) == list(range(len(TEXTS)))
        else:
            # The ingress's answer (the proxy's own queue never filled: 40 < 16 + 40).
            assert response.json()["error_type"] == "overloaded", response.text
            assert re.fullmatch(r"[1-9]\d*", response.headers.get("retry-after", "")), response.headers
    # Every refusal went through the one error path and its failures metric.
    refused = codes.count(429)
    poll(lambda: failures(metrics_url, "overloaded") - before >= refused, 30, f"{refused} overloaded failures in /metrics")
    assert failures(metrics_url, "overloaded") - before == refused
    # The backlog drains: a request sent after the burst is admitted.
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/rerank", json=body).status_code == 200


@pytest.mark.timeout(180)
def test_a_request_too_large_for_the_deadline_even_alone_is_413_before_any_work(admission_cluster):
    """1000 passages of 512 estimated tokens need more than twice the 4 s deadline even at the
    fastest rate the ingress has measured (the request before measures it): 413 at once, not 504
    after 4 s of scoring, and the scorer scores nothing."""
    url = admission_cluster.url + PREFIX
    metrics_url = f"http://127.0.0.1:{admission_cluster.metrics_port}/metrics"
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/rerank", json={"query": QUERY, "texts": TEXTS}).status_code == 200
        scored_before = settled_pairs_scored(metrics_url, APP)
        too_large_before = failures(metrics_url, "too_large")
        response = http.post("/rerank", json={"query": QUERY, "texts": ["long passage " * 160] * 1000})
        assert response.status_code == 413, response.text
        assert response.json()["error_type"] == "payload_too_large"
        assert f"request_deadline_s ({DEADLINE_S} s)" in response.json()["error"]
        assert "retry-after" not in response.headers  # no retry would help
        poll(lambda: failures(metrics_url, "too_large") - too_large_before >= 1, 30, "the 413 in the failures metric")
        assert settled_pairs_scored(metrics_url, APP) == scored_before  # nothing was scored for it
        assert http.post("/rerank", json={"query": QUERY, "texts": TEXTS}).status_code == 200
