"""Offline checks of k8s/, the Dockerfile and .dockerignore (issue 6).

Renders every kustomization with the real kustomize (`kubectl kustomize`), validates core
objects with kubernetes-validate, the RayService against KubeRay v1.7.0's CRD schema and its
serveConfigV2 against Ray Serve's own schema, and runs checkov and hadolint. No cluster, no
network. Tools: see tests/external_tools.py (they live in <repo>/.venv-tools or on PATH).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml


import k8s_helpers as h
from external_tools import require_tool

pytestmark = pytest.mark.k8s

KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu"]
OVERLAYS = ["k8s/overlays/cpu", "k8s/overlays/gpu"]
DEPLOYMENT_NAMES = {"Ingress", "Tokenizer", "Scorer"}
RAY_COMPONENTS = {"ray-head", "ray-cpu-worker", "ray-gpu-worker"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path: h.render(h.REPO_ROOT / path) for path in KUSTOMIZATIONS}


def _rayservice(rendered, path):
    return h.one(rendered[path], "RayService", "reranker")


def _serve_config(rendered, path) -> dict:
    return yaml.safe_load(_rayservice(rendered, path)["spec"]["serveConfigV2"])


# ---- rendering and schemas ----------------------------------------------------------------


def test_overlays_render_expected_objects(rendered):
    common = {"Namespace", "RayService", "PersistentVolumeClaim", "Job", "Ingress", "NetworkPolicy", "PodDisruptionBudget"}
    cpu_kinds = {d["kind"] for d in rendered["k8s/overlays/cpu"]}
    gpu_kinds = {d["kind"] for d in rendered["k8s/overlays/gpu"]}
    assert common <= cpu_kinds, common - cpu_kinds
    assert common | {"PodMonitor"} <= gpu_kinds, common - gpu_kinds
    base_kinds = {d["kind"] for d in rendered["k8s/base"]}
    assert {"RayService", "PodMonitor", "Ingress", "PodDisruptionBudget", "NetworkPolicy", "Job", "PersistentVolumeClaim"} <= base_kinds
    for path in OVERLAYS:
        for doc in rendered[path]:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "reranker", (path, doc["kind"], doc["metadata"]["name"])


def test_monitoring_included_in_gpu_overlay(rendered):
    assert (h.K8S_DIR / "monitoring" / "kustomization.yaml").is_file()
    kustomization = yaml.safe_load((h.K8S_DIR / "overlays" / "gpu" / "kustomization.yaml").read_text())
    assert "../../monitoring" in kustomization["resources"]
    assert "PrometheusRule" in {d["kind"] for d in rendered["k8s/overlays/gpu"]}
    assert "PrometheusRule" not in {d["kind"] for d in rendered["k8s/overlays/cpu"]}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_core_objects_valid_for_kubernetes(rendered, path):
    import kubernetes_validate

    checked = 0
    for doc in rendered[path]:
        if doc["kind"] in h.CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, h.KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {h.KUBERNETES_VERSION}: {exc}")
        checked += 1
    assert checked >= 6


def test_kubernetes_validate_rejects_a_typo(rendered):
    import kubernetes_validate

    job = copy.deepcopy(h.one(rendered["k8s/overlays/gpu"], "Job"))
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, h.KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def crd_validator():
    import jsonschema

    if not h.RAYSERVICE_SCHEMA.is_file():
        pytest.skip(f"KubeRay RayService CRD schema not found at {h.RAYSERVICE_SCHEMA}")
    schema = h.strict_crd_schema(json.loads(h.RAYSERVICE_SCHEMA.read_text()))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rayservice_matches_kuberay_crd(rendered, crd_validator, path):
    rayservice = _rayservice(rendered, path)
    assert rayservice["apiVersion"] == "ray.io/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(rayservice)]
    assert not errors, "\n".join(errors)


def test_crd_validation_rejects_a_typo(rendered, crd_validator):
    rayservice = copy.deepcopy(_rayservice(rendered, "k8s/overlays/gpu"))
    rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert list(crd_validator.iter_errors(rayservice))


# ---- serveConfigV2 ------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_serve_config_v2_is_serve_config_plus_documented_overrides(rendered, path):
    profile = h.load_overrides()["targets"][path]
    assert _serve_config(rendered, path) == h.expected_serve_config(profile)


def test_overrides_are_minimal_and_documented():
    serve_config = yaml.safe_load(h.SERVE_CONFIG.read_text())
    readme = (h.K8S_DIR / "README.md").read_text()
    overrides = h.load_overrides()
    assert set(overrides["targets"]) == set(KUSTOMIZATIONS)
    for profile, items in overrides["profiles"].items():
        paths = [item["path"] for item in items]
        assert len(paths) == len(set(paths)), f"duplicate override in profile {profile}"
        for item in items:
            assert h.get_path(serve_config, item["path"]) != item["value"], f"{profile}: {item['path']} changes nothing"
            assert item.get("why"), item["path"]
            row = [line for line in readme.splitlines() if f"`{item['path']}`" in line and f"| {profile} |" in line]
            assert row, f"k8s/README.md does not document override {item['path']} ({profile})"
            assert json.dumps(item["value"], separators=(", ", ": ")).replace('"', "") in row[0], row[0]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_serve_config_v2_loads_as_serve_deploy_schema(rendered, path):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config(rendered, path))
    [app] = schema.applications
    assert app.name == "reranker" and app.import_path == "deployments.app:build_app"
    assert schema.http_options.port == 8000
    assert {d.name for d in app.deployments} == DEPLOYMENT_NAMES
    for deployment in app.deployments:
        # Dependencies are baked into the image: no pip at run time.
        assert not deployment.ray_actor_options.runtime_env, deployment.name
    assert not app.runtime_env


def test_deployment_names_match_the_code(rendered):
    serve_config = yaml.safe_load(h.SERVE_CONFIG.read_text())
    [app_config] = serve_config["applications"]
    names = {d["name"] for d in app_config["deployments"]}
    assert names == DEPLOYMENT_NAMES
    for path in KUSTOMIZATIONS:
        [app] = _serve_config(rendered, path)["applications"]
        assert {d["name"] for d in app["deployments"]} == names, path

    # Serve's own path from `args` to an Application (typed args included), then its build step.
    from deployments.app import build_app
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app as build_serve_app

    try:
        app = call_user_app_builder_with_args_if_necessary(build_app, app_config["args"])
    except Exception as exc:  # noqa: BLE001 - report what Serve itself would hit on deploy
        pytest.fail(
            "Serve cannot build the app from serveConfigV2 args (the call Serve makes on deploy; it "
            f"turns args into the builder's pydantic type only if the annotation is a class, not a string): {exc!r}"
        )
    built = build_serve_app(app, name=app_config["name"])
    assert {d.name for d in built.deployments} == names


# ---- the RayService -----------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ray_version_matches_the_pin(rendered, path):
    import ray

    cluster = _rayservice(rendered, path)["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == h.RAY_VERSION == ray.__version__
    pyproject = h.REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        pins = re.findall(r"""["']ray(?:\[[^\]]*\])?\s*==\s*([0-9.]+)["']""", pyproject.read_text())
        assert pins and set(pins) == {h.RAY_VERSION}, f"pyproject.toml pins ray {pins}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_head_runs_no_replicas(rendered, path):
    rayservice = _rayservice(rendered, path)
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "num-gpus" not in head["rayStartParams"]
    assert "resources" not in head["rayStartParams"]
    for container in h.pod_containers(head["template"]["spec"]):
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    # Every deployment asks for something the head does not have (CPU, GPU or cpu_worker).
    [app] = _serve_config(rendered, path)["applications"]
    for deployment in app["deployments"]:
        options = deployment["ray_actor_options"]
        assert options.get("num_cpus", 0) > 0 or options.get("num_gpus", 0) > 0 or options.get("resources"), deployment["name"]
    assert rayservice["spec"]["excludeHeadPodFromServeSvc"] is True


def _groups(rendered, path):
    return dict(h.ray_groups(_rayservice(rendered, path)))


@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/gpu"])
def test_gpu_scorers_only_on_gpu_workers(rendered, path):
    groups = _groups(rendered, path)
    assert set(groups) == {"head", "cpu-workers", "gpu-workers"}
    gpu = groups["gpu-workers"]
    spec = gpu["template"]["spec"]
    resources = h.ray_container(spec)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1 and resources["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"], "GPU group needs a node selector"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    for name, group in groups.items():
        if name != "gpu-workers":
            for container in h.pod_containers(group["template"]["spec"]):
                assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), name
    [app] = _serve_config(rendered, path)["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    scorer = deployments["Scorer"]
    # Scorers per GPU pod (one GPU each) as serve_config.gpu.yaml runs them per GPU.
    per_pod = h.scorers_per_gpu_pod(scorer)
    gpu_config = yaml.safe_load((h.REPO_ROOT / "serve_config.gpu.yaml").read_text())
    assert per_pod == gpu_config["applications"][0]["args"]["replicas_per_gpu"]["scorer"]
    # The GPU group can hold every scorer replica, and the per-node cap does not stop the packing.
    assert scorer["autoscaling_config"]["max_replicas"] <= gpu["maxReplicas"] * per_pod
    assert scorer["max_replicas_per_node"] >= per_pod
    # More than one pod holds: any placement of the minimum spans two GPU pods, so losing one leaves scorers.
    assert scorer["autoscaling_config"]["min_replicas"] > per_pod
    assert scorer["autoscaling_config"]["min_replicas"] <= gpu["minReplicas"] * per_pod
    # A full pod's scorer CPUs fit in its Ray CPUs (Ray counts the CPU limit).
    assert scorer["ray_actor_options"]["num_cpus"] * per_pod <= float(resources["limits"]["cpu"])
    for name in ("Ingress", "Tokenizer"):
        assert deployments[name]["ray_actor_options"].get("num_gpus", 0) == 0
        assert "cpu_worker" in deployments[name]["ray_actor_options"]["resources"]
    assert "cpu_worker" in groups["cpu-workers"]["rayStartParams"]["resources"]
    assert "resources" not in gpu["rayStartParams"]


def test_cpu_overlay_has_no_gpu(rendered):
    groups = _groups(rendered, "k8s/overlays/cpu")
    assert set(groups) == {"head", "cpu-workers"}
    text = yaml.safe_dump(_rayservice(rendered, "k8s/overlays/cpu"))
    assert "nvidia.com/gpu" not in text
    [app] = _serve_config(rendered, "k8s/overlays/cpu")["applications"]
    for deployment in app["deployments"]:
        assert deployment["ray_actor_options"].get("num_gpus", 0) == 0, deployment["name"]
    assert "reranker-gpu-workers" not in {d["metadata"]["name"] for d in rendered["k8s/overlays/cpu"]}


def test_cpu_scorers_scale_out_one_per_worker_node(rendered):
    """A CPU scorer uses every core of its pod, so a second one goes to another worker pod: at most
    one per node, the scorer fits a worker's Ray CPUs, and the group has a pod for every replica."""
    groups = _groups(rendered, "k8s/overlays/cpu")
    workers = groups["cpu-workers"]
    [app] = _serve_config(rendered, "k8s/overlays/cpu")["applications"]
    scorer = {d["name"]: d for d in app["deployments"]}["Scorer"]
    assert scorer["max_replicas_per_node"] == 1
    assert scorer["autoscaling_config"]["max_replicas"] <= workers["maxReplicas"]
    cpu_limit = float(h.ray_container(workers["template"]["spec"])["resources"]["limits"]["cpu"])
    assert scorer["ray_actor_options"]["num_cpus"] <= cpu_limit
    # Not on the head (no CPUs there), so a pending scorer can only be placed by adding a worker.
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0" and scorer["ray_actor_options"]["num_cpus"] > 0


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_autoscaling(rendered, path):
    cluster = _rayservice(rendered, path)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["resources"]["requests"] and options["resources"]["limits"]
    assert options["securityContext"]["runAsNonRoot"] is True
    assert options["securityContext"]["allowPrivilegeEscalation"] is False
    for group in cluster["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    [app] = _serve_config(rendered, path)["applications"]
    for deployment in app["deployments"]:
        scaling = deployment["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"], deployment["name"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_container_has_requests_limits_and_runs_as_non_root(rendered, path):
    pod_specs = [(name, g["template"]["spec"]) for name, g in h.ray_groups(_rayservice(rendered, path))]
    pod_specs += [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in rendered[path] if d["kind"] == "Job"]
    assert len(pod_specs) >= 3
    for name, spec in pod_specs:
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in h.pod_containers(spec):
            where = f"{path} {name}/{container['name']}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][section]), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security.get("privileged"), where
            assert container["image"].split(":")[-1] not in ("", "latest") and ":" in container["image"], where


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ray_pods_expose_ports_and_carry_labels(rendered, path):
    for name, group in h.ray_groups(_rayservice(rendered, path)):
        template = group["template"]
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "reranker"
        assert labels["app.kubernetes.io/component"] in RAY_COMPONENTS
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        ports = {p["name"]: p["containerPort"] for p in h.ray_container(template["spec"])["ports"]}
        assert ports["metrics"] == 8080 and ports["serve"] == 8000, name
        if name == "head":
            assert ports["dashboard"] == 8265 and ports["gcs-server"] == 6379


# ---- model cache --------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_model_cache_downloaded_once_then_offline(rendered, path):
    docs = rendered[path]
    pvc = h.one(docs, "PersistentVolumeClaim", "reranker-hf-cache")
    job = h.one(docs, "Job", "reranker-model-download")
    job_spec = job["spec"]["template"]["spec"]
    job_env = h.env_of(job_spec["containers"][0])
    [app] = _serve_config(rendered, path)["applications"]
    # The Job downloads exactly what serveConfigV2 loads.
    assert job_env["MODEL"]["value"] == app["args"]["model"]
    assert (job_env["MODEL_REVISION"]["value"] or None) == app["args"]["revision"]
    assert job_env["HF_HUB_OFFLINE"]["value"] == "0"
    hf_home = job_env["HF_HOME"]["value"]
    script = job_spec["containers"][0]["command"][-1]
    assert ".reranker-ready" in script and "snapshot_download" in script
    # The token comes from an optional Secret, as a file.
    token_volume = [v for v in job_spec["volumes"] if "secret" in v]
    assert token_volume and token_volume[0]["secret"]["optional"] is True
    assert job_env["HF_TOKEN_PATH"]["value"].startswith(
        next(m["mountPath"] for m in job_spec["containers"][0]["volumeMounts"] if m["name"] == token_volume[0]["name"])
    )
    claim_volumes = [v for v in job_spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]]
    assert claim_volumes
    for name, group in h.ray_groups(_rayservice(rendered, path)):
        spec = group["template"]["spec"]
        claim = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]]
        assert claim and claim[0]["persistentVolumeClaim"]["readOnly"] is True, name
        env = h.env_of(h.ray_container(spec))
        assert env["HF_HOME"]["value"] == hf_home and env["HF_HUB_OFFLINE"]["value"] == "1", name
        assert env["RERANKER_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True, name
        mounts = {m["name"]: m for m in h.ray_container(spec)["volumeMounts"]}
        assert mounts[claim[0]["name"]]["mountPath"] == hf_home and mounts[claim[0]["name"]]["readOnly"] is True
        # Pods wait for the marker the Job writes last.
        waits = [c for c in spec.get("initContainers", []) if f"{hf_home}/.reranker-ready" in " ".join(c["command"])]
        assert waits, f"{name}: no init container waits for the model cache"


def test_download_job_script_writes_the_marker_the_pods_wait_for(rendered, tmp_path):
    """Runs the Job's script with a stand-in huggingface_hub, then a pod's wait command."""
    path = "k8s/overlays/gpu"
    job_container = h.one(rendered[path], "Job")["spec"]["template"]["spec"]["containers"][0]
    env = {name: item.get("value", "") for name, item in h.env_of(job_container).items()}
    hf_home = env["HF_HOME"]
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "huggingface_hub.py").write_text(
        "import json, os\n"
        "def snapshot_download(repo_id, revision=None, ignore_patterns=None):\n"
        "    open(os.environ['CALLS'], 'w').write(json.dumps([repo_id, revision, ignore_patterns]))\n"
        "    return '/snapshots/abc'\n"
    )
    cache = tmp_path / "hf"
    cache.mkdir()
    (cache / ".reranker-ready").write_text("stale")
    run_env = {**env, "HF_HOME": str(cache), "CALLS": str(tmp_path / "calls.json"), "PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin"}
    command = job_container["command"]
    assert command[0] == "python"
    proc = subprocess.run([sys.executable, *command[1:]], env=run_env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    repo_id, revision, ignore = json.loads((tmp_path / "calls.json").read_text())
    assert repo_id == env["MODEL"] and revision is None
    assert not any(p in ignore for p in ("*.bin", "*.safetensors", "*.json", "*.txt"))
    assert (cache / ".reranker-ready").read_text().startswith(f"{env['MODEL']}@main /snapshots/abc")
    # A Ray pod's init container finds it (its path rewritten to the temporary cache).
    head = h.ray_groups(_rayservice(rendered, path))[0][1]["template"]["spec"]
    [wait] = [c for c in head["initContainers"] if c["name"] == "wait-for-model"]
    script = wait["command"][-1].replace(hf_home, str(cache))
    assert subprocess.run(["bash", "-c", script], timeout=10).returncode == 0
    (cache / ".reranker-ready").unlink()
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["bash", "-c", script], timeout=1, capture_output=True)


def test_cache_volume_access_modes(rendered):
    gpu = h.one(rendered["k8s/overlays/gpu"], "PersistentVolumeClaim")
    cpu = h.one(rendered["k8s/overlays/cpu"], "PersistentVolumeClaim")
    assert gpu["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes
    assert cpu["spec"]["accessModes"] == ["ReadWriteOnce"]  # one laptop node


# ---- networking, monitoring, disruption ---------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
    return True


def _template_labels(rendered, path) -> dict[str, dict]:
    return {name: g["template"]["metadata"]["labels"] for name, g in h.ray_groups(_rayservice(rendered, path))}


@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/gpu"])
def test_pod_monitor_scrapes_metrics_port_on_head_and_workers(rendered, path):
    monitor = h.one(rendered[path], "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    labels = _template_labels(rendered, path)
    assert {"head", "cpu-workers", "gpu-workers"} <= set(labels)
    for name, pod_labels in labels.items():
        assert _selects(monitor["spec"]["selector"], pod_labels), name
    job_labels = h.one(rendered[path], "Job")["spec"]["template"]["metadata"]["labels"]
    assert not _selects(monitor["spec"]["selector"], job_labels)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ingress_targets_the_serve_service(rendered, path):
    ingress = h.one(rendered[path], "Ingress")
    rayservice = _rayservice(rendered, path)
    backends = [p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert backends == [{"name": f"{rayservice['metadata']['name']}-serve-svc", "port": {"number": 8000}}]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_grpc_service_reaches_every_serving_proxy(rendered, path):
    """KubeRay's serve Service has only port 8000; reranker-grpc carries grpc_options' port to the workers."""
    [app_port] = {_serve_config(rendered, path)["grpc_options"]["port"]}
    service = h.one(rendered[path], "Service", "reranker-grpc")
    [port] = service["spec"]["ports"]
    assert port["port"] == app_port and port["targetPort"] == "grpc"
    for name, group in h.ray_groups(_rayservice(rendered, path)):
        ports = {p["name"]: p["containerPort"] for p in h.ray_container(group["template"]["spec"])["ports"]}
        assert ports["grpc"] == app_port, name
        # KubeRay labels serving pods `ray.io/serve: "true"`; the Service selects them by the rest.
        labels = {**group["template"]["metadata"]["labels"], "ray.io/serve": "true"}
        assert service["spec"]["selector"].items() <= labels.items(), name
    job_labels = h.one(rendered[path], "Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()
    assert _allows(h.one(rendered[path], "NetworkPolicy"), app_port, "any")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_pod_disruption_budgets_select_worker_groups(rendered, path):
    labels = _template_labels(rendered, path)
    pdbs = [d for d in rendered[path] if d["kind"] == "PodDisruptionBudget"]
    workers = [name for name in labels if name != "head"]
    for name in workers:
        covering = [p for p in pdbs if _selects(p["spec"]["selector"], labels[name])]
        assert len(covering) == 1, f"{path}: {name} is covered by {len(covering)} PDBs"
        assert covering[0]["spec"]["maxUnavailable"] == 1
    for pdb in pdbs:
        assert any(_selects(pdb["spec"]["selector"], labels[name]) for name in workers), pdb["metadata"]["name"]


@pytest.mark.parametrize("path", OVERLAYS)
def test_deleted_worker_pods_drain_before_kubernetes_kills_them(rendered, path):
    """A deleted worker pod (scale-in, node drain, spot reclaim) gets SIGTERM; `ray start` drains
    its node for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S: long enough for Serve's proxy to drain (its
    least draining time) and answer the requests it took (the ingress deadline), and Kubernetes
    waits longer than that before it kills the pod."""
    from ray.serve._private.constants import PROXY_MIN_DRAINING_PERIOD_S

    from reranker.settings import load_settings

    args = _serve_config(rendered, path)["applications"][0].get("args") or {}
    deadline_s = load_settings(args, environ={}).request_deadline_s
    for name, spec in _groups(rendered, path).items():
        if name == "head":
            continue
        pod = spec["template"]["spec"]
        env = h.env_of(h.ray_container(pod))
        drain_s = float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]["value"])
        assert drain_s >= PROXY_MIN_DRAINING_PERIOD_S + deadline_s, (name, drain_s)
        assert pod["terminationGracePeriodSeconds"] >= drain_s + 10, (name, pod.get("terminationGracePeriodSeconds"))


def _allows(policy: dict, port: int, source: str) -> bool:
    """Whether an ingress rule admits TCP `port` from `source` ('any', 'ray', or a namespace)."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports and port not in {p["port"] for p in ports}:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if source == "ray" and "podSelector" in peer and "namespaceSelector" not in peer:
                if _selects(peer["podSelector"], {"app.kubernetes.io/name": "reranker", "app.kubernetes.io/component": "ray-cpu-worker"}):
                    return True
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            if ns is not None and ns == source and "podSelector" not in peer:
                return True
    return False


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_network_policy(rendered, path):
    policy = h.one(rendered[path], "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for name, labels in _template_labels(rendered, path).items():
        assert _selects(policy["spec"]["podSelector"], labels), name
    # Ray's internal ports are dynamic: pods of the cluster reach each other on any port.
    assert _allows(policy, 6379, "ray") and _allows(policy, 12345, "ray")
    assert _allows(policy, 8000, "any")
    assert _allows(policy, 8265, "kuberay-operator") and not _allows(policy, 8265, "any")
    assert _allows(policy, 8080, "monitoring") and not _allows(policy, 8080, "any")
    assert not _allows(policy, 6379, "any")
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443} <= egress_ports


# ---- scanners -----------------------------------------------------------------------------


def test_checkov_finds_nothing(rendered, tmp_path):
    checkov = require_tool("checkov")
    for path in OVERLAYS:
        name = path.rsplit("/", 1)[-1]
        docs = rendered[path]
        # checkov skips CRDs; scan the RayService's pod templates as plain Pods too.
        docs = docs + h.pods_for_scanning(_rayservice(rendered, path))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    (tmp_path / "Dockerfile").write_text((h.REPO_ROOT / "Dockerfile").read_text())
    proc = subprocess.run(
        [checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json", "--compact"],
        capture_output=True, text=True, timeout=180,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {r["check_type"]: r["summary"] for r in reports}
    assert {"kubernetes", "dockerfile"} <= set(summary), proc.stdout[:2000]
    assert summary["kubernetes"]["passed"] > 50 and summary["dockerfile"]["passed"] > 10
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for r in reports for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    for report in reports:
        for check in report["results"]["skipped_checks"]:
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason.strip()) > 10, f"{check['check_id']} skipped without a reason"
    assert proc.returncode == 0


def test_hadolint_dockerfile():
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(h.REPO_ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- image --------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (h.REPO_ROOT / "Dockerfile").read_text()


def test_dockerfile_matches_pins_and_runs_as_non_root():
    text = _dockerfile()
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert py == "py311"
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"rayproject/ray:{h.RAY_VERSION}-{py}-${{RAY_FLAVOR}}"]
    assert re.search(r"^ARG RAY_FLAVOR=gpu$", text, re.M)
    assert re.search(r'pip install [^\n]*"?torch==2\.13\.0"? \.', text), "pip install torch==2.13.0 . missing"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # A build argument bakes the model into HF_HOME.
    assert re.search(r"^ARG BAKE_MODEL=", text, re.M) and "snapshot_download(os.environ['BAKE_MODEL']" in text
    assert re.search(r"^ENV HF_HOME=", text, re.M)
    assert "runtime_env" not in text.replace("runtime_env.pip", "")


def test_dockerignore_keeps_the_context_small():
    lines = [
        line.strip() for line in (h.REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "deployments", "reranker", "serve_config.yaml"} <= allowed
    assert not allowed & {".venv", ".venv-tools", ".git", "tests", "benchmarks", "k8s"}


def test_images_agree_across_the_overlay(rendered):
    for path in OVERLAYS:
        images = set()
        for doc in rendered[path]:
            if doc["kind"] == "Job":
                images |= {c["image"] for c in h.pod_containers(doc["spec"]["template"]["spec"])}
            if doc["kind"] == "RayService":
                for _, group in h.ray_groups(doc):
                    images |= {c["image"] for c in h.pod_containers(group["template"]["spec"])}
        assert len(images) == 1, (path, images)
    assert h.one(rendered["k8s/overlays/cpu"], "Job")["spec"]["template"]["spec"]["containers"][0]["image"] == "reranker:dev"


# ---- docs ---------------------------------------------------------------------------------


def test_readme_commands_point_at_real_things():
    readme = (h.K8S_DIR / "README.md").read_text()
    assert f"--version {h.KUBERAY_VERSION}" in readme
    assert "helm install kuberay-operator kuberay/kuberay-operator" in readme
    applied = re.findall(r"kubectl apply -k (\S+)", readme)
    assert set(applied) >= set(OVERLAYS)
    for match in applied:
        assert (h.REPO_ROOT / match / "kustomization.yaml").is_file(), match
    assert re.search(r"kubectl (--namespace reranker )?wait --for=condition=Ready rayservice/reranker", readme)
    for overlay in OVERLAYS:
        assert (h.REPO_ROOT / overlay / "README.md").is_file(), overlay
    # The namespaces the NetworkPolicy trusts are the ones the README installs into.
    assert "--namespace kuberay-operator" in readme and "--namespace monitoring" in readme
