"""Helpers for tests that deploy extra applications beside the session's app and read its logs and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import prometheus_text
from conftest import reranker_app

SMALL_SCORER = {"num_cpus": 0.1, "num_gpus": 0}


def process_tree(pid: int) -> list:
    """The process and all its descendants (psutil), or [] once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def wait_until_ready(process, url: str, timeout_s: float, log_path: Path) -> None:
    """Polls url + "/ready" until 200 while `process` (a Run command) lives; fails with its log's tail."""
    import httpx

    deadline = time.monotonic() + timeout_s
    ready = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            ready = httpx.get(url + "/ready", timeout=5)
            if ready.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready (last: {getattr(ready, 'status_code', None)}):\n{log_path.read_text()[-3000:]}")


def ctrl_c_stops_every_process(process, wait_s: float, log_path: Path) -> None:
    """Ctrl-C (SIGINT) to a Run command: it exits within wait_s and every process it started is gone.
    Fails with the processes still running and the tail of the command's log."""
    import psutil

    def still_running() -> list[str]:
        commands = []
        for child in process_tree(process.pid):
            try:
                commands.append(f"{child.pid} {child.status()} {' '.join(child.cmdline())[:160]}")
            except psutil.Error:
                pass
        return commands

    started = process_tree(process.pid)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"Ctrl-C did not stop the command in {wait_s} s; still running: {still_running()}\n{log_path.read_text()[-4000:]}"
        ) from None
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]


def kill_process_tree(process, started: list) -> None:
    """Cleanup after a Run command's test: kills what is left of it (or of `started`, once it is gone)."""
    import psutil

    for leftover in process_tree(process.pid) or started:
        try:
            leftover.kill()
        except psutil.Error:
            pass
    if process.poll() is None:
        process.kill()


def small_app(
    name: str,
    route_prefix: str,
    args: dict | None = None,
    env: dict | None = None,
    replicas: int = 1,
    scorer_user_config: dict | None = None,
) -> dict:
    """An application entry with a fixed replica count per deployment and a scorer of 0.1 CPU."""
    app = reranker_app(name, route_prefix, args=args, env=env)
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = replicas
        if deployment["name"] == "Scorer":
            deployment["ray_actor_options"] = dict(SMALL_SCORER)
            # Tiny scorers of 0.1 CPU may share the one test node (the shipped cap is 1 per node).
            deployment.pop("max_replicas_per_node", None)
            if scorer_user_config:
                deployment["user_config"] = {**deployment.get("user_config", {}), **scorer_user_config}
    return app


def poll(predicate: Callable, timeout_s: float, what: str, interval_s: float = 0.5):
    """Calls predicate until it returns something truthy; fails with the last value after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


def app_running(name: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(name)
    return app is not None and app.status == "RUNNING"


@contextmanager
def deployed(cluster, apps: list[dict], wait: str = "ready", timeout_s: float = 150) -> Iterator[None]:
    """Deploys apps beside the current ones, waits for each, and removes them afterwards.

    wait="ready": /ready answers 200; wait="running": Serve reports the app RUNNING (for apps whose
    canary is expected to fail).
    """
    names = []
    try:
        for app in apps:
            cluster.add_app(app)
            names.append(app["name"])
        for app in apps:
            if wait == "ready":
                cluster.wait_ready(app["route_prefix"], timeout_s=timeout_s)
            else:
                poll(lambda name=app["name"]: app_running(name), timeout_s, f"app {app['name']} to be RUNNING")
        yield
    finally:
        for name in reversed(names):
            cluster.remove_app(name)


def logs_dir() -> Path:
    """The log directory of this test session's Ray."""
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path())


def replica_log_lines(app: str, deployment: str) -> list[dict]:
    """Every JSON line of the Serve replica logs of one deployment of one application."""
    lines = []
    for path in sorted((logs_dir() / "serve").glob(f"replica_{app}_{deployment}_*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                lines.append(json.loads(line))
    return lines


def files_containing(needles: list[str], root: Path | None = None) -> dict[str, list[str]]:
    """For each needle, the log files (relative paths) whose bytes contain it."""
    root = root or logs_dir()
    encoded = {needle: needle.encode("utf-8") for needle in needles}
    found: dict[str, list[str]] = {needle: [] for needle in needles}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for needle, raw in encoded.items():
                if raw in data:
                    found[needle].append(str(path.relative_to(root)))
    return found


def metric_samples(text: str, name: str, **labels) -> list:
    """Samples named `name` (e.g. 'ray_reranker_requests_total') whose labels include `labels`."""
    return prometheus_text.samples(text, name, **labels)


def metric_sum(text: str, name: str, **labels) -> float:
    return prometheus_text.total(text, name, **labels)


def settled_pairs_scored(metrics_url: str, app: str, timeout_s: float = 40) -> float:
    """The app's ray_reranker_pairs_scored_total (all its scorer replicas) once two reads 2.5 s apart
    agree (metrics reach the agent every second)."""
    import httpx

    previous = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = metric_sum(httpx.get(metrics_url, timeout=10).text, "ray_reranker_pairs_scored_total", application=app)
        if value and value == previous:
            return value
        previous = value
        time.sleep(2.5)
    raise AssertionError(f"ray_reranker_pairs_scored of {app} did not settle in {timeout_s} s")
