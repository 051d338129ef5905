"""Concurrency sweep: closed-loop 1, 2, 4, 8 and 16 clients against the app started as README.md says.

Starts the shipped `serve_config.yaml` with README.md's Run command (`scripts/serve.py`, Serve's
`serve run` without the dashboard; only the HTTP and gRPC ports are moved to free ones, and the
host to 127.0.0.1), serving a full-size mBERT-architecture cross-encoder with
random weights (`scorer_bench.save_random_mbert`). Each client sends 1 query x 50 passages
(80-219 tokens per pair), the next one as soon as the last is answered; after a 429 it waits what
Retry-After says, as a well-behaved client does. Per level (a window of `--window-s`): pairs/s of
the 200s, p50 and p99 of their latency, 429s, 504s and other answers, and the CPU each process of
the app used. Before and after the load (once the autoscaler has scaled back down): RSS and PSS of
every process of the app (the `serve run` driver, Ray's own processes and the replicas). With a fresh ONNX
cache (the default) the first start includes the ONNX export, whose time the scorer logs.

    python benchmarks/concurrency_sweep.py                          # 60 s windows, 1 2 4 8 16 clients
    python benchmarks/concurrency_sweep.py --window-s 15 --clients 1 4 16
    python benchmarks/concurrency_sweep.py --write-results          # also replace the table in RESULTS.md

Run it alone on the machine (`flock /tmp/reranker-heavy.lock ...` where others share it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_env import BENCH_DIR as HERE
from bench_env import REPO_ROOT

from load import client_session, free_port, percentile, sample_processes
from readme_commands import readme_run_command  # tests/, on sys.path through bench_env

PASSAGES = 50
MIN_PAIR_TOKENS, MAX_PAIR_TOKENS = 80, 219
RESULTS_BEGIN = "<!-- concurrency_sweep.py: begin -->"
RESULTS_END = "<!-- concurrency_sweep.py: end -->"
DEPLOYMENTS = ("Ingress", "Tokenizer", "Scorer")


# ----- the workload ------------------------------------------------------------------------------


def request_bodies(model_dir: str, count: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """`count` JSON bodies of 1 query x 50 passages whose pairs are 80-219 tokens; and every pair's tokens."""
    from scorer_bench import LANGS, build_lexicon, make_text

    from reranker.model_files import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    lexicon, rng = build_lexicon(0), random.Random(seed)
    bodies, lengths = [], []
    for index in range(count):
        query = make_text(rng, lexicon, LANGS[index % len(LANGS)], rng.randint(4, 9)) + "?"
        passages: list[str] = []
        while len(passages) < PASSAGES:
            passage = make_text(rng, lexicon, LANGS[(index + len(passages)) % len(LANGS)], rng.randint(30, 120))
            tokens = len(tokenizer(query, passage)["input_ids"])
            if MIN_PAIR_TOKENS <= tokens <= MAX_PAIR_TOKENS:
                passages.append(passage)
                lengths.append(tokens)
        bodies.append(json.dumps({"query": query, "texts": passages}).encode())
    return bodies, lengths


# ----- the app, as README.md runs it -------------------------------------------------------------


@dataclass
class App:
    process: subprocess.Popen
    url: str
    config_path: Path
    log_path: Path
    started: float
    ready_s: float = float("nan")

    def tree(self) -> list:
        """psutil.Process of the Run command and every process it started (Ray's and the replicas)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []


def start_app(model_dir: str, onnx_cache_dir: str, work_dir: Path) -> App:
    """README's Run command, with its config file replaced by a copy on free ports."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    if config.get("grpc_options", {}).get("port"):
        config["grpc_options"]["port"] = free_port()
    config_path = work_dir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = readme_run_command("serve_config.yaml")
    if command is None:
        raise SystemExit("README.md has no Run command that ends with serve_config.yaml")
    run_env, argv = command
    # scorer_bench sets TOKENIZERS_PARALLELISM=false for this process's own tokenization; the app
    # tokenizes as the README's command starts it.
    base_env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM" or k in run_env}
    env = {**base_env, **run_env, "RERANKER_MODEL": model_dir, "RERANKER_ONNX_CACHE_DIR": onnx_cache_dir,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log_path = work_dir / "serve_run.log"
    print("starting:", " ".join(f"{k}={v}" for k, v in run_env.items()), *argv[:-1], config_path, flush=True)
    process = subprocess.Popen([*argv[:-1], str(config_path)], cwd=REPO_ROOT, env=env,
                               stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return App(process, f"http://127.0.0.1:{port}", config_path, log_path, time.monotonic())


def wait_ready(app: App, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise SystemExit(f"the Run command exited ({app.process.returncode}); see {app.log_path}")
        try:
            if httpx.get(app.url + "/ready", timeout=10).status_code == 200:
                app.ready_s = time.monotonic() - app.started
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the app was not ready in {timeout_s:.0f} s; see {app.log_path}")


def stop_app(app: App) -> None:
    """SIGINT to the Run command (it shuts Serve and its Ray down), then SIGKILL to whatever it left."""
    import psutil

    pids = [p.pid for p in app.tree()]
    app.process.send_signal(signal.SIGINT)
    try:
        app.process.wait(90)
    except subprocess.TimeoutExpired:
        app.process.kill()
    time.sleep(2)
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def process_name(process) -> str:
    """A short, stable name: the Ray actor or component a process is."""
    try:
        cmdline = process.cmdline()
    except Exception:  # noqa: BLE001 - gone
        return "?"
    text = " ".join(cmdline)
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].removeprefix("ray::").replace("ServeReplica:reranker:", "")
    for needle, name in (("serve run", "serve run (driver)"), ("scripts/serve.py", "scripts/serve.py (driver)"), ("gcs_server", "gcs_server"), ("raylet/raylet", "raylet"),
                         ("dashboard/dashboard.py", "dashboard"), ("dashboard/agent.py", "dashboard agent"),
                         ("log_monitor.py", "log monitor"), ("autoscaler/_private/monitor.py", "autoscaler monitor"),
                         ("ray-dashboard-", "dashboard module"), ("runtime_env/agent", "runtime env agent"),
                         ("forkserver", "dashboard forkserver"), ("resource_tracker", "multiprocessing resource tracker")):
        if needle in text:
            match = re.search(r"ray-dashboard-(\w+)", text)
            return f"dashboard module {match.group(1)}" if name == "dashboard module" and match else name
    return Path(cmdline[0]).name if cmdline else "?"


def app_processes(app: App) -> dict[int, str]:
    """pid -> name of every process of the app, for load.sample_processes."""
    return {process.pid: process_name(process) for process in app.tree()}


def memory_snapshot(app: App) -> list[dict]:
    """RSS and PSS (bytes) of every process of the app."""
    sampled = sample_processes(app_processes(app), lambda process: process.memory_full_info())
    rows = [{"pid": pid, "name": name, "rss": info.rss, "pss": info.pss} for pid, (name, info) in sampled.items()]
    return sorted(rows, key=lambda row: -row["pss"])


def cpu_seconds(app: App) -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds, its reaped children's included) of every process of the app."""

    def seconds(process) -> float:
        times = process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    return sample_processes(app_processes(app), seconds)


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (every process; steal and idle excluded)."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def replica_counts(app: App) -> dict[str, int]:
    counts = dict.fromkeys(DEPLOYMENTS, 0)
    for process in app.tree():
        name = process_name(process)
        if name in counts:
            counts[name] += 1
    return counts


def export_seconds(app: App) -> float | None:
    """The scorer's logged ONNX export time at this start, from this Ray session's Serve logs."""
    session = Path("/tmp/ray/session_latest/logs/serve")
    for path in sorted(session.glob("replica_reranker_Scorer_*.log")):
        found = re.search(r"in ([0-9.]+) s in a child process", path.read_text(errors="replace"))
        if found:
            return float(found.group(1))
    return None


# ----- the load ----------------------------------------------------------------------------------


@dataclass
class Level:
    clients: int
    window_s: float
    started: float = 0.0
    answers: list = field(default_factory=list)  # (finished_at, latency_s, status)
    cpu_cores: dict = field(default_factory=dict)  # name (pid) -> cores used over the window

    def ok_in_window(self) -> list:
        return [a for a in self.answers if a[2] == 200 and a[0] <= self.started + self.window_s]

    def pairs_per_s(self) -> float:
        done = self.ok_in_window()
        if not done:
            return 0.0
        return len(done) * PASSAGES / (max(a[0] for a in done) - self.started)

    def pairs_per_s_level(self) -> float:
        """Every 200 of the level, also those answered after the window, over the time to the last one.

        A level starts and ends with nothing in flight (its clients stop sending at the window's
        end and their last requests are awaited), so this counts all the work the level did,
        with no request cut at either end; it still rests on a handful of ~12 s requests.
        """
        done = [a for a in self.answers if a[2] == 200]
        if not done:
            return 0.0
        return len(done) * PASSAGES / (max(a[0] for a in done) - self.started)

    def count(self, status: int) -> int:
        return sum(1 for a in self.answers if a[2] == status)


async def run_level(url: str, bodies: list[bytes], level: Level, timeout_s: float, seed: int) -> None:
    rng = random.Random(seed)
    end = time.monotonic() + level.window_s
    level.started = time.monotonic()

    async def client(session) -> None:
        while time.monotonic() < end:
            body = bodies[rng.randrange(len(bodies))]
            sent = time.monotonic()
            retry_after_s = 0.0
            try:
                async with session.post("/rerank", data=body, headers={"content-type": "application/json"}) as response:
                    await response.read()
                    status = response.status
                    if status in (429, 503):
                        retry_after_s = float(response.headers.get("retry-after", "1"))
            except (asyncio.TimeoutError, OSError, Exception):  # noqa: BLE001 - a client-side failure is an answer too
                status = 0
            level.answers.append((time.monotonic(), time.monotonic() - sent, status))
            if retry_after_s:
                await asyncio.sleep(min(retry_after_s, max(end - time.monotonic(), 0)))

    async with client_session(url, level.clients, timeout_s) as session:
        await asyncio.gather(*(client(session) for _ in range(level.clients)))


def sweep(app: App, bodies: list[bytes], clients: list[int], window_s: float, timeout_s: float) -> list[Level]:
    levels = []
    for index, count in enumerate(clients):
        level = Level(count, window_s)
        before, machine_before = cpu_seconds(app), machine_busy_seconds()
        started = time.monotonic()
        print(f"{count} clients for {window_s:.0f} s ...", flush=True)
        asyncio.run(run_level(app.url, bodies, level, timeout_s, seed=index))
        after, elapsed = cpu_seconds(app), time.monotonic() - started
        level.cpu_cores = {f"{after[pid][0]} ({pid})": (after[pid][1] - before[pid][1]) / elapsed
                           for pid in set(before) & set(after)}
        # What the app's processes do not explain: this load generator, other jobs on the machine,
        # and processes that started or ended within the window (e.g. a worker for a new replica).
        machine = (machine_busy_seconds() - machine_before) / elapsed
        level.cpu_cores["whole machine"] = machine
        level.cpu_cores["outside the app's processes"] = machine - sum(
            (after[pid][1] - before[pid][1]) / elapsed for pid in set(before) & set(after))
        print(f"  {level.pairs_per_s():.2f} pairs/s, {len(level.ok_in_window())} x 200 in the window, "
              f"{level.count(429)} x 429, {level.count(504)} x 504", flush=True)
        levels.append(level)
    return levels


def wait_for_downscale(app: App, timeout_s: float) -> float:
    """Seconds until one replica of each deployment is left (the autoscaler's downscale delay)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(count == 1 for count in replica_counts(app).values()):
            return time.monotonic() - started
        time.sleep(2)
    return float("nan")


# ----- report ------------------------------------------------------------------------------------


def machine_line() -> str:
    from machine import describe  # benchmarks/machine.py

    return describe()


def memory_table(title: str, rows: list[dict]) -> list[str]:
    lines = [f"{title}: **PSS {sum(r['pss'] for r in rows) / 2**30:.2f} GiB**, RSS {sum(r['rss'] for r in rows) / 2**30:.2f} GiB, "
             f"{len(rows)} processes", "", "| process | PSS MiB | RSS MiB |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['pss'] / 2**20:.0f} | {r['rss'] / 2**20:.0f} |" for r in rows]
    return lines + [""]


def report(args, app: App, lengths: list[int], levels: list[Level], idle_before, idle_after, downscale_s, export_s) -> str:
    base = next((lv.pairs_per_s() for lv in levels if lv.clients == 1), float("nan"))
    base_level = next((lv.pairs_per_s_level() for lv in levels if lv.clients == 1), float("nan"))
    lines = [
        f"{machine_line()}. Command: `python benchmarks/concurrency_sweep.py {' '.join(args.argv)}`"
        f" ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before the start "
        f"{args.load_before:.1f}).",
        f"App: README's Run command with `serve_config.yaml` as shipped (ports moved), model: random-weight mBERT architecture, "
        f"{len(lengths) // PASSAGES} request bodies of 1 query x {PASSAGES} passages, {min(lengths)}-{max(lengths)} "
        f"tokens per pair (mean {statistics.mean(lengths):.0f}); closed loop, {args.window_s:.0f} s per level; a client "
        "that gets 429 waits its Retry-After. Ready "
        f"{app.ready_s:.0f} s after the Run command started"
        + (f", of which the ONNX export (in a child process) took {export_s:.1f} s." if export_s else " (ONNX files already cached)."),
        "",
        "pairs/s: 50 x the 200s answered within the window, over the time from the window's start to the last of "
        "them; whole level: every 200 of the level (the last requests of the window are awaited) over the time to "
        "the last one.",
        "",
        "| clients | pairs/s | x 1 client | 200s in window | pairs/s, whole level | x 1 client | 200s in level "
        "| p50 s | p99 s | max s | 429 | 504 | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        ok = [a[1] for a in level.answers if a[2] == 200]
        other = sum(1 for a in level.answers if a[2] not in (200, 429, 504))
        lines.append(
            f"| {level.clients} | {level.pairs_per_s():.2f} | {level.pairs_per_s() / base:.2f} | {len(level.ok_in_window())} | "
            f"{level.pairs_per_s_level():.2f} | {level.pairs_per_s_level() / base_level:.2f} | {len(ok)} | "
            f"{percentile(ok, 50):.1f} | {percentile(ok, 99):.1f} | {max(ok, default=float('nan')):.1f} | "
            f"{level.count(429)} | {level.count(504)} | {other} |"
        )
    names = sorted({name for level in levels for name in level.cpu_cores},
                   key=lambda n: -max(level.cpu_cores.get(n, 0) for level in levels))
    lines += ["", "CPU used per process, in cores (of " + str(os.cpu_count()) + "), over each window:", "",
              "| process | " + " | ".join(f"{lv.clients} cl." for lv in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for name in names:
        values = [level.cpu_cores.get(name) for level in levels]
        if max(v or 0 for v in values) >= 0.005:
            lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
    lines += ["", *memory_table("Idle before the load (after 2 warm-up requests)", idle_before),
              *memory_table(f"Idle after the load (autoscaler back to one replica each after {downscale_s:.0f} s)", idle_after)]
    return "\n".join(lines)


def write_results(text: str, path: Path) -> None:
    current = path.read_text()
    begin, end = current.index(RESULTS_BEGIN), current.index(RESULTS_END)
    path.write_text(current[: begin + len(RESULTS_BEGIN)] + "\n" + text + "\n" + current[end:])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--window-s", type=float, default=60)
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "concurrency-sweep" / "mbert"),
                        help="built there (random mBERT) if missing, reused later")
    parser.add_argument("--onnx-cache-dir", help="reuse this ONNX cache (default: a fresh one, so the export is timed)")
    parser.add_argument("--bodies", type=int, default=24, help="distinct request bodies")
    parser.add_argument("--timeout-s", type=float, default=120, help="client timeout per request")
    parser.add_argument("--downscale-timeout-s", type=float, default=180)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--write-results", action="store_true", help="replace the sweep's table in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.argv = argv
    args.load_before = os.getloadavg()[0]

    if not (Path(args.model_dir) / "config.json").is_file():
        from scorer_bench import save_random_mbert

        print(f"building the random mBERT in {args.model_dir}", flush=True)
        save_random_mbert(args.model_dir)
    bodies, lengths = request_bodies(args.model_dir, args.bodies)
    work_dir = Path(tempfile.mkdtemp(prefix="concurrency-sweep-"))
    onnx_cache = args.onnx_cache_dir or str(work_dir / "onnx")
    app = start_app(args.model_dir, onnx_cache, work_dir)
    try:
        wait_ready(app, timeout_s=900)
        export_s = export_seconds(app)
        print(f"ready after {app.ready_s:.0f} s (ONNX export {export_s} s)", flush=True)
        asyncio.run(run_level(app.url, bodies, Level(1, 0.1), args.timeout_s, seed=99))  # warm-up: 1 request
        asyncio.run(run_level(app.url, bodies, Level(1, 0.1), args.timeout_s, seed=98))
        time.sleep(10)
        idle_before = memory_snapshot(app)
        levels = sweep(app, bodies, args.clients, args.window_s, args.timeout_s)
        print("waiting for the downscale ...", flush=True)
        downscale_s = wait_for_downscale(app, args.downscale_timeout_s)
        time.sleep(10)
        idle_after = memory_snapshot(app)
    finally:
        stop_app(app)
    text = report(args, app, lengths, levels, idle_before, idle_after, downscale_s, export_s)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "levels": [{"clients": lv.clients, "pairs_per_s": lv.pairs_per_s(),
                        "pairs_per_s_level": lv.pairs_per_s_level(), "answers": lv.answers, "cpu_cores": lv.cpu_cores}
                       for lv in levels],
            "idle_before": idle_before, "idle_after": idle_after, "ready_s": app.ready_s, "export_s": export_s,
        }, indent=1))
    if args.write_results:
        write_results(text, HERE / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
