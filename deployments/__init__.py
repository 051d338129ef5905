"""What Ray Serve deploys: the ingress, tokenizer and scorer deployments, composed in `app.py`.

Kept cheap on purpose: CPU replicas (ingress, tokenizer) import this package and must never
import torch.
"""
