"""Multilingual cross-encoder reranking service on Ray Serve.

Kept cheap on purpose: CPU replicas (ingress, tokenizer) import this package and must never
import torch.
"""

__version__ = "0.1.0"
