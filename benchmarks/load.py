"""Load test: ramp-up -> steady -> spike (~5x capacity) -> ramp-down against the reranker on 127.0.0.1.

Records, over time: throughput, p50/p95/p99 latency of successes, status codes, RUNNING replicas per
deployment (serve.status()), the RSS and CPU time of the Serve processes (replica, proxy and
controller actor PIDs) and of the load generator. Writes one PNG and a markdown summary
(benchmarks/LOAD_REPORT.md, benchmarks/load_report.png). A short warm-up and idle pause come
first, so the RSS "before the load" is that of an idle service that has served requests.

By default it starts its own local Ray and deploys serve_config.yaml with a tiny random model (or
`--model DIR`) and fast autoscaling delays. `--url` targets a running app instead; add
`--ray-address` to also record its replicas and RSS.

    python benchmarks/load.py                       # ~3 min, own local Ray, tiny model
    python benchmarks/load.py --steady-s 60 --spike-s 40
    python benchmarks/load.py --url http://127.0.0.1:8000 --ray-address auto

Phases: ramp-up and steady are closed-loop (1 -> C concurrent clients, then C); the steady phase's
throughput is the measured capacity. Spike and ramp-down are open-loop arrivals at 5x and then
1x -> 0.1x that capacity, so the spike really offers more than the service can take.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx

from bench_env import BENCH_DIR as HERE
from bench_env import REPO_ROOT
from ports import free_port  # tests/ports.py (tests/ is on sys.path through bench_env)
DEPLOYMENTS = ("Ingress", "Tokenizer", "Scorer")

# Multilingual workload: queries and sentences across scripts; passages are 1-4 sentences (~20-120 tokens).
QUERIES = [
    "what is the capital of france",
    "столица россии",
    "日本の首都はどこですか",
    "北京是哪个国家的首都",
    "서울은 어느 나라의 수도입니까",
    "ما هي عاصمة مصر",
    "भारत की राजधानी क्या है",
    "hauptstadt von deutschland",
    "capital de españa",
    "how do neural rerankers work in search engines",
]
SENTENCES = [
    "paris is the capital and most populous city of france, on the river seine.",
    "berlin ist die hauptstadt von deutschland und zugleich ein eigenes bundesland.",
    "madrid es la capital de españa y su ciudad más poblada.",
    "столица россии москва, крупнейший по численности населения город страны.",
    "東京は日本の首都であり、世界有数の大都市圏を形成している。",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "서울은 대한민국의 수도이며 최대 도시이다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها وتقع على ضفاف النيل.",
    "नई दिल्ली भारत की राजधानी है और दिल्ली महानगर का हिस्सा है।",
    "roma è la capitale d'italia e il comune più popoloso del paese.",
    "lisboa é a capital de portugal e a sua cidade mais populosa.",
    "a cross-encoder reads the query and the passage together and outputs one relevance score.",
    "search engines retrieve candidates with bm25 or embeddings and then rerank the top results.",
    "the quick brown fox jumps over the lazy dog 🙂 while the reranker scores passages.",
]


def make_request(rng: random.Random, min_docs: int, max_docs: int) -> dict:
    passages = [" ".join(rng.choices(SENTENCES, k=rng.randint(1, 4))) for _ in range(rng.randint(min_docs, max_docs))]
    return {"query": rng.choice(QUERIES), "texts": passages}


def request_bodies(rng: random.Random, min_docs: int, max_docs: int, count: int = 256) -> list[bytes]:
    """Encoded JSON bodies made before the run, so the client's CPU (on the service's cores) goes to sending.

    They ask for raw scores, which the answers are checked against (expected_scores)."""
    return [json.dumps({**make_request(rng, min_docs, max_docs), "raw_scores": True}).encode() for _ in range(count)]


def expected_scores(model: str, bodies: list[bytes]) -> list:
    """Each body's raw scores, computed in this process the way the service computes them."""
    from reranker.scoring import ModelScorer
    from reranker.settings import RerankerSettings
    from reranker.tokenization import PairEncoder
    from reranker.model_files import load_tokenizer

    settings = RerankerSettings(model=model, device="cpu", dtype="float32", backend="torch")
    scorer = ModelScorer(settings)
    encoder = PairEncoder(load_tokenizer(model), scorer.max_length, settings.max_query_tokens, settings.chunk_overlap_tokens)
    return [scorer.score_pairs(encoder.encode(r["query"], r["texts"])).raw for r in map(json.loads, bodies)]


def is_correct(answer, expected) -> bool:
    """Every passage once, sorted by score, each score the in-process one (raw, within 1e-3)."""
    indices = [item["index"] for item in answer]
    scores = [item["score"] for item in answer]
    return (
        sorted(indices) == list(range(len(expected)))
        and scores == sorted(scores, reverse=True)
        and all(abs(item["score"] - float(expected[item["index"]])) <= 1e-3 for item in answer)
    )


@dataclass
class Sample:
    sent_at: float
    latency_s: float
    status: int  # 0: client-side failure (timeout, connection error)
    retry_after: bool
    phase: str
    correct: bool | None = None  # for a 200: its ranking equals the in-process one (None: not checked)


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    samples: list = field(default_factory=list)
    replicas: list = field(default_factory=list)  # (t, {deployment: RUNNING})
    rss: list = field(default_factory=list)  # (t, {pid: (name, rss_bytes)})
    cpu: list = field(default_factory=list)  # (t, {pid: (name, cpu_seconds)}), this process included
    phases: list = field(default_factory=list)  # (name, start_t, end_t)

    def now(self) -> float:
        return time.monotonic() - self.started


# ----- the service ----------------------------------------------------------------------------


def fast_autoscaling_config(base: dict, upscale_delay_s: float, downscale_delay_s: float) -> dict:
    """serve_config.yaml with short autoscaling delays and windows, so a short run shows scaling."""
    config = copy.deepcopy(base)
    for deployment in config["applications"][0]["deployments"]:
        scaling = deployment.get("autoscaling_config")
        if scaling:
            scaling.update(
                upscale_delay_s=upscale_delay_s, downscale_delay_s=downscale_delay_s, look_back_period_s=2, metrics_interval_s=0.5
            )
    return config


def start_local_service(model: str | None, upscale_delay_s: float, downscale_delay_s: float) -> tuple[str, str]:
    """Starts a local Ray and deploys serve_config.yaml; returns (url, model dir)."""
    import yaml

    if model is None:
        from tiny_models import save_tiny_model

        model = str(save_tiny_model(Path(tempfile.mkdtemp(prefix="load-tiny-")), num_labels=2))
    os.environ["RERANKER_MODEL"] = model
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # As the Dockerfile and README set it: the proxy's router gives a busy ingress replica 0.5 s
    # (Serve's default: 0.1 s) to report its queue length before backing off from it.
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "0.5")

    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    config = fast_autoscaling_config(yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text()), upscale_delay_s, downscale_delay_s)
    config["http_options"].update(host="127.0.0.1", port=port)
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return url, model
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the app did not become ready in 300 s")


def serve_process_pids() -> dict[int, str]:
    """pid -> actor name of the ALIVE Serve actors (replicas, proxies, controller), from Ray's GCS."""
    import ray

    table = ray._private.state.state.actor_table(None)
    return {
        actor["Pid"]: actor["Name"] or actor["ActorClassName"]
        for actor in table.values()
        if actor["State"] == "ALIVE" and actor["Pid"]
        and (actor["ActorClassName"].startswith("ServeReplica:") or actor["ActorClassName"] in ("ServeController", "ProxyActor"))
    }


def sample_processes(pids: dict[int, str], measure) -> dict[int, tuple]:
    """pid -> (name, measure(psutil.Process)) for each process still alive."""
    import psutil

    snapshot = {}
    for pid, name in pids.items():
        try:
            snapshot[pid] = (name, measure(psutil.Process(pid)))
        except psutil.Error:
            pass
    return snapshot


def rss_snapshot(pids: dict[int, str] | None = None) -> dict[int, tuple[str, int]]:
    """pid -> (name, RSS bytes) of the Serve processes (looked up when `pids` is not given)."""
    return sample_processes(serve_process_pids() if pids is None else pids, lambda process: process.memory_info().rss)


def cpu_snapshot(pids: dict[int, str]) -> dict[int, tuple[str, float]]:
    """pid -> (name, user + system CPU seconds) of these Serve processes and of this load generator."""
    everyone = {**pids, os.getpid(): "load generator (this process)"}
    return sample_processes(everyone, lambda process: sum(process.cpu_times()[:2]))  # user + system


def running_replicas(app: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: info.replica_states.get("RUNNING", 0) for name, info in status.deployments.items()}


def monitor(recorder: Recorder, app: str, stop: threading.Event, with_ray: bool) -> None:
    """Samples replicas every second and RSS and CPU time every 2 s, in a thread, until stopped."""
    tick = 0
    while not stop.is_set():
        if with_ray:
            try:
                recorder.replicas.append((recorder.now(), running_replicas(app)))
                if tick % 2 == 0:
                    pids = serve_process_pids()
                    recorder.rss.append((recorder.now(), rss_snapshot(pids)))
                    recorder.cpu.append((recorder.now(), cpu_snapshot(pids)))
            except Exception as exc:  # noqa: BLE001 - a missed sample must not stop the run
                print(f"monitor: {type(exc).__name__}: {exc}", file=sys.stderr)
        tick += 1
        stop.wait(1.0)


# ----- the load -------------------------------------------------------------------------------


async def one_request(client: aiohttp.ClientSession, recorder: Recorder, rng: random.Random, phase: str, args) -> None:
    which = rng.randrange(len(args.bodies))
    sent = recorder.now()
    started = time.perf_counter()
    correct = None
    try:
        async with client.post(args.path, data=args.bodies[which], headers={"content-type": "application/json"}) as response:
            body = await response.read()
            status, retry_after = response.status, "retry-after" in response.headers
        latency_s = time.perf_counter() - started
        if status == 200 and args.expected:
            correct = is_correct(json.loads(body), args.expected[which])
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status, retry_after, latency_s = 0, False, time.perf_counter() - started
    recorder.samples.append(Sample(sent, latency_s, status, retry_after, phase, correct))


async def closed_loop(client, recorder, rng, phase: str, duration_s: float, concurrency_at, args) -> None:
    """Workers send back to back; concurrency_at(fraction of the phase) says how many are active."""
    start = time.monotonic()
    end = start + duration_s

    async def worker(index: int) -> None:
        while time.monotonic() < end:
            if index < concurrency_at((time.monotonic() - start) / duration_s):
                await one_request(client, recorder, rng, phase, args)
            else:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))


async def open_loop(client, recorder, rng, phase: str, duration_s: float, rate_at, args) -> None:
    """Poisson arrivals at rate_at(fraction) requests/s, whatever the service does; in flight is capped."""
    start = time.monotonic()
    tasks: set[asyncio.Task] = set()
    while (elapsed := time.monotonic() - start) < duration_s:
        rate = max(rate_at(elapsed / duration_s), 0.1)
        await asyncio.sleep(rng.expovariate(rate))
        if len(tasks) < args.max_in_flight:
            task = asyncio.create_task(one_request(client, recorder, rng, phase, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            recorder.samples.append(Sample(recorder.now(), 0.0, -1, False, phase))  # not sent: client cap
    if tasks:
        await asyncio.gather(*tasks)


def throughput(samples: list, phase: str) -> float:
    done = [s for s in samples if s.phase == phase and s.status == 200]
    if len(done) < 2:
        return 0.0
    span = max(s.sent_at + s.latency_s for s in done) - min(s.sent_at for s in done)
    return len(done) / max(span, 1e-6)


def prepare_requests(args, rng: random.Random) -> None:
    """args.bodies (encoded before the run) and args.expected (their in-process raw scores, when
    args.model_dir is the service's model; None otherwise)."""
    args.bodies = request_bodies(rng, args.min_docs, args.max_docs)
    args.expected = expected_scores(args.model_dir, args.bodies) if args.model_dir else None


def client_session(url: str, connections: int, timeout_s: float) -> aiohttp.ClientSession:
    # aiohttp rather than httpx: at hundreds of connections httpx's pool costs enough CPU, on the
    # service's own cores, to delay the requests it measures.
    return aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def run_load(url: str, recorder: Recorder, args) -> float:
    rng = random.Random(args.seed)
    prepare_requests(args, rng)
    async with client_session(url, args.max_in_flight + args.concurrency, args.timeout_s) as client:

        async def phase(name, duration_s, runner, schedule):
            start = recorder.now()
            print(f"[{start:6.1f}s] {name} for {duration_s:.0f}s", flush=True)
            await runner(client, recorder, rng, name, duration_s, schedule, args)
            recorder.phases.append((name, start, recorder.now()))

        c = args.concurrency
        if args.warmup_s > 0:
            # A few requests through every stage (lazy imports, allocator pools, ONNX Runtime's arena),
            # then idle: the RSS sampled at the end of that idle time is the level "before the load".
            await phase("warm-up", args.warmup_s, closed_loop, lambda f: 2)
            await phase("idle", 6, closed_loop, lambda f: 0)
        await phase("ramp-up", args.ramp_s, closed_loop, lambda f: max(1, round(c * f)))
        await phase("steady", args.steady_s, closed_loop, lambda f: c)
        capacity = throughput(recorder.samples, "steady")
        print(f"  capacity (steady throughput): {capacity:.1f} req/s", flush=True)
        await phase("spike", args.spike_s, open_loop, lambda f: args.spike_factor * capacity)
        await phase("ramp-down", args.down_s, open_loop, lambda f: capacity * (1 - 0.9 * f))
        return capacity


# ----- report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def windows(recorder: Recorder, width_s: float = 2.0):
    """Per window: (t, ok/s, rejected/s, other/s, p50, p95, p99 of successes in ms)."""
    end = max((s.sent_at + s.latency_s for s in recorder.samples), default=0)
    rows, t = [], 0.0
    while t < end:
        inside = [s for s in recorder.samples if t <= s.sent_at + s.latency_s < t + width_s and s.status != -1]
        ok = [s.latency_s * 1000 for s in inside if s.status == 200]
        rejected = sum(1 for s in inside if s.status in (429, 503))
        other = len(inside) - len(ok) - rejected
        rows.append((t + width_s / 2, len(ok) / width_s, rejected / width_s, other / width_s,
                     percentile(ok, 50), percentile(ok, 95), percentile(ok, 99)))
        t += width_s
    return rows


def plot(recorder: Recorder, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = windows(recorder)
    t = [r[0] for r in rows]
    fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True)
    axes[0].plot(t, [r[4] for r in rows], label="p50")
    axes[0].plot(t, [r[5] for r in rows], label="p95")
    axes[0].plot(t, [r[6] for r in rows], label="p99")
    axes[0].set_ylabel("latency of 200s (ms)")
    axes[0].set_yscale("log")
    axes[1].plot(t, [r[1] for r in rows], label="200 /s", color="tab:green")
    axes[1].set_ylabel("throughput (req/s)")
    axes[2].plot(t, [r[2] for r in rows], label="429/503 with Retry-After /s", color="tab:orange")
    axes[2].plot(t, [r[3] for r in rows], label="other errors /s", color="tab:red")
    axes[2].set_ylabel("rejections, errors /s")
    for name in DEPLOYMENTS:
        axes[3].step([s[0] for s in recorder.replicas], [s[1].get(name, 0) for s in recorder.replicas], where="post", label=name)
    axes[3].set_ylabel("RUNNING replicas")
    axes[4].plot([s[0] for s in recorder.rss], [sum(v[1] for v in s[1].values()) / 2**20 for s in recorder.rss], label="all Serve processes")
    axes[4].set_ylabel("RSS (MiB)")
    axes[4].set_xlabel("seconds since start")
    for ax in axes:
        for name, start, end in recorder.phases:
            ax.axvspan(start, end, alpha=0.06 if name in ("steady", "ramp-down") else 0.12,
                       color={"warm-up": "gray", "ramp-up": "blue", "steady": "green", "spike": "red", "ramp-down": "purple"}.get(name, "gray"))
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title("reranker load test: " + " -> ".join(f"{n} {e - s:.0f}s" for n, s, e in recorder.phases))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def rss_by_pid(snapshot) -> dict[int, tuple[str, int]]:
    return snapshot[1] if snapshot else {}


def probe_timeouts(logs_dir: str | None) -> int | None:
    """How often the proxy's router gave up waiting for a replica's queue length (Serve logs a warning)."""
    if not logs_dir:
        return None
    return sum(path.read_text(errors="replace").count("Failed to get queue length")
               for path in Path(logs_dir, "serve").glob("proxy_*.log"))


def cpu_table(recorder: Recorder) -> list[str]:
    """CPU cores each process used per phase (from CPU-time samples every 2 s): who had the 2 cores."""
    spans = [(name, start, end) for name, start, end in recorder.phases if name in ("steady", "spike", "ramp-down")]
    if len(recorder.cpu) < 2 or not spans:
        return []
    rows = {}
    for name, start, end in spans:
        inside = [snap for snap in recorder.cpu if start <= snap[0] <= end]
        if len(inside) < 2:
            continue
        (t0, first), (t1, last) = inside[0], inside[-1]
        for pid in set(first) & set(last):
            rows.setdefault(pid, {"name": first[pid][0]})[name] = (last[pid][1] - first[pid][1]) / (t1 - t0)
    names = [name for name, _, _ in spans]
    lines = ["", "CPU used, in cores (2 on this machine), averaged over each phase:", "",
             "| process | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for pid, row in sorted(rows.items(), key=lambda item: -item[1].get("spike", 0)):
        lines.append(f"| {row['name']} (pid {pid}) | " + " | ".join(f"{row.get(n, float('nan')):.2f}" for n in names) + " |")
    return lines


def report(recorder: Recorder, args, url: str, model: str, capacity: float, path: Path, png: Path) -> dict:
    samples = [s for s in recorder.samples if s.status != -1]
    not_sent = sum(1 for s in recorder.samples if s.status == -1)
    lines = ["# Load test report", ""]
    lines += [
        f"Generated by `benchmarks/load.py` against `{url}` (model `{model}`) on {os.cpu_count()} CPU cores.",
        f"Workload: 1 multilingual query x {args.min_docs}-{args.max_docs} passages of 1-4 sentences, `POST {args.path}`.",
        (f"Warm-up {args.warmup_s:.0f}s (2 clients) and 6s idle, then phases: " if args.warmup_s > 0 else "Phases: ")
        + f"ramp-up {args.ramp_s:.0f}s (closed loop, 1 -> {args.concurrency} clients), steady {args.steady_s:.0f}s "
        f"({args.concurrency} clients), spike {args.spike_s:.0f}s (open loop at {args.spike_factor}x the steady throughput), "
        f"ramp-down {args.down_s:.0f}s (open loop, 1x -> 0.1x), then up to {args.cooldown_s:.0f}s idle for the downscale.",
        "",
        f"Measured capacity (steady throughput): **{capacity:.1f} req/s**; spike offered **{args.spike_factor * capacity:.1f} req/s**.",
        "",
        "## Per phase",
        "",
        "| phase | sent | 200 | 429 | 503 | other | client errors | req/s (200) | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _, _ in recorder.phases + [("all", 0, 0)]:
        inside = [s for s in samples if name == "all" or s.phase == name]
        ok = [s.latency_s * 1000 for s in inside if s.status == 200]

        def count(code: int, inside=inside) -> int:
            return sum(1 for s in inside if s.status == code)

        other = sum(1 for s in inside if s.status not in (200, 429, 503, 0))
        rate = throughput(samples, name) if name != "all" else float("nan")
        lines.append(
            f"| {name} | {len(inside)} | {len(ok)} | {count(429)} | {count(503)} | {other} | {count(0)} | "
            f"{rate:.1f} | {percentile(ok, 50):.0f} | {percentile(ok, 95):.0f} | {percentile(ok, 99):.0f} |"
        )
    rejected = [s for s in samples if s.status in (429, 503)]
    without_retry_after = [s for s in rejected if not s.retry_after]
    other = [s for s in samples if s.status not in (200, 429, 503)]
    spike = [s for s in samples if s.phase == "spike"]
    spike_ok = all((s.status == 200 and s.correct is not False) or (s.status in (429, 503) and s.retry_after) for s in spike)
    checked = [s for s in samples if s.correct is not None]
    wrong = [s for s in checked if not s.correct]
    ok_latencies = [s.latency_s * 1000 for s in samples if s.status == 200]

    peaks = {name: max((r[1].get(name, 0) for r in recorder.replicas), default=0) for name in DEPLOYMENTS}
    starts = {name: recorder.replicas[0][1].get(name, 0) if recorder.replicas else 0 for name in DEPLOYMENTS}
    ends = {name: recorder.replicas[-1][1].get(name, 0) if recorder.replicas else 0 for name in DEPLOYMENTS}
    rose = [n for n in DEPLOYMENTS if peaks[n] > starts[n]]
    fell = [n for n in rose if ends[n] < peaks[n]]

    # Cold: the first sample, before any request. Before the load: the last sample before the
    # ramp-up (after the warm-up and its idle time; the cold sample when there is no warm-up).
    # Peak: the largest total during the run. Growth is judged before the load -> end, over the
    # processes alive throughout.
    ramp_start = next((start for name, start, _ in recorder.phases if name == "ramp-up"), 0)
    cold = rss_by_pid(recorder.rss[0] if recorder.rss else None)
    before = rss_by_pid(max((s for s in recorder.rss if s[0] <= ramp_start), default=None, key=lambda s: s[0]))
    after = rss_by_pid(recorder.rss[-1] if recorder.rss else None)
    both = sorted(set(cold) & set(before) & set(after), key=lambda pid: cold[pid][0])
    peak = {pid: max(snap[1][pid][1] for snap in recorder.rss if pid in snap[1]) for pid in both}
    rss_cold = sum(cold[p][1] for p in both)
    rss_before = sum(before[p][1] for p in both)
    rss_peak = max((sum(snap[1][p][1] for p in both if p in snap[1]) for snap in recorder.rss), default=0)
    rss_after = sum(after[p][1] for p in both)
    growth = (rss_after - rss_before) / rss_before * 100 if rss_before else float("nan")
    growth_cold = (rss_after - rss_cold) / rss_cold * 100 if rss_cold else float("nan")

    lines += [
        "",
        "## Findings",
        "",
        f"- **Replicas rose and fell**: peak RUNNING {peaks}, at start {starts}, at the end {ends}. "
        f"Rose: {', '.join(rose) or 'none'}; fell back after the load: {', '.join(fell) or 'none'}.",
        f"- **Spike**: {len(spike)} requests; every one got a correct answer or 429/503 with Retry-After: "
        f"**{'yes' if spike_ok else 'NO'}** ({sum(1 for s in spike if s.status == 200)} x 200, "
        f"{sum(1 for s in spike if s.status == 429)} x 429, {sum(1 for s in spike if s.status == 503)} x 503).",
        (f"- **Answers checked** (whole run): {len(checked)} of the 200s against the same model scored in the load "
         f"generator's process (every passage once, sorted, each raw score within 1e-3): **{len(wrong)} wrong**."
         if args.expected else "- Answers were not checked (no local model directory given)."),
        f"- **Rejections without Retry-After**: {len(without_retry_after)}. "
        f"**Other statuses, timeouts or connection errors** (whole run): {len(other)}"
        + (f" ({sorted({s.status for s in other})})" if other else "")
        + f"; client timeout {args.timeout_s:.0f}s, so no request hung past it."
        + (f" {not_sent} arrivals were not sent (client in-flight cap {args.max_in_flight})." if not_sent else ""),
        f"- **Latency of successes** (whole run): p50 {percentile(ok_latencies, 50):.0f} ms, p95 "
        f"{percentile(ok_latencies, 95):.0f} ms, **p99 {percentile(ok_latencies, 99):.0f} ms** over {len(ok_latencies)} requests. "
        "Spike latencies include the wait in the ingress queue (up to `max_queued_requests`).",
        f"- **RSS** of the {len(both)} Serve processes alive throughout: {rss_cold / 2**20:.0f} MiB cold (before any "
        f"request), **{rss_before / 2**20:.0f} MiB before the load** (after the warm-up and idle time), peak "
        f"{rss_peak / 2**20:.0f} MiB, **{rss_after / 2**20:.0f} MiB after the run: {growth:+.1f}%** against the level "
        f"before the load ({'within' if abs(growth) <= 10 else 'NOT within'} 10%); {growth_cold:+.1f}% against cold.",
        "",
        "| process | cold (MiB) | before the load (MiB) | peak (MiB) | end (MiB) | end vs before |",
        "|---|---|---|---|---|---|",
    ]
    for pid in both:
        lines.append(
            f"| {cold[pid][0]} (pid {pid}) | {cold[pid][1] / 2**20:.0f} | {before[pid][1] / 2**20:.0f} | "
            f"{peak[pid] / 2**20:.0f} | {after[pid][1] / 2**20:.0f} | {(after[pid][1] / before[pid][1] - 1) * 100:+.1f}% |"
        )
    lines += cpu_table(recorder)
    timeouts = probe_timeouts(args.logs_dir)
    if timeouts is not None:
        deadline = os.environ.get("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "0.1 (default)")
        lines += ["", f"Queue-length probes the proxy gave up on (Serve warns \"Failed to get queue length\"): **{timeouts}**"
                  + ("." if args.url else f", with `RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S={deadline}`.")]
    lines += ["", f"![load report]({png.name})", ""]
    path.write_text("\n".join(lines))
    return {"spike_ok": spike_ok, "other": len(other), "wrong": len(wrong), "rose": rose, "fell": fell, "rss_growth_pct": growth}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="target a running app (127.0.0.1 only) instead of starting one")
    parser.add_argument("--ray-address", help="with --url: Ray address to read replicas and RSS from (e.g. auto)")
    parser.add_argument("--app", default="reranker", help="Serve application name (for replica counts)")
    parser.add_argument("--model", help="model directory for the local app (default: a tiny random model)")
    parser.add_argument("--path", default="/rerank")
    parser.add_argument("--warmup-s", type=float, default=8, help="2 clients, then 6 s idle, before the profile (0: none)")
    parser.add_argument("--ramp-s", type=float, default=20)
    parser.add_argument("--steady-s", type=float, default=30)
    parser.add_argument("--spike-s", type=float, default=30)
    parser.add_argument("--down-s", type=float, default=20)
    parser.add_argument("--cooldown-s", type=float, default=45, help="idle wait for the downscale, at most")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients in the steady phase")
    parser.add_argument("--spike-factor", type=float, default=5)
    parser.add_argument("--max-in-flight", type=int, default=800)
    parser.add_argument("--min-docs", type=int, default=10)
    parser.add_argument("--max-docs", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=60)
    parser.add_argument("--upscale-delay-s", type=float, default=1)
    parser.add_argument("--downscale-delay-s", type=float, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    return parser.parse_args(argv)


def check_local(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load {host}: this tool only targets 127.0.0.1")


def connect(args, upscale_delay_s: float, downscale_delay_s: float) -> tuple[str, str, bool]:
    """(url, model, with_ray): the running app of --url (Ray joined when --ray-address is given),
    or a local service started here. Sets args.model_dir, the model the service runs when it is a
    local directory: answers are checked against it."""
    if args.url:
        check_local(args.url)
        url, model, with_ray = args.url.rstrip("/"), args.model or "(remote)", bool(args.ray_address)
        if with_ray:
            import ray

            ray.init(address=args.ray_address, log_to_driver=False)
    else:
        url, model = start_local_service(args.model, upscale_delay_s, downscale_delay_s)
        with_ray = True
    args.model_dir = model if Path(model).is_dir() else None
    return url, model, with_ray


def stop_local_service(args) -> None:
    """Shuts down the Serve app and the Ray that connect() started (nothing with --url)."""
    if not args.url:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def wait_for_downscale(recorder: Recorder, app: str, cooldown_s: float, with_ray: bool) -> None:
    if not with_ray:
        time.sleep(min(cooldown_s, 5))
        return
    start = recorder.now()
    print(f"[{start:6.1f}s] cooldown, up to {cooldown_s:.0f}s", flush=True)
    deadline = time.monotonic() + cooldown_s
    peaks = {n: max((r[1].get(n, 0) for r in recorder.replicas), default=0) for n in DEPLOYMENTS}
    while time.monotonic() < deadline:
        current = running_replicas(app)
        if all(current.get(n, 0) < peaks[n] or peaks[n] <= 1 for n in DEPLOYMENTS) and all(
            current.get(n, 0) <= 1 for n in DEPLOYMENTS
        ):
            time.sleep(3)  # a few samples at the bottom
            break
        time.sleep(1)
    recorder.phases.append(("cooldown", start, recorder.now()))


def main(argv=None) -> int:
    args = parse_args(argv)
    url, model, with_ray = connect(args, args.upscale_delay_s, args.downscale_delay_s)
    print(f"target {url}", flush=True)
    args.logs_dir = None
    if with_ray:
        import ray

        args.logs_dir = ray._private.worker._global_node.get_logs_dir_path()  # this host's Ray session logs
    recorder = Recorder()
    stop = threading.Event()
    sampler = threading.Thread(target=monitor, args=(recorder, args.app, stop, with_ray), daemon=True)
    sampler.start()
    time.sleep(2.5)  # a baseline sample of replicas and RSS before any load
    capacity = asyncio.run(run_load(url, recorder, args))
    wait_for_downscale(recorder, args.app, args.cooldown_s, with_ray)
    stop.set()
    sampler.join(timeout=10)
    if with_ray:
        recorder.rss.append((recorder.now(), rss_snapshot()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png, md = args.out_dir / "load_report.png", args.out_dir / "LOAD_REPORT.md"
    plot(recorder, png)
    summary = report(recorder, args, url, model, capacity, md, png)
    print(md.read_text())
    stop_local_service(args)
    return 0 if summary["spike_ok"] and summary["other"] == 0 and summary["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
