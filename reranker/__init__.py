"""The reranker's core: everything that runs without Ray Serve's deployments.

Kept cheap on purpose: CPU replicas (ingress, tokenizer) import this package and must never
import torch. Only `reranker.scoring` and `reranker.backends.torch` do.
"""

__version__ = "0.1.0"
