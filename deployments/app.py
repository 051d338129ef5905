"""Composition of the application, and the builder that serve_config.yaml imports."""

from ray.serve import Application

from deployments.ingress import ingress_deployment
from deployments.scorer import Scorer
from deployments.tokenizer import Tokenizer
from reranker.settings import RerankerSettings, load_settings


def build_app(args: RerankerSettings) -> Application:
    """Builds ingress -> tokenizer -> scorer from typed app args; RERANKER_* environment variables win."""
    settings = load_settings(args.model_dump(exclude_unset=True))
    return ingress_deployment(settings).bind(Tokenizer.bind(settings), Scorer.bind(settings), settings)
