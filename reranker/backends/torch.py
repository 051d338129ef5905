"""The transformers model in torch: SDPA attention, float16 on GPU, batches launched without waiting.

A launch must not wait for the GPU. Given a 2D padding mask, transformers asks whether any token
is padded (`padding_mask.all()`, masking_utils) to skip the mask: on CUDA that reads a value back,
so every launch waited for the batches launched before it, and launching (CPU) and computing (GPU)
took turns instead of overlapping. The backend passes the mask already in SDPA's 4D form
(batch, 1, 1, tokens; True = attend), which transformers uses as given: no read-back, and 601
torch calls per forward instead of 611. A model whose logits differ with the prepared mask (one
that reads a 4D mask otherwise) keeps the 2D mask; the check runs once at load.

With `capture_graphs` (the `cuda_graphs` setting) a batch replays a CUDA graph of the forward
captured at load instead (reranker/backends/cuda_graphs.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from reranker.errors import ModelLoadError
from reranker.model_files import describe_load_failure


def sdpa_mask(mask: torch.Tensor) -> torch.Tensor:
    """A (batch, tokens) 0/1 padding mask in SDPA's 4D form (batch, 1, 1, tokens; True = attend)."""
    return mask.bool()[:, None, None, :]


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
        self.prepared_mask = self.prepared_mask_matches()
        self.graphs = None

    def capture_graphs(self, shapes: list[tuple[int, int]]) -> float:
        """Captures the forward as a CUDA graph per (rows, width) (reranker/backends/cuda_graphs.py); seconds taken."""
        from reranker.backends.cuda_graphs import CapturedForwards

        try:
            self.graphs = CapturedForwards(self.graph_forward, shapes, self.pad_token_id, self.device)
        except Exception as exc:  # a model or library version whose forward cannot be captured
            raise ModelLoadError(f"capturing the forward as CUDA graphs failed ({exc}); set cuda_graphs: false") from exc
        return self.graphs.capture_seconds

    def graph_forward(self, block: torch.Tensor) -> torch.Tensor:
        """What a graph captures: float32 logits of an int32 (3, rows, width) device block."""
        return self.model(**self.model_inputs(block.long(), self.prepared_mask)).logits.float()

    def prepared_mask_matches(self) -> bool:
        """Whether the model scores a padded batch the same with the 4D mask as with the 2D one."""
        vocab = self.model.config.vocab_size
        ids = (np.arange(2 * 6, dtype=np.int32).reshape(2, 6) * 7 + 1) % vocab
        mask = np.ones_like(ids)
        mask[1, 3:] = 0
        ids[mask == 0] = self.pad_token_id
        types = np.zeros_like(ids)
        with torch.inference_mode():
            block = self.device_block(ids, mask, types)
            plain = self.model(**self.model_inputs(block, prepared=False)).logits.float()
            prepared = self.model(**self.model_inputs(block, prepared=True)).logits.float()
        # The two paths differ only in how SDPA is given the mask: rounding noise in half precision.
        tolerance = 1e-5 if self.dtype == torch.float32 else 1e-2
        return bool(torch.allclose(plain, prepared, rtol=tolerance, atol=tolerance))

    def device_block(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> torch.Tensor:
        """The three int32 arrays as one int64 (3, batch, tokens) tensor on the device (one pinned copy on GPU)."""
        block = torch.from_numpy(np.stack((input_ids, attention_mask, token_type_ids)))
        if self.device == "cuda":
            block = block.pin_memory().to(self.device, non_blocking=True)
        return block.long()

    def model_inputs(self, block: torch.Tensor, prepared: bool) -> dict:
        """The model's keyword arguments from a device block; `prepared`: the mask in SDPA's 4D form."""
        mask = block[1]
        inputs = {"input_ids": block[0], "attention_mask": sdpa_mask(mask) if prepared else mask}
        if self.accepts_token_type_ids:
            inputs["token_type_ids"] = block[2]
        return inputs

    @torch.inference_mode()
    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> LaunchedForward:
        """Starts one forward pass and returns without waiting for it.

        On GPU the three int32 arrays travel as one pinned block and widen to int64 there, so the
        CPU can collate the next batch while this one runs. The logits' copy to pinned host memory
        is queued behind the forward, with an event after it: `fetch` waits for that event only,
        never for batches launched later (by another thread) on the same stream.
        """
        if self.graphs is not None:
            replayed = self.graphs.launch(input_ids, attention_mask, token_type_ids)
            if replayed is not None:
                return LaunchedForward(*replayed)
        block = self.device_block(input_ids, attention_mask, token_type_ids)
        logits = self.model(**self.model_inputs(block, self.prepared_mask)).logits.float()
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
