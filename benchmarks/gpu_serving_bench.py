"""GPU serving: how close the served app gets to its scorer's own rate, and what each process costs.

One run, one machine, side by side (issue 13):

  inprocess  the scorer's own rate: ModelScorer in this process on pre-encoded 1 x 50 long parts
             (16 distinct requests scored together, so batches fill to the budget).
  handle     one Scorer replica on a real local Ray, fed the same pre-encoded 1 x 50 parts through
             its handle by --callers concurrent callers (no proxy, ingress or tokenizer): a call
             per part, or with --handle-calls-in-flight N coalesced as the GPU config's ingress
             sends them.
  http       the whole app from --config (the README's command) over HTTP on 127.0.0.1: low-load
             1 x 50 p50/p99; then --clients closed-loop clients: pairs/s, CPU milliseconds per
             request of every process, per-stage times from the node's metrics export, GPU busy, and every answer's
             scores checked against the in-process scorer's.
  overload   --overload-clients closed-loop clients: the fraction of answers that are 429.

Backends: `--backend simulated-gpu` on a CPU machine (reranker/backends/simulated.py: the eager
forward's CPU cost, then the H200's time for the batch; GPU busy is the simulated device's) or
`--backend torch` on a GPU machine (GPU busy sampled with nvidia-smi). `--fake-gpus N` lets a CPU
machine's Ray advertise N GPUs, so a config that asks for GPUs deploys with the simulated one.

The local Ray starts in the environment of README.md's Run command for --config (for
serve_config.gpu.yaml: HAProxy in front of the ingress replicas, RAY_SERVE_ENABLE_HA_PROXY=1);
variables set before the run win, e.g. RAY_SERVE_ENABLE_HA_PROXY=0 for Serve's Python proxy. The
proxy's CPU is the Python proxy's, or HAProxy's and its manager actor's. One difference from the
README's command: the served tokenizers run single-threaded (TOKENIZERS_PARALLELISM=false), so that
the tokenization stage's thread CPU is all of tokenization (see start_ray). `--tokenizer-pool` keeps
the README's way (the Rust tokenizer's thread pool), for a lone request's latency as users get it on
a many-core host; its "Serve-side CPU" then still holds the pool's tokenization and is not printed.

"Serve-side CPU" is what the proxy, ingress, tokenizer and scorer processes spend per request,
less the tokenizer's tokenization and the scorer's forward (their threads' CPU, from the
`reranker_stage_cpu_seconds` metric): HTTP, validation, handle calls, batching, bookkeeping.

Run:  python benchmarks/gpu_serving_bench.py --backend simulated-gpu --out benchmarks/out/gpu_serving
      python benchmarks/gpu_serving_bench.py --backend torch --config serve_config.gpu.yaml --out $OUT/serving
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_env import REPO_ROOT

import numpy as np
import yaml

from readme_commands import readme_run_command  # tests/, on sys.path through bench_env
from scorer_bench import make_workloads, save_random_mbert
from serving_bench import free_port

DEPLOYMENTS = ("Ingress", "Tokenizer", "Scorer")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PY_SPY = str(Path(sys.executable).with_name("py-spy")) if Path(sys.executable).with_name("py-spy").exists() else "py-spy"


# ----- machine and workload --------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, flags of interest, cores, memory, and GPUs (nvidia-smi) of this machine."""
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        import machine  # benchmarks/machine.py: the shared one-line CPU description

        info["cpu"] = machine.describe()
    except ImportError:
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = model.group(1).strip() if model else platform.processor()
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "sha_ni")
        info["cpu_flags"] = [f for f in wanted if flags and f in flags.group(1).split()]
        meminfo = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["memory_gib"] = round(int(meminfo.group(1)) / 2**20, 1) if meminfo else None
    except OSError:
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        info["gpus"] = [line.strip() for line in gpus.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    try:
        import ray
        import torch

        info["torch"] = torch.__version__
        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def long_requests(count: int) -> list[tuple[str, list[str]]]:
    """`count` distinct 1 x 50 long requests (about 152 tokens per pair)."""
    return [(w.query, w.passages) for w in (make_workloads(seed=i)["long"] for i in range(count))]


def scorer_settings(args, model_dir: Path):
    from reranker.settings import load_settings

    return load_settings({"model": str(model_dir)}, environ={**os.environ, "RERANKER_BACKEND": args.backend})


def expected_raw_scores(scorer, encoder, requests) -> list[np.ndarray]:
    """Per request, the in-process raw score of each passage (the value /rerank returns with raw_scores)."""
    from reranker.batching import max_by_doc

    out = []
    for query, passages in requests:
        encoded = encoder.encode(query, passages)
        out.append(max_by_doc(encoded.doc_index, encoded.num_docs, scorer.score_pairs(encoded).raw))
    return out


# ----- phase 1: in process ---------------------------------------------------------------------


def in_process(args, model_dir: Path, requests) -> tuple[dict, list, list[np.ndarray]]:
    """The scorer's own rate on pre-encoded parts; also returns the parts and the expected scores."""
    from reranker.messages import EncodedPairs
    from reranker.model_files import load_tokenizer
    from reranker.scoring import ModelScorer
    from reranker.tokenization import PairEncoder

    settings = scorer_settings(args, model_dir)
    scorer = ModelScorer(settings)
    encoder = PairEncoder(load_tokenizer(str(model_dir)), scorer.max_length, settings.max_query_tokens)
    parts = [encoder.encode(query, passages) for query, passages in requests]
    expected = expected_raw_scores(scorer, encoder, requests)
    merged = EncodedPairs.concat(parts)
    scorer.score_pairs(merged)  # warm-up
    pairs, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.inprocess_s:
        pairs += scorer.score_pairs(merged).raw.shape[0]
    elapsed = time.perf_counter() - started
    result = {
        "pairs_per_s": pairs / elapsed,
        "backend": scorer.backend.name,
        "device": scorer.device,
        "dtype": str(scorer.dtype).replace("torch.", ""),
        "batching": scorer.batching.model_dump(),
        "tokens_per_pair": merged.total_tokens / merged.num_pairs,
    }
    print(f"in process: {result['pairs_per_s']:.0f} pairs/s ({result['backend']} on {result['device']})", flush=True)
    return result, parts, expected


# ----- Ray, processes, metrics ------------------------------------------------------------------


def ray_environment() -> dict[str, str]:
    """The RAY_* variables of this process, which the local Ray's processes inherit."""
    return {name: os.environ[name] for name in sorted(os.environ) if name.startswith("RAY_")}


def start_ray(args, model_dir: Path) -> int:
    """A local Ray for this run, in the environment the README's Run command for the config sets
    (variables already set here win); returns its metrics port."""
    import ray

    command = readme_run_command(args.config)
    readme_env = command[0] if command else {}
    for name, value in readme_env.items():
        os.environ.setdefault(name, value)
    # The one difference from the README's command: the served tokenizers run single-threaded, as in
    # every run of RESULTS section 7. reranker_stage_cpu_seconds counts the CPU of the thread that ran
    # a stage, and the README's app tokenizes on the Rust tokenizer's own thread pool, which that
    # thread is not: the "Serve-side" CPU would then keep the tokenization it subtracts (measured:
    # 1.3 ms of "tokenization" per request instead of 20-30). --tokenizer-pool: as the README's command.
    if args.tokenizer_pool:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RERANKER_MODEL"] = str(model_dir)
    os.environ["RERANKER_BACKEND"] = args.backend
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "0.5")
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    print(f"environment: {ray_environment()}", flush=True)
    metrics_port = free_port()
    extra = {"num_gpus": args.fake_gpus} if args.fake_gpus else {}
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port, **extra)
    return metrics_port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def child_pids(parent: int) -> list[int]:
    """Direct children of a process, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return children


def serve_processes(app: str | None) -> dict[int, str]:
    """pid -> role ('proxy', 'controller', or the deployment name) of the live Serve actors of `app`."""
    import ray

    roles = {}
    for actor in ray._private.state.state.actor_table(None).values():
        if actor["State"] != "ALIVE" or not actor["Pid"]:
            continue
        cls = actor["ActorClassName"]
        if cls == "ProxyActor":
            roles[actor["Pid"]] = "proxy"
        elif cls == "HAProxyManager":
            # RAY_SERVE_ENABLE_HA_PROXY=1: the manager actor and the haproxy processes it runs.
            roles[actor["Pid"]] = "proxy"
            roles.update(dict.fromkeys(child_pids(actor["Pid"]), "proxy"))
        elif cls == "ServeController":
            roles[actor["Pid"]] = "controller"
        elif cls.startswith("ServeReplica:"):
            _, app_name, deployment = cls.split(":", 2)
            if app is None or app_name == app:
                roles[actor["Pid"]] = deployment
    return roles


def cpu_snapshot(roles: dict[int, str]) -> dict[int, float]:
    snapshot = {os.getpid(): cpu_seconds(os.getpid())}
    for pid in roles:
        try:
            snapshot[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return snapshot


def cpu_by_role(roles: dict[int, str], before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two snapshots (this process as 'load generator')."""
    names = {**roles, os.getpid(): "load generator"}
    out: dict[str, float] = {}
    for pid in set(before) & set(after):
        out[names[pid]] = out.get(names[pid], 0.0) + after[pid] - before[pid]
    return out


def metric_totals(text: str) -> dict[str, float]:
    """Sums over replicas of the samples this benchmark reads, keyed 'name' or 'name{stage}'."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "ray_reranker_stage_duration_seconds_sum", "ray_reranker_stage_duration_seconds_count",
        "ray_reranker_stage_cpu_seconds_total", "ray_reranker_batch_padded_tokens_count", "ray_reranker_pairs_scored_total", "ray_reranker_padded_tokens_total",
    }
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = sample.name + (f"{{{sample.labels['stage']}}}" if "stage" in sample.labels else "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def delta(after: dict, before: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def node_metric_totals(metrics_port: int, settle_s: float = 3.0) -> dict[str, float]:
    """metric_totals of this node's metrics export (Ray's own port: no ingress needed, as in the handle phase)."""
    import urllib.request

    time.sleep(settle_s)  # the metrics agent exports every second (RAY_metrics_report_interval_ms)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
        return metric_totals(response.read().decode())


def batch_stats(after: dict, before: dict) -> dict:
    """Forward batches between two metric_totals, their mean pairs and padded tokens, and mean stage times.

    Pairs and padded tokens come from exact counters over the batch count. Ray exports a
    histogram's _sum from its buckets' midpoints, so the stage means are estimates at bucket
    resolution (LATENCY_BOUNDARIES_S in reranker/metrics.py).
    """
    batches = delta(after, before, "ray_reranker_batch_padded_tokens_count")
    stats = {
        "forward_batches": batches,
        "pairs_per_forward_batch": delta(after, before, "ray_reranker_pairs_scored_total") / batches if batches else None,
        "padded_tokens_per_forward_batch":
            delta(after, before, "ray_reranker_padded_tokens_total") / batches if batches else None,
    }
    for stage in ("queue_wait", "inference"):
        stats[f"{stage}_mean_ms"] = stage_mean(after, before, stage)["mean_ms"]
    return stats


STAGES = ("validation", "tokenization", "queue_wait", "inference", "response")


def stage_mean(after: dict, before: dict, stage: str) -> dict:
    """A stage's observations between two metric_totals and their mean in ms (a bucket estimate)."""
    count = delta(after, before, f"ray_reranker_stage_duration_seconds_count{{{stage}}}")
    total = delta(after, before, f"ray_reranker_stage_duration_seconds_sum{{{stage}}}")
    return {"mean_ms": total / count * 1000 if count else None, "count": count}


async def read_metrics(args) -> dict[str, float]:
    """metric_totals of the node's metrics agent: it keeps the counters of replicas that stop during
    a window (the app's /metrics leaves them out, so a delta across a scale-down would lose them)."""
    return await asyncio.to_thread(node_metric_totals, args.metrics_port)


class GpuSampler:
    """Mean GPU utilization (%) from `nvidia-smi -lms`, over the window it runs; None without nvidia-smi."""

    def __init__(self):
        self.values: list[float] = []
        self.process = None

    def __enter__(self):
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.process.stdout:
            try:
                self.values.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)

    def mean(self):
        return sum(self.values) / len(self.values) if self.values else None


class Profiles:
    """`py-spy record` of each process of `roles` for `seconds` (collapsed stacks, GIL holders only
    with `gil=True`), written to `directory` as <role>-<pid>.txt; nothing when directory is None."""

    def __init__(self, directory, roles: dict[int, str], seconds: float, gil: bool = False):
        self.directory, self.roles, self.seconds, self.gil = directory, roles, seconds, gil
        self.processes = []

    def __enter__(self):
        if self.directory is None:
            return self
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        for pid, role in self.roles.items():
            if role == "controller":
                continue
            command = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(self.seconds)), "--rate", "200",
                       "--format", "raw", "--nonblocking", "-o", str(Path(self.directory) / f"{role}-{pid}.txt")]
            self.processes.append(subprocess.Popen(command + (["--gil"] if self.gil else []),
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.wait(timeout=self.seconds + 60)


# ----- phase 2: one scorer replica through its handle ---------------------------------------------


def scorer_options(config: dict, replicas: int, gpus: int) -> dict:
    """The Scorer's deployment options from a Serve config, with `replicas` replicas.

    On a machine with GPUs they share one GPU (num_gpus 1 / replicas each, as `replicas_per_gpu`
    places them); otherwise the config's ray_actor_options apply.
    """
    [entry] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Scorer"]
    options = {k: v for k, v in entry.items() if k in ("max_ongoing_requests", "ray_actor_options", "user_config", "logging_config")}
    if gpus:
        options["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1 / replicas}
    return {**options, "num_replicas": replicas}


async def handle_phase(args, config: dict, model_dir: Path, parts: list, own_rate: float) -> dict:
    from ray import serve

    from deployments.scorer import Scorer
    from reranker.settings import load_settings

    settings = load_settings({"model": str(model_dir)})
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    options = scorer_options(config, args.handle_replicas, gpus)
    handle = serve.run(Scorer.options(**options).bind(settings), name="scorer_only", route_prefix=None)
    # By value, as the ingress calls it now; --handle-by-reference as it did before (Ray actor calls).
    handle = handle.options(_by_reference=args.handle_by_reference)
    roles = serve_processes("scorer_only")
    score_part = handle.score.remote
    if args.handle_calls_in_flight:
        # As the GPU config's ingress calls it: parts that would wait behind that many outstanding
        # calls share one score_many call, up to the scorer's window (reranker/coalescing.py).
        from reranker.pipeline import scorer_calls

        budget = (await handle.describe.remote())["max_batch_tokens"]
        score_part = scorer_calls(handle, lambda: budget, args.handle_calls_in_flight).submit

    async def drive() -> tuple[int, float, dict]:
        for part in parts[:4]:  # warm-up
            await handle.score.remote(part)
        pairs = 0
        stop_at = 0.0

        async def caller(index: int):
            nonlocal pairs
            position = index
            while time.perf_counter() < stop_at:
                result = await score_part(parts[position % len(parts)])
                pairs += result.raw.shape[0]
                position += 1

        stop_at = time.perf_counter() + args.handle_warmup_s
        await asyncio.gather(*(caller(i) for i in range(args.callers)))
        pairs = 0
        metrics_before = await read_metrics(args)
        before = cpu_snapshot(roles)
        started = time.perf_counter()
        stop_at = started + args.handle_s
        with Profiles(args.profile_dir and Path(args.profile_dir) / "handle", roles, args.handle_s - 2, args.profile_gil):
            await asyncio.gather(*(caller(i) for i in range(args.callers)))
        elapsed = time.perf_counter() - started
        cpu = cpu_by_role(roles, before, cpu_snapshot(roles))
        metrics_after = await read_metrics(args)
        return pairs, elapsed, cpu, batch_stats(metrics_after, metrics_before)

    pairs, elapsed, cpu, batches = await drive()
    serve.delete("scorer_only")
    rate = pairs / elapsed
    requests = pairs / 50
    result = {
        "pairs_per_s": rate,
        "ratio_to_in_process": rate / own_rate,
        "callers": args.callers,
        "replicas": args.handle_replicas,
        "calls_in_flight": args.handle_calls_in_flight,
        "ray_actor_options": options.get("ray_actor_options"),
        "cpu_ms_per_part": {role: seconds * 1000 / requests for role, seconds in cpu.items()},
        **batches,
    }
    how = f"coalesced, {args.handle_calls_in_flight} calls in flight" if args.handle_calls_in_flight else "a call per part"
    print(f"{args.handle_replicas} scorer replica(s) through the handle: {rate:.0f} pairs/s = {rate / own_rate:.2f}x "
          f"in process ({args.callers} callers, {how}); CPU ms per 1 x 50 part: "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_ms_per_part"].items()), flush=True)
    if batches["forward_batches"]:
        print(f"  {batches['pairs_per_forward_batch']:.0f} pairs and {batches['padded_tokens_per_forward_batch']:.0f} "
              f"padded tokens per forward batch; queue_wait {batches['queue_wait_mean_ms'] or 0:.1f} ms, "
              f"inference {batches['inference_mean_ms'] or 0:.1f} ms per window (mean)", flush=True)
    return result


# ----- phase 3 and 4: the whole app over HTTP ----------------------------------------------------


def app_config(args, port: int) -> dict:
    config = copy.deepcopy(yaml.safe_load((REPO_ROOT / args.config).read_text()))
    config["http_options"].update(host="127.0.0.1", port=port)
    for name, count in args.replicas.items():
        [deployment] = [d for d in config["applications"][0]["deployments"] if d["name"] == name]
        # A fixed count: no autoscaling, neither the config's nor the one the GPU builder sets.
        deployment["autoscaling_config"] = None
        deployment["num_replicas"] = count
    return config


def start_serve(config: dict):
    """Serve with the config's HTTP options and proxy location, as `serve run config.yaml` starts it."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    return serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location), schema


def deploy(config: dict) -> None:
    """Deploys a whole Serve config as `serve run config.yaml` does."""
    client, schema = start_serve(config)
    client.deploy_apps(schema, _blocking=False)


async def wait_ready(client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with client.get("/ready") as response:
                if response.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(1)
    raise RuntimeError(f"the app did not become ready in {timeout_s} s")


class Answers:
    """Statuses, latencies and score mismatches of the answers of one phase."""

    def __init__(self):
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.pairs = 0
        self.max_abs_diff = 0.0
        self.mismatched = 0

    def add(self, status: int, latency: float, body, expected: np.ndarray):
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200:
            return
        self.latencies.append(latency)
        self.pairs += len(expected)
        got = np.empty(len(expected))
        for item in body:
            got[item["index"]] = item["score"]
        diff = float(np.max(np.abs(got - expected)))
        self.max_abs_diff = max(self.max_abs_diff, diff)
        self.mismatched += int(diff != 0.0)


async def post(client, requests, expected, index: int, answers: Answers) -> None:
    query, passages = requests[index % len(requests)]
    started = time.perf_counter()
    async with client.post("/rerank", json={"query": query, "texts": passages, "raw_scores": True}) as response:
        body = await response.json(content_type=None) if response.status == 200 else await response.read()
        answers.add(response.status, time.perf_counter() - started, body, expected[index % len(requests)])


async def closed_loop(client, requests, expected, clients: int, duration_s: float) -> tuple[Answers, float]:
    answers = Answers()
    stop_at = time.perf_counter() + duration_s

    async def one(index: int):
        position = index
        while time.perf_counter() < stop_at:
            await post(client, requests, expected, position, answers)
            position += clients

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return answers, time.perf_counter() - started


def percentile_ms(values: list[float], q: float):
    return float(np.percentile(values, q) * 1000) if values else None


async def http_phases(args, url: str, requests, expected, app: str, scorer_replicas_gpu_s) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(args.clients, args.overload_clients) + 8)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:
        await wait_ready(client, args.ready_timeout_s)
        async with client.get("/info") as response:
            info = await response.json()  # the scorers' describe(): backend, dtype, cuda_graphs, capture time
        roles = serve_processes(app)
        low = Answers()
        low_before = await read_metrics(args)
        for index in range(args.low_load_requests):
            await post(client, requests, expected, index, low)
        low_after = await read_metrics(args)
        # Where a lone request's time goes (bucket estimates: Ray exports histogram sums from bucket midpoints).
        low_stages = {stage: stage_mean(low_after, low_before, stage)["mean_ms"] for stage in STAGES}
        print(f"low load 1 x 50: p50 {percentile_ms(low.latencies, 50):.1f} ms, "
              f"p99 {percentile_ms(low.latencies, 99):.1f} ms; stages (mean ms, bucket estimates) "
              + ", ".join(f"{stage} {ms:.1f}" for stage, ms in low_stages.items() if ms is not None), flush=True)

        await closed_loop(client, requests, expected, args.clients, args.http_warmup_s)
        roles = serve_processes(app)  # replicas the warm-up may have added
        metrics_before = await read_metrics(args)
        cpu_before = cpu_snapshot(roles)
        with GpuSampler() as gpu, Profiles(args.profile_dir and Path(args.profile_dir) / "http", roles,
                                           args.http_s - 2, args.profile_gil):
            answers, elapsed = await closed_loop(client, requests, expected, args.clients, args.http_s)
        # Replicas the autoscaler started during the window count from zero (all their CPU is in it).
        started = {pid: role for pid, role in serve_processes(app).items() if pid not in roles}
        roles = {**roles, **started}
        cpu = cpu_by_role(roles, {**cpu_before, **dict.fromkeys(started, 0.0)}, cpu_snapshot(roles))
        metrics_after = await read_metrics(args)

        overload = None
        if args.overload_clients:
            overload, _ = await closed_loop(client, requests, expected, args.overload_clients, args.overload_s)

    ok = answers.statuses.get(200, 0)
    per_request = {role: seconds * 1000 / max(ok, 1) for role, seconds in sorted(cpu.items())}
    tokenization_ms = delta(metrics_after, metrics_before, "ray_reranker_stage_cpu_seconds_total{tokenization}") * 1000 / max(ok, 1)
    inference_ms = delta(metrics_after, metrics_before, "ray_reranker_stage_cpu_seconds_total{inference}") * 1000 / max(ok, 1)
    serve_side = sum(per_request.get(role, 0.0) for role in ("proxy", *DEPLOYMENTS)) - tokenization_ms - inference_ms
    stages = {stage: stage_mean(metrics_after, metrics_before, stage) for stage in STAGES}
    forward = batch_stats(metrics_after, metrics_before)
    batches = forward["forward_batches"]
    padded = delta(metrics_after, metrics_before, "ray_reranker_padded_tokens_total")
    scorers = sum(1 for role in roles.values() if role == "Scorer")
    busy = gpu.mean()
    if busy is None and scorer_replicas_gpu_s is not None:
        # The simulated device's own busy time: a + b x padded tokens per forward batch, per replica.
        busy = 100 * scorer_replicas_gpu_s(batches, padded) / (elapsed * max(scorers, 1))
    result = {
        "info": info,
        "clients": args.clients,
        "pairs_per_s": answers.pairs / elapsed,
        "requests_per_s": ok / elapsed,
        "statuses": answers.statuses,
        "p50_ms_at_load": percentile_ms(answers.latencies, 50),
        "low_load_p50_ms": percentile_ms(low.latencies, 50),
        "low_load_p99_ms": percentile_ms(low.latencies, 99),
        "low_load_stage_mean_ms": low_stages,
        "scores": {"max_abs_diff": max(answers.max_abs_diff, low.max_abs_diff),
                   "requests_with_a_difference": answers.mismatched + low.mismatched,
                   "requests_checked": answers.statuses.get(200, 0) + low.statuses.get(200, 0)},
        "cpu_ms_per_request": per_request,
        "tokenization_cpu_ms_per_request": tokenization_ms,
        "inference_cpu_ms_per_request": inference_ms,
        # With the tokenizer's pool, tokenization's CPU is mostly on the pool's threads, not the stage's.
        "serve_side_cpu_ms_per_request": None if args.tokenizer_pool else serve_side,
        "tokenizer_pool": args.tokenizer_pool,
        "stages": stages,
        "forward_batches": batches,
        "pairs_per_forward_batch": forward["pairs_per_forward_batch"],
        "padded_tokens_per_forward_batch": forward["padded_tokens_per_forward_batch"],
        "gpu_busy_percent": busy,
        "gpu_busy_source": "nvidia-smi" if gpu.mean() is not None else "simulated device",
        "replicas": {name: sum(1 for role in roles.values() if role == name) for name in DEPLOYMENTS},
        "replicas_started_in_window": {name: sum(1 for role in started.values() if role == name) for name in DEPLOYMENTS},
    }
    if overload is not None:
        total = sum(overload.statuses.values())
        result["overload"] = {"clients": args.overload_clients, "statuses": overload.statuses,
                              "fraction_429": overload.statuses.get(429, 0) / max(total, 1)}
    return result


def http_report(result: dict, own_rate: float) -> None:
    print(f"HTTP ({result['clients']} clients): {result['pairs_per_s']:.0f} pairs/s = "
          f"{result['pairs_per_s'] / own_rate:.2f}x in process; statuses {result['statuses']}; "
          f"GPU busy {result['gpu_busy_percent'] or 0:.0f}% ({result['gpu_busy_source']})", flush=True)
    print("CPU ms per 1 x 50 request: " + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_ms_per_request"].items())
          + f"; tokenization {result['tokenization_cpu_ms_per_request']:.1f}, forward {result['inference_cpu_ms_per_request']:.1f}"
          + (f"; Serve-side {result['serve_side_cpu_ms_per_request']:.1f}" if result["serve_side_cpu_ms_per_request"] is not None
             else "; tokenized on the tokenizer's thread pool: tokenization's CPU is in the Tokenizer process's figure"), flush=True)
    print("stages (mean ms): " + ", ".join(f"{k} {v['mean_ms']:.1f}" for k, v in result["stages"].items() if v["mean_ms"] is not None)
          + f"; {result['pairs_per_forward_batch'] or 0:.0f} pairs and {result['padded_tokens_per_forward_batch'] or 0:.0f} padded tokens per forward batch", flush=True)
    print(f"scores: {result['scores']}", flush=True)
    if "overload" in result:
        print(f"overload ({result['overload']['clients']} clients): statuses {result['overload']['statuses']}, "
              f"429 fraction {result['overload']['fraction_429']:.3f}", flush=True)


# ----- main --------------------------------------------------------------------------------------


def parse_replicas(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, count = item.partition("=")
        if name not in DEPLOYMENTS:
            raise argparse.ArgumentTypeError(f"unknown deployment {name!r}; one of {DEPLOYMENTS}")
        out[name] = int(count)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["simulated-gpu", "torch"], default="simulated-gpu")
    parser.add_argument("--config", default="serve_config.yaml", help="Serve config, relative to the repo root")
    parser.add_argument("--model-dir", help="an existing model directory (default: a random mBERT built here)")
    parser.add_argument("--phases", default="inprocess,handle,http,overload")
    parser.add_argument("--replicas", type=parse_replicas, default={},
                        help="fixed replica counts instead of autoscaling, e.g. Ingress=1,Tokenizer=1,Scorer=1")
    parser.add_argument("--fake-gpus", type=int, default=0, help="GPUs this machine's Ray advertises (simulated)")
    parser.add_argument("--requests", type=int, default=16, help="distinct 1 x 50 long requests")
    parser.add_argument("--inprocess-s", type=float, default=8)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--handle-replicas", type=int, default=1, help="scorer replicas in the handle phase (sharing one GPU)")
    parser.add_argument("--handle-by-reference", action="store_true",
                        help="callers use Ray actor calls and object refs (the ingress before issue 13), not Serve's gRPC")
    parser.add_argument("--handle-calls-in-flight", type=int, default=None,
                        help="callers coalesce their parts as the GPU config's ingress does "
                             "(handle_calls_in_flight); unset: one call per part")
    parser.add_argument("--handle-warmup-s", type=float, default=5)
    parser.add_argument("--handle-s", type=float, default=20)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--http-warmup-s", type=float, default=10)
    parser.add_argument("--http-s", type=float, default=30)
    parser.add_argument("--low-load-requests", type=int, default=30)
    parser.add_argument("--tokenizer-pool", action="store_true",
                        help="tokenize on the Rust tokenizer's thread pool as the README's command does (default: single-threaded)")
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--overload-s", type=float, default=20)
    parser.add_argument("--ready-timeout-s", type=float, default=600)
    parser.add_argument("--out", help="directory for results.json")
    parser.add_argument("--profile-dir", help="py-spy record every Serve process during the measured windows (adds load)")
    parser.add_argument("--profile-gil", action="store_true", help="with --profile-dir: sample GIL holders only")
    return parser.parse_args(argv)


async def served_phases(args, config, model_dir, requests, parts, expected, own, phases, results) -> None:
    port = free_port()
    served = app_config(args, port)
    # Serve's proxy on the config's options from the start, so both phases share it.
    start_serve(served)
    if "handle" in phases:
        results["handle"] = await handle_phase(args, config, model_dir, parts, own["pairs_per_s"])
    if phases & {"http", "overload"}:
        if "overload" not in phases:
            args.overload_clients = 0
        deploy(served)
        simulated_gpu_s = None
        if args.backend == "simulated-gpu":
            from reranker.backends.simulated import GPU_FIXED_S, GPU_S_PER_TOKEN

            def simulated_gpu_s(batches, padded):
                return batches * GPU_FIXED_S + padded * GPU_S_PER_TOKEN
        app = config["applications"][0]["name"]
        results["http"] = await http_phases(args, f"http://127.0.0.1:{port}", requests, expected, app, simulated_gpu_s)
        http_report(results["http"], own["pairs_per_s"])


def write_results(args, results: dict) -> None:
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {out / 'results.json'}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    phases = set(args.phases.split(","))
    results: dict = {"machine": machine_info(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                     "backend": args.backend, "config": args.config}
    print(json.dumps(results["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else save_random_mbert(
            Path(tmp) / "model", size="tiny" if args.backend == "simulated-gpu" else "full")
        requests = long_requests(args.requests)
        own, parts, expected = in_process(args, model_dir, requests)
        results["in_process"] = own
        config = yaml.safe_load((REPO_ROOT / args.config).read_text())
        if phases & {"handle", "http", "overload"}:
            import ray
            from ray import serve

            args.metrics_port = start_ray(args, model_dir)
            results["environment"] = ray_environment()
            try:
                # One event loop for every served phase: Serve's handle routers bind to the loop
                # they are first used on (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0).
                asyncio.run(served_phases(args, config, model_dir, requests, parts, expected, own, phases, results))
            finally:
                write_results(args, results)
                try:
                    serve.shutdown()
                except Exception as exc:  # noqa: BLE001 - the results are written already
                    print(f"serve.shutdown: {exc!r}", flush=True)
                ray.shutdown()
        else:
            write_results(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
