"""Cluster rehearsal under a load ramp: the k8s/ worker groups on Ray's own autoscaler, nodes
added, lost and removed (issue 16). Writes benchmarks/CLUSTER_REPORT.md and cluster_report.png.

The cluster is tests/cluster_rehearsal.py's: the worker groups and serveConfigV2 of the RayService
that `kubectl kustomize k8s/overlays/gpu` renders, on Ray's fake multi-node provider (see that
file for what it changes and why). In order:

1. start: the head, the groups' minimum workers, serveConfigV2 submitted as KubeRay submits it;
2. placement from Ray's state API;
3. /metrics: a fixed number of requests, then every node's metrics agent scraped (as the
   PodMonitor scrapes every pod) and summed, against the client's count;
4. the ramp: closed-loop clients 2 -> 4 -> 8 -> 16 -> 32, held until Serve runs the Scorer's
   max_replicas and the autoscaler the gpu-workers' maxReplicas (or a time limit), then back down
   to none, until replicas and nodes are back at their minimum;
5. a gpu-workers node holding a scorer killed under load, then a cpu-workers node holding an
   ingress (or tokenizer); the autoscaler replaces each;
6. a rolling update of serveConfigV2 (a new Scorer user_config and max_replicas) under load.

Every answer is checked against the tiny model scored in this process with transformers. The clients
keep their connections alive, as search clients do (--close-connections: one per request), behind
tests/k8s_service.py's serve Service (the pods whose proxy passes KubeRay's readiness probe).

    python benchmarks/cluster_ramp.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench_env import BENCH_DIR as HERE
from bench_env import REPO_ROOT

import cluster_rehearsal as cr

RAMP = [(2, 15), (4, 15), (8, 15), (16, 15), (32, 15)]  # (clients, seconds)
DOWN = [(8, 15), (2, 15)]


def ramp(rehearsal: cr.Rehearsal, recorder: cr.Recorder, load: cr.Load, args) -> dict:
    """The load ramp; returns when replicas and nodes are back at their minimum (or time is up)."""
    scorer = cr.deployment_of(rehearsal.current_config, "Scorer")["autoscaling_config"]
    gpu_max = rehearsal.worker_types[cr.GPU_GROUP]["max_workers"]
    out = {"scorer_max_replicas": scorer["max_replicas"], "gpu_max_workers": gpu_max}
    start = recorder.now()
    for clients, seconds in RAMP:
        load.concurrency, load.phase = clients, f"ramp {clients}"
        recorder.event(f"{clients} clients")
        time.sleep(seconds)
    load.phase = f"hold {RAMP[-1][0]}"

    def at_max():
        return rehearsal.running_replicas().get("Scorer", 0) >= scorer["max_replicas"] and \
            rehearsal.alive_by_group().get(cr.GPU_GROUP, 0) >= gpu_max

    out["reached_max_at_s"] = reached_at(
        rehearsal, recorder, at_max, args.hold_s, "the Scorer at max_replicas on gpu-workers maxReplicas nodes"
    )
    time.sleep(15)  # the replicas at the top take traffic
    for clients, seconds in DOWN:
        load.concurrency, load.phase = clients, f"down {clients}"
        recorder.event(f"{clients} clients")
        time.sleep(seconds)
    load.concurrency, load.phase = 0, "idle"
    recorder.event("no load")
    minimum = {g: spec["min_workers"] for g, spec in rehearsal.worker_types.items()}
    mins = {d["name"]: d["autoscaling_config"]["min_replicas"] for d in rehearsal.current_config["applications"][0]["deployments"]}

    def at_min():
        nodes, replicas = rehearsal.alive_by_group(), rehearsal.running_replicas()
        return all(nodes.get(g, 0) <= n for g, n in minimum.items()) and all(replicas.get(d, 0) <= n for d, n in mins.items())

    out["back_to_min_at_s"] = reached_at(
        rehearsal, recorder, at_min, args.cooldown_s, "replicas and nodes back at their minimum"
    )
    out["window"] = (start, recorder.now())
    return out


def reached_at(rehearsal, recorder, predicate, timeout_s: float, what: str) -> Optional[float]:
    """Seconds into the run when `what` held (waiting at most timeout_s), or None; an event either way."""
    try:
        rehearsal.wait_for(predicate, timeout_s, what)
    except TimeoutError as exc:
        recorder.event(f"not reached: {exc}")
        return None
    recorder.event(what)
    return round(recorder.now(), 1)


def source_commit(args) -> str:
    """The commit whose k8s/ was rendered, and whether k8s/ differs from it."""
    if args.commit:
        return args.commit
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "k8s"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" with uncommitted changes in k8s/" if dirty else "")


DECISIONS = ("Upscaling", "Downscaling", "started successfully", "failed health check", "(currently ReplicaState.STARTING)")


def serve_decisions(temp_dir: Path, run_started_epoch_s: float) -> list[tuple[float, str]]:
    """Serve's controller log, what decided the replica counts: each autoscaling decision (with the
    ongoing requests it saw), each replica started (and how long it took), failed health checks,
    and replicas stopped while still starting; seconds since the run started."""
    out = []
    # session_latest is a link to the session's own directory: each log once.
    for log in sorted({p.resolve() for p in temp_dir.glob("session_*/logs/serve/controller_[0-9]*.log")}):
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = record.get("message", "")
            if any(key in message for key in DECISIONS) and "timestamp_ns" in record:
                out.append((round(record["timestamp_ns"] / 1e9 - run_started_epoch_s, 1), message))
    return sorted(out)


def run(args) -> dict:
    from tiny_models import save_tiny_model

    # Wider and deeper than the tests' tiny model, so scoring (not tokenizing) is what the load waits
    # on and the Scorer's ongoing requests drive its autoscaling, as on a GPU cluster under load.
    model = args.model or save_tiny_model(Path(tempfile.mkdtemp(prefix="rr-model-")), num_labels=2,
                                          hidden_size=args.hidden_size, num_hidden_layers=args.layers)
    recorder = cr.Recorder()
    # The cluster's logs stay (their path is printed at the end): the controller's autoscaling
    # decisions and the proxies' draining are in them.
    rehearsal = cr.Rehearsal(model, max_workers=args.max_workers, keep_logs=True, log=print)
    bodies = cr.request_bodies(args.seed, 64, args.min_docs, args.max_docs)
    expected = cr.oracle_scores(model, bodies)
    import machine as bench_machine

    result = {"machine": cr.machine(), "cpu": bench_machine.describe(), "python": platform.python_version(),
              "command": " ".join(["python", *sys.argv]), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "loadavg_before": os.getloadavg(), "model": str(model), "commit": source_commit(args),
              "node_types": {"head": rehearsal.head_resources, **rehearsal.worker_types},
              "kuberay_node_types": rehearsal.kuberay_config["available_node_types"],
              "kuberay_idle_timeout_s": rehearsal.kuberay_config["idle_timeout_minutes"] * 60,
              "rendered_serve_config": cr.serve_config_v2(rehearsal.rayservice),
              "rehearsal_serve_config": rehearsal.serve_config, "changes": cr.REHEARSAL_CHANGES,
              "pod_ray_env": rehearsal.pod_ray_env, "image_ray_env": rehearsal.image_ray_env, "max_workers_cap": args.max_workers, "model_shape": {"hidden_size": args.hidden_size, "layers": args.layers},
              "keep_alive": not args.close_connections}
    load = sampler = prom = None
    try:
        result["timings"] = cr.start_and_deploy(rehearsal, recorder)
        sampler = cr.Sampler(rehearsal, recorder, interval_s=1.0).start()
        prom = cr.PromScraper(rehearsal, recorder, interval_s=15).start()
        result["placement"] = rehearsal.placement()
        result["placement_problems"] = cr.placement_problems(result["placement"])
        print("placement", result["placement"], result["placement_problems"], flush=True)
        result["metrics"] = cr.metrics_check(rehearsal, recorder, bodies, expected)
        print("metrics", json.dumps(result["metrics"], default=str), flush=True)

        load = cr.Load(rehearsal.url, recorder, bodies, expected, keep_alive=not args.close_connections)
        sampler.load = load
        load.start(0)
        result["ramp"] = ramp(rehearsal, recorder, load, args)
        result["placement_at_peak"] = None

        losses = []
        for deployment, group in (("Scorer", cr.GPU_GROUP), ("Ingress", cr.CPU_GROUP)):
            load.concurrency, load.phase = args.fault_clients, f"loss {group}"
            time.sleep(8)
            try:
                loss = cr.lose_node(rehearsal, recorder, deployment, group, settle_s=5, recover_timeout_s=180)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                loss = {"group": group, "error": f"{type(exc).__name__}: {exc}"}
            losses.append(loss)
            print("loss", json.dumps(loss, default=str), flush=True)
        result["losses"] = losses
        result["placement_after_losses"] = rehearsal.placement()
        result["placement_problems_after_losses"] = cr.placement_problems(result["placement_after_losses"])

        load.concurrency, load.phase = args.fault_clients, "rolling update"
        time.sleep(5)
        # One below the rendered max_replicas (the autoscaling change a rollout makes; not below min_replicas).
        scorer_max = cr.deployment_of(rehearsal.current_config, "Scorer")["autoscaling_config"]["max_replicas"] - 1
        update = cr.roll_out(rehearsal, recorder, {"batch_wait_timeout_s": 0.01, "max_batch_size": 16}, scorer_max)
        result["rolling_update"] = update
        print("update", json.dumps(update, default=str), flush=True)
        load.concurrency, load.phase = 0, "end"
        time.sleep(2)
        # The same exact check once nodes have been added, lost, replaced and removed.
        result["metrics_end"] = cr.metrics_check(rehearsal, recorder, bodies, expected)
        print("metrics at the end", json.dumps(result["metrics_end"], default=str), flush=True)
    except BaseException as exc:  # noqa: BLE001 - a timeout (SIGTERM) or a failure still gets its report
        result["error"] = f"{type(exc).__name__}: {exc}"
        print("run stopped:", result["error"], flush=True)
    finally:
        if load is not None:
            load.stop()
        if sampler is not None:
            sampler.stop()
        if prom is not None:
            prom.stop()
            try:
                time.sleep(3)
                prom.scrape()  # a last scrape of the nodes still there
            except Exception as exc:  # noqa: BLE001
                recorder.event(f"last scrape failed: {exc}")
            ok = [s for s in recorder.samples if s.status == 200]
            result["prometheus"] = {"totals": prom.totals(), "scrapes": prom.scrapes, "per_node": prom.last,
                                    "client": {"requests": len(ok), "pairs": sum(s.pairs for s in ok)}}
        result["events"] = recorder.events
        rehearsal.stop()
        result["service"] = rehearsal.service_record(recorder.started)
        result["serve_decisions"] = serve_decisions(Path(rehearsal.cluster.temp_dir), time.time() - recorder.now())
        result["processes_left"] = len(cr.marked_pids(rehearsal.marker))
        result["total_s"] = round(recorder.now(), 1)
    # Classified once the load has stopped: a request sent in a window may finish long after it.
    for part in result.get("losses", []) + [result.get("rolling_update") or {}]:
        if "window" in part:
            part["outcomes"] = cr.classify(recorder.samples, part["window"])
    result["outcomes_all"] = cr.classify(recorder.samples)
    result["ended_utc"], result["loadavg_after"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), os.getloadavg()
    result["recorder"] = recorder
    return result


# ----- report ------------------------------------------------------------------------------------


def windows(recorder: cr.Recorder, width_s: float = 5.0) -> list[dict]:
    """Per window of completion time: 200s/s, 429+503/s, other/s, p50 and p99 of 200s."""
    end = max((s.sent_at + s.latency_s for s in recorder.samples), default=0)
    rows, t = [], 0.0
    while t < end:
        inside = [s for s in recorder.samples if t <= s.sent_at + s.latency_s < t + width_s]
        ok = [s.latency_s for s in inside if s.status == 200]
        rejected = sum(1 for s in inside if s.status in (429, 503))
        rows.append({"t": t + width_s / 2, "ok": len(ok) / width_s, "rejected": rejected / width_s,
                     "other": (len(inside) - len(ok) - rejected) / width_s,
                     "p50": cr.percentile(ok, 50) * 1000, "p99": cr.percentile(ok, 99) * 1000})
        t += width_s
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recorder = result["recorder"]
    rows = windows(recorder)
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    axes[0].plot(t, [r["ok"] for r in rows], label="200 /s", color="tab:green")
    axes[0].plot(t, [r["rejected"] for r in rows], label="429/503 /s", color="tab:orange")
    axes[0].plot(t, [r["other"] for r in rows], label="other or no answer /s", color="tab:red")
    axes[0].set_ylabel("requests/s")
    clients = axes[0].twinx()
    clients.step([s["t"] for s in recorder.timeline], [s.get("clients", 0) for s in recorder.timeline], where="post",
                 color="gray", alpha=0.5, label="clients")
    clients.set_ylabel("closed-loop clients", color="gray")
    axes[1].plot(t, [r["p50"] for r in rows], label="p50")
    axes[1].plot(t, [r["p99"] for r in rows], label="p99")
    axes[1].set_ylabel("latency of 200s (ms)")
    axes[1].set_yscale("log")
    timeline = recorder.timeline
    ts = [s["t"] for s in timeline]
    # Equal counts would hide each other: each line is nudged a little (the legend says how much).
    for name, nudge in zip(cr.DEPLOYMENTS, (0.08, 0.0, -0.08)):
        axes[2].step(ts, [s["replicas"].get(name, 0) + nudge for s in timeline], where="post", label=f"{name} ({nudge:+.2f})")
    axes[2].set_ylabel("RUNNING replicas")
    for group, nudge in ((cr.CPU_GROUP, 0.05), (cr.GPU_GROUP, -0.05)):
        axes[3].step(ts, [s["nodes"].get(group, 0) + nudge for s in timeline], where="post", label=f"{group} ({nudge:+.2f})")
    axes[3].step(ts, [s.get("service", 0) for s in timeline], where="post", color="tab:gray", linestyle=":",
                 label="worker pods in the serve Service")
    axes[3].set_ylabel("alive nodes")
    axes[3].set_xlabel("seconds since start")
    for ax in axes:
        for when, text in recorder.events:
            if text.startswith(("killed", "rolled out")):
                ax.axvline(when, color="red" if text.startswith("killed") else "purple", alpha=0.5, linestyle="--")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title("k8s/ design rehearsed: load ramp, nodes killed (red), rolling update (purple)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def outcome_line(o: dict) -> str:
    return (f"{o['sent']} sent: **{o['ok_correct']} correct 200**, {o['ok_wrong']} wrong 200, "
            f"{o['rejected_with_retry_after']} 429/503 with Retry-After (over {o['rejection_span_s']} s), "
            f"{o['rejected_without_retry_after']} without, {o['server_error']} other 5xx, {o['other_status']} other status, "
            f"{o['no_response']} without an answer {o['no_response_errors'] or ''}; p50 {o['p50_ms']} ms, "
            f"p99 {o['p99_ms']} ms, slowest {o['max_latency_s']} s")


def kill_time(result: dict, loss: dict) -> float:
    """When the node's processes were SIGKILLed: its "killed" event. (Runs before 2026-11-30 08:10 took
    killed_at_s before looking the processes up, which takes seconds on a loaded machine.)"""
    prefix = f"killed {loss['group']} node {loss['node_id'][-5:]}"
    return next((t for t, text in result["events"] if text.startswith(prefix)), loss["killed_at_s"])


def service_lines(result: dict) -> list[str]:
    """The serve Service's endpoints over the run, draining proxies and the connections they closed,
    and replicas that were not RUNNING."""
    timeline, samples = result["recorder"].timeline, result["recorder"].samples
    closed = [s for s in samples if s.closed]
    by_phase: dict[str, int] = {}
    for s in closed:
        by_phase[s.phase] = by_phase.get(s.phase, 0) + 1
    draining = [s["t"] for s in timeline if s.get("proxies", {}).get("DRAINING")]
    service = result.get("service", {})
    lines = ["", "## The serve Service and draining proxies", "",
             "A worker pod is in the serve Service while its proxy passes KubeRay's readiness probe (tests/k8s_service.py); "
             "a proxy whose node has no replica left drains (its probe fails) and Serve stops it 30 s or more later. "
             "While draining, `reranker/proxy.py` closes every connection it answers, so a client that keeps its "
             "connection moves to a ready pod.", "",
             f"- Proxies DRAINING at some point in {len(draining)} of {len(timeline)} samples "
             f"(first at {draining[0] if draining else '-'} s, last at {draining[-1] if draining else '-'} s); at most "
             f"{max((s.get('proxies', {}).get('DRAINING', 0) for s in timeline), default=0)} at once.",
             f"- Responses that closed a kept-alive connection: {len(closed)} {by_phase or ''}"
             + ("" if result.get("keep_alive") else " (the clients closed every connection themselves)") + ".",
             "- Endpoints of the Service (worker pods whose proxy passed the probe) at each change: "
             + "; ".join(f"{t} s: {len(pods)} ({', '.join(pods)})" for t, pods in service.get("endpoints", [])) + ".",
             f"- Probes by outcome {service.get('probes')} (timeout {service.get('probe_timeout_s')} s); the slowest "
             f"answer took {service.get('slowest_answer_s')} s; the Service's own loop woke up at most "
             f"{service.get('max_loop_lag_s')} s late; {service.get('refused_connections')} connections closed "
             "for want of a ready pod."]
    not_running: dict[str, dict[str, int]] = {}
    for s in timeline:
        for deployment, states in s.get("other_states", {}).items():
            for state, n in states.items():
                peak = not_running.setdefault(deployment, {})
                peak[state] = max(peak.get(state, 0), n)
    lines.append(f"- Replicas not RUNNING, the most at once per state: {not_running or 'none'}.")
    for deployment in cr.DEPLOYMENTS:
        starting = [s["t"] for s in timeline if s.get("other_states", {}).get(deployment, {}).get("STARTING")]
        if starting:
            lines.append(f"- {deployment} replicas STARTING in {len(starting)} samples, from {starting[0]} s to {starting[-1]} s.")
    return lines


def fmt_load(loadavg) -> str:
    return " / ".join(f"{x:.2f}" for x in loadavg)


def report(result: dict, path: Path, png: Path) -> None:
    m = result["machine"]
    lines = ["# Cluster rehearsal report", ""]
    if result.get("error"):
        lines += [f"**The run stopped early ({result['error']}); what it measured until then is below.**", ""]
    lines += [
        "Generated by `benchmarks/cluster_ramp.py`: the worker groups and serveConfigV2 of the RayService that "
        "`kubectl kustomize k8s/overlays/gpu` renders, on Ray's own autoscaler (v2, as KubeRay runs it for "
        "Ray >= 2.47) with the fake multi-node provider (`ray.cluster_utils.AutoscalingCluster`) standing in for "
        "KubeRay and Kubernetes. Every node is a set of processes on this one machine.",
        "",
        f"k8s/ at commit {result['commit']}. Machine: **{m['model']}**, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {result['python']}; a random BERT cross-encoder from tests/tiny_models.py with hidden size "
        f"{result['model_shape']['hidden_size']} and {result['model_shape']['layers']} layers (wider than the tests' "
        "tiny one, so scoring is what the load waits on). The load generator runs on the same cores: closed-loop "
        "clients, `POST /rerank` with 4-24 multilingual passages, every answer checked against transformers in its "
        "process; " + ("the clients keep their connections alive (one pool, as search clients do)."
                       if result.get("keep_alive") else "one connection per request."),
        "",
        f"{result['cpu']}. Run `{result['command']}` from {result['started_utc']} to {result['ended_utc']} UTC; "
        f"load average before {fmt_load(result['loadavg_before'])}, after {fmt_load(result['loadavg_after'])} "
        "(the heavy-work lock held: nothing else heavy ran).",
        "",
        f"<details><summary>CPU flags</summary>\n\n`{m['flags']}`\n\n</details>",
        "",
        "## The design, as the autoscaler sees it",
        "",
        "| node type | from KubeRay's translation | in the rehearsal | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, spec in result["kuberay_node_types"].items():
        mine = result["node_types"].get("head" if name == "headgroup" else name, {})
        mine_resources = mine.get("resources", mine)
        lines.append(f"| {name} | `{spec['resources']}` | `{mine_resources}` | {spec['min_workers']} | {spec['max_workers']} |")
    lines += ["", "What the rehearsal changes, and why:", "", "| what | change | why |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in result["changes"]]
    capped = {g: n for g, n in result["max_workers_cap"].items() if n < result["kuberay_node_types"].get(g, {}).get("max_workers", 0)}
    if capped:
        lines.append(f"| worker groups | at most {capped} nodes | the rendered maxReplicas are more fake pods than 2 cores can start |")
    lines += ["", f"RAY_* environment of the pods' Ray containers, set for the whole rehearsal cluster: `{result['pod_ray_env']}`; "
              f"and the image's (Dockerfile ENV): `{result.get('image_ray_env')}`."]

    lines += ["", "## Placement (Ray's state API: ALIVE actors per node group)", ""]
    for label, key, problems in (("after start", "placement", "placement_problems"),
                                 ("after both node losses", "placement_after_losses", "placement_problems_after_losses")):
        lines.append(f"- {label}: `{result.get(key)}`; problems: **{result.get(problems) or 'none'}**")

    ramp_ = result.get("ramp", {})
    lines += ["", "## Scale-out and back", ""]
    lines += [f"![cluster report]({png.name})", ""]
    peak_replicas = {d: max((s["replicas"].get(d, 0) for s in result["recorder"].timeline), default=0) for d in cr.DEPLOYMENTS}
    peak_nodes = {g: max((s["nodes"].get(g, 0) for s in result["recorder"].timeline), default=0) for g in (cr.CPU_GROUP, cr.GPU_GROUP)}
    lines += [
        f"- Peak RUNNING replicas {peak_replicas}; peak alive nodes {peak_nodes}.",
        f"- Scorer max_replicas {ramp_.get('scorer_max_replicas')}, gpu-workers maxReplicas {ramp_.get('gpu_max_workers')}: "
        f"both reached at {ramp_.get('reached_max_at_s')} s.",
        f"- Back at the minimum (replicas and nodes) at {ramp_.get('back_to_min_at_s')} s.",
    ]
    if ramp_.get("window"):
        lines.append(f"- During the ramp: {outcome_line(cr.classify(result['recorder'].samples, tuple(ramp_['window'])))}.")
    lines += ["", "| phase | sent | correct 200 | wrong 200 | 429/503 | other | req/s (200) | p50 ms | p99 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    phases = []
    for s in result["recorder"].samples:
        if s.phase not in phases:
            phases.append(s.phase)
    for phase in phases:
        inside = [s for s in result["recorder"].samples if s.phase == phase]
        ok = [s for s in inside if s.status == 200]
        span = (max(s.sent_at + s.latency_s for s in inside) - min(s.sent_at for s in inside)) if inside else 0
        lines.append(f"| {phase} | {len(inside)} | {sum(1 for s in ok if s.correct)} | {sum(1 for s in ok if not s.correct)} | "
                     f"{sum(1 for s in inside if s.status in (429, 503))} | "
                     f"{sum(1 for s in inside if s.status not in (200, 429, 503))} | {len(ok) / span if span else 0:.1f} | "
                     f"{cr.percentile([s.latency_s for s in ok], 50) * 1000:.0f} | {cr.percentile([s.latency_s for s in ok], 99) * 1000:.0f} |")

    lines += service_lines(result)
    decisions = result.get("serve_decisions") or []
    lines += ["", "## Serve's decisions (its controller's log)", "",
              "What set the replica counts above: Serve's autoscaling decisions with the ongoing requests they saw, "
              "replicas started (and how long they took), failed health checks, and replicas stopped while starting.",
              "", "| t (s) | controller |", "|---|---|"]
    lines += [f"| {t} | {message.replace('|', '/')} |" for t, message in decisions] or ["| - | (no controller log) |"]
    lines += ["", "## Nodes lost under load", ""]
    for loss in result.get("losses", []):
        if "error" in loss:
            lines.append(f"- {loss['group']}: **failed**: {loss['error']}")
            continue
        kill = kill_time(result, loss)
        late = kill - loss["killed_at_s"]
        lines.append(
            f"- {loss['group']} node `{loss['node_id'][-5:]}` holding {loss['held']} killed at {kill} s "
            f"({loss['processes_killed']} processes): reported dead after {loss['reported_dead_after_s'] - late:.1f} s, replaced "
            f"after {loss['node_replaced_after_s'] - late:.1f} s, serving again after {loss['serving_again_after_s'] - late:.1f} s. "
            f"Requests from {2 + late:.1f} s before the kill to the end of recovery: {outcome_line(loss['outcomes'])}.")
    update = result.get("rolling_update")
    if update:
        lines += ["", "## Rolling update of serveConfigV2 under load", "",
                  f"Scorer `user_config` {update['user_config']} and `max_replicas` {update['scorer_max_replicas']}, "
                  f"submitted at {update['submitted_at_s']} s, applied after {update['applied_after_s']} s: "
                  f"{outcome_line(update['outcomes'])}."]
    lines += ["", "## /metrics across nodes"]
    for title, metrics in (("On the cluster as deployed", result.get("metrics")),
                           ("At the end, after nodes were added, lost, replaced and removed", result.get("metrics_end"))):
        if not metrics:
            continue
        lines += ["", f"{title}: "
                  f"{metrics['client']['sent']} requests sent, {metrics['client']['requests']} answered 200 with "
                  f"{metrics['client']['pairs']} pairs. Summing every node's metrics agent ({metrics['nodes_scraped']} "
                  f"nodes, the scrape the PodMonitor makes of every pod): {metrics['sum_of_node_scrapes']['requests']:.0f} "
                  f"requests, {metrics['sum_of_node_scrapes']['pairs']:.0f} pairs: **{'exact' if metrics['exact'] else 'NOT exact'}**.",
                  "", "| node group | requests (delta) | pairs scored (delta) |", "|---|---|---|"]
        for node_id, v in metrics["per_node_delta"].items():
            lines.append(f"| {v['group']} `{node_id[-5:]}` | {v['requests']:.0f} | {v['pairs']:.0f} |")
        lines += ["", f"Cluster totals at that moment: {metrics['cluster_totals_now']}. "
                  f"`GET /metrics` through the serve Service, six times: {metrics['metrics_route_answers']}."]
    prom = result.get("prometheus")
    if prom:
        lost = prom["client"]["requests"] - prom["totals"]["requests"]
        lines += ["", f"Over the whole run, a scrape of every alive node every 15 s (the PodMonitor's interval), each "
                  "series (node and labels, one per replica) added up as `increase()` does, a series that goes away "
                  f"keeping what was scraped last ({prom['totals']['nodes']} nodes, {prom['totals']['series']} series, "
                  f"{prom['scrapes']} scrapes, {prom['totals'].get('failed_targets', 0)} node scrapes unanswered, "
                  f"{prom['totals']['resets']} counter resets): "
                  f"{prom['totals']['requests']:.0f} /rerank 200s and {prom['totals']['pairs']:.0f} pairs; the client "
                  f"counted {prom['client']['requests']} and {prom['client']['pairs']}: **{lost:.0f} requests not counted** "
                  "(what the killed nodes counted after their last scrape, below; the pairs also count each new "
                  "ingress replica's readiness canary).", "",
                  "| node group | node | last scraped at (s) | requests | pairs |", "|---|---|---|---|---|"]
        for node_id, v in prom["per_node"].items():
            lines.append(f"| {v['group']} | `{node_id[-5:]}` | {v['t']} | {v['requests']:.0f} | {v['pairs']:.0f} |")
        lines += ["", "What the killed nodes counted after their last scrape (no scrape can reach a lost pod; Prometheus "
                  "loses the same):", ""]
        for loss in result.get("losses", []):
            node = prom["per_node"].get(loss.get("node_id", ""))
            if not node:
                continue
            killed = kill_time(result, loss)
            answered = [s for s in result["recorder"].samples if s.status == 200 and node["t"] <= s.sent_at + s.latency_s < killed]
            line = (f"- {loss['group']} `{loss['node_id'][-5:]}`: last scrape began at {node['t']} s, killed at {killed} s; "
                    f"{len(answered)} requests ({sum(s.pairs for s in answered)} pairs) were answered 200 by the cluster in between.")
            if loss["held"].get("Ingress") and loss["held"]["Ingress"] == loss.get("replicas_before", {}).get("Ingress"):
                line += (" It held every ingress replica, so it counted all of those requests (less the few its last "
                         "scrape still saw, as a scrape takes seconds under load).")
            lines.append(line)
    failures = [s for s in result["recorder"].samples if s.status != 200 or not s.correct]
    lines += ["", "## Whole run", "", f"{outcome_line(result['outcomes_all'])}.", "",
              "Every request that did not get a correct 200:", "",
              "| sent at (s) | phase | body | status | latency (s) | error |", "|---|---|---|---|---|---|"]
    lines += [f"| {s.sent_at:.1f} | {s.phase} | {s.body} | {s.status} | {s.latency_s:.2f} | {s.error} |" for s in failures] \
        or ["| - | | | | | |"]
    lines += ["",
              f"Processes of the rehearsal left after it stopped: {result['processes_left']}. Total {result['total_s']} s.",
              "", "<details><summary>Events</summary>", "", "| t (s) | event |", "|---|---|"]
    lines += [f"| {t} | {text} |" for t, text in result["events"]]
    lines += ["", "</details>", ""]
    path.write_text("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model directory (default: a new tiny random model)")
    parser.add_argument("--hidden-size", type=int, default=128, help="of the random model made when --model is not given")
    parser.add_argument("--layers", type=int, default=4, help="of the random model made when --model is not given")
    parser.add_argument("--hold-s", type=float, default=240, help="longest wait for the Scorer and gpu-workers at max")
    parser.add_argument("--cooldown-s", type=float, default=240, help="longest wait for the way back to the minimum")
    parser.add_argument("--fault-clients", type=int, default=6)
    parser.add_argument("--close-connections", action="store_true",
                        help="one connection per request (default: the clients keep connections alive, as search clients do)")
    parser.add_argument("--min-docs", type=int, default=4)
    parser.add_argument("--max-docs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-workers", type=lambda text: {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))},
                        default={cr.CPU_GROUP: 4, cr.GPU_GROUP: 4},
                        help="cap per worker group below the rendered maxReplicas, for the 2 cores (group=N,...)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--commit", help="say which commit's k8s/ this is (default: git rev-parse HEAD)")
    return parser.parse_args(argv)


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # `timeout` sends SIGTERM: unwind like Ctrl-C, so the cluster is stopped and the report written.
    signal.signal(signal.SIGTERM, _interrupt)
    result = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png, md = args.out_dir / "cluster_report.png", args.out_dir / "CLUSTER_REPORT.md"
    plot(result, png)
    report(result, md, png)
    raw = {k: v for k, v in result.items() if k != "recorder"}
    raw["timeline"] = result["recorder"].timeline
    raw["samples"] = [vars(s) for s in result["recorder"].samples]
    (Path(tempfile.gettempdir()) / "cluster_ramp.json").write_text(json.dumps(raw, indent=1, default=str))
    print(md.read_text())
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
