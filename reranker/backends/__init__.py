"""The contract every scoring backend implements, and the table that picks one by name.

A backend turns padded int32 token arrays into logits. `launch` starts one forward batch and
may return before it finishes (a CUDA launch); `fetch` waits for launched batches and returns
their logits as float32 numpy arrays, in launch order. A synchronous backend (ONNX Runtime)
returns the logits from `launch` and `fetch` passes them through.

Adding a backend is one module with a class that implements `Backend` and a `load` classmethod,
plus one line in `BACKENDS`.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from reranker.errors import SettingsError


@runtime_checkable
class Backend(Protocol):
    """What ModelScorer needs from a backend."""

    name: str
    pad_token_id: int

    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> Any:
        """Starts one forward batch; returns a handle that `fetch` turns into logits."""

    def fetch(self, launched: list) -> list[np.ndarray]:
        """Waits for launched batches and returns their logits (float32, batch x labels) in order."""


class BackendClass(Protocol):
    """A backend's class: the devices it runs on and how to build it from settings."""

    devices: ClassVar[tuple[str, ...]]

    @classmethod
    def load(cls, settings, device: str, dtype) -> Backend: ...


# name -> "module:class". Imported only when chosen, so a CPU replica never imports torch through here.
BACKENDS = {
    "torch": "reranker.backends.torch:TorchBackend",
    "onnx": "reranker.backends.onnx:OnnxBackend",
    "onnx-int8": "reranker.backends.onnx:OnnxInt8Backend",
    "simulated-gpu": "reranker.backends.simulated:SimulatedGpuBackend",
}


def backend_name(setting: str, device: str) -> str:
    """The backend `auto` means on a device: ONNX Runtime's fused fp32 graph on CPU (about 2x torch), torch on GPU."""
    if setting != "auto":
        return setting
    return "torch" if device == "cuda" else "onnx"


def backend_class(name: str) -> BackendClass:
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise SettingsError(f"unknown backend '{name}'; choose one of {', '.join(['auto', *BACKENDS])}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_backend(settings, device: str, dtype) -> Backend:
    """Loads the backend that `settings.backend` names (or `auto` picks) for `device`."""
    name = backend_name(settings.backend, device)
    cls = backend_class(name)
    if device not in cls.devices:
        raise SettingsError(f"backend {name} runs on {' or '.join(cls.devices)} only; use backend torch on {device}")
    return cls.load(settings, device, dtype)
