"""ONNX Runtime backend for CPU scoring: export once, cache beside the model, optionally int8.

The fp32 file is the `torch.onnx.export` graph fused by ORT's BERT optimizer (Attention,
SkipLayerNorm, BiasGelu), its last layer run for the [CLS] token only where that provably changes
nothing (`reranker/backends/onnx_cls_only.py`); the int8 file is that graph with its projections
rewritten to int8 products (per-token activations, per-channel weights, smoothed:
`reranker/backends/onnx_int8.py`). Both live in
`<onnx_cache_dir or ~/.cache/reranker/onnx>/<model id>/<revision or local-hash>/` (the fp32
weights in a `.data` file beside the graph),
are exported at start-up when missing (in a child process, so the serving process never holds the
torch model the export loads), and can be baked into an image with
`python -m reranker.backends.onnx export --model <id-or-dir> [--revision R] [--int8] [--cache-dir D]`.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from reranker.errors import ModelLoadError
from reranker.settings import available_cpus
from reranker.model_files import model_file, describe_load_failure, is_local_path, read_model_config, resolve_max_length

logger = logging.getLogger("ray.serve")

# Versioned by method, so that a cache written by an earlier export is not picked up: v1 ran the
# last layer for every token (v2 prunes it where that provably changes nothing: onnx_cls_only.py);
# int8 files of the per-tensor quantizer or of the per-token u8 x s8 one, which saturated on CPUs
# without VNNI, are not named like this either.
FP32_FILE = "model-v2.onnx"
INT8_FILE = "model-v2-int8-per-token-u8u8.onnx"
OPSET = 17
PRUNING_LOG_PREFIX = "ONNX export"  # the export child's lines that the serving process logs again


def default_cache_root() -> Path:
    return Path(os.path.expanduser("~/.cache/reranker/onnx"))


def _sanitize(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/~.")) or "model"


def model_version(model: str, revision: Optional[str]) -> str:
    """The cache key of one model version: the hub revision (commit when known) or a local hash.

    A local directory is keyed by its config and its weight files' sizes and mtimes, so a
    retrained model written over the same directory gets a fresh export.
    """
    if is_local_path(model):
        directory = Path(os.path.expanduser(model))
        digest = hashlib.sha256((directory / "config.json").read_bytes())
        for path in sorted(directory.iterdir()):
            if path.suffix in (".safetensors", ".bin") or path.name.endswith(".index.json"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return "local-" + digest.hexdigest()[:16]
    config_path = model_file(model, revision, "config.json") or ""
    # A hub download lives in .../snapshots/<commit>/config.json: key by the commit itself.
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", config_path)
    return match.group(1) if match else _sanitize(revision or "main")


def cache_dir_for(model: str, revision: Optional[str], cache_root: Optional[str] = None) -> Path:
    """Where the ONNX files of this model version are cached."""
    root = Path(os.path.expanduser(cache_root)) if cache_root else default_cache_root()
    name = Path(os.path.expanduser(model)).resolve().name if is_local_path(model) else model
    return root / _sanitize(name) / model_version(model, revision)


def _replace_atomically(write, target: Path) -> None:
    """Writes through `write(tmp_path)` then renames, so a concurrent replica never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp.onnx")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an image may serve as another user
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_fp32(model: str, revision: Optional[str], target: Path, cls_only: bool = True) -> None:
    """torch.onnx.export of the classification model (dynamic batch and sequence), then BERT fusion,
    then (unless `cls_only` is False, which benchmarks/scorer_bench.py uses for its baseline) the
    last layer pruned to the [CLS] token where that changes nothing."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        hf_model = AutoModelForSequenceClassification.from_pretrained(
            model, revision=revision, attn_implementation="eager", dtype=torch.float32
        ).eval()
    except Exception as exc:
        raise ModelLoadError(describe_load_failure(model, revision, exc)) from exc
    config = hf_model.config
    accepts_types = "token_type_ids" in inspect.signature(hf_model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if accepts_types else [])
    example = {name: torch.ones((2, 8), dtype=torch.long) for name in names}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as work:
        raw = os.path.join(work, "raw.onnx")
        # The TorchScript exporter: its graphs are the ones ORT's BERT fusion recognizes, and it
        # needs no extra runtime dependency. Dynamic axes: batch and sequence.
        with torch.inference_mode():
            torch.onnx.export(
                hf_model, (), raw, kwargs=example, input_names=names, output_names=["logits"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        del hf_model

        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            raw, model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
            opt_level=0, use_gpu=False,
        )
        logger.info("ONNX fusion: %s", optimized.get_fused_operator_statistics())
        _publish_with_external_data(optimized, target, Path(work), config.vocab_size, cls_only)


def _publish_with_external_data(optimized, target: Path, work: Path, vocab_size: int, cls_only: bool) -> None:
    """Saves the graph as `target` with its weights in one file beside it, the data file first
    (with `cls_only`, the last layer pruned to [CLS] first, checked on random ids below `vocab_size`).

    ONNX Runtime maps the weights it keeps as they are (for mBERT mostly the 312 MiB word
    embedding; the projections are copied once, prepacked) from the file instead of copying them,
    so rows of tokens the traffic never uses stay on disk, and the rows it reads are clean file
    pages the kernel can drop and re-read. With scorer_bench's texts (about a third of the
    vocabulary) a scoring process held 686 MiB of PSS instead of 913, scores identical; with every
    row read it would be at most 889 (benchmarks/RESULTS.md section 8). The data file is named per
    export, so a model file never points at another export's weights; the loser of two concurrent
    exports leaves its data file behind.
    """
    from reranker.backends.onnx_cls_only import prune_file

    staged = work / f"{target.stem}-{os.urandom(4).hex()}{target.suffix}"
    optimized.save_model_to_file(str(staged), use_external_data_format=True, all_tensors_to_one_file=True)
    data = staged.with_name(staged.name + ".data")  # the location the model file records
    if cls_only:
        kept_whole = prune_file(staged, vocab_size)
        if kept_whole:
            logger.info("%s keeps the last layer whole: %s", PRUNING_LOG_PREFIX, kept_whole)
        else:
            logger.info("%s runs the last layer for the [CLS] token only (onnx_cls_only.py)", PRUNING_LOG_PREFIX)
    for path in (data, staged):
        os.chmod(path, 0o644)  # an image may serve as another user
    os.replace(data, target.parent / data.name)
    os.replace(staged, target)  # readers look for `target` only, so its weights are already there


def quantize_int8(model: str, revision: Optional[str], max_length: int, source: Path, target: Path) -> None:
    """int8 file from the fused fp32 one, calibrated with the model's own tokenizer (onnx_int8.py)."""
    import onnx

    from reranker.backends import onnx_int8

    fp32 = onnx.load(str(source))
    input_names = {value.name for value in fp32.graph.input}
    absmax = onnx_int8.activation_absmax(fp32, onnx_int8.calibration_batches(model, revision, input_names, max_length))
    quantized = onnx_int8.quantize_model(fp32, absmax)
    _replace_atomically(lambda out: onnx.save(quantized, out), target)


def ensure_exported(model: str, revision: Optional[str] = None, int8: bool = False, cache_root: Optional[str] = None) -> Path:
    """Path of the cached fp32 (or int8) ONNX file, exporting what is missing."""
    config = read_model_config(model, revision)  # a clear ModelLoadError for a missing or unreachable model
    directory = cache_dir_for(model, revision, cache_root)
    directory.mkdir(parents=True, exist_ok=True)
    fp32 = directory / FP32_FILE
    if not fp32.is_file():
        started = time.perf_counter()
        export_fp32(model, revision, fp32)
        logger.info("Exported %s to %s in %.1f s", model, fp32, time.perf_counter() - started)
    if not int8:
        return fp32
    quantized = directory / INT8_FILE
    if not quantized.is_file():
        started = time.perf_counter()
        quantize_int8(model, revision, resolve_max_length(config), fp32, quantized)
        logger.info("Quantized %s to %s in %.1f s", model, quantized, time.perf_counter() - started)
    return quantized


def exported_in_child(model: str, revision: Optional[str] = None, int8: bool = False, cache_root: Optional[str] = None) -> Path:
    """Like ensure_exported, but a missing export runs in a child process (this module's CLI).

    An export loads the torch model and traces it; in the serving process that memory would stay
    (about 3 GB for mBERT). A child gives it all back when it exits. Its time and peak RSS are logged.
    """
    read_model_config(model, revision)  # a clear ModelLoadError for a missing or unreachable model
    directory = cache_dir_for(model, revision, cache_root)
    path = directory / (INT8_FILE if int8 else FP32_FILE)
    if path.is_file():
        return path
    command = [sys.executable, "-m", "reranker.backends.onnx", "export", "--model", model]
    command += (["--revision", revision] if revision else []) + (["--int8"] if int8 else [])
    command += ["--cache-dir", cache_root] if cache_root else []
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    child = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if child.returncode != 0 or not path.is_file():
        lines = [line for line in child.stderr.splitlines() if line.startswith("error: ")]
        raise ModelLoadError(lines[-1][len("error: "):] if lines else f"ONNX export of {model} failed: {child.stderr[-2000:]}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    logger.info("Exported %s to %s in %.1f s in a child process (peak RSS of any child so far %.0f MiB)", model, path, elapsed, peak_mib)
    for line in child.stderr.splitlines():  # whether the last layer was pruned to [CLS], or why not
        if line.startswith(PRUNING_LOG_PREFIX):
            logger.info("%s", line)
    return path


class OnnxBackend:
    """Forward pass through an ONNX Runtime CPU session (fp32 fused, or its int8 rewrite)."""

    name = "onnx"
    devices = ("cpu",)
    int8 = False

    def __init__(self, path: Path, name: str, pad_token_id: int, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle compute threads sleep instead of spinning: the scorer shares its node's cores with
        # the proxy, ingress and tokenizer, which a spinning pool starves (about 1% slower alone).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.path = path
        self.name = name
        self.pad_token_id = pad_token_id

    @classmethod
    def load(cls, settings, device: str = "cpu", dtype=None) -> "OnnxBackend":
        path = exported_in_child(settings.model, settings.revision, int8=cls.int8, cache_root=settings.onnx_cache_dir)
        config = read_model_config(settings.model, settings.revision)
        threads = settings.torch_threads or available_cpus()
        return cls(path, cls.name, config.get("pad_token_id") or 0, threads)

    def launch(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """Runs the batch (ONNX Runtime is synchronous) and returns its logits."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {name: np.ascontiguousarray(value, dtype=np.int64) for name, value in feeds.items() if name in self.input_names}
        return self.session.run(["logits"], feeds)[0].astype(np.float32, copy=False)

    @staticmethod
    def fetch(launched: list) -> list[np.ndarray]:
        return list(launched)

    def forward_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return self.launch(input_ids, attention_mask, token_type_ids)


class OnnxInt8Backend(OnnxBackend):
    """The int8 rewrite of the fused graph (reranker/backends/onnx_int8.py); opt-in, scores move by ~1e-2."""

    name = "onnx-int8"
    int8 = True


def main(argv=None) -> int:
    """CLI: export (and optionally quantize) a model into the cache, e.g. while building an image."""
    parser = argparse.ArgumentParser(prog="python -m reranker.backends.onnx")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export the ONNX files of a model into the cache")
    export.add_argument("--model", required=True, help="hub id or local directory")
    export.add_argument("--revision", default=None)
    export.add_argument("--int8", action="store_true", help="also write the int8 file (calibrated, per-token)")
    export.add_argument("--cache-dir", default=None, help="cache root (default ~/.cache/reranker/onnx)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.setLevel(logging.INFO)
    try:
        path = ensure_exported(args.model, args.revision, int8=args.int8, cache_root=args.cache_dir)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for file in sorted(path.parent.glob("*.onnx")):
        print(file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
