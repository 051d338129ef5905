"""A simulated GPU for machines without one: the CPU cost of an eager forward, then a GIL-free wait.

It runs on device "cpu" and loads no weights; it stands in for the float16 mBERT forward on an
H200 so the serving path (event loop, batching, handle calls) can be measured and tested on a
CPU machine. Per forward batch:

- `launch` does the CPU work of an eager transformers forward: for each torch call it holds the
  GIL for the Python between calls, then runs natively with the GIL released (as torch's bindings
  do around the dispatch and the CUDA launch). Per-call times and the call count are measured by
  `benchmarks/launch_cost.py` (full mBERT layer structure, tiny widths, on CPU).
- The simulated device runs the batch for GPU_FIXED_S + GPU_S_PER_TOKEN x padded tokens, starting
  when the launch starts or when the device finishes its previous batch, whichever is later, and
  never before the launch has ended (the last kernel is queued then).
- `fetch` sleeps until the device is done (the GIL is free meanwhile, as in a CUDA synchronize)
  and returns the logits.
- With CUDA graphs (`capture_graphs`, the `cuda_graphs` setting) a launch that fits a captured
  shape costs GRAPH_LAUNCH_TORCH_CALLS calls (pin, copy, replay, copy back, event) and the device
  runs the captured shape's padded tokens; a batch that fits none launches eagerly.
- `SIMULATED_GPU_LAUNCH_MS` (benchmarks only) sets the CPU time of one eager launch instead of
  this machine's CPU-path figure below: on the H200 host `benchmarks/launch_cost.py --device cuda`
  measured 5.6-8.2 ms per forward to return (RESULTS 7.8), where its CPU path took 2.7 ms.
- With `read_back_at_launch` (benchmarks only: `SIMULATED_GPU_READ_BACK_AT_LAUNCH=1`), a launch
  waits, after the embeddings' calls, until the device has finished everything queued before it,
  as transformers' `padding_mask.all()` made the torch backend do before it passed a prepared 4D
  mask (reranker/backends/torch.py). The wait releases the GIL and sleeps; CUDA's spin-wait
  would also burn a core.

Logits are a hash of each pair's token ids, types and positions under its attention mask, so a
pair scores the same in any batch, at any padding, in any process: tests compare scores over
HTTP with the in-process scorer's.

Processes that Ray gives the same GPU (fractional `num_gpus`: the same CUDA_VISIBLE_DEVICES)
share one simulated device: its timeline lives in a file in /dev/shm, updated under a lock, so
two scorers on one GPU get one GPU's time between them. A process without a GPU (num_gpus 0)
simulates a device of its own. The switching cost between CUDA contexts is not simulated.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from reranker.backends.cuda_graphs import ShapeTable, pad_to_shape
from reranker.model_files import read_model_config
from reranker.relevance import relevance_head

# Eager forward of the mBERT architecture (12 layers, SDPA), measured by benchmarks/launch_cost.py
# on the 2-core benchmark machine: 601 torch calls from Python, 2.7 us with the GIL and 6.05 us
# without it per call, 5.3 ms per forward (RESULTS.md, GPU serving section). The busy wait below
# is 1.0 us because the loop around it costs about 1.5 us of GIL-held Python itself: one launch
# here then costs the measured 5.3 ms of CPU.
LAUNCH_TORCH_CALLS = 600
LAUNCH_PYTHON_S_PER_CALL = 1.0e-6
LAUNCH_NATIVE_S_PER_CALL = 6.05e-6
# GIL-held Python of the loop around each simulated call (the comment above).
LAUNCH_LOOP_S_PER_CALL = 1.5e-6
LAUNCH_MS_ENV = "SIMULATED_GPU_LAUNCH_MS"
# H200, float16 mBERT, pre-encoded pairs (benchmarks/gpu/h200_gpu_results.md and issue 13):
# about 3 ms for 6,300 padded tokens, about 16 ms for 32,768 and 32 ms for 65,536.
GPU_FIXED_S = 0.0002
GPU_S_PER_TOKEN = 0.48e-6
# A graph launch: pin the block, copy it over, replay, copy the logits back, record an event.
GRAPH_LAUNCH_TORCH_CALLS = 5
# transformers builds the attention mask after the embeddings (about 10 of the 600 calls).
READ_BACK_AFTER_CALLS = 10
READ_BACK_ENV = "SIMULATED_GPU_READ_BACK_AT_LAUNCH"

# One odd 64-bit multiplier per position (fixed seed), for the pair hash in simulated_logits.
_POSITION_MULTIPLIERS = np.random.default_rng(13).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)


def simulated_logits(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, num_labels: int) -> np.ndarray:
    """Deterministic float32 logits (batch x labels) in [-4, 4) of padded pairs; padding never changes them.

    Each real token's (id, type) times its position's multiplier, summed modulo 2^64 per row (exact
    in any order, and padding adds zeros), then mixed per label: a few vectorized passes, so the
    simulation adds little CPU to the measured launch cost.
    """
    width = input_ids.shape[1]
    multipliers = np.resize(_POSITION_MULTIPLIERS, width)
    with np.errstate(over="ignore"):
        tokens = (input_ids.astype(np.uint64) * np.uint64(1000003) + token_type_ids.astype(np.uint64) + np.uint64(1))
        tokens *= attention_mask.astype(bool)
        rows = (tokens * multipliers).sum(axis=1, dtype=np.uint64)
        columns = []
        for label in range(num_labels):
            h = rows ^ np.uint64((0x9E3779B97F4A7C15 * (label + 1)) % 2**64)
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xC4CEB9FE1A85EC53)
            h ^= h >> np.uint64(33)
            columns.append((h >> np.uint64(11)).astype(np.float64) * (8.0 / 2**53) - 4.0)
    return np.stack(columns, axis=1).astype(np.float32)


class DeviceTimeline:
    """When the simulated device is free next (perf_counter seconds: CLOCK_MONOTONIC, one clock per machine).

    With a `path`, the time is kept in that file under an exclusive lock, shared by every process
    that opens the same path; without one, in this object.
    """

    def __init__(self, path: Optional[str] = None):
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    def free_at(self) -> float:
        """When the device finishes the work queued so far."""
        with self._lock:
            if self._fd is None:
                return self._free_at
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                return self._read_shared()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reserve(self, start_s: float, busy_s: float, not_before_s: float) -> float:
        """Queues `busy_s` of device time after `start_s` and the previous work; returns when it ends."""
        with self._lock:
            if self._fd is None:
                self._free_at = done_at = max(max(start_s, self._free_at) + busy_s, not_before_s)
                return done_at
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                done_at = max(max(start_s, self._read_shared()) + busy_s, not_before_s)
                os.pwrite(self._fd, struct.pack("d", done_at), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            return done_at


    def _read_shared(self) -> float:
        """The free-at time in the shared file (0 before anything was queued); the caller holds its lock."""
        raw = os.pread(self._fd, 8, 0)
        return struct.unpack("d", raw)[0] if len(raw) == 8 else 0.0


def shared_device_path() -> Optional[str]:
    """The timeline file of the GPU Ray assigned to this process, or None when it has none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or not os.path.isdir("/dev/shm"):
        return None
    return f"/dev/shm/reranker-simulated-gpu-{visible.split(',')[0]}-uid{os.getuid()}"


def launch_calibration(launch_ms: Optional[str]) -> dict:
    """Constructor arguments for an eager launch of `launch_ms` milliseconds of CPU; none when unset."""
    if not launch_ms:
        return {}
    per_call_s = float(launch_ms) / 1e3 / LAUNCH_TORCH_CALLS
    return {"launch_native_s_per_call": max(per_call_s - LAUNCH_PYTHON_S_PER_CALL - LAUNCH_LOOP_S_PER_CALL, 0.0)}


@dataclass
class SimulatedBatch:
    """One launched batch: its logits and when the simulated device finishes it (perf_counter)."""

    logits: np.ndarray
    done_at: float


class SimulatedGpuBackend:
    """Eager-forward CPU cost with the GIL, then a GIL-free wait for the simulated GPU time."""

    name = "simulated-gpu"
    devices = ("cpu",)

    @classmethod
    def load(cls, settings, device: str, dtype) -> "SimulatedGpuBackend":
        config = read_model_config(settings.model, settings.revision)
        head = relevance_head(config, settings.relevant_label)
        return cls(
            num_labels=head.num_labels,
            pad_token_id=config.get("pad_token_id") or 0,
            device_path=shared_device_path(),
            read_back_at_launch=os.environ.get(READ_BACK_ENV, "") == "1",
            **launch_calibration(os.environ.get(LAUNCH_MS_ENV)),
        )

    def __init__(
        self,
        num_labels: int = 2,
        pad_token_id: int = 0,
        launch_torch_calls: int = LAUNCH_TORCH_CALLS,
        launch_python_s_per_call: float = LAUNCH_PYTHON_S_PER_CALL,
        launch_native_s_per_call: float = LAUNCH_NATIVE_S_PER_CALL,
        gpu_fixed_s: float = GPU_FIXED_S,
        gpu_s_per_token: float = GPU_S_PER_TOKEN,
        device_path: Optional[str] = None,
        read_back_at_launch: bool = False,
    ):
        self.num_labels = num_labels
        self.pad_token_id = pad_token_id
        self.launch_torch_calls = launch_torch_calls
        self.launch_python_s_per_call = launch_python_s_per_call
        self.gpu_fixed_s = gpu_fixed_s
        self.gpu_s_per_token = gpu_s_per_token
        self.read_back_at_launch = read_back_at_launch
        self.graph_table: Optional[ShapeTable] = None
        # One timeline per device: the health check's warm-up may launch beside a batch, and
        # scorers sharing a GPU share its time.
        self.timeline = DeviceTimeline(device_path)
        self._native_block = b"\0" * max(2048, int(launch_native_s_per_call * self._hash_bytes_per_s()))

    @staticmethod
    def _hash_bytes_per_s() -> float:
        """How many bytes sha256 hashes per second here (it releases the GIL above 2 KiB)."""
        block = b"\0" * (1 << 20)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            hashlib.sha256(block).digest()
            best = min(best, time.perf_counter() - started)
        return len(block) / max(best, 1e-9)

    def capture_graphs(self, shapes: list[tuple[int, int]]) -> float:
        """Launches that fit one of `shapes` cost a graph replay from now on; nothing to capture here."""
        self.graph_table = ShapeTable(shapes)
        return 0.0

    def gpu_seconds(self, padded_tokens: int) -> float:
        """Simulated device time of one forward batch."""
        return self.gpu_fixed_s + self.gpu_s_per_token * padded_tokens

    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> SimulatedBatch:
        """The eager forward's CPU work (GIL held, then released, per torch call); queues the device time."""
        started = device_from = time.perf_counter()
        calls, padded_tokens, read_back = self.launch_torch_calls, int(input_ids.size), self.read_back_at_launch
        shape = self.graph_table.fit(*input_ids.shape) if self.graph_table is not None else None
        if shape is not None:
            calls, padded_tokens, read_back = GRAPH_LAUNCH_TORCH_CALLS, shape[0] * shape[1], False
            pad_to_shape(input_ids, attention_mask, token_type_ids, shape, self.pad_token_id)  # the host work of a replay
        for call in range(calls):
            if read_back and call == READ_BACK_AFTER_CALLS:
                wait_s = self.timeline.free_at() - time.perf_counter()
                if wait_s > 0:
                    time.sleep(wait_s)
                device_from = time.perf_counter()
            python_until = time.perf_counter() + self.launch_python_s_per_call
            while time.perf_counter() < python_until:  # Python bytecode: holds the GIL
                pass
            hashlib.sha256(self._native_block).digest()  # native work without the GIL
        logits = simulated_logits(input_ids, attention_mask, token_type_ids, self.num_labels)
        done_at = self.timeline.reserve(device_from if read_back else started, self.gpu_seconds(padded_tokens), time.perf_counter())
        return SimulatedBatch(logits, done_at)

    @staticmethod
    def fetch(launched: list) -> list[np.ndarray]:
        """Sleeps (GIL released) until the last launched batch is done; their logits in order."""
        if not launched:
            return []
        wait_s = max(batch.done_at for batch in launched) - time.perf_counter()
        if wait_s > 0:
            time.sleep(wait_s)
        return [batch.logits for batch in launched]
