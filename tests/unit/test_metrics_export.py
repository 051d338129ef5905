"""Tier 1: `/metrics` filtering of a node agent's export (no Ray)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reranker.metrics_export import CONSTANT_LABELS, filter_exposition

AGENT_LABELS = {
    "Component": "core_worker",
    "NodeAddress": "192.0.2.2",
    "SessionName": "session_2026-11-30_03-25-14_470338_8991",
    "Version": "2.60.0",
    "otel_scope_name": "ray._private.telemetry.open_telemetry_metric_recorder",
    "otel_scope_schema_url": "",
    "otel_scope_version": "",
}
DROPPED = {"SessionName", "Version", "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"}


def agent_export() -> str:
    """An export shaped like a Ray node agent's: every series carries the agent's labels."""
    registry = CollectorRegistry()
    keys = [*AGENT_LABELS, "WorkerId", "application", "route", "status_code"]
    requests = Counter("ray_reranker_requests", "HTTP requests.", keys, registry=registry)
    proxy = Counter("ray_serve_num_http_requests", "Proxy answers.", keys, registry=registry)
    internal = Histogram("ray_serve_long_poll_latency_ms", "Internal.", list(AGENT_LABELS), registry=registry)
    latency = Histogram("ray_reranker_request_duration_seconds", "Latency.", [*AGENT_LABELS, "route"], registry=registry)
    for worker, route, code, count in (("w1", "/rerank", "200", 30), ("w2", "/rerank", "200", 4), ("w1", "/score", "429", 2)):
        requests.labels(**AGENT_LABELS, WorkerId=worker, application="reranker", route=route, status_code=code).inc(count)
        proxy.labels(**AGENT_LABELS, WorkerId=worker, application="reranker", route="/", status_code=code).inc(count)
    internal.labels(**AGENT_LABELS).observe(3)
    for value in (0.01, 0.2, 3):
        latency.labels(**AGENT_LABELS, route="/rerank").observe(value)
    return generate_latest(registry).decode()


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in DROPPED}
            out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


def test_filter_keeps_the_values_of_exported_families_and_drops_constant_labels():
    raw = agent_export()
    filtered = filter_exposition(raw).decode()
    before, after = samples(raw), samples(filtered)
    kept = {key: value for key, value in before.items() if not key[0].startswith("ray_serve_long_poll")}
    assert after == kept  # same values, one series each: dropping the labels merged nothing
    assert any(name.startswith("ray_serve_num_http_requests") for name, _ in after)
    assert "long_poll" not in filtered and "otel_scope" not in filtered and "SessionName" not in filtered
    assert "WorkerId" in filtered and "NodeAddress" in filtered
    assert len(filtered) < 0.6 * len(raw)


def test_constant_label_pattern_handles_escapes_and_the_last_label():
    block = 'a="1",SessionName="s\\"x",Version="2.60.0"'
    assert CONSTANT_LABELS.sub("", block).rstrip(",") == 'a="1"'
    text = 'ray_reranker_pairs_scored_total{SessionName="s",Version="v"} 7.0\n'
    assert filter_exposition(text).decode() == "ray_reranker_pairs_scored_total 7.0\n"


def export_with_a_gone_replica() -> str:
    """An agent export after replica "gone1" of the Tokenizer stopped and "live1" replaced it: the
    agent still has the gone one's counters and histograms (Ray 2.60), but no longer its gauge."""
    registry = CollectorRegistry()
    keys = [*AGENT_LABELS, "application", "deployment", "replica"]
    pairs = Counter("ray_reranker_pairs_scored", "Pairs.", keys, registry=registry)
    stage = Histogram("ray_reranker_stage_duration_seconds", "Stage.", [*keys, "stage"], registry=registry)
    served = Counter("ray_serve_deployment_request_counter", "Serve.", keys, registry=registry)
    running = Gauge("ray_serve_replica_processing_queries", "Running.", keys, registry=registry)
    healthy = Gauge("ray_serve_deployment_replica_healthy", "Controller.", keys, registry=registry)
    proxy = Counter("ray_serve_num_http_requests", "Proxy.", [*AGENT_LABELS, "application", "route"], registry=registry)
    for replica, count in (("gone1", 5), ("live1", 7), ("scorer1", 11)):
        deployment = "Scorer" if replica == "scorer1" else "Tokenizer"
        labels = {**AGENT_LABELS, "application": "reranker", "deployment": deployment, "replica": replica}
        pairs.labels(**labels).inc(count)
        stage.labels(**labels, stage="tokenization").observe(0.01 * count)
        served.labels(**labels).inc(count)
        # The controller keeps reporting a stopped replica as unhealthy (0).
        healthy.labels(**labels).set(0 if replica == "gone1" else 1)
        if replica != "gone1":
            running.labels(**labels).set(0)
    proxy.labels(**AGENT_LABELS, application="reranker", route="/rerank").inc(12)
    return generate_latest(registry).decode()


def test_series_of_replicas_that_no_longer_run_are_left_out():
    raw = export_with_a_gone_replica()
    assert 'replica="gone1"' in raw
    after = samples(filter_exposition(raw).decode())

    def replicas(name: str) -> set:
        return {dict(labels).get("replica") for sample_name, labels in after if sample_name == name}

    for name in ("ray_reranker_pairs_scored_total", "ray_reranker_stage_duration_seconds_count",
                 "ray_reranker_stage_duration_seconds_bucket", "ray_serve_deployment_request_counter_total"):
        assert replicas(name) == {"live1", "scorer1"}, name
    # Series the controller and the proxy emit are theirs to end, not this filter's.
    assert replicas("ray_serve_deployment_replica_healthy") == {"gone1", "live1", "scorer1"}
    assert sum(v for (name, _), v in after.items() if name == "ray_serve_num_http_requests_total") == 12
    assert sum(v for (name, _), v in after.items() if name == "ray_reranker_pairs_scored_total") == 18


def test_without_any_running_replica_gauge_nothing_is_left_out():
    # Before any replica has reported its gauge there is nothing to tell gone from running by.
    raw = "\n".join(line for line in export_with_a_gone_replica().splitlines()
                    if not line.startswith("ray_serve_replica_processing_queries"))
    after = samples(filter_exposition(raw).decode())
    gone = [name for name, labels in after if dict(labels).get("replica") == "gone1"]
    assert "ray_reranker_pairs_scored_total" in gone
