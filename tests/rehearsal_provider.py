"""Ray's fake multi-node provider, with one Serve proxy port per fake pod.

In Kubernetes every worker pod has its own address, and the serve Service sends a new connection
only to pods whose readiness probe passes (KubeRay probes each pod's proxy at `/-/healthz`). The
fake pods of the rehearsal share 127.0.0.1, so each gets its own port instead: the provider sets
RAY_SERVE_WORKER_PROXY_HTTP_PORT to `base + the node's number` in its own environment just before it
starts the node's raylet, which (and every worker it starts, the proxy among them) inherits it.
tests/k8s_service.py plays the Service in front of those ports.

Loaded by the autoscaler (provider type `external`) from tests/cluster_rehearsal.py's cluster, which
passes the base port in RERANKER_REHEARSAL_PROXY_PORT_BASE.
"""

from __future__ import annotations

import os

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

PORT_BASE_ENV = "RERANKER_REHEARSAL_PROXY_PORT_BASE"
PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
MAX_NODES = 64  # ports reserved per rehearsal: base + 1 .. base + MAX_NODES


def node_number(node_id: str) -> int:
    """The fake provider's node ids end in a zero-padded decimal counter (head: 0)."""
    return int(node_id[-5:])


def proxy_port(base: int, node_id: str) -> int:
    number = node_number(node_id)
    if not 0 < number <= MAX_NODES:
        raise ValueError(f"node {node_id}: more than {MAX_NODES} fake pods in one rehearsal")
    return base + number


class RehearsalNodeProvider(FakeMultiNodeProvider):
    """Sets the proxy port for the node whose id it is about to hand out (under the provider's lock,
    right before that node's processes start)."""

    def _next_hex_node_id(self) -> str:
        node_id = super()._next_hex_node_id()
        os.environ[PROXY_PORT_ENV] = str(proxy_port(int(os.environ[PORT_BASE_ENV]), node_id))
        return node_id
