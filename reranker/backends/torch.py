"""The transformers model in torch: SDPA attention, float16 on GPU, batches launched without waiting."""

from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import torch

from reranker.errors import ModelLoadError
from reranker.model_files import describe_load_failure


class TorchBackend:
    """Forward pass through the transformers model (SDPA attention, inference mode)."""

    name = "torch"
    devices = ("cpu", "cuda")

    @classmethod
    def load(cls, settings, device: str, dtype: str) -> "TorchBackend":
        """`dtype` by name (float32, float16, bfloat16)."""
        return cls(settings.model, settings.revision, device, getattr(torch, dtype))

    def __init__(self, model_id: str, revision: Optional[str], device: str, dtype: torch.dtype):
        from transformers import AutoModelForSequenceClassification

        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                model_id, revision=revision, attn_implementation="sdpa", dtype=dtype
            )
        except Exception as exc:
            raise ModelLoadError(describe_load_failure(model_id, revision, exc)) from exc
        self.model = model.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.pad_token_id = getattr(model.config, "pad_token_id", None) or 0
        # inspect.signature follows the decorators' __wrapped__; forward.__code__ is the wrapper's (*args, **kwargs).
        self.accepts_token_type_ids = "token_type_ids" in inspect.signature(self.model.forward).parameters

    @torch.inference_mode()
    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> torch.Tensor:
        """Starts one forward pass and returns its logits on the device, without waiting for them.

        On GPU the three int32 arrays travel as one pinned block and widen to int64 there, so the
        CPU can collate the next batch while this one runs.
        """
        block = torch.from_numpy(np.stack((input_ids, attention_mask, token_type_ids)))
        if self.device == "cuda":
            block = block.pin_memory().to(self.device, non_blocking=True)
        block = block.long()
        inputs = {"input_ids": block[0], "attention_mask": block[1]}
        if self.accepts_token_type_ids:
            inputs["token_type_ids"] = block[2]
        return self.model(**inputs).logits.float()

    @staticmethod
    def fetch(launched: list) -> list[np.ndarray]:
        """Waits for launched batches and returns their logits as numpy arrays (one transfer)."""
        if not launched:
            return []
        stacked = torch.cat(launched).cpu().numpy()
        return np.split(stacked, np.cumsum([t.shape[0] for t in launched])[:-1])
