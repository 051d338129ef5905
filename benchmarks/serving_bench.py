"""Serving overhead: pairs/s through the whole Ray app over HTTP against the in-process scorer.

Same model, same workload, same process run: first the in-process baseline (PairEncoder +
ModelScorer, tokenization included), then a local Ray with the app from serve_config.yaml
(RERANKER_MODEL pointing at the same model), driven over HTTP on 127.0.0.1:
  - low load: sequential 1 x 50 requests, p50 and p99 latency;
  - saturating concurrency: pairs/s, and its ratio to the in-process pairs/s (target >= 0.8).

Run:  python benchmarks/serving_bench.py [--size full|tiny] [--workload long|short] [--requests 12]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_env import REPO_ROOT
from ports import free_port  # tests/ports.py (tests/ is on sys.path through bench_env)

import numpy as np
import yaml

from scorer_bench import make_workloads, project_scorer, save_random_mbert


def requests_for(workload: str, count: int) -> list:
    """`count` distinct 1 x 50 requests of one workload (different seeds, same lexicon)."""
    return [(w.query, w.passages) for w in (make_workloads(seed=i)[workload] for i in range(count))]


def in_process_pairs_per_s(model_dir: Path, requests: list) -> float:
    score, _ = project_scorer(str(model_dir), backend="auto")  # the same backend the app picks
    score(*requests[0])  # warm-up
    started = time.perf_counter()
    pairs = 0
    for query, passages in requests:
        score(query, passages)
        pairs += len(passages)
    return pairs / (time.perf_counter() - started)


def start_app(model_dir: Path, port: int) -> None:
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    os.environ["RERANKER_MODEL"] = str(model_dir)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    config = copy.deepcopy(yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text()))
    config["http_options"].update(host="127.0.0.1", port=port)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Scorer":
            # One scorer uses every core of this machine; a second would only split them.
            deployment["autoscaling_config"]["max_replicas"] = 1
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)


async def wait_ready(client, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(1)
    raise RuntimeError("the app did not become ready")


async def drive(url: str, requests: list, concurrency: int, low_load_requests: int) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await wait_ready(client)
        await client.post("/rerank", json={"query": requests[0][0], "texts": requests[0][1]})  # warm-up

        latencies = []
        for query, passages in requests[:low_load_requests]:
            started = time.perf_counter()
            response = await client.post("/rerank", json={"query": query, "texts": passages})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

        queue = list(requests)
        pairs = 0
        statuses = []

        async def worker():
            # A closed-loop client as the service asks clients to behave: after a 429 it waits
            # what Retry-After says and sends the same request again, so every request is served
            # and pairs/s counts only answered pairs over the whole time (retries included).
            nonlocal pairs
            while queue:
                query, passages = queue.pop()
                while True:
                    response = await client.post("/rerank", json={"query": query, "texts": passages})
                    statuses.append(response.status_code)
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                if response.status_code == 200:
                    pairs += len(passages)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "statuses": {code: statuses.count(code) for code in sorted(set(statuses))},
        "pairs_per_s": pairs / elapsed,
        "p50_s": float(np.percentile(latencies, 50)),
        "p99_s": float(np.percentile(latencies, 99)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--workload", choices=["long", "short"], default="long")
    parser.add_argument("--requests", type=int, default=12, help="1 x 50 requests at saturating concurrency")
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--low-load-requests", type=int, default=6)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_random_mbert(Path(tmp) / "model", size=args.size)
        requests = requests_for(args.workload, args.requests)
        baseline = in_process_pairs_per_s(model_dir, requests)
        print(f"in-process scorer: {baseline:.2f} pairs/s", flush=True)
        port = free_port()
        start_app(model_dir, port)
        try:
            served = asyncio.run(drive(f"http://127.0.0.1:{port}", requests, args.concurrency, args.low_load_requests))
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    from machine import describe

    print(f"\n{describe()}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}; "
          f"--size {args.size} --workload {args.workload}")
    print(f"in-process scorer: {baseline:.2f} pairs/s")
    print(f"HTTP through Ray app: {served['pairs_per_s']:.2f} pairs/s at concurrency {args.concurrency}, "
          f"statuses {served['statuses']}")
    print(f"ratio (HTTP / in-process): {served['pairs_per_s'] / baseline:.2f}   (target >= 0.8)")
    print(f"1 x 50 at low load: p50 {served['p50_s'] * 1000:.0f} ms, p99 {served['p99_s'] * 1000:.0f} ms")
    print(f"RAY_SERVE_THROUGHPUT_OPTIMIZED={os.environ.get('RAY_SERVE_THROUGHPUT_OPTIMIZED', 'unset')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
