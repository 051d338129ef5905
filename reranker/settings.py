"""Typed settings with defaults, from the application's args and `RERANKER_*` environment variables."""

from __future__ import annotations

import json
import os
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reranker.errors import SettingsError

DEFAULT_MODEL = "amberoad/bert-multilingual-passage-reranking-msmarco"
ENV_PREFIX = "RERANKER_"


class BatchSettings(BaseModel):
    """The scorer's batching knobs; `user_config` changes them live through `reconfigure()`."""

    model_config = ConfigDict(extra="forbid")

    # Padded tokens (longest pair x pairs) in one forward pass; a request part is at most this.
    # Where unset, the scorer uses its device's default (reranker/scoring.py DEVICE_BATCH_DEFAULTS).
    max_batch_tokens: int = Field(4096, ge=1)
    # Pairs in one forward pass.
    max_batch_size: int = Field(8, ge=1)
    # Forward passes' worth of padded tokens in one Serve batch window. A window's pairs are sorted
    # by length before they are cut into forward passes, so a window of two pads less than two
    # windows of one: on a device that is busy, that is throughput. Device default: CPU 1, GPU 2.
    batch_window_forwards: int = Field(1, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)


class ReplicasPerGpu(BaseModel):
    """Replicas of each deployment per GPU of the cluster, counted when the app is built (serve_config.gpu.yaml)."""

    model_config = ConfigDict(extra="forbid")

    ingress: int = Field(2, ge=1)
    tokenizer: int = Field(6, ge=1)
    # n > 1: n scorers share each GPU (num_gpus 1/n each), each with its own process and GIL.
    scorer: int = Field(1, ge=1, le=8)


class RerankerSettings(BatchSettings):
    """Every setting of the service. Field docs are in README.md ("Configuration")."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # Model
    model: str = DEFAULT_MODEL
    revision: Optional[str] = None
    model_aliases: list[str] = Field(default_factory=list)
    relevant_label: Optional[Union[int, str]] = None
    max_length: Optional[int] = Field(None, ge=8)
    max_query_tokens: int = Field(256, ge=1)

    # Long passages
    long_passage_mode: Literal["truncate", "chunk"] = "truncate"
    max_chunks_per_doc: int = Field(10, ge=1, le=1000)
    chunk_overlap_tokens: int = Field(32, ge=0)

    # Scorer
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "simulated-gpu"] = "auto"
    # Compute threads of the scorer (torch and ONNX Runtime); unset: available_cpus().
    torch_threads: Optional[int] = Field(None, ge=1)
    pad_to_multiple_of: Optional[int] = Field(None, ge=1)
    # Replay the forward as CUDA graphs captured at load, one per padded shape (torch on CUDA, or
    # the simulated GPU): reranker/backends/cuda_graphs.py.
    cuda_graphs: bool = False
    onnx_cache_dir: Optional[str] = None
    # Set (the GPU Run command): the builder sizes every deployment to the cluster's GPUs, and the
    # config's replica counts and the Scorer's ray_actor_options must be left out (they would win).
    replicas_per_gpu: Optional[ReplicasPerGpu] = None

    # Ingress: limits are checked before any tokenization.
    max_documents: int = Field(1000, ge=1)
    max_document_chars: int = Field(50_000, ge=1)
    max_query_chars: int = Field(4_000, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # A backstop with room over what a 1 x 50 request of long passages takes alone on a 2-core CPU
    # (23-35 s measured), under the proxies' 60 s request_timeout_s. A request that would need more
    # than twice it even alone is refused at the door with 413 (reranker/admission.py).
    request_deadline_s: float = Field(50.0, gt=0)
    # A request whose estimated finish (the admitted backlog and itself, at the measured service
    # rate) is later than this fraction of request_deadline_s (25 s by default) is refused with 429
    # (reranker/admission.py).
    admission_max_wait_fraction: float = Field(0.5, gt=0, le=1)
    # Tokenizer calls and scorer calls each ingress replica has outstanding before further request
    # parts wait and go out together, up to one scorer window per call (reranker/coalescing.py).
    # Unset: every part is a call of its own (the GPU config sets 2).
    handle_calls_in_flight: Optional[int] = Field(None, ge=1)
    log_text: bool = False

    @field_validator("relevant_label")
    @classmethod
    def _label_not_blank(cls, value):
        if isinstance(value, str) and not value.strip():
            raise ValueError("relevant_label must be a label index or a non-empty label name")
        return value

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(**{name: getattr(self, name) for name in BatchSettings.model_fields})


def available_cpus(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a pod's limit).

    os.cpu_count() reports the node's cores, so a pod limited to 4 CPUs on a 64-core node would
    otherwise start 64 compute threads and thrash.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cgroup_cpu_max, encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def _env_value(raw: str):
    """Parse an environment value: JSON where it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_settings(args: Optional[dict] = None, environ: Optional[dict] = None) -> RerankerSettings:
    """Builds settings from application args, then `RERANKER_<FIELD>` environment overrides.

    The environment wins, so `RERANKER_MODEL=/path serve run serve_config.yaml` serves a local model.
    """
    environ = os.environ if environ is None else environ
    merged = {key: value for key, value in (args or {}).items() if value is not None}
    for name in RerankerSettings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            merged[name] = raw if name in ("model", "revision") else _env_value(raw)
    try:
        return RerankerSettings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"Invalid reranker settings: {problems}") from None


def load_api_keys(environ: Optional[dict] = None) -> list[str]:
    """API keys from `RERANKER_API_KEYS`: comma-separated keys, or the path of a file with one per line."""
    environ = os.environ if environ is None else environ
    raw = (environ.get("RERANKER_API_KEYS") or "").strip()
    if not raw:
        return []
    if os.path.isfile(raw):
        with open(raw, encoding="utf-8") as handle:
            candidates = handle.read().splitlines()
    else:
        candidates = raw.split(",")
    keys = [key.strip() for key in candidates if key.strip() and not key.strip().startswith("#")]
    if not keys:
        raise SettingsError("RERANKER_API_KEYS is set but holds no key")
    return keys
