"""How a node's metrics export grows as replicas come and go, and what `/metrics` passes on.

    flock /tmp/reranker-heavy.lock python benchmarks/metrics_growth.py

Serves serve_config.yaml's application (a tiny random model) on a local Ray with Serve's test
cluster (tests/conftest.py's ServeCluster), then `--replacements` times kills the Tokenizer replica
(Serve starts a new one under a new replica id) and sends three requests. After each round it prints
the node agent's export (what k8s/'s PodMonitor scrapes) and `GET /metrics` (the app's filtered
export, reranker/metrics_export.py): bytes, lines and replica ids; at the end, after `--wait-s`
without traffic, which replica ids each still holds. Ray 2.60 keeps a gone replica's counters and
histograms in the agent's export until the node restarts; `/metrics` passes on running replicas only.
Re-run this on a Ray upgrade: if the agent's column stops growing, the filter has nothing left to do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_env  # noqa: F401 - first: sys.path and the offline hub
from machine import describe

from reranker.metrics_export import REPLICA_LABEL, running_replica_ids


def replica_ids(text: str) -> set[str]:
    """Replica ids on the sample lines of an exposition."""
    return {m.group(1) for line in text.splitlines() if not line.startswith("#") for m in [REPLICA_LABEL.search(line)] if m}


def running(text: str) -> int:
    """Replicas whose running gauge is in the exposition (what /metrics filters by)."""
    return len(running_replica_ids(text.splitlines()))


def sample_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - loopback http URL
        return answer.read().decode()


def tokenizer_actors(app: str) -> list[dict]:
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{app}#Tokenizer#" in a["name"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replacements", type=int, default=6, help="Tokenizer replicas killed and replaced")
    parser.add_argument("--wait-s", type=float, default=60, help="idle time before the last reading")
    args = parser.parse_args(argv)

    import httpx
    import ray
    from conftest import ServeCluster
    from tiny_models import save_tiny_model

    print(describe(), flush=True)
    print(f"ray {ray.__version__}; command: python benchmarks/metrics_growth.py {' '.join(sys.argv[1:])}".rstrip(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_tiny_model(model_dir)
        cluster = ServeCluster(model_dir)
        app = cluster.current_config["applications"][0]["name"]
        agent_url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
        rows = []
        try:
            with httpx.Client(base_url=cluster.url, timeout=60) as http:
                for round_index in range(args.replacements + 1):
                    for _ in range(3):
                        response = http.post("/rerank", json={"query": "q", "texts": ["a b", "c d e"]})
                        assert response.status_code == 200, response.text
                    time.sleep(4)  # the agent's export is refreshed every second in this cluster
                    agent = read(agent_url)
                    served = http.get("/metrics").text
                    rows.append({"round": round_index, "agent_bytes": len(agent), "agent_lines": sample_lines(agent),
                                 "agent_replicas": len(replica_ids(agent)),
                                 "running": running(agent),
                                 "metrics_bytes": len(served), "metrics_lines": sample_lines(served),
                                 "metrics_replicas": len(replica_ids(served))})
                    print(rows[-1], flush=True)
                    if round_index < args.replacements:
                        for actor in tokenizer_actors(app):
                            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
                        time.sleep(2)
                        cluster.wait_ready("/", timeout_s=180)
                time.sleep(args.wait_s)
                agent = read(agent_url)
                served = http.get("/metrics").text
        finally:
            cluster.stop()

    print()
    print("| Tokenizer replicas replaced | agent export: bytes | sample lines | replica ids | of them running |"
          " `/metrics`: bytes | sample lines | replica ids |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['round']} | {row['agent_bytes']:,} | {row['agent_lines']:,} | "
              f"{row['agent_replicas']} | {row['running']} | {row['metrics_bytes']:,} | {row['metrics_lines']:,} | "
              f"{row['metrics_replicas']} |")
    first, last = rows[0], rows[-1]
    if args.replacements:
        per = {key: (last[key] - first[key]) / args.replacements for key in
               ("agent_bytes", "agent_lines", "metrics_bytes", "metrics_lines")}
        print(f"\nper replaced replica: agent export +{per['agent_bytes']:,.0f} bytes, +{per['agent_lines']:.0f} lines; "
              f"/metrics +{per['metrics_bytes']:,.0f} bytes, +{per['metrics_lines']:.0f} lines")
    print(f"after {args.wait_s:.0f} s idle: agent export holds {len(replica_ids(agent))} replica ids "
          f"({running(agent)} running); /metrics {len(replica_ids(served))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
