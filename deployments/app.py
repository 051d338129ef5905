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


def sized_per_gpu(
    per_gpu: ReplicasPerGpu, gpus: int, ingress: Deployment, tokenizer: Deployment, scorer: Deployment
) -> tuple[Deployment, Deployment, Deployment]:
    """The three deployments with replicas per GPU x GPUs; scorers take 1 / per_gpu.scorer of a GPU each."""
    if gpus < 1:
        raise SettingsError(
            "replicas_per_gpu is set (serve_config.gpu.yaml) but this Ray cluster has no GPU; "
            "run serve_config.yaml on a machine without one."
        )
    return (
        ingress.options(num_replicas=per_gpu.ingress * gpus),
        tokenizer.options(num_replicas=per_gpu.tokenizer * gpus),
        scorer.options(
            num_replicas=per_gpu.scorer * gpus,
            ray_actor_options={"num_cpus": 1, "num_gpus": 1 / per_gpu.scorer},
        ),
    )
