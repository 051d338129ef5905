"""Tier 1: the tests' exposition reader (tests/prometheus_text.py) finds what a full parse finds."""

from __future__ import annotations

import prometheus_text
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def export() -> str:
    registry = CollectorRegistry()
    requests = Counter("ray_reranker_requests", "Requests.", ["application", "route"], registry=registry)
    # A family whose name extends another's: its lines start with the shorter sample name.
    longer = Counter("ray_reranker_requests_total_extra", "Longer name.", ["application"], registry=registry)
    latency = Histogram("ray_reranker_request_duration_seconds", "Latency.", ["route"], registry=registry)
    for application, route, count in [("a", "/rerank", 3), ("b", "/rerank", 4), ("a", 'odd "}{ route', 5)]:
        requests.labels(application, route).inc(count)
        latency.labels(route).observe(0.01 * count)
    longer.labels("a").inc(100)
    requests_without_labels = Counter("ray_plain", "No labels.", registry=registry)
    requests_without_labels.inc(7)
    return generate_latest(registry).decode()


def full_parse(text: str, name: str, **labels) -> list:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def test_samples_equal_a_full_parse():
    text = export()
    wanted = [
        ("ray_reranker_requests_total", {}),
        ("ray_reranker_requests_total", {"application": "a"}),
        ("ray_reranker_requests_total", {"route": 'odd "}{ route'}),
        ("ray_reranker_requests_total_extra_total", {}),
        ("ray_reranker_request_duration_seconds_count", {}),
        ("ray_reranker_request_duration_seconds_bucket", {"le": "0.05"}),
        ("ray_plain_total", {}),
        ("ray_absent_total", {}),
    ]
    for name, labels in wanted:
        mine = [(s.name, s.labels, s.value) for s in prometheus_text.samples(text, name, **labels)]
        assert mine == full_parse(text, name, **labels), name
    assert prometheus_text.total(text, "ray_reranker_requests_total") == 12
    assert prometheus_text.total(text, "ray_reranker_requests_total", application="a") == 8
    assert prometheus_text.total(text, "ray_reranker_request_duration_seconds_count") == 3
    assert prometheus_text.total(text, "ray_absent_total") == 0
