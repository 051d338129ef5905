"""Rehearsal of the k8s/ cluster design on one machine, with Ray's own autoscaler.

KubeRay runs Ray's autoscaler in the head pod; it reads the RayCluster, turns every worker group
into an autoscaler node type (`ray.autoscaler._private.kuberay.autoscaling_config`) and asks the
operator for pods. Here the same translation runs on the RayService that `kubectl kustomize
k8s/overlays/gpu` renders, and Ray's fake multi-node provider (`ray.cluster_utils.AutoscalingCluster`,
`ray/autoscaler/_private/fake_multi_node/`) stands in for the operator: a "pod" is a set of Ray
node processes (raylet, agents, workers) on this machine. The autoscaler and everything above it
(GCS, Serve's controller, proxies, replicas, the serveConfigV2 deployed through the dashboard's
REST API as KubeRay deploys it) are the real ones.

What differs from a real cluster, and why (REHEARSAL_CHANGES lists every change as data):
- Logical resources are the rendered ones: head CPU 0; cpu-workers CPU 2 and `cpu_worker` 1000;
  gpu-workers CPU 4 and GPU 1 (two scorers of GPU 0.5 each); min/max workers from
  minReplicas/maxReplicas. Logical resources are only bookkeeping, so a 2-core machine can
  advertise them unchanged. Scaled down for the 2 cores and 24 GiB: every node's object store is
  100 MB (Ray would give each "pod" 30% of the machine's RAM), each scorer runs 1 compute thread
  (a real gpu-workers pod has 4 CPUs for its two), and the `memory` resource of worker groups is
  not advertised (the fake provider passes it where Ray refuses it; no deployment asks for memory,
  so placement does not change).
- The "GPU" is only a resource: scorers run on CPU (RERANKER_DEVICE=cpu) with a GPU scorer's
  backend, torch, in fp32, on a tiny random model (tests/tiny_models.py) given as RERANKER_MODEL.
- The RAY_* environment variables of the pods' Ray containers (such as the head's GCS health-check
  settings) are set for the whole rehearsal cluster, beside the image's (the Dockerfile's ENV:
  RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S, and the proxy middleware that answers a request whose
  ingress replica was lost with 503 and Retry-After).
- Serve's autoscaling keeps the manifests' delays; the autoscaler's idle timeout (KubeRay
  `idleTimeoutSeconds`, 120 s) is 15 s so idle fake pods go within a run, and metrics reach each
  node's agent every second instead of every 10.
- Ports: all nodes share 127.0.0.1. The head's proxy binds the config's port; every worker
  node's proxy binds a port of its own (RAY_SERVE_WORKER_PROXY_HTTP_PORT, set per fake pod by
  tests/rehearsal_provider.py), and tests/k8s_service.py plays the serve Service in front of them:
  a pod is in it while KubeRay's readiness probe of its proxy passes (`/-/healthz` every 5 s), and
  each new connection goes to a ready pod at random. The head pod is not in it
  (`excludeHeadPodFromServeSvc`).

Nothing here runs `ray stop`: the cluster gets its own temp dir and ports, and shutdown() stops
exactly the processes it started (found by a marker in their environment, inherited by every
process of every fake node), so another Ray on the machine (the test session's) is untouched.

Used by tests/cluster/test_cluster_rehearsal.py (fast: placement, one node killed under load) and
benchmarks/cluster_ramp.py (the load ramp and report). Run alone:

    python tests/cluster_rehearsal.py fast --out /tmp/rehearsal.json
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import prometheus_text
from k8s_service import ServeService
from ports import free_port, free_port_block
from rehearsal_provider import MAX_NODES, PORT_BASE_ENV, proxy_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))

MARKER_ENV = "RERANKER_REHEARSAL_ID"
APP = "reranker"
DEPLOYMENTS = ("Ingress", "Tokenizer", "Scorer")
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node type
KUBERAY_HEAD_TYPE = "headgroup"  # KubeRay's
CPU_GROUP, GPU_GROUP = "cpu-workers", "gpu-workers"
OBJECT_STORE_BYTES = 100 * 1024 * 1024

# Serve's autoscaling runs with the manifests' delays: shorter ones made Serve stop replicas that
# were still starting (a replica takes 20-75 s to start on 2 busy cores). Only the autoscaler's
# idle timeout is shortened (the manifests' autoscalerOptions.idleTimeoutSeconds is 120).
IDLE_TIMEOUT_S = 15
# KubeRay's probe gives a proxy 2 s to answer `/-/healthz`; the fake pods' proxies share 2 cores
# with every other pod and the load, so here they get longer (REHEARSAL_CHANGES).
PROBE_TIMEOUT_S = 10.0

REHEARSAL_CHANGES = [
    ("worker nodes", "object store 100 MB each", "Ray would reserve 30% of this machine's RAM per fake pod"),
    ("worker groups", "`memory` resource not advertised", "the fake provider hands it to Ray as a custom resource, which Ray refuses; nothing asks for memory"),
    ("Scorer", "RERANKER_DEVICE=cpu, RERANKER_BACKEND=torch, RERANKER_TORCH_THREADS=1",
     "the GPU is a logical resource only: the GPU scorer's backend (torch) in fp32 on the CPU, one thread, "
     "as 2 cores are shared by every fake pod"),
    ("all", "RERANKER_MODEL=<tiny random model>", "no hub access, and a model that 2 cores can serve"),
    ("http_options", "host 127.0.0.1; a free port for the head's proxy and one per worker pod's proxy",
     "all fake pods share one address"),
    ("serve Service", "tests/k8s_service.py: ready pods (KubeRay's readiness probe of the proxy every 5 s), "
     "a random one per connection; a pod whose proxy refuses connections is dropped at once",
     "no Kubernetes here; the 1-2 s Kubernetes takes to drop a pod whose container exited are not modelled"),
    ("readiness probe", f"timeout {PROBE_TIMEOUT_S:.0f} s (KubeRay: 2 s)",
     "every fake pod and the load generator share 2 cores: under the 32-client hold proxies answered the probe "
     "in more than 2 s and the Service lost every pod at once (first run, 2026-12-01: no endpoint for 58 s)"),
    ("autoscalerOptions.idleTimeoutSeconds", f"{IDLE_TIMEOUT_S} (manifests: 120)", "idle fake pods go in seconds"),
    ("RAY_metrics_report_interval_ms", "1000", "metrics reach each node's agent every second, not every 10 s"),
]


# ----- the design, read from k8s/ ------------------------------------------------------------------


def rendered_rayservice(overlay: str = "gpu", repo_root: Path = REPO_ROOT) -> dict:
    """The RayService that `kubectl kustomize k8s/overlays/<overlay>` renders (tests/k8s_helpers.py)."""
    import k8s_helpers

    return k8s_helpers.one(k8s_helpers.render(repo_root / "k8s" / "overlays" / overlay), "RayService")


def kuberay_autoscaling_config(rayservice: dict) -> dict:
    """What KubeRay's autoscaler derives from the RayCluster the RayService creates: Ray's own code."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    metadata = rayservice["metadata"]
    ray_cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": metadata["name"], "namespace": metadata.get("namespace", "default")},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }
    return _derive_autoscaling_config_from_ray_cr(ray_cluster)


def rehearsal_node_types(autoscaling_config: dict, max_workers: Optional[dict] = None) -> tuple[dict, dict]:
    """(head resources, worker node types) for the fake provider, from KubeRay's node types.

    Unchanged: CPU, GPU, custom resources, min_workers, max_workers (unless `max_workers` caps a
    group for a shorter run). Changed (see REHEARSAL_CHANGES): object store size; `memory` dropped
    from worker types."""
    types = autoscaling_config["available_node_types"]
    head = dict(types[KUBERAY_HEAD_TYPE]["resources"])
    head["object_store_memory"] = OBJECT_STORE_BYTES
    workers = {}
    for name, spec in types.items():
        if name == KUBERAY_HEAD_TYPE:
            continue
        resources = {k: v for k, v in spec["resources"].items() if k != "memory"}
        resources["object_store_memory"] = OBJECT_STORE_BYTES
        workers[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": spec["min_workers"],
            "max_workers": min(spec["max_workers"], (max_workers or {}).get(name, spec["max_workers"])),
        }
    return head, workers


def ray_env(rayservice: dict) -> dict[str, str]:
    """The RAY_* environment variables (literal values) of the Ray container of the head and every
    worker group; they configure Ray itself (GCS, raylets, Serve), so the rehearsal sets them too.
    The fake pods inherit one environment, so every group must agree."""
    import k8s_helpers

    per_group = {}
    for name, spec in k8s_helpers.ray_groups(rayservice):
        env = k8s_helpers.env_of(k8s_helpers.ray_container(spec["template"]["spec"]))
        per_group[name] = {k: str(v["value"]) for k, v in env.items() if k.startswith("RAY_") and "value" in v}
    merged: dict[str, str] = {}
    for name, env in per_group.items():
        for key, value in env.items():
            if merged.setdefault(key, value) != value:
                raise ValueError(f"{key} differs between groups ({merged[key]!r}, {value!r} in {name})")
    return merged


def image_ray_env(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """The RAY_* variables the image sets (the Dockerfile's ENV instructions): every fake pod gets them."""
    import re

    text = (repo_root / "Dockerfile").read_text().replace("\\\n", " ")
    out = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, re.M):
        for key, value in re.findall(r"(\w+)=(\S+)", line):
            if key.startswith("RAY_"):
                out[key] = value
    return out


def serve_config_v2(rayservice: dict) -> dict:
    import yaml

    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def rehearsal_serve_config(rayservice: dict, head_port: int) -> dict:
    """The rendered serveConfigV2 with the rehearsal's one change: the proxies' address."""
    config = serve_config_v2(rayservice)
    config["http_options"].update(host="127.0.0.1", port=head_port)
    return config


def deployment_of(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


# ----- processes ----------------------------------------------------------------------------------


def temp_dir_prefix(marker: str) -> str:
    """The start of the cluster's temp dir (Ray's sessions and logs); short, for Ray's socket paths."""
    return f"/tmp/rr-{marker[:8]}-"


def holds_file_under(pid: str, prefix: str) -> bool:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def marked_pids(marker: str) -> list[int]:
    """PIDs of the cluster's processes: those whose environment carries MARKER_ENV=marker, and those
    with a file open in the cluster's temp dir. Ray's agents set a process title that can overwrite
    their environment block (the marker with it); they always hold their log files open."""
    needle = f"{MARKER_ENV}={marker}".encode()
    prefix = temp_dir_prefix(marker)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                marked = needle in handle.read().split(b"\0")
        except OSError:
            continue
        if marked or holds_file_under(entry, prefix):
            pids.append(int(entry))
    return pids


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args[:3])
    return text[:160]


def env_value(pid: int, name: str) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
    except OSError:
        return None
    return None


def children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(entry))
    return out


def kill_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after grace_s."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and not _zombie(p) for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if os.path.exists(f"/proc/{p}") and not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_marked(marker: str) -> int:
    """Stops every process carrying the marker (a safety net for a rehearsal that was killed)."""
    pids = marked_pids(marker)
    kill_pids(pids)
    return len(pids)


# ----- the cluster ----------------------------------------------------------------------------------


def _autoscaling_cluster_class():
    from ray.cluster_utils import AutoscalingCluster

    class RehearsalCluster(AutoscalingCluster):
        """AutoscalingCluster that starts beside other Rays instead of `ray stop --force`-ing them.

        Ray's AutoscalingCluster.start() and shutdown() run `ray stop --force` (every Ray of the
        user), and its config generation (and the autoscaler, for provider type `fake_multinode`)
        reads fake_multi_node/example.yaml, which the 2.60 wheel does not ship. This
        subclass keeps its config generation and environment (RAY_FAKE_CLUSTER, the 1 s autoscaler
        loop, the v2 variables) and starts the head on its own port and temp dir."""

        def __init__(self, head_resources, worker_node_types, base_config, env, autoscaler_v2=True, **kwargs):
            self._base_config = base_config
            self._env = env
            self.marker = env[MARKER_ENV]
            self.temp_dir = tempfile.mkdtemp(prefix=Path(temp_dir_prefix(self.marker)).name, dir="/tmp")
            self.gcs_port = free_port()
            self.dashboard_port = free_port()
            self.head_metrics_port = free_port()
            self.process: Optional[subprocess.Popen] = None
            super().__init__(head_resources, worker_node_types, autoscaler_v2=autoscaler_v2, **kwargs)

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = copy.deepcopy(self._base_config)
            # The fake multi-node provider, loaded by module path (from the repository root on
            # PYTHONPATH): as type `fake_multinode` the autoscaler would also read the provider's
            # defaults from example.yaml.
            config["provider"] = {
                "type": "external",
                # Ray's fake multi-node provider, which also gives each fake pod its proxy port.
                "module": "tests.rehearsal_provider.RehearsalNodeProvider",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": f"127.0.0.1:{self.gcs_port}",
            }
            config["available_node_types"] = copy.deepcopy(worker_node_types)
            config["available_node_types"][HEAD_TYPE] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
            config["head_node_type"] = HEAD_TYPE
            if autoscaler_v2:
                from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

                config["provider"]["launch_multiple"] = True
                config["provider"]["head_node_id"] = FAKE_HEAD_NODE_ID
            config.update(config_kwargs)
            return config

        @property
        def address(self) -> str:
            return f"127.0.0.1:{self.gcs_port}"

        @property
        def dashboard_url(self) -> str:
            return f"http://127.0.0.1:{self.dashboard_port}"

        def start(self, _system_config=None, override_env=None):
            from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

            config_path = Path(self.temp_dir) / "autoscaling.json"
            config_path.write_text(json.dumps(self._config))
            head = dict(self._head_resources)
            cmd = [
                str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--autoscaling-config={config_path}",
                f"--num-cpus={head.pop('CPU', 0)}", f"--num-gpus={head.pop('GPU', 0)}",
                f"--object-store-memory={head.pop('object_store_memory')}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--metrics-export-port={self.head_metrics_port}", "--disable-usage-stats",
                # Ports another Ray head on this machine may hold at their defaults (10001, 52365).
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            ]
            if "memory" in head:
                cmd.append(f"--memory={head.pop('memory')}")
            if head:
                cmd.append(f"--resources={json.dumps(head)}")
            if _system_config:
                cmd.append(f"--system-config={json.dumps(_system_config, separators=(',', ':'))}")
            env = {**os.environ, **self._env, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
            if self._autoscaler_v2:
                env.update(RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
                           RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID)
            env.update(override_env or {})
            self.log_path = Path(self.temp_dir) / "ray_start.log"
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def shutdown(self):
            """Stops every process of this cluster (head, fake pods, workers), by PID."""
            pids = marked_pids(self.marker)
            if self.process is not None and self.process.poll() is None:
                pids.append(self.process.pid)
            kill_pids(sorted(set(pids)))
            if self.process is not None:
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    return RehearsalCluster


@dataclass
class NodeInfo:
    node_id: str
    group: str
    alive: bool
    metrics_port: int = 0


class Rehearsal:
    """One rehearsal cluster: the rendered design, started, observed, and stopped."""

    def __init__(self, model_dir: Path, *, repo_root: Path = REPO_ROOT, max_workers: Optional[dict] = None,
                 autoscaler_v2: bool = True, idle_timeout_s: float = IDLE_TIMEOUT_S, marker: Optional[str] = None,
                 keep_logs: bool = False, log=print):
        self.repo_root, self.keep_logs = repo_root, keep_logs
        self.log = log
        self.rayservice = rendered_rayservice("gpu", repo_root)
        self.kuberay_config = kuberay_autoscaling_config(self.rayservice)
        self.head_resources, self.worker_types = rehearsal_node_types(self.kuberay_config, max_workers)
        self.head_port, self.service_port = free_port(), free_port()
        self.proxy_port_base = free_port_block(MAX_NODES + 1)
        self.serve_config = rehearsal_serve_config(self.rayservice, self.head_port)
        self.marker = marker or uuid.uuid4().hex
        self.pod_ray_env = ray_env(self.rayservice)
        self.image_ray_env = image_ray_env(repo_root)
        self.onnx_cache = tempfile.mkdtemp(prefix="rr-onnx-")
        self.model_dir = Path(model_dir)
        self.env = {
            **self.image_ray_env,
            **self.pod_ray_env,
            MARKER_ENV: self.marker,
            "RAY_AUTH_MODE": "disabled",
            "RAY_metrics_report_interval_ms": "1000",
            PORT_BASE_ENV: str(self.proxy_port_base),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "RERANKER_MODEL": str(self.model_dir),
            "RERANKER_DEVICE": "cpu",
            # What a GPU scorer runs (backend auto is torch on CUDA), here in fp32 on the CPU; it
            # also spares every new scorer replica the ONNX export of the CPU default.
            "RERANKER_BACKEND": "torch",
            "RERANKER_TORCH_THREADS": "1",
            "RERANKER_ONNX_CACHE_DIR": self.onnx_cache,
            "PYTHONPATH": os.pathsep.join([str(repo_root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        }
        base = {k: v for k, v in self.kuberay_config.items() if k not in ("provider", "available_node_types", "head_node_type")}
        base["idle_timeout_minutes"] = idle_timeout_s / 60.0
        base["max_workers"] = sum(t["max_workers"] for t in self.worker_types.values())
        self.cluster = _autoscaling_cluster_class()(self.head_resources, self.worker_types, base, self.env, autoscaler_v2=autoscaler_v2)
        self.service = ServeService(self.service_port, self.proxy_ports, timeout_s=PROBE_TIMEOUT_S)
        self.started_at = None

    # ----- lifecycle

    @property
    def url(self) -> str:
        """The serve Service: the worker pods whose proxy passes the readiness probe, never the head."""
        return f"http://127.0.0.1:{self.service_port}"

    def proxy_ports(self) -> list[int]:
        """Every port a worker pod's proxy may bind (the Service probes them all: a port no pod
        holds refuses at once)."""
        return [self.proxy_port_base + n for n in range(1, MAX_NODES + 1)]

    def proxy_port_of(self, node_id: str) -> int:
        return proxy_port(self.proxy_port_base, node_id)

    def service_record(self, started: float) -> dict:
        """The serve Service's ready pods (node numbers) at each change, seconds after `started`, and
        its probes and connections."""
        service = self.service
        return {"endpoints": [(round(at - started, 2), [f"{port - self.proxy_port_base:05d}" for port in ports])
                              for at, ports in service.history],
                "probes": dict(service.probes), "slowest_answer_s": round(service.slowest_answer_s, 2),
                "probe_timeout_s": service.timeout_s, "max_loop_lag_s": round(service.max_loop_lag_s, 2),
                "refused_connections": service.refused}

    @property
    def head_url(self) -> str:
        return f"http://127.0.0.1:{self.head_port}"

    def start(self, timeout_s: float = 120) -> None:
        self.started_at = time.monotonic()
        self.service.start()
        self.cluster.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.cluster.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.cluster.log_path.read_text()[-3000:]}")
            try:
                if self._get("/api/version", timeout=2) is not None:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the head's dashboard did not answer in {timeout_s}s")

    def stop(self) -> None:
        try:
            self.service.stop()
            self.cluster.shutdown()
        finally:
            left = marked_pids(self.marker)
            if left:
                kill_pids(left)
            import shutil

            shutil.rmtree(self.onnx_cache, ignore_errors=True)
            # The cluster's temp dir holds its session (Ray's and Serve's logs, about 5 MB).
            if self.keep_logs:
                self.log(f"the rehearsal cluster's logs: {self.cluster.temp_dir}/session_latest/logs")
            else:
                shutil.rmtree(self.cluster.temp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ----- the dashboard's REST API (what KubeRay talks to)

    def _get(self, path: str, timeout: float = 10):
        import httpx

        response = httpx.get(self.cluster.dashboard_url + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def deploy(self, config: dict) -> None:
        """Submits a whole Serve config, as KubeRay does with serveConfigV2 (PUT /api/serve/applications/)."""
        import httpx

        response = httpx.put(self.cluster.dashboard_url + "/api/serve/applications/", json=config, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"deploy failed: {response.status_code} {response.text[:2000]}")
        self.current_config = copy.deepcopy(config)

    def serve_details(self) -> dict:
        return self._get("/api/serve/applications/")

    def replicas(self, details: dict | None = None) -> dict[str, list[dict]]:
        """deployment -> its replicas (state, node_id, actor_id, pid) from Serve's controller
        (from `details`, one read of Serve's details, when given)."""
        details = self.serve_details() if details is None else details
        app = (details.get("applications") or {}).get(APP) or {}
        return {name: d.get("replicas", []) for name, d in (app.get("deployments") or {}).items()}

    def running_replicas(self, details: dict | None = None) -> dict[str, int]:
        return {name: sum(1 for r in reps if r.get("state") == "RUNNING")
                for name, reps in self.replicas(details).items()}

    def serve_states(self) -> dict:
        """RUNNING replicas per deployment, replicas in every other state ({deployment: {state: n}}),
        and proxies per status ({status: n}), from one read of Serve's details."""
        details = self.serve_details()
        other = {name: dict(Counter(r.get("state") for r in reps if r.get("state") != "RUNNING"))
                 for name, reps in self.replicas(details).items()}
        proxies = Counter(proxy.get("status") for proxy in (details.get("proxies") or {}).values())
        return {"replicas": self.running_replicas(details), "other_states": {k: v for k, v in other.items() if v},
                "proxies": dict(proxies)}

    def app_status(self) -> str:
        app = (self.serve_details().get("applications") or {}).get(APP) or {}
        return app.get("status", "")

    # ----- Ray's state API

    def nodes(self) -> list[NodeInfo]:
        """Every node the GCS knows (alive and dead), with its group from its resources and labels."""
        from ray.util.state import list_nodes

        out = []
        for node in list_nodes(address=self.cluster.dashboard_url, limit=1000, detail=True, raise_on_missing_output=False):
            out.append(NodeInfo(node.node_id, node_group(node), node.state == "ALIVE"))
        return out

    def alive_by_group(self) -> dict[str, int]:
        counts = {HEAD_TYPE: 0, CPU_GROUP: 0, GPU_GROUP: 0}
        for node in self.nodes():
            if node.alive:
                counts[node.group] = counts.get(node.group, 0) + 1
        return counts

    def actors(self) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.cluster.dashboard_url, filters=[("state", "=", "ALIVE")], limit=10000,
                           detail=True, raise_on_missing_output=False)

    def placement(self) -> dict[str, dict[str, int]]:
        """group -> {actor kind: count} of ALIVE actors, from Ray's state API (not from Serve);
        under "nodes", each deployment's number of distinct nodes."""
        groups = {n.node_id: n.group for n in self.nodes()}
        table: dict[str, dict[str, int]] = {}
        nodes: dict[str, set] = {}
        for actor in self.actors():
            kind = actor_kind(actor.class_name)
            group = groups.get(actor.node_id, "?")
            table.setdefault(group, {}).setdefault(kind, 0)
            table[group][kind] += 1
            nodes.setdefault(kind, set()).add(actor.node_id)
        table["nodes"] = {kind: len(ids) for kind, ids in nodes.items() if kind in DEPLOYMENTS}
        return table

    def metrics_ports(self) -> dict[str, tuple[str, int]]:
        """node_id -> (group, metrics export port) of alive nodes: what the PodMonitor scrapes (port 8080)."""
        from ray._raylet import GcsClient

        groups = {n.node_id: n.group for n in self.nodes()}
        client = GcsClient(address=self.cluster.address)
        out = {}
        for node_id, info in client.get_all_node_info(timeout=10).items():
            hex_id = node_id.hex()
            if info.state == 0:  # ALIVE
                out[hex_id] = (groups.get(hex_id, "?"), info.metrics_export_port)
        return out

    # ----- waiting

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 1.0):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except Exception as exc:  # noqa: BLE001 - the cluster is changing under us
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(interval_s)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")

    def wait_ready(self, timeout_s: float = 180) -> None:
        import httpx

        def ready():
            if self.app_status() != "RUNNING":
                return False
            return httpx.get(self.url + "/ready", timeout=10).status_code == 200

        self.wait_for(ready, timeout_s, "the application to be RUNNING and /ready to answer 200")

    # ----- faults

    def node_pids(self, node_id: str) -> list[int]:
        """The processes of one fake pod: those the provider started with the node's id in their
        environment (raylet, log monitor), and all their descendants (agents, workers)."""
        roots = [pid for pid in marked_pids(self.marker) if env_value(pid, "RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id]
        children = children_by_parent()
        found, stack = set(), list(roots)
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack.extend(children.get(pid, []))
        return sorted(found)

    def kill_node(self, node_id: str) -> int:
        """SIGKILLs every process of one worker node at once, as when its pod or machine is lost."""
        pids = self.node_pids(node_id)
        if not pids:
            raise RuntimeError(f"no processes found for node {node_id}")
        self.last_killed = {pid: process_name(pid) for pid in pids}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def drain_node(self, node_id: str, deadline_s: float) -> None:
        """Marks one worker node draining in the GCS, as `ray start --block` (a pod's first process)
        does on the SIGTERM of a pod deletion (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S): reason
        PREEMPTION, which the GCS cannot refuse. Serve then drains the node's proxy and moves its
        replicas elsewhere."""
        from ray._raylet import GcsClient
        from ray.core.generated import autoscaler_pb2

        accepted, message = GcsClient(address=self.cluster.address).drain_node(
            node_id, autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION, "rehearsal: pod deleted",
            int((time.time() + deadline_s) * 1000))
        if not accepted:
            raise RuntimeError(f"drain of {node_id} refused: {message}")


def node_group(node) -> str:
    labels = getattr(node, "labels", None) or {}
    for key in ("ray.io/node-group", "ray.io/node_group"):
        if labels.get(key):
            return labels[key] if labels[key] != KUBERAY_HEAD_TYPE else HEAD_TYPE
    if getattr(node, "is_head_node", False):
        return HEAD_TYPE
    resources = getattr(node, "resources_total", None) or {}
    if resources.get("GPU"):
        return GPU_GROUP
    if resources.get("cpu_worker"):
        return CPU_GROUP
    return "?"


def actor_kind(class_name: str) -> str:
    """'Ingress', 'Tokenizer', 'Scorer', 'proxy', 'controller', or the class name."""
    if class_name.startswith("ServeReplica:"):
        return class_name.rsplit(":", 1)[-1]
    return {"ProxyActor": "proxy", "ServeController": "controller"}.get(class_name, class_name)


# ----- load ---------------------------------------------------------------------------------------

QUERIES = [
    "what is the capital of france",
    "столица россии",
    "日本の首都はどこですか",
    "hauptstadt von deutschland",
    "capital de españa",
    "how do neural rerankers work in search engines",
]
SENTENCES = [
    "paris is the capital and most populous city of france.",
    "berlin ist die hauptstadt von deutschland.",
    "madrid es la capital de españa.",
    "столица россии москва.",
    "東京は日本の首都です。",
    "roma è la capitale d'italia.",
    "a cross-encoder reads the query and the passage together.",
    "search engines rerank the top results with a cross-encoder.",
]


def request_bodies(seed: int, count: int, min_docs: int, max_docs: int) -> list[dict]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        texts = [" ".join(rng.choices(SENTENCES, k=rng.randint(1, 3))) for _ in range(rng.randint(min_docs, max_docs))]
        bodies.append({"query": rng.choice(QUERIES), "texts": texts, "raw_scores": True})
    return bodies


def oracle_scores(model_dir: Path, bodies: list[dict]) -> list[list[float]]:
    """Raw scores (logit of label 1) of each body, from transformers in this process: independent
    of the service's code."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.inference_mode():
        for body in bodies:
            encoded = tokenizer([body["query"]] * len(body["texts"]), body["texts"], truncation="only_second",
                                max_length=512, padding=True, return_tensors="pt")
            out.append(model(**encoded).logits[:, 1].tolist())
    return out


def answer_problem(answer, expected: list[float]) -> str:
    """What is wrong with an answer ('' when nothing): every passage once, sorted by score, each raw
    score the oracle's within 1e-3 (relative above 1: fp32 kernels and paddings differ, and a wider
    random model has logits up to about 20)."""
    try:
        indices = [item["index"] for item in answer]
        scores = [item["score"] for item in answer]
    except (TypeError, KeyError):
        return "not a list of {index, score}"
    if sorted(indices) != list(range(len(expected))):
        return f"indices {indices} for {len(expected)} passages"
    if scores != sorted(scores, reverse=True):
        return "not sorted by score"
    if not answer:
        return ""
    worst = max(answer, key=lambda item: abs(item["score"] - expected[item["index"]]) / max(1.0, abs(expected[item["index"]])))
    want = expected[worst["index"]]
    if abs(worst["score"] - want) > 1e-3 * max(1.0, abs(want)):
        return f"passage {worst['index']}: score {worst['score']:.5f}, oracle {want:.5f}"
    return ""


def is_correct(answer, expected: list[float]) -> bool:
    return not answer_problem(answer, expected)


@dataclass
class Sample:
    sent_at: float
    latency_s: float
    status: int  # 0: no HTTP response (connection lost, timeout)
    retry_after: Optional[str]
    correct: Optional[bool]
    pairs: int
    error: str = ""
    phase: str = ""
    body: int = -1  # index into the Load's bodies
    closed: bool = False  # the response closed a kept-alive connection (`Connection: close`: an unready proxy)


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    samples: list = field(default_factory=list)
    timeline: list = field(default_factory=list)  # dicts: t, replicas, nodes
    events: list = field(default_factory=list)  # (t, text)

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        self.events.append((round(self.now(), 2), text))


class Load:
    """Closed-loop clients against the serve Service URL; every answer is checked against the oracle.

    By default each request opens its own connection. With keep_alive, the clients share a pool of
    kept-alive connections, as search clients do: a connection stays with the pod the Service gave
    it until the client or that pod's proxy closes it (a draining proxy does, reranker/proxy.py).
    Either way a request in flight on a dead node's own proxy loses its connection (status 0), as it
    would behind a real Service."""

    def __init__(self, url: str, recorder: Recorder, bodies: list[dict], expected: list[list[float]],
                 timeout_s: float = 60, seed: int = 0, keep_alive: bool = False):
        self.url, self.recorder, self.bodies, self.expected = url, recorder, bodies, expected
        self.timeout_s, self.keep_alive = timeout_s, keep_alive
        self.rng = random.Random(seed)
        self.encoded = [json.dumps(b).encode() for b in bodies]
        self.concurrency = 0
        self.phase = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    async def _one(self, client) -> None:
        import httpx

        which = self.rng.randrange(len(self.bodies))
        sent = self.recorder.now()
        started = time.perf_counter()
        status, retry_after, correct, error, closed = 0, None, None, "", False
        headers = {"content-type": "application/json"}
        if not self.keep_alive:
            headers["connection"] = "close"
        try:
            response = await client.post(self.url + "/rerank", content=self.encoded[which], headers=headers)
            status, retry_after = response.status_code, response.headers.get("retry-after")
            closed = self.keep_alive and response.headers.get("connection", "").lower() == "close"
            if status == 200:
                error = answer_problem(response.json(), self.expected[which])
                correct = not error
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        self.recorder.samples.append(Sample(sent, time.perf_counter() - started, status, retry_after, correct,
                                            len(self.bodies[which]["texts"]), error, self.phase, which, closed))

    async def _run(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256 if self.keep_alive else 0)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def worker(index: int) -> None:
                while not self._stop.is_set():
                    if index < self.concurrency:
                        await self._one(client)
                    else:
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(worker(i) for i in range(256)))

    def start(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)


class Sampler:
    """Samples replicas per deployment and alive nodes per group every interval_s, in a thread."""

    def __init__(self, rehearsal: Rehearsal, recorder: Recorder, interval_s: float = 1.0):
        self.rehearsal, self.recorder, self.interval_s = rehearsal, recorder, interval_s
        self.load: Optional[Load] = None  # set to record its clients too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.recorder.timeline.append({
                    "t": round(self.recorder.now(), 2),
                    **self.rehearsal.serve_states(),
                    "nodes": self.rehearsal.alive_by_group(),
                    "service": len(self.rehearsal.service.ready),
                    "clients": self.load.concurrency if self.load is not None else 0,
                })
            except Exception as exc:  # noqa: BLE001 - one missed sample must not stop the run
                self.recorder.event(f"sampler: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval_s)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ----- checks -----------------------------------------------------------------------------------


def placement_problems(table: dict[str, dict[str, int]], lost: Optional[dict[str, int]] = None) -> list[str]:
    """Ingress and tokenizers only on cpu-workers, scorers only on gpu-workers, no replica on the
    head, and a deployment's replicas on more than one node.

    `lost`: what a node killed moments ago held (deployment -> replicas). Those deployments' survivors
    may share one node until their replacements start (a gpu-workers pod holds two scorers, the other
    pod the other two); they must still be ALIVE somewhere."""
    problems = []
    allowed = {"Ingress": {CPU_GROUP}, "Tokenizer": {CPU_GROUP}, "Scorer": {GPU_GROUP}}
    table = dict(table)
    spread = table.pop("nodes", {})
    for kind in DEPLOYMENTS:
        replicas = sum(kinds.get(kind, 0) for kinds in table.values())
        if replicas >= 2 and spread.get(kind, 0) < 2 and not (lost or {}).get(kind):
            problems.append(f"{replicas} {kind} replicas all on one node: losing it loses them all")
    for group, kinds in table.items():
        for kind, count in kinds.items():
            if kind in allowed and group not in allowed[kind]:
                problems.append(f"{count} {kind} replica(s) on {group}")
    head = table.get(HEAD_TYPE, {})
    heavy = {k: v for k, v in head.items() if k not in ("proxy", "controller")}
    if heavy:
        problems.append(f"on the head besides the controller and a proxy: {heavy}")
    for kind in allowed:
        if not any(kind in kinds for kinds in table.values()):
            problems.append(f"no ALIVE {kind} replica")
    return problems


def classify(samples: list[Sample], window: Optional[tuple[float, float]] = None) -> dict:
    """Counts per outcome, for samples sent inside window (all when None)."""
    chosen = [s for s in samples if window is None or window[0] <= s.sent_at < window[1]]
    out = {"sent": len(chosen), "ok_correct": 0, "ok_wrong": 0, "rejected_with_retry_after": 0,
           "rejected_without_retry_after": 0, "server_error": 0, "other_status": 0, "no_response": 0,
           "no_response_errors": {}, "statuses": {}}
    for s in chosen:
        out["statuses"][str(s.status)] = out["statuses"].get(str(s.status), 0) + 1
        if s.status == 200:
            out["ok_correct" if s.correct else "ok_wrong"] += 1
        elif s.status in (429, 503):
            out["rejected_with_retry_after" if s.retry_after else "rejected_without_retry_after"] += 1
        elif s.status >= 500:
            out["server_error"] += 1
        elif s.status == 0:
            out["no_response"] += 1
            out["no_response_errors"][s.error] = out["no_response_errors"].get(s.error, 0) + 1
        else:
            out["other_status"] += 1
    ok = [s.latency_s for s in chosen if s.status == 200]
    out["p50_ms"] = round(percentile(ok, 50) * 1000, 1)
    out["p99_ms"] = round(percentile(ok, 99) * 1000, 1)
    out["max_latency_s"] = round(max((s.latency_s for s in chosen), default=0.0), 2)
    rejected = sorted(s.sent_at for s in chosen if s.status in (429, 503))
    out["rejection_span_s"] = round(rejected[-1] - rejected[0], 2) if rejected else 0.0
    out["closed_connections"] = sum(s.closed for s in chosen)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def machine() -> dict:
    """CPU model, flags and cores of this machine (for reports)."""
    info = {"cores": os.cpu_count(), "model": "?", "flags": ""}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["model"] == "?":
                info["model"] = value.strip()
            if key.strip() == "flags" and not info["flags"]:
                info["flags"] = value.strip()
    except OSError:
        pass
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


# ----- metrics: what the PodMonitor scrapes -----------------------------------------------------


def scrape_nodes(rehearsal: Rehearsal, failed: Optional[list] = None) -> dict[str, tuple[str, str]]:
    """node_id -> (group, exposition text) of every alive node's metrics agent (the pods' port 8080).

    With `failed` (a list), a node that does not answer (dying, as a pod being lost) is skipped and
    its id appended there, as Prometheus marks one target down and scrapes the others."""
    import httpx

    out = {}
    for node_id, (group, port) in rehearsal.metrics_ports().items():
        try:
            out[node_id] = (group, httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        except httpx.HTTPError:
            if failed is None:
                raise
            failed.append(node_id)
    return out


def metric_samples(text: str, name: str, **labels) -> list[tuple[dict, float]]:
    return [(sample.labels, sample.value) for sample in prometheus_text.samples(text, name, **labels)]


def metric_total(text: str, name: str, **labels) -> float:
    return prometheus_text.total(text, name, **labels)


REQUESTS_200 = ("ray_reranker_requests_total", {"route": "/rerank", "status_code": "200"})
PAIRS = ("ray_reranker_pairs_scored_total", {})


def counts(scrape: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """node_id -> {requests: /rerank 200s, pairs: pairs scored, group}."""
    return {
        node_id: {"group": group, "requests": metric_total(text, REQUESTS_200[0], **REQUESTS_200[1]),
                  "pairs": metric_total(text, PAIRS[0], **PAIRS[1])}
        for node_id, (group, text) in scrape.items()
    }


def metrics_check(rehearsal: Rehearsal, recorder: Recorder, bodies: list[dict], expected: list[list[float]],
                  requests: int = 60, clients: int = 4, wait_s: float = 5.0) -> dict:
    """Sends `requests` /rerank requests on a stable cluster and compares the sum over every node's
    scrape (before -> after) with what the client counted; then asks the serve Service for /metrics
    a few times to show what one answer holds."""
    import httpx

    # Every ingress replica scores one canary pair before its first answer; 20 readiness checks
    # through the Service reach each of them (a miss is a 2^-20 chance), so none scores one below.
    for _ in range(20):
        httpx.get(rehearsal.url + "/ready", timeout=10)
    time.sleep(wait_s)
    before = counts(scrape_nodes(rehearsal))
    local = Recorder(started=recorder.started)
    load = Load(rehearsal.url, local, bodies, expected)
    load.phase = "metrics"
    load.start(clients)
    deadline = time.monotonic() + 120
    while len(local.samples) < requests and time.monotonic() < deadline:
        time.sleep(0.1)
    load.stop()
    recorder.samples.extend(local.samples)
    ok = [s for s in local.samples if s.status == 200]
    time.sleep(wait_s)  # the agents' export is refreshed every RAY_metrics_report_interval_ms (1 s)
    after = counts(scrape_nodes(rehearsal))
    per_node = {}
    for node_id in sorted(set(before) | set(after)):
        b, a = before.get(node_id, {}), after.get(node_id, {})
        per_node[node_id] = {"group": a.get("group", b.get("group")),
                             "requests": a.get("requests", 0) - b.get("requests", 0),
                             "pairs": a.get("pairs", 0) - b.get("pairs", 0)}
    summed = {"requests": sum(v["requests"] for v in per_node.values()), "pairs": sum(v["pairs"] for v in per_node.values())}
    client = {"requests": len(ok), "pairs": sum(s.pairs for s in ok), "sent": len(local.samples)}
    # What one GET /metrics through the serve Service holds: the node of whichever ingress answered.
    through_service = []
    for _ in range(6):
        text = httpx.get(rehearsal.url + "/metrics", timeout=10).text
        through_service.append({"requests": metric_total(text, REQUESTS_200[0], **REQUESTS_200[1]),
                                "pairs": metric_total(text, PAIRS[0], **PAIRS[1])})
    cluster_total = counts(scrape_nodes(rehearsal))
    return {
        "client": client,
        "sum_of_node_scrapes": summed,
        "exact": summed["requests"] == client["requests"] and summed["pairs"] == client["pairs"],
        "per_node_delta": per_node,
        "nodes_scraped": len(after),
        "cluster_totals_now": {"requests": sum(v["requests"] for v in cluster_total.values()),
                               "pairs": sum(v["pairs"] for v in cluster_total.values())},
        "metrics_route_answers": through_service,
    }


class PromScraper:
    """Scrapes every alive node's metrics agent every interval_s, as Prometheus does with the
    PodMonitor (15 s), and adds up each series (node and labels; Serve labels every replica) as
    `increase()` does: a decrease is a counter reset, and a series that goes away (its replica or
    node) keeps what was scraped last and loses what it counted after that."""

    def __init__(self, rehearsal: Rehearsal, recorder: Recorder, interval_s: float = 15.0):
        self.rehearsal, self.recorder, self.interval_s = rehearsal, recorder, interval_s
        self.series: dict[tuple, dict] = {}  # (node_id, metric, labels) -> {group, last, total, t}
        self.scrapes = 0
        self.resets = 0
        self.failed_targets = 0  # node scrapes that got no answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def scrape(self) -> None:
        now = round(self.recorder.now(), 1)
        failed: list[str] = []
        for node_id, (group, text) in scrape_nodes(self.rehearsal, failed).items():
            for metric, labels in (REQUESTS_200, PAIRS):
                for sample_labels, value in metric_samples(text, metric, **labels):
                    key = (node_id, metric, tuple(sorted(sample_labels.items())))
                    seen = self.series.get(key)
                    if seen is None:
                        self.series[key] = {"group": group, "last": value, "total": value, "t": now}
                        continue
                    if value < seen["last"]:
                        self.resets += 1
                    seen["total"] += value - seen["last"] if value >= seen["last"] else value
                    seen.update(last=value, t=now)
        self.scrapes += 1
        self.failed_targets += len(failed)

    @property
    def last(self) -> dict[str, dict]:
        """node_id -> {group, requests, pairs, t}: the increases summed per node."""
        out: dict[str, dict] = {}
        for (node_id, metric, _), seen in self.series.items():
            row = out.setdefault(node_id, {"group": seen["group"], "requests": 0.0, "pairs": 0.0, "t": 0.0})
            row["requests" if metric == REQUESTS_200[0] else "pairs"] += seen["total"]
            row["t"] = max(row["t"], seen["t"])
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scrape()
            except Exception as exc:  # noqa: BLE001 - a failed scrape is a gap, as in Prometheus
                self.recorder.event(f"scrape: {type(exc).__name__}")
            self._stop.wait(self.interval_s)

    def start(self) -> "PromScraper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def totals(self) -> dict[str, float]:
        per_node = self.last
        return {"requests": sum(v["requests"] for v in per_node.values()),
                "pairs": sum(v["pairs"] for v in per_node.values()), "nodes": len(per_node),
                "series": len(self.series), "resets": self.resets, "failed_targets": self.failed_targets}


# ----- a config rolled out on the running cluster -------------------------------------------------


def updated_config(config: dict, user_config: dict, scorer_max_replicas: int) -> dict:
    new = copy.deepcopy(config)
    scorer = deployment_of(new, "Scorer")
    scorer["user_config"] = {**scorer.get("user_config", {}), **user_config}
    scorer["autoscaling_config"]["max_replicas"] = scorer_max_replicas
    return new


def rolled_out(rehearsal: Rehearsal, user_config: dict, max_replicas: int) -> bool:
    app = (rehearsal.serve_details().get("applications") or {}).get(APP) or {}
    scorer = (app.get("deployments") or {}).get("Scorer") or {}
    config = scorer.get("deployment_config") or {}
    applied = all((config.get("user_config") or {}).get(k) == v for k, v in user_config.items()) and \
        (config.get("autoscaling_config") or {}).get("max_replicas") == max_replicas
    healthy = app.get("status") == "RUNNING" and all(
        d.get("status") == "HEALTHY" for d in (app.get("deployments") or {}).values())
    return applied and healthy


def roll_out(rehearsal: Rehearsal, recorder: Recorder, user_config: dict, scorer_max_replicas: int,
             settle_s: float = 5, timeout_s: float = 120) -> dict:
    """Submits serveConfigV2 with a new Scorer user_config and max_replicas, as `kubectl apply` of an
    edited serveConfigV2 makes KubeRay do (in place), and waits until Serve reports it applied."""
    new = updated_config(rehearsal.current_config, user_config, scorer_max_replicas)
    started = recorder.now()
    rehearsal.deploy(new)
    recorder.event(f"rolled out Scorer user_config {user_config}, max_replicas {scorer_max_replicas}")
    rehearsal.wait_for(lambda: rolled_out(rehearsal, user_config, scorer_max_replicas), timeout_s,
                       "the new config to be applied and every deployment HEALTHY", interval_s=0.5)
    applied = recorder.now()
    recorder.event("new config applied, deployments HEALTHY")
    time.sleep(settle_s)
    return {"submitted_at_s": round(started, 2), "applied_after_s": round(applied - started, 1),
            "window": (started, recorder.now()), "user_config": user_config, "scorer_max_replicas": scorer_max_replicas}


# ----- scenarios --------------------------------------------------------------------------------


def start_and_deploy(rehearsal: Rehearsal, recorder: Recorder, ready_timeout_s: float = 240) -> dict:
    """Starts the cluster, waits for the groups' minimum workers, deploys serveConfigV2, waits for /ready."""
    timings = {}
    rehearsal.start()
    timings["head_up_s"] = round(recorder.now(), 1)
    recorder.event("head up")
    minimum = {name: spec["min_workers"] for name, spec in rehearsal.worker_types.items()}
    rehearsal.wait_for(lambda: all(rehearsal.alive_by_group().get(g, 0) >= n for g, n in minimum.items()),
                       120, f"the groups' minimum workers {minimum}")
    timings["min_workers_up_s"] = round(recorder.now(), 1)
    recorder.event(f"minimum workers up: {rehearsal.alive_by_group()}")
    rehearsal.deploy(rehearsal.serve_config)
    recorder.event("serveConfigV2 submitted")
    rehearsal.wait_ready(ready_timeout_s)
    timings["ready_s"] = round(recorder.now(), 1)
    recorder.event("application RUNNING and /ready 200")
    return timings


def node_of(rehearsal: Rehearsal, deployment: str, group: str) -> Optional[str]:
    """A node of `group` that holds a RUNNING replica of `deployment`."""
    groups = {n.node_id: n.group for n in rehearsal.nodes() if n.alive}
    for replica in rehearsal.replicas().get(deployment, []):
        if replica.get("state") == "RUNNING" and groups.get(replica.get("node_id")) == group:
            return replica["node_id"]
    return None


def replicas_on(rehearsal: Rehearsal, node_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, replicas in rehearsal.replicas().items():
        for replica in replicas:
            if replica.get("node_id") == node_id and replica.get("state") == "RUNNING":
                out[name] = out.get(name, 0) + 1
    return out


def lose_node(rehearsal: Rehearsal, recorder: Recorder, deployment: str, group: str,
              settle_s: float, recover_timeout_s: float, wait_replicas: bool = True) -> dict:
    """Kills a `group` node holding a `deployment` replica while the load runs; waits until the group
    has its nodes again and (wait_replicas) every deployment its minimum replicas and /ready 200."""
    import httpx

    node_id = node_of(rehearsal, deployment, group)
    if node_id is None:
        raise RuntimeError(f"no {group} node holds a RUNNING {deployment} replica: {rehearsal.replicas()}")
    before_nodes = rehearsal.alive_by_group()
    before_replicas = rehearsal.running_replicas()
    held = replicas_on(rehearsal, node_id)
    pids = rehearsal.kill_node(node_id)
    killed_at = recorder.now()  # after: finding the node's processes takes seconds on a loaded machine, the kill none
    recorder.event(f"killed {group} node {node_id[-5:]} ({pids} processes; held {held})")
    result = {"group": group, "node_id": node_id, "processes_killed": pids, "held": held,
              "processes": sorted(set(getattr(rehearsal, "last_killed", {}).values())),
              "killed_at_s": round(killed_at, 2), "nodes_before": before_nodes, "replicas_before": before_replicas}

    def dead():
        return not any(n.node_id == node_id and n.alive for n in rehearsal.nodes())

    rehearsal.wait_for(dead, 60, f"node {node_id[-5:]} to be reported dead", interval_s=0.5)
    result["reported_dead_after_s"] = round(recorder.now() - killed_at, 1)
    recorder.event(f"node {node_id[-5:]} reported dead")

    def replaced():
        alive = rehearsal.alive_by_group()
        return alive.get(group, 0) >= before_nodes.get(group, 0) and not any(
            n.node_id == node_id and n.alive for n in rehearsal.nodes())

    rehearsal.wait_for(replaced, recover_timeout_s, f"a replacement {group} node", interval_s=0.5)
    result["node_replaced_after_s"] = round(recorder.now() - killed_at, 1)
    recorder.event(f"{group} back to {rehearsal.alive_by_group().get(group)} node(s)")

    minimum = min_replicas(rehearsal.current_config)
    if not wait_replicas:
        time.sleep(settle_s)
        result["window"] = (killed_at - 2.0, recorder.now())
        result.update(unanswered_around(recorder, killed_at))
        return result

    def recovered():
        running = rehearsal.running_replicas()
        return all(running.get(name, 0) >= n for name, n in minimum.items()) and \
            httpx.get(rehearsal.url + "/ready", timeout=10).status_code == 200

    rehearsal.wait_for(recovered, recover_timeout_s, f"replicas back to {minimum} and /ready 200", interval_s=0.5)
    result["serving_again_after_s"] = round(recorder.now() - killed_at, 1)
    recorder.event("replicas back at their minimum, /ready 200")
    time.sleep(settle_s)
    result["window"] = (killed_at - 2.0, recorder.now())
    result.update(unanswered_around(recorder, killed_at))
    return result


def unanswered_around(recorder: Recorder, killed_at: float, grace_s: float = 0.5) -> dict:
    """Requests without an HTTP answer, by when they were sent against the kill.

    A request whose connection was on the dead node's own proxy has no answer to get (as behind a
    real Service): at most one per client was in flight when the node died. In the first `grace_s`
    after it a client may still be sent there; one sent later must not meet that fate.
    """
    lost = [s.sent_at for s in recorder.samples if s.status == 0 and s.sent_at >= killed_at - 2.0]
    return {
        "unanswered_sent_by_kill": sum(1 for t in lost if t <= killed_at),
        "unanswered_sent_in_grace": sum(1 for t in lost if killed_at < t <= killed_at + grace_s),
        "unanswered_sent_after_kill": sum(1 for t in lost if t > killed_at + grace_s),
    }


def min_replicas(config: dict) -> dict[str, int]:
    return {d["name"]: d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
            for d in config["applications"][0]["deployments"]}


KILL_TARGETS = {"scorer": ("Scorer", GPU_GROUP), "ingress": ("Ingress", CPU_GROUP)}


def drain_with_kept_connection(rehearsal: Rehearsal, bodies: list[dict], expected: list[list[float]],
                               timeout_s: float = 40) -> dict:
    """A client keeps its connection to one cpu-workers pod (one the Service gave it earlier) while
    that pod is drained, as on a pod deletion: requests go on over that connection until a response
    says `Connection: close` (reranker/proxy.py, once the pod's readiness probe has failed), then over
    a new connection through the Service. Every answer is checked against the oracle."""
    import httpx

    node_id = node_of(rehearsal, "Ingress", CPU_GROUP)
    if node_id is None:
        raise RuntimeError(f"no cpu-workers node holds a RUNNING Ingress replica: {rehearsal.replicas()}")
    port = rehearsal.proxy_port_of(node_id)
    out: dict[str, Any] = {"node_id": node_id, "answers": []}
    rng = random.Random(1)

    def ask(client, when: str) -> bool:
        which = rng.randrange(len(bodies))
        sent = time.monotonic()
        try:
            response = client.post("/rerank", json=bodies[which])
        except httpx.HTTPError as exc:
            out["answers"].append({"when": when, "status": 0, "error": type(exc).__name__})
            return False
        closed = response.headers.get("connection", "").lower() == "close"
        problem = answer_problem(response.json(), expected[which]) if response.status_code == 200 else ""
        out["answers"].append({"when": when, "status": response.status_code, "correct": response.status_code == 200 and not problem,
                               "retry_after": response.headers.get("retry-after"), "closed": closed,
                               "t": round(sent - started, 2)})
        return closed

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as pinned:
        started = time.monotonic()
        for _ in range(3):
            ask(pinned, "before")
        # The deadline `ray start` gives on SIGTERM: the manifests' drain timeout (Ray's default 30 s).
        rehearsal.drain_node(node_id, deadline_s=float(rehearsal.pod_ray_env.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", 30)))
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if ask(pinned, "draining"):
                out["closed_after_s"] = round(time.monotonic() - started, 2)
                break
            time.sleep(0.2)
    with httpx.Client(base_url=rehearsal.url, timeout=60) as through_service:
        for _ in range(3):
            ask(through_service, "reconnected")
    out["in_service_after"] = port in rehearsal.service.ready
    return out


def run_fast(model_dir: Path, repo_root: Path = REPO_ROOT, clients: int = 4, marker: Optional[str] = None,
             kill: str = "scorer", log=print) -> dict:
    """Items 1, 2 and 4 of the rehearsal, short: the design from k8s/, placement from the state API,
    one node killed under load: a gpu-workers node holding a scorer (kill="scorer") or a
    cpu-workers node holding an ingress (kill="ingress"); then a cpu-workers pod drained (as on its
    deletion) under a client that keeps its connection to it."""
    recorder = Recorder()
    result: dict[str, Any] = {"machine": machine(), "clients": clients}
    # The fast run never needs more than the groups' minimum plus a replacement.
    rehearsal = Rehearsal(model_dir, repo_root=repo_root, marker=marker, log=log)
    result["node_types"] = {"head": rehearsal.head_resources, **rehearsal.worker_types}
    result["kuberay_node_types"] = rehearsal.kuberay_config["available_node_types"]
    bodies = request_bodies(0, 32, 2, 6)
    expected = oracle_scores(model_dir, bodies)
    load = None
    try:
        result["timings"] = start_and_deploy(rehearsal, recorder)
        result["placement"] = rehearsal.placement()
        result["placement_problems"] = placement_problems(result["placement"])
        result["replicas_at_start"] = rehearsal.running_replicas()
        result["nodes_at_start"] = rehearsal.alive_by_group()
        load = Load(rehearsal.url, recorder, bodies, expected)
        load.start(clients)
        time.sleep(4)
        deployment, group = KILL_TARGETS[kill]
        loss = lose_node(rehearsal, recorder, deployment, group, settle_s=2, recover_timeout_s=120, wait_replicas=False)
        load.stop()
        load = None
        result["node_loss"] = {k: v for k, v in loss.items() if k != "window"}
        result["outcomes_during_loss"] = classify(recorder.samples, loss["window"])
        result["outcomes_all"] = classify(recorder.samples)
        result["placement_after"] = rehearsal.placement()
        result["placement_problems_after"] = placement_problems(result["placement_after"], lost=loss["held"])
        result["drain"] = drain_with_kept_connection(rehearsal, bodies, expected)
    finally:
        if load is not None:
            load.stop()
        result["events"] = recorder.events
        rehearsal.stop()
        result["service"] = rehearsal.service_record(recorder.started)
        result["processes_left"] = len(marked_pids(rehearsal.marker))
        result["total_s"] = round(recorder.now(), 1)
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["fast"])
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    parser.add_argument("--model", type=Path, help="model directory (default: a new tiny random model)")
    parser.add_argument("--repo-root", type=Path, default=REPO_ROOT)
    parser.add_argument("--marker", help="marker put in the environment of every process of the cluster")
    parser.add_argument("--kill", choices=sorted(KILL_TARGETS), default="scorer", help="which node to lose under load")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients during the node loss")
    args = parser.parse_args(argv)
    # A SIGTERM (a timeout) unwinds like Ctrl-C, so the cluster is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    model = args.model
    made = None
    if model is None:
        from tiny_models import save_tiny_model

        made = model = save_tiny_model(Path(tempfile.mkdtemp(prefix="rr-model-")), num_labels=2)
    try:
        result = run_fast(model, repo_root=args.repo_root, marker=args.marker, kill=args.kill, clients=args.clients)
    finally:
        if made is not None:
            import shutil

            shutil.rmtree(made, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result.get(k) for k in ("timings", "placement", "placement_problems", "node_loss",
                                                  "outcomes_during_loss", "processes_left", "total_s")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
