"""Tier 1: `/metrics` filtering of a node agent's export (no Ray)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
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
