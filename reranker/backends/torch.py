"""The transformers model in torch: SDPA attention, float16 on GPU, batches launched without waiting."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from reranker.errors import ModelLoadError
from reranker.model_files import describe_load_failure


@dataclass
class LaunchedForward:
    """One launched forward: its logits (on the host once `ready` has fired; None on CPU, computed already)."""

    logits: torch.Tensor
    ready: Optional[torch.cuda.Event]


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
    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> LaunchedForward:
        """Starts one forward pass and returns without waiting for it.

        On GPU the three int32 arrays travel as one pinned block and widen to int64 there, so the
        CPU can collate the next batch while this one runs. The logits' copy to pinned host memory
        is queued behind the forward, with an event after it: `fetch` waits for that event only,
        never for batches launched later (by another thread) on the same stream.
        """
        block = torch.from_numpy(np.stack((input_ids, attention_mask, token_type_ids)))
        if self.device == "cuda":
            block = block.pin_memory().to(self.device, non_blocking=True)
        block = block.long()
        inputs = {"input_ids": block[0], "attention_mask": block[1]}
        if self.accepts_token_type_ids:
            inputs["token_type_ids"] = block[2]
        logits = self.model(**inputs).logits.float()
        if self.device != "cuda":
            return LaunchedForward(logits, None)
        host = logits.to("cpu", non_blocking=True)  # pinned destination, queued after the forward
        ready = torch.cuda.Event()
        ready.record()
        return LaunchedForward(host, ready)

    @staticmethod
    def fetch(launched: list) -> list[np.ndarray]:
        """Waits for launched batches (their own events; the GIL is released) and returns their logits."""
        for forward in launched:
            if forward.ready is not None:
                forward.ready.synchronize()
        return [forward.logits.numpy() for forward in launched]
