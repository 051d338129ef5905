"""Soak test: steady closed-loop load for a bounded time; RSS of every Serve replica at start and end.

The load is load.py's closed loop (pre-encoded bodies over aiohttp); every 200 is checked against
the same model scored in this process, as load.py does.

A leak shows as RSS that keeps growing under constant load. The first minute warms allocators and
caches, so growth is judged from the end of the warm-up to the end of the run, per replica.

    python benchmarks/soak.py                  # 10 min, own local Ray, tiny model
    python benchmarks/soak.py --minutes 3
    python benchmarks/soak.py --url http://127.0.0.1:8000 --ray-address auto

Writes benchmarks/SOAK_REPORT.md (override with --report) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import threading
from pathlib import Path

import bench_env  # noqa: F401
import load


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup-s", type=float, default=60, help="excluded from the growth judgement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", help="target a running app (127.0.0.1 only) instead of starting one")
    parser.add_argument("--ray-address", help="with --url: Ray address to read replica RSS from")
    parser.add_argument("--model", help="model directory for the local app (default: a tiny random model)")
    parser.add_argument("--path", default="/rerank")
    parser.add_argument("--min-docs", type=int, default=10)
    parser.add_argument("--max-docs", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=60)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=Path(__file__).resolve().parent / "SOAK_REPORT.md")
    return parser.parse_args(argv)


async def steady_load(url: str, args, recorder: load.Recorder) -> None:
    """load.py's closed loop at constant concurrency: pre-encoded bodies over aiohttp, and every
    200 checked against the same model scored in this process (when the model is a local dir)."""
    rng = random.Random(args.seed)
    load.prepare_requests(args, rng)
    async with load.client_session(url, args.concurrency, args.timeout_s) as client:
        await load.closed_loop(client, recorder, rng, "soak", args.minutes * 60, lambda fraction: args.concurrency, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    # A local service keeps serve_config.yaml's own autoscaling (a slow downscale, as shipped).
    url, model, with_ray = load.connect(args, upscale_delay_s=5, downscale_delay_s=60)

    recorder = load.Recorder()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            if with_ray:
                recorder.rss.append((recorder.now(), load.rss_snapshot()))
            stop.wait(args.sample_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    print(f"soak: {args.minutes} min at {args.concurrency} clients against {url}", flush=True)
    asyncio.run(steady_load(url, args, recorder))
    stop.set()
    thread.join(timeout=30)
    if with_ray:
        recorder.rss.append((recorder.now(), load.rss_snapshot()))

    statuses = dict(sorted(collections.Counter(sample.status for sample in recorder.samples).items()))
    latencies = [sample.latency_s for sample in recorder.samples if sample.status == 200]
    checked = sum(sample.correct is not None for sample in recorder.samples)
    wrong = sum(sample.correct is False for sample in recorder.samples)
    lines = [
        "# Soak test report",
        "",
        f"`benchmarks/soak.py`: {args.minutes:g} min of steady load, {args.concurrency} closed-loop clients, "
        f"1 multilingual query x {args.min_docs}-{args.max_docs} passages, against `{url}` (model `{model}`).",
        "",
        f"Responses by status: {statuses}; p50 / p99 of 200s: "
        f"{load.percentile([x * 1000 for x in latencies], 50):.0f} / {load.percentile([x * 1000 for x in latencies], 99):.0f} ms.",
        "",
        (f"Answers checked against the same model scored in the client's process (every passage once, "
         f"sorted, raw score within 1e-3): {checked}, wrong: **{wrong}**." if args.expected is not None
         else "Answers not checked: the model is not a local directory."),
        "",
    ]
    verdict_ok = True
    if recorder.rss:
        first, last = recorder.rss[0][1], recorder.rss[-1][1]
        warm = next((snapshot for t, snapshot in recorder.rss if t >= args.warmup_s), last)
        lines += [
            f"RSS per Serve process (start: before load; warm: first sample after {args.warmup_s:.0f} s; end).",
            "",
            "| process | start (MiB) | warm (MiB) | end (MiB) | warm -> end |",
            "|---|---|---|---|---|",
        ]
        def mib(snapshot: dict, pid: int) -> str:
            return f"{snapshot[pid][1] / 2**20:.0f}" if pid in snapshot else "-"

        for pid, (name, rss_end) in sorted(last.items(), key=lambda item: item[1][0]):
            if pid in warm and warm[pid][1]:
                growth = (rss_end - warm[pid][1]) / warm[pid][1] * 100
                verdict_ok &= growth <= 10
                change = f"{growth:+.1f}%"
            else:
                change = "started after the warm-up"  # an autoscaled replica: no warm level to compare with
            lines.append(f"| {name} (pid {pid}) | {mib(first, pid)} | {mib(warm, pid)} | {rss_end / 2**20:.0f} | {change} |")
        lines += ["", f"Every replica within 10% growth after the warm-up: **{'yes' if verdict_ok else 'NO'}**."]
    args.report.write_text("\n".join(lines) + "\n")
    print(args.report.read_text())
    load.stop_local_service(args)
    failures = sum(count for code, count in statuses.items() if code != 200)
    return 0 if failures == 0 and wrong == 0 and verdict_ok else 1


if __name__ == "__main__":
    sys.exit(main())
