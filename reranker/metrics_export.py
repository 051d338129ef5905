"""`/metrics`: this node's metrics-agent export, filtered to the reranker's and Serve's metrics.

Each Ray node runs a metrics agent that sums every replica's `ray.serve.metrics` on that node.
The ingress reads that export and re-emits the `ray_reranker_*` and `ray_serve_*` families with
prometheus_client, so `/metrics` shows totals over all replicas of the node. A multi-node cluster
is scraped per pod (see k8s/); summing across nodes is Prometheus's job.
"""

from __future__ import annotations

import urllib.request
from typing import Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

EXPORTED_PREFIXES = ("ray_reranker_", "ray_serve_")


def metrics_agent_url() -> str:
    """URL of this node's metrics-agent export (Ray's `metrics_export_port`)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise RuntimeError("This node's metrics export port is unknown")


class _ParsedFamilies(Collector):
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def filter_exposition(text: str, prefixes: Iterable[str] = EXPORTED_PREFIXES) -> bytes:
    """Re-emits the metric families of a Prometheus text exposition whose names start with `prefixes`."""
    prefixes = tuple(prefixes)
    families = [family for family in text_string_to_metric_families(text) if family.name.startswith(prefixes)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ParsedFamilies(families))
    return generate_latest(registry)


def node_metrics_text(timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(metrics_agent_url(), timeout=timeout_s) as response:  # noqa: S310 - node-local URL
        text = response.read().decode("utf-8")
    return filter_exposition(text)
