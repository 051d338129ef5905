"""CUDA graphs of the torch forward over a fixed set of padded shapes (setting `cuda_graphs`).

An eager forward of the mBERT architecture makes about 600 torch calls from Python. On the H200
host one took 5.6-8.2 ms of a core to launch (benchmarks/launch_cost.py), and under load the
scorer process, launching on one GIL, was the limit while the GPU waited (benchmarks/RESULTS.md
7.8). A CUDA graph replays a whole captured forward with one call.

A graph has fixed shapes, so each batch runs in the smallest captured (rows, width) that holds it:
widths are the multiples of the scorer's padding step (at least `WIDTH_STEP_TOKENS`) up to the
model's max length, and with that step the scorer's batch planner fills a batch to exactly the
rows that the token budget allows at its width, which is always one of the captured row counts;
a batch with fewer rows (cut short by a longer pair after it, or the last of a window) pads its
rows up to the next of 1, 2, 3, 4, 6, 8, 12, ... (less than half again as many).
Padding rows attend to their first token only, so they compute finite garbage that is never read;
real rows are unaffected (rows of a BERT forward never mix).

All graphs share one memory pool, captured largest first. That is safe because every replay
happens under one lock, on the caller's stream, with its logits copied out behind it on the same
stream before any other replay can overwrite the pool. A batch that fits no graph (a budget
raised at runtime through `user_config`) runs eagerly.

`graph_shapes` and `pad_to_shape` are plain numpy and run anywhere; `CapturedForwards` needs CUDA,
except in a test that stands in its four CUDA calls.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

logger = logging.getLogger("ray.serve")

# Padding step of a batch's width when graphs are on (the eager GPU path pads to 8): 16 widths up
# to 512 tokens; a batch pads 16 tokens per row more on average.
WIDTH_STEP_TOKENS = 32
# Row counts a batch short of its full count pads up to (less than half again as many rows), besides
# each width's full batch.
PARTIAL_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def width_step(pad_to_multiple_of: int) -> int:
    """The padding step of batch widths with graphs: a multiple of the scorer's step, at least 32."""
    return pad_to_multiple_of * -(-WIDTH_STEP_TOKENS // pad_to_multiple_of)


def graph_shapes(max_length: int, max_batch_tokens: int, max_batch_size: int, step: int) -> list[tuple[int, int]]:
    """Every (rows, width) to capture: for each width, the full batch and the partial row counts below it."""
    shapes = []
    top = -(-max_length // step) * step
    for width in range(step, top + 1, step):
        full = max(1, min(max_batch_size, max_batch_tokens // width))
        shapes += [(rows, width) for rows in PARTIAL_ROWS if rows < full] + [(full, width)]
    return shapes


def pad_to_shape(
    input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, shape: tuple[int, int], pad_token_id: int
) -> np.ndarray:
    """The batch as one int32 (3, rows, width) block of `shape`: padding columns masked out, padding
    rows of pad tokens that attend to their first position only."""
    rows, width = input_ids.shape
    block = np.zeros((3, *shape), np.int32)
    block[0] = pad_token_id
    block[1, rows:, 0] = 1
    block[0, :rows, :width] = input_ids
    block[1, :rows, :width] = attention_mask
    block[2, :rows, :width] = token_type_ids
    return block


class ShapeTable:
    """The smallest captured shape that holds a batch: the narrowest width, then the fewest rows."""

    def __init__(self, shapes: list[tuple[int, int]]):
        self.widths = sorted({width for _, width in shapes})
        self.rows = {width: sorted(rows for rows, w in shapes if w == width) for width in self.widths}

    def fit(self, rows: int, width: int) -> Optional[tuple[int, int]]:
        at = bisect.bisect_left(self.widths, width)
        if at == len(self.widths):
            return None
        counts = self.rows[self.widths[at]]
        index = bisect.bisect_left(counts, rows)
        return (counts[index], self.widths[at]) if index < len(counts) else None


@dataclass
class Captured:
    """One graph's replay, the device block it reads and the logits it writes."""

    replay: Callable[[], None]
    block: object
    logits: object


class CapturedForwards:
    """The forward captured once per shape; `launch` replays the graph that holds a batch.

    The CUDA calls are in the four methods below `launch`, so a test can stand them in on a CPU
    (tests/unit/test_cuda_graphs.py) and run the rest (shape choice, capture order, padding, static
    buffers, logits read back per row) through a real model.
    """

    def __init__(self, forward: Callable, shapes: list[tuple[int, int]], pad_token_id: int, device: str = "cuda"):
        """`forward(block)` maps an int32 (3, rows, width) device block to float32 (rows, labels) logits."""
        import torch

        started = time.perf_counter()
        self.pad_token_id = pad_token_id
        self.device = device
        self.table = ShapeTable(shapes)
        self.graphs: dict[tuple[int, int], Captured] = {}
        self._lock = threading.Lock()
        with torch.inference_mode():
            self._warm_up(forward, [min(shapes), max(shapes, key=lambda s: s[0] * s[1])])
            for shape in sorted(shapes, key=lambda s: (s[0] * s[1], s), reverse=True):
                block = self._device_block(shape)
                replay, logits = self._capture(forward, block)
                self.graphs[shape] = Captured(replay, block, logits)
        self._synchronize()
        self.capture_seconds = time.perf_counter() - started
        logger.info("Captured %d CUDA graphs of the forward in %.1f s", len(self.graphs), self.capture_seconds)

    def _device_block(self, shape):
        """A block of padding rows only (what it holds does not matter to a capture, but stays finite)."""
        import torch

        none = np.zeros((0, 1), np.int32)
        return torch.from_numpy(pad_to_shape(none, none, none, shape, self.pad_token_id)).to(self.device)

    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray):
        """(host logits, ready event) of the replayed graph, or None when no graph holds the batch."""
        import torch

        rows = input_ids.shape[0]
        shape = self.table.fit(*input_ids.shape)
        if shape is None:
            return None
        captured = self.graphs[shape]
        host = self._pinned(torch.from_numpy(pad_to_shape(input_ids, attention_mask, token_type_ids, shape, self.pad_token_id)))
        with self._lock, torch.inference_mode():
            captured.block.copy_(host, non_blocking=True)
            captured.replay()
            logits = captured.logits[:rows].to("cpu", non_blocking=True, copy=True)  # the next replay overwrites
            ready = self._recorded_event()
        return logits, ready

    # ---- the CUDA calls ------------------------------------------------------------------------

    def _warm_up(self, forward: Callable, shapes: list[tuple[int, int]]) -> None:
        """Lazy initialization (cuBLAS handle and workspace of the stream) before any capture, on the
        side stream the captures then use, as torch's CUDA graph notes ask."""
        import torch

        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            for shape in shapes:
                forward(self._device_block(shape))
        torch.cuda.synchronize()

    def _capture(self, forward: Callable, block) -> tuple[Callable[[], None], object]:
        """(replay, logits): the forward on `block` captured as a graph in the shared pool."""
        import torch

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            logits = forward(block)
        return graph.replay, logits

    def _synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    @staticmethod
    def _pinned(host):
        return host.pin_memory()

    @staticmethod
    def _recorded_event():
        import torch

        ready = torch.cuda.Event()
        ready.record()
        return ready
