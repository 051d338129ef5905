"""Samples read out of a Prometheus text exposition, for the tests and the cluster rehearsal.

Only the lines of the wanted sample name reach prometheus_client's parser: it takes about a second
per MB on 2 cores, and a test node's export grows to several MB as applications come and go (Ray's
metrics agent keeps the counters and histograms of replicas that are gone). A test that read four
counters from one scrape parsed all of it four times.
"""

from __future__ import annotations


def samples(text: str, name: str, **labels) -> list:
    """Samples named `name` (e.g. 'ray_reranker_requests_total') whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    prefixes = (name + "{", name + " ")
    lines = [line for line in text.splitlines() if line.startswith(prefixes)]
    if not lines:
        return []
    return [
        sample
        for family in text_string_to_metric_families("\n".join(lines) + "\n")
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def total(text: str, name: str, **labels) -> float:
    """The sum of those samples' values (over replicas and other label sets)."""
    return sum(sample.value for sample in samples(text, name, **labels))
