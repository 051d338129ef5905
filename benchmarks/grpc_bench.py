"""gRPC against HTTP on the same app: latency of one 1 x N request through HTTP `/rerank`, TEI's gRPC
`Rerank`, and `RerankStream` (one message per text), sequential, the three interleaved round-robin
in the same run, so each ratio is against the HTTP baseline measured beside it.

The app is serve_config.yaml on a local Ray with the HTTP and gRPC proxies on free ports; the model
is scorer_bench's random mBERT (`--size tiny` by default: the transport, not the model, is measured).

Run:  python benchmarks/grpc_bench.py [--size tiny|full] [--workload short|long] [--texts 50] [--rounds 20]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_env import REPO_ROOT

import numpy as np
import yaml

from scorer_bench import make_workloads, save_random_mbert
from serving_bench import free_port


def start_app(model_dir: Path, http_port: int, grpc_port: int) -> None:
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    os.environ["RERANKER_MODEL"] = str(model_dir)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    config = copy.deepcopy(yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text()))
    config["http_options"].update(host="127.0.0.1", port=http_port)
    config["grpc_options"].update(port=grpc_port)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Scorer":
            deployment["autoscaling_config"]["max_replicas"] = 1
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)


def wait_ready(http, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http.get("/ready").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise RuntimeError("the app did not become ready")


def measure(http_url: str, grpc_port: int, query: str, texts: list[str], rounds: int) -> dict:
    """Latencies (s) of each transport; every round sends one request of each, in rotating order."""
    import grpc
    import httpx

    from reranker.proto import tei_pb2, tei_pb2_grpc

    metadata = (("application", "reranker"),)
    request = tei_pb2.RerankRequest(query=query, texts=texts, truncate=True)
    messages = [tei_pb2.RerankStreamRequest(query=query, text=text, truncate=True) for text in texts]
    with httpx.Client(base_url=http_url, timeout=600) as http, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        wait_ready(http)
        stub = tei_pb2_grpc.RerankStub(channel)

        def via_http():
            response = http.post("/rerank", json={"query": query, "texts": texts, "truncate": True})
            response.raise_for_status()
            return [item["index"] for item in response.json()]

        def via_rerank():
            return [rank.index for rank in stub.Rerank(request, metadata=metadata, timeout=600).ranks]

        def via_stream():
            return [rank.index for rank in stub.RerankStream(iter(messages), metadata=metadata, timeout=600).ranks]

        transports = {"HTTP /rerank": via_http, "gRPC Rerank": via_rerank, "gRPC RerankStream": via_stream}
        orders = {name: call() for name, call in transports.items()}  # warm-up, and the same answer
        if len({tuple(order) for order in orders.values()}) != 1:
            raise RuntimeError(f"the transports rank differently: {orders}")
        latencies: dict[str, list[float]] = {name: [] for name in transports}
        names = list(transports)
        for round_index in range(rounds):
            for name in names[round_index % 3:] + names[: round_index % 3]:
                started = time.perf_counter()
                transports[name]()
                latencies[name].append(time.perf_counter() - started)
    return latencies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="tiny")
    parser.add_argument("--workload", choices=["long", "short"], default="short")
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_random_mbert(Path(tmp) / "model", size=args.size)
        workload = make_workloads(seed=0, num_passages=args.texts)[args.workload]
        http_port, grpc_port = free_port(), free_port()
        start_app(model_dir, http_port, grpc_port)
        try:
            latencies = measure(f"http://127.0.0.1:{http_port}", grpc_port, workload.query, workload.passages, args.rounds)
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    baseline = float(np.median(latencies["HTTP /rerank"]))
    from machine import describe

    print(describe())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    print(f"model {args.size}, workload {args.workload}, 1 x {args.texts}, {args.rounds} rounds")
    print(f"{'transport':<20} {'p50 ms':>8} {'p90 ms':>8} {'p50 / HTTP':>11}")
    for name, values in latencies.items():
        p50, p90 = np.median(values), np.percentile(values, 90)
        print(f"{name:<20} {p50 * 1000:8.1f} {p90 * 1000:8.1f} {p50 / baseline:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
