"""`/metrics`: this node's metrics-agent export, cut down to the reranker's and Serve's request metrics.

Each Ray node runs a metrics agent that sums every replica's `ray.serve.metrics` on that node.
`/metrics` reads that export and passes on the `ray_reranker_*` families and the `ray_serve_*`
families the dashboard, alerts and README use, without the labels that are the same on every
series of an exporter (about half of each line). Lines are filtered as text, not parsed and
re-rendered: on an idle 2-core node the parse alone took 0.35-0.55 s per scrape for a 1 MB export.

Only replicas that are running pass: Ray 2.60's agent keeps a replica's counters and histograms
after the replica is gone (it evicts only gauges that stop being reported), so every replica that
ever ran on the node would stay in the export, about 200 lines each, until the node restarts (an
autoscaled service starts new ones every day). A replica is running while its own
`ray_serve_replica_processing_queries` gauge is in the export (a running replica sets it every
`RAY_SERVE_METRICS_EXPORT_INTERVAL_MS`, 100 ms by default, idle or not; the agent drops a gauge
that misses two export intervals, 20 s by default, so a gone replica leaves within that). The
series that replicas emit about themselves (ours, and Serve's request and batch metrics) are passed
on only for those, as a process's metrics end with the process; series the controller and the
proxies emit are left as they are.

The agent's own port (Ray's `metrics_export_port`, what the PodMonitor in k8s/ scrapes) has every
Ray metric, gone replicas included; a multi-node cluster is scraped per node, and summing across
nodes is Prometheus's job.
"""

from __future__ import annotations

import functools
import re
import urllib.request

RERANKER_PREFIX = "ray_reranker_"
# Serve's families that k8s/monitoring (dashboard, alerts) and README use: requests, latency,
# replicas, queues, autoscaling and batching. Family names: without _total, _bucket, _sum, ...
SERVE_FAMILIES = frozenset(
    {
        "ray_serve_num_http_requests",
        "ray_serve_num_http_error_requests",
        "ray_serve_http_request_latency_ms",
        "ray_serve_deployment_request_counter",
        "ray_serve_deployment_processing_latency_ms",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_deployment_queued_queries",
        "ray_serve_replica_processing_queries",
        "ray_serve_autoscaling_target_replicas",
        "ray_serve_autoscaling_desired_replicas",
        "ray_serve_batch_queue_length",
        "ray_serve_actual_batch_size",
        "ray_serve_batch_utilization_percent",
        "ray_serve_batch_wait_time_ms",
        "ray_serve_batch_execution_time_ms",
    }
)
# Serve's families that a replica emits about itself (replica.py, batching.py), besides ours.
SERVE_REPLICA_FAMILIES = frozenset(
    {
        "ray_serve_deployment_request_counter",
        "ray_serve_deployment_processing_latency_ms",
        "ray_serve_replica_processing_queries",
        "ray_serve_batch_queue_length",
        "ray_serve_actual_batch_size",
        "ray_serve_batch_utilization_percent",
        "ray_serve_batch_wait_time_ms",
        "ray_serve_batch_execution_time_ms",
    }
)
# Present for exactly the replicas that run on this node: a gauge each replica reports periodically.
RUNNING_REPLICA_GAUGE = "ray_serve_replica_processing_queries"
SAMPLE_SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total")
# The same on every series of one exporter (OpenTelemetry's scope, the Ray session and version):
# dropping them merges no series.
CONSTANT_LABELS = re.compile(r'(?:otel_scope_name|otel_scope_schema_url|otel_scope_version|SessionName|Version)="(?:[^"\\]|\\.)*",?')
REPLICA_LABEL = re.compile(r'(?:\{|,)replica="((?:[^"\\]|\\.)*)"')


@functools.lru_cache(maxsize=1)
def metrics_agent_url() -> str:
    """URL of this node's metrics-agent export (a replica never changes node, so it is looked up once)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise RuntimeError("This node's metrics export port is unknown")


def family_of(sample_name: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def exported(family: str) -> bool:
    return family.startswith(RERANKER_PREFIX) or family in SERVE_FAMILIES


def replica_side(family: str) -> bool:
    return family.startswith(RERANKER_PREFIX) or family in SERVE_REPLICA_FAMILIES


def running_replica_ids(lines: list[str]) -> set[str]:
    """The `replica` label of every running replica's gauge in these exposition lines."""
    out = set()
    for line in lines:
        if line.startswith(RUNNING_REPLICA_GAUGE + "{"):
            match = REPLICA_LABEL.search(line)
            if match:
                out.add(match.group(1))
    return out


def filter_exposition(text: str) -> bytes:
    """The exported families' HELP, TYPE and sample lines of a Prometheus text exposition, constant
    labels dropped, replica-side series of replicas that no longer run left out."""
    lines = text.splitlines()
    # With no gauge at all (before any replica has reported) there is nothing to tell gone from running.
    running = running_replica_ids(lines)
    out = []
    for line in lines:
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and exported(family_of(parts[2])):
                out.append(line)
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(" ", 1)[0]
        family = family_of(name)
        if not exported(family):
            continue
        if brace >= 0:
            end = line.rfind("}")
            if running and replica_side(family):
                match = REPLICA_LABEL.search(line, brace, end + 1)
                if match and match.group(1) not in running:
                    continue
            labels = CONSTANT_LABELS.sub("", line[brace + 1 : end]).rstrip(",")
            line = f"{name}{{{labels}}}{line[end + 1:]}" if labels else f"{name}{line[end + 1:]}"
        out.append(line)
    return ("\n".join(out) + "\n").encode("utf-8")


def node_metrics_text(timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(metrics_agent_url(), timeout=timeout_s) as response:  # noqa: S310 - node-local URL
        text = response.read().decode("utf-8")
    return filter_exposition(text)
