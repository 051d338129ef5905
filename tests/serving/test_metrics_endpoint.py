"""`/metrics` sums every replica; request ids and JSON access logs reach every stage's log (tier 3)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from conftest import load_serve_config
from serving_helpers import (
    deployed,
    metric_samples,
    metric_sum,
    poll,
    replica_log_lines,
    small_app,
)

pytestmark = pytest.mark.serving

APP = "metrics2"
QUERY = "what is the capital of france"
WORDS = ["paris", "is", "the", "capital", "and", "most", "populous", "city", "of", "france"]
DOCS_PER_REQUEST = [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def two_replica_app(serve_cluster):
    """Two replicas of each deployment, under /metrics2, with the `log_text` debug setting on (one
    app for both, as each app deployed costs seconds on 2 cores)."""
    with deployed(serve_cluster, [small_app(APP, "/" + APP, args={"log_text": True}, replicas=2)]):
        yield f"{serve_cluster.url}/{APP}"


def counters(text: str) -> dict:
    """The app's counters that the test sends traffic to, summed over replicas and label sets."""
    return {
        "requests": metric_sum(text, "ray_reranker_requests_total", application=APP, route="/rerank", status_code="200"),
        "durations": metric_sum(text, "ray_reranker_request_duration_seconds_count", application=APP, route="/rerank"),
        "pairs": metric_sum(text, "ray_reranker_pairs_scored_total", application=APP),
        "batches": metric_sum(text, "ray_reranker_batch_pairs_count", application=APP),
    }


def stable_counters(url: str, expected: dict | None = None, timeout_s: float = 45, reads: int = 2) -> dict:
    """Counters once `reads` reads 1.2 s apart agree and match `expected` (None: any value); bounded."""
    import time

    history = []
    deadline = time.monotonic() + timeout_s
    while True:
        current = counters(httpx.get(url + "/metrics", timeout=30).text)
        history = (history + [current])[-reads:]
        wanted = expected is None or all(v is None or current[k] == v for k, v in expected.items())
        if len(history) == reads and all(h == current for h in history) and wanted:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics did not settle in {timeout_s}s: {current} (expected {expected})")
        time.sleep(1.2)


def test_metrics_sum_every_replica(two_replica_app):
    # Each ingress replica scores one canary pair the first time it is asked to be ready. Ask both
    # (the proxy spreads requests at random) before the baseline, and make every series exist.
    with httpx.Client(timeout=60) as client:
        for _ in range(20):
            assert client.get(two_replica_app + "/ready").status_code == 200
        assert client.post(two_replica_app + "/rerank", json={"query": QUERY, "texts": WORDS[:1]}).status_code == 200

    def both_ingress_replicas_ready():
        text = httpx.get(two_replica_app + "/metrics", timeout=30).text
        ready = {s.labels["replica"] for s in metric_samples(text, "ray_reranker_requests_total", application=APP, route="/ready")}
        return len(ready) == 2 and counters(text)["requests"] >= 1

    poll(both_ingress_replicas_ready, 30, "both ingress replicas' /ready and the warm-up in /metrics")
    baseline = stable_counters(two_replica_app, reads=3)
    baseline_sum = metric_sum(httpx.get(two_replica_app + "/metrics").text, "ray_reranker_batch_pairs_sum", application=APP)
    pairs = 0
    with httpx.Client(timeout=60) as client:
        for count in DOCS_PER_REQUEST:
            texts = [" ".join(WORDS[: i + 2]) for i in range(count)]
            response = client.post(two_replica_app + "/rerank", json={"query": QUERY, "texts": texts})
            assert response.status_code == 200, response.text
            pairs += count
    n = len(DOCS_PER_REQUEST)
    expected = {
        "requests": baseline["requests"] + n,
        "durations": baseline["durations"] + n,
        "pairs": baseline["pairs"] + pairs,
        "batches": None,
    }
    settled = stable_counters(two_replica_app, expected)
    assert settled["batches"] >= baseline["batches"] + n, settled

    text = httpx.get(two_replica_app + "/metrics").text
    # Ray 2.60 re-emits histogram observations as bucket midpoints, so a `_sum` is only an estimate
    # (ray/_private/telemetry/open_telemetry_metric_recorder.py); counts and counters are exact.
    batch_pairs = metric_sum(text, "ray_reranker_batch_pairs_sum", application=APP) - baseline_sum
    assert pairs / 2 <= batch_pairs <= pairs * 2, batch_pairs
    # Two replicas each of ingress and scorer report; the node's agent keeps each replica's series.
    assert len({s.labels["replica"] for s in metric_samples(text, "ray_reranker_requests_total", application=APP)}) == 2
    assert {s.labels["route"] for s in metric_samples(text, "ray_reranker_requests_total", application=APP)} >= {"/rerank"}
    # Serve's own metrics come through the same endpoint.
    assert metric_sum(text, "ray_serve_num_http_requests_total", application=APP) >= n
    assert metric_sum(text, "ray_serve_deployment_request_counter_total", application=APP, deployment="Scorer") >= n
    # Only the reranker's and Serve's families are exported.
    from prometheus_client.parser import text_string_to_metric_families

    names = {family.name for family in text_string_to_metric_families(text)}
    assert names and all(name.startswith(("ray_reranker_", "ray_serve_")) for name in names), names


def test_metrics_content_type(http):
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


# ----- logs -----------------------------------------------------------------------------------


def test_json_logging_is_configured():
    logging_config = load_serve_config()["logging_config"]
    assert logging_config["encoding"] == "JSON" and logging_config["enable_access_log"] is True


def access_lines(app: str, request_id: str) -> list[dict]:
    """The ingress's own access-log records (event=access) of one request."""
    out = []
    for line in replica_log_lines(app, "Ingress"):
        if line.get("request_id") != request_id:
            continue
        try:
            message = json.loads(line["message"])
        except (ValueError, TypeError):
            continue
        if isinstance(message, dict) and message.get("event") == "access":
            out.append(message)
    return out


def test_request_id_reaches_every_stage_and_text_never_logged(http, tiny_model_dir):
    from serving_helpers import files_containing

    request_id = f"req-{uuid.uuid4().hex}"
    marker = f"zzmarker{uuid.uuid4().hex}"
    passage_marker = f"yymarker{uuid.uuid4().hex}"
    texts = [f"paris {passage_marker}", "berlin ist die hauptstadt", "madrid es la capital"]
    response = http.post("/rerank", json={"query": marker, "texts": texts}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id

    def logged_everywhere():
        stages = {d: [line for line in replica_log_lines("reranker", d) if line.get("request_id") == request_id]
                  for d in ("Ingress", "Tokenizer", "Scorer")}
        return stages if all(stages.values()) and access_lines("reranker", request_id) else None

    stages = poll(logged_everywhere, 20, f"{request_id} in the ingress, tokenizer and scorer logs")
    assert any("encode" in line["message"] for line in stages["Tokenizer"])
    assert any("score" in line["message"] for line in stages["Scorer"])
    # Every replica log line is a JSON object with the fields Serve's JSON encoding adds.
    for lines in stages.values():
        assert all({"levelname", "message", "application", "deployment", "replica"} <= set(line) for line in lines)

    (access,) = access_lines("reranker", request_id)
    assert access["route"] == "/rerank" and access["status"] == 200 and access["method"] == "POST"
    assert access["passages"] == 3 and access["tokens"] > 0 and access["latency_ms"] > 0

    # Neither the query nor a passage is ever written to any log of the session.
    leaks = files_containing([marker, passage_marker])
    assert not any(leaks.values()), leaks


def test_access_log_for_errors(http):
    request_id = f"req-{uuid.uuid4().hex}"
    response = http.post("/v1/rerank", json={"query": QUERY, "documents": []}, headers={"X-Request-ID": request_id})
    assert response.status_code == 400
    (access,) = poll(lambda: access_lines("reranker", request_id), 20, "the access line of a failed request")
    assert access["route"] == "/v1/rerank" and access["status"] == 400 and access["passages"] == 0


def test_log_text_debug_setting_logs_the_text(two_replica_app):
    """Text reaches the access log only when the `log_text` debug setting is on (the main app's
    logs never hold it: test_request_id_reaches_every_stage_and_text_never_logged)."""
    marker = f"xxmarker{uuid.uuid4().hex}"
    request_id = f"req-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{two_replica_app}/rerank",
        json={"query": marker, "texts": ["paris", "東京"]},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (access,) = poll(lambda: access_lines(APP, request_id), 20, "the access line with text")
    assert access["text"] == {"queries": [marker], "passages": ["paris", "東京"]}
