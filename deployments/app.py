"""Composition of the application, and the builder that serve_config.yaml imports."""

from ray.serve import Application

from deployments.ingress import Ingress
from deployments.scorer import Scorer
from deployments.settings import RerankerSettings, load_settings
from deployments.tokenizer import Tokenizer


def build_app(args: RerankerSettings) -> Application:
    """Builds ingress -> tokenizer -> scorer from typed app args; RERANKER_* environment variables win."""
    settings = load_settings(args.model_dump(exclude_unset=True))
    return Ingress.bind(Tokenizer.bind(settings), Scorer.bind(settings), settings)
