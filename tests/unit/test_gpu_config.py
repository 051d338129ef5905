"""The GPU Run command's config, serve_config.gpu.yaml (no Ray).

serve_config.gpu.yaml must stay serve_config.yaml plus the differences listed here, each of which
README.md documents; the builder sizes every deployment to the cluster's GPUs from
`replicas_per_gpu`. tests/serving/test_gpu_run_command.py runs the README GPU command on the simulated GPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from k8s_helpers import get_path, set_path

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = REPO_ROOT / "serve_config.gpu.yaml"
REMOVED = object()

# (path, value or REMOVED): the only differences between serve_config.yaml and serve_config.gpu.yaml.
# README.md ("Run on GPUs") has one row per path.
GPU_DIFFERENCES = [
    ("applications[reranker].args.replicas_per_gpu", {"ingress": 2, "tokenizer": 6, "scorer": 2}),
    ("applications[reranker].args.handle_calls_in_flight", 2),
    ("applications[reranker].deployments[Ingress].autoscaling_config", REMOVED),
    ("applications[reranker].deployments[Ingress].max_ongoing_requests", 32),
    ("applications[reranker].deployments[Ingress].max_queued_requests", 128),
    ("applications[reranker].deployments[Tokenizer].autoscaling_config", REMOVED),
    ("applications[reranker].deployments[Scorer].autoscaling_config", REMOVED),
    ("applications[reranker].deployments[Scorer].max_replicas_per_node", REMOVED),
    ("applications[reranker].deployments[Scorer].ray_actor_options", REMOVED),
    ("applications[reranker].deployments[Scorer].max_ongoing_requests", 64),
]
# What the builder sets from replicas_per_gpu; the config must leave these out, or they would win.
SIZED_BY_THE_BUILDER = ("num_replicas", "autoscaling_config")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def remove_path(config: dict, path: str) -> None:
    parent, _, key = path.rpartition(".")
    node = get_path(config, parent)
    assert isinstance(node, dict) and key in node, f"{path}: nothing to remove"
    del node[key]


def expected_gpu_config() -> dict:
    config = load(REPO_ROOT / "serve_config.yaml")
    for path, value in GPU_DIFFERENCES:
        if value is REMOVED:
            remove_path(config, path)
        else:
            set_path(config, path, value)
    return config


def deployment(config: dict, name: str) -> dict:
    [entry] = [d for d in config["applications"][0]["deployments"] if d["name"] == name]
    return entry


def replica_bounds(built_deployment) -> tuple[int, int]:
    """(min_replicas, max_replicas) of a deployment the builder autoscales; fails if it has a fixed count."""
    config = built_deployment._deployment_config
    assert config.autoscaling_config is not None, f"{built_deployment.name} is not autoscaled"
    return config.autoscaling_config.min_replicas, config.autoscaling_config.max_replicas


def test_gpu_config_is_serve_config_plus_documented_differences():
    assert load(GPU_CONFIG) == expected_gpu_config()


def test_every_difference_changes_something_and_is_documented():
    base = load(REPO_ROOT / "serve_config.yaml")
    readme = (REPO_ROOT / "README.md").read_text()
    for path, value in GPU_DIFFERENCES:
        if value is REMOVED:
            assert get_path(base, path) is not None, f"{path} is not in serve_config.yaml"
        else:
            assert get_path(base, path) != value, f"{path} changes nothing"
        rows = [line for line in readme.splitlines() if line.startswith("|") and f"`{path.split('.', 1)[1]}`" in line]
        assert rows, f"README.md does not document the GPU difference {path}"


def test_the_builder_sizes_what_the_config_leaves_out():
    config = load(GPU_CONFIG)
    for name in ("Ingress", "Tokenizer", "Scorer"):
        entry = deployment(config, name)
        for key in SIZED_BY_THE_BUILDER:
            assert key not in entry, f"{name}.{key} in serve_config.gpu.yaml would override replicas_per_gpu"
    assert "ray_actor_options" not in deployment(config, "Scorer")


def test_admission_takes_the_issue_load_without_429():
    """64 closed-loop clients on one GPU fit in the ingress's ongoing + queued requests (issue 13 saw 12,498 x 429)."""
    config = load(GPU_CONFIG)
    ingress = deployment(config, "Ingress")
    per_gpu = config["applications"][0]["args"]["replicas_per_gpu"]
    # Already with the one ingress replica per GPU the autoscaler starts from.
    assert ingress["max_ongoing_requests"] + ingress["max_queued_requests"] >= 2 * 64
    scorer = deployment(config, "Scorer")
    # Every request an ingress replica holds may be one scorer part; they fit in the scorers' slots.
    assert per_gpu["scorer"] * scorer["max_ongoing_requests"] >= per_gpu["ingress"] * ingress["max_ongoing_requests"]


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_the_builder_sizes_every_deployment_per_gpu(monkeypatch, gpus):
    """Serve's own path from the config's args to an Application, on a cluster with `gpus` GPUs."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app as build_serve_app

    import deployments.app as app_module

    monkeypatch.setattr(app_module, "cluster_gpus", lambda: gpus)
    [app_config] = load(GPU_CONFIG)["applications"]
    per_gpu = app_config["args"]["replicas_per_gpu"]
    built = build_serve_app(call_user_app_builder_with_args_if_necessary(app_module.build_app, app_config["args"]), name="reranker")
    by_name = {d.name: d for d in built.deployments}
    # Every deployment autoscaled: the CPU stages from one replica per GPU up to replicas_per_gpu
    # per GPU; the scorers as many as the GPUs take, always.
    assert replica_bounds(by_name["Ingress"]) == (gpus, per_gpu["ingress"] * gpus)
    assert replica_bounds(by_name["Tokenizer"]) == (gpus, per_gpu["tokenizer"] * gpus)
    assert replica_bounds(by_name["Scorer"]) == (per_gpu["scorer"] * gpus, per_gpu["scorer"] * gpus)
    assert by_name["Scorer"].ray_actor_options["num_gpus"] == pytest.approx(1 / per_gpu["scorer"])
    # The plain config stays as it was: the builder sizes nothing without replicas_per_gpu.
    plain = copy.deepcopy(app_config["args"])
    del plain["replicas_per_gpu"]
    built = build_serve_app(call_user_app_builder_with_args_if_necessary(app_module.build_app, plain), name="reranker")
    assert {d.name: d.ray_actor_options.get("num_gpus", 0) for d in built.deployments}["Scorer"] == 0


def test_a_cluster_without_gpus_is_a_clear_error():
    from deployments.app import sized_per_gpu
    from deployments.scorer import Scorer
    from deployments.tokenizer import Tokenizer
    from reranker.errors import SettingsError
    from reranker.settings import ReplicasPerGpu

    with pytest.raises(SettingsError, match="no GPU; run serve_config.yaml"):
        sized_per_gpu(ReplicasPerGpu(), 0, Tokenizer, Tokenizer, Scorer)


def test_fractional_scorers_share_each_gpu():
    from deployments.app import sized_per_gpu
    from deployments.scorer import Scorer
    from deployments.tokenizer import Tokenizer
    from reranker.settings import ReplicasPerGpu, load_settings

    per_gpu = load_settings({}, environ={"RERANKER_REPLICAS_PER_GPU": '{"scorer": 2, "tokenizer": 3}'}).replicas_per_gpu
    assert per_gpu == ReplicasPerGpu(scorer=2, tokenizer=3)
    _, tokenizer, scorer = sized_per_gpu(per_gpu, 4, Tokenizer, Tokenizer, Scorer)
    assert (replica_bounds(tokenizer), replica_bounds(scorer)) == ((4, 12), (8, 8))
    assert scorer.ray_actor_options == {"num_cpus": 1, "num_gpus": 0.5}
