"""Composition of the application, and the builder that serve_config.yaml and serve_config.gpu.yaml import."""

from ray.serve import Application, Deployment

from deployments.ingress import ingress_deployment
from deployments.scorer import Scorer
from deployments.tokenizer import Tokenizer
from reranker.errors import SettingsError
from reranker.settings import ReplicasPerGpu, RerankerSettings, load_settings


def build_app(args: RerankerSettings) -> Application:
    """Builds ingress -> tokenizer -> scorer from typed app args; RERANKER_* environment variables win."""
    settings = load_settings(args.model_dump(exclude_unset=True))
    ingress, tokenizer, scorer = ingress_deployment(settings), Tokenizer, Scorer
    if settings.replicas_per_gpu is not None:
        ingress, tokenizer, scorer = sized_per_gpu(settings.replicas_per_gpu, cluster_gpus(), ingress, tokenizer, scorer)
    return ingress.bind(tokenizer.bind(settings), scorer.bind(settings), settings)


def cluster_gpus() -> int:
    """GPUs of the Ray cluster the app is being built on (the builder runs inside it)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


# Autoscaling of the GPU Run command, per GPU as k8s/'s GPU profile does it per GPU pod: the CPU
# stages start at one replica per GPU and grow to `replicas_per_gpu` per GPU as requests wait on
# them; scorers hold their share of a GPU, so there are always as many as the GPUs take.
# (The scorers' min_replicas equals max_replicas: their target moves nothing.) The GPU config
# coalesces the ingress's calls under load (handle_calls_in_flight), so a tokenizer call then
# carries up to a scorer window of requests (about 4 long 1 x 50): 2 calls, not 4 requests.
TARGET_ONGOING_REQUESTS = {"Ingress": 16, "Tokenizer": 2, "Scorer": 32}
UPSCALE_DELAY_S = 2.0
DOWNSCALE_DELAY_S = 60.0


def autoscaling(min_replicas: int, max_replicas: int, target_ongoing_requests: float) -> dict:
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
        "upscale_delay_s": UPSCALE_DELAY_S,
        "downscale_delay_s": DOWNSCALE_DELAY_S,
    }


def sized_per_gpu(
    per_gpu: ReplicasPerGpu, gpus: int, ingress: Deployment, tokenizer: Deployment, scorer: Deployment
) -> tuple[Deployment, Deployment, Deployment]:
    """The three deployments autoscaled up to replicas per GPU x GPUs; scorers take 1 / per_gpu.scorer of a GPU each."""
    if gpus < 1:
        raise SettingsError(
            "replicas_per_gpu is set (serve_config.gpu.yaml) but this Ray cluster has no GPU; "
            "run serve_config.yaml on a machine without one."
        )
    scorers = per_gpu.scorer * gpus
    return (
        ingress.options(autoscaling_config=autoscaling(gpus, per_gpu.ingress * gpus, TARGET_ONGOING_REQUESTS["Ingress"])),
        tokenizer.options(
            autoscaling_config=autoscaling(gpus, per_gpu.tokenizer * gpus, TARGET_ONGOING_REQUESTS["Tokenizer"])
        ),
        scorer.options(
            autoscaling_config=autoscaling(scorers, scorers, TARGET_ONGOING_REQUESTS["Scorer"]),
            ray_actor_options={"num_cpus": 1, "num_gpus": 1 / per_gpu.scorer},
        ),
    )
