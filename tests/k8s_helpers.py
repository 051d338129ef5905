"""Helpers for tests/assets/test_k8s.py: find the offline tools, render kustomizations, apply the
documented serveConfigV2 overrides, and walk RayService pod templates. No network, no cluster."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml
from external_tools import find_tool, require_tool

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
OVERRIDES_FILE = K8S_DIR / "serve-config-overrides.yaml"
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
# KubeRay v1.7.0's RayService CRD schema, laid beside the repo (not vendored into it).
RAYSERVICE_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "rayservice.ray.io_v1.schema.json"

# Kubernetes version the core manifests are validated against (kubernetes-validate schemas).
KUBERNETES_VERSION = "1.33"
RAY_VERSION = "2.60.0"
KUBERAY_VERSION = "1.7.0"

# Kinds that come from CRDs; kubernetes-validate has no schema for them.
CRD_KINDS = {"RayService", "PodMonitor", "PrometheusRule"}

def kustomize_command() -> list[str]:
    """`kubectl kustomize` (kustomize built into kubectl), else a standalone `kustomize build`."""
    kubectl = find_tool("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = find_tool("kustomize")
    if kustomize:
        return [kustomize, "build"]
    return [require_tool("kubectl"), "kustomize"]


def render(kustomization_dir: Path) -> list[dict]:
    """Renders a kustomization directory with the real kustomize; returns its documents."""
    proc = subprocess.run(
        [*kustomize_command(), str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert proc.returncode == 0, f"kustomize failed for {kustomization_dir}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict], kind: str, name: Optional[str] = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---- serveConfigV2 overrides -------------------------------------------------------------

_STEP = re.compile(r"^(?P<key>[A-Za-z0-9_]+)(?:\[(?P<name>[^\]]+)\])?$")


def _steps(path: str) -> list[tuple[str, Optional[str]]]:
    steps = []
    for part in path.split("."):
        match = _STEP.match(part)
        assert match, f"bad override path segment {part!r} in {path!r}"
        steps.append((match["key"], match["name"]))
    return steps


def _by_name(items: list, name: str, path: str) -> dict:
    matches = [item for item in items if isinstance(item, dict) and item.get("name") == name]
    assert len(matches) == 1, f"{path}: no single list item named {name!r}"
    return matches[0]


def get_path(config: dict, path: str) -> Any:
    node: Any = config
    for key, name in _steps(path):
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
        if name is not None:
            node = _by_name(node, name, path)
    return node


def set_path(config: dict, path: str, value: Any) -> None:
    """Sets a value; every list item on the way must exist, a missing final key is added."""
    steps = _steps(path)
    node: Any = config
    for index, (key, name) in enumerate(steps):
        last = index == len(steps) - 1
        if last and name is None:
            node[key] = copy.deepcopy(value)
            return
        assert key in node, f"{path}: {key!r} missing"
        node = node[key]
        if name is not None:
            node = _by_name(node, name, path)
            if last:
                raise AssertionError(f"{path}: cannot replace a whole list item")


def load_overrides() -> dict:
    return yaml.safe_load(OVERRIDES_FILE.read_text())


def expected_serve_config(profile: str) -> dict:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    for override in load_overrides()["profiles"][profile]:
        set_path(config, override["path"], override["value"])
    return config


# ---- RayService pod templates -------------------------------------------------------------


def ray_groups(rayservice: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head ('head') and every worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"])] + [
        (group["groupName"], group) for group in cluster.get("workerGroupSpecs", [])
    ]


def scorers_per_gpu_pod(scorer: dict) -> int:
    """How many Scorer replicas one GPU pod (one GPU) holds: 1 / the Scorer's num_gpus, which must
    divide the GPU evenly."""
    num_gpus = scorer["ray_actor_options"]["num_gpus"]
    per_pod = 1 / num_gpus
    if per_pod != int(per_pod):
        raise ValueError(f"num_gpus {num_gpus} leaves part of a GPU idle")
    return int(per_pod)


def pod_containers(pod_spec: dict) -> Iterator[dict]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def ray_container(pod_spec: dict) -> dict:
    """The Ray container is the first one (KubeRay's convention)."""
    return pod_spec["containers"][0]


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def pods_for_scanning(rayservice: dict) -> list[dict]:
    """Each RayService pod template as a plain Pod, so checkov (which skips CRDs) scans them."""
    pods = []
    for group, spec in ray_groups(rayservice):
        metadata = copy.deepcopy(spec["template"].get("metadata", {}))
        metadata["name"] = f"{rayservice['metadata']['name']}-{group}"
        metadata["namespace"] = rayservice["metadata"].get("namespace", "default")
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec["template"]["spec"]})
    return pods


def strict_crd_schema(schema: Any) -> Any:
    """The API server prunes unknown fields silently; forbid them so a typo fails the test.

    Objects that list `properties` and say nothing of extra keys get additionalProperties: false,
    except where the CRD keeps unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict_crd_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_crd_schema(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out
