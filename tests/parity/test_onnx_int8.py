"""The int8 rewrite (reranker/backends/onnx_int8.py): its arithmetic, its wiring, and batch independence.

Ranking fidelity needs real weights and lives in benchmarks/int8_fidelity.py; these tests prove
that the graph computes what the module says it computes:
- one quantized MatMul against the same quantization written in numpy, also with activations and
  weights at the extremes of their ranges (where ORT's u8 x s8 kernel saturates without VNNI);
- the whole tiny model against a torch emulation of it (same calibration, same smoothing, same
  per-token and per-channel rounding), which checks the QKV split, MultiHeadAttention and mask;
- a pair's int8 score does not depend on the other pairs in its batch (per-token scales).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import LONG_PASSAGE, MULTILINGUAL_TEXTS, QUERY
from onnx import TensorProto, helper, numpy_helper
from reference import Ours
from transformers import AutoModelForSequenceClassification

from reranker.backends import onnx_int8
from reranker.batching import collate
from reranker.errors import ModelLoadError
from reranker.backends.onnx import FP32_FILE, INT8_FILE, cache_dir_for, ensure_exported
from reranker.settings import RerankerSettings
from reranker.tokenization import PairEncoder
from reranker.model_files import load_tokenizer, read_model_config, resolve_max_length

PASSAGES = [*MULTILINGUAL_TEXTS, "", LONG_PASSAGE]


def _smoothing(x_absmax: np.ndarray, weight: np.ndarray, alpha: float = onnx_int8.SMOOTHING_ALPHA) -> np.ndarray:
    weight_absmax = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    return np.maximum(np.maximum(x_absmax, 1e-5) ** alpha / weight_absmax ** (1 - alpha), 1e-5)


def _reference_int8_matmul(x: np.ndarray, weight: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """Per-token asymmetric uint8 activations x per-channel int8 weights, in float64."""
    xs = x.astype(np.float64) / smooth
    high = np.maximum(xs.max(axis=-1, keepdims=True), 0)
    low = np.minimum(xs.min(axis=-1, keepdims=True), 0)
    scale = np.maximum((high - low) / 255, 1e-12)
    zero_point = np.round(-low / scale)
    q = np.clip(np.round(xs / scale) + zero_point, 0, 255)
    smoothed = weight.astype(np.float64) * smooth[:, None]
    weight_scale = np.abs(smoothed).max(axis=0) / 127
    weight_q = np.clip(np.round(smoothed / weight_scale), -127, 127)
    return ((q - zero_point) * scale) @ (weight_q * weight_scale)


def _quantize_one_matmul(x: np.ndarray, weight: np.ndarray):
    """A one-MatMul graph of `weight`, rewritten by onnx_int8 (calibrated on x itself) and run on x.

    Returns the quantized model, its output and the numpy reference of the same int8 arithmetic."""
    k = weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    absmax = {"x": np.abs(x).reshape(-1, k).max(axis=0)}
    quantized = onnx_int8.quantize_model(model, absmax)
    got = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return quantized, got, _reference_int8_matmul(x, weight, _smoothing(absmax["x"], weight))


def test_quantized_matmul_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    tokens, k, n = 12, 16, 24
    weight = (rng.standard_normal((k, n)) * 0.2).astype(np.float32)
    x = rng.standard_normal((2, tokens, k)).astype(np.float32)
    x[0, 3] *= 40  # one loud token: with one scale per tensor it would flatten the others
    x[1, :, 5] += 9  # one loud channel, which smoothing moves into the weights
    quantized, got, expected = _quantize_one_matmul(x, weight)
    assert collections.Counter(node.op_type for node in quantized.graph.node)["MatMulInteger"] == 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # ...and that is int8 close to the fp32 product, the quiet tokens included.
    exact = x @ weight
    assert np.max(np.abs(got - exact)) <= 0.02 * np.max(np.abs(exact))
    quiet = np.ones(tokens, bool)
    quiet[3] = False
    assert np.max(np.abs(got[0, quiet] - exact[0, quiet])) <= 0.02 * np.max(np.abs(exact[0, quiet]))


def test_quantized_matmul_is_exact_at_the_extremes_of_both_ranges():
    # Activations at 255 (and 0) and weights at +-127 everywhere: on x86 CPUs without VNNI, ONNX
    # Runtime's u8 x s8 kernel (VPMADDUBSW) adds two such products in int16 and saturates at
    # 32767; the products must come out exact on every CPU.
    k, n = 16, 6
    signs = np.array([1, -1, 1, -1, 1, -1], np.float32)
    weight = np.ones((k, n), np.float32) * signs * 0.25
    weight[::2, 4:] *= -1  # two columns that alternate in sign along k
    x = np.stack([
        np.full(k, 3.0),           # every channel at the top: q = 255, zero point 0
        np.full(k, -3.0),          # every channel at the bottom: q = 0, zero point 255
        np.tile([1.7, -0.85], k // 2),  # both ends: q = 255 and 0, zero point 85
    ]).astype(np.float32)[None]
    quantized, got, expected = _quantize_one_matmul(x, weight)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # These inputs are exactly representable, so the int8 product is the fp32 one.
    np.testing.assert_allclose(got, x @ weight, rtol=1e-5, atol=1e-5)
    # A VNNI CPU computes u8 x s8 exactly too, so there only the graph can show the kernel it asks
    # for: u8 x u8, the int8 weights shifted by the zero point 128.
    (product,) = [node for node in quantized.graph.node if node.op_type == "MatMulInteger"]
    constants = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    weight_u8, weight_zero_point = constants[product.input[1]], constants[product.input[3]]
    assert weight_u8.dtype == np.uint8 and weight_zero_point.dtype == np.uint8 and int(weight_zero_point) == 128
    assert {int(v) for v in np.unique(weight_u8)} == {128 - 127, 128 + 127}


def test_an_attention_it_cannot_rewrite_is_a_clear_load_error():
    hidden = 8
    attention = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2, unidirectional=1)
    graph = helper.make_graph(
        [attention], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((hidden, 3 * hidden), np.float32), "w"),
         numpy_helper.from_array(np.zeros(3 * hidden, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(ModelLoadError, match="unidirectional.*backend onnx"):
        onnx_int8.quantize_model(model, {"x": np.ones(hidden, np.float32)})


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory, tiny_model_dir):
    cache = tmp_path_factory.mktemp("int8-cache")
    ensure_exported(str(tiny_model_dir), None, int8=True, cache_root=str(cache))
    return cache


def test_rewrite_quantizes_every_projection(tiny_model_dir, int8_cache):
    directory = cache_dir_for(str(tiny_model_dir), None, str(int8_cache))
    fp32 = collections.Counter(n.op_type for n in onnx.load(str(directory / FP32_FILE)).graph.node)
    int8 = collections.Counter(n.op_type for n in onnx.load(str(directory / INT8_FILE)).graph.node)
    # The last layer is pruned to token 0 (onnx_cls_only.py): its QKV projection is a MatMul and
    # its attention a MultiHeadAttention in the fp32 file already.
    layers = fp32["Attention"] + fp32["MultiHeadAttention"]
    assert layers == 2 and fp32["MultiHeadAttention"] == 1 and fp32["MatMul"] == 3 * layers + 1
    assert int8["Attention"] == 0 and int8["MatMul"] == 0
    assert int8["MultiHeadAttention"] == layers
    assert int8["MatMulInteger"] == int8["QuantizeLinear"] == 4 * layers
    assert int8["Gemm"] == fp32["Gemm"]  # pooler and classifier stay fp32


def _scores(model_dir, cache, backend: str, max_batch_size: int):
    ours = Ours(model_dir, dtype="float32", backend=backend, onnx_cache_dir=str(cache), max_batch_size=max_batch_size)
    return ours.score(QUERY, PASSAGES)[1].raw


def test_int8_score_of_a_pair_does_not_depend_on_its_batch(tiny_model_dir, int8_cache):
    alone = _scores(tiny_model_dir, int8_cache, "onnx-int8", max_batch_size=1)
    batched = _scores(tiny_model_dir, int8_cache, "onnx-int8", max_batch_size=len(PASSAGES))
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)


def _torch_emulation(model_dir) -> np.ndarray:
    """Raw scores of the tiny model in torch, every encoder Linear doing the int8 arithmetic."""
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    linears = {name: module for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}."}
    max_length = resolve_max_length(read_model_config(str(model_dir)))
    absmax, real_tokens = {}, {}

    # The exported graph runs the last layer after its QKV projection for token 0 only
    # (onnx_cls_only.py), so those projections are calibrated on token 0 only.
    last_layer = f".layer.{model.config.num_hidden_layers - 1}."
    cls_only = {name for name in linears if last_layer in name and not name.endswith(("query", "key", "value"))}
    assert len(cls_only) == 3

    def record(name):
        def hook(module, inputs, output):
            x, mask = inputs[0].numpy(), real_tokens["mask"]
            x = x[:, :1][mask[:, :1]] if name in cls_only else x[mask]
            absmax[name] = np.maximum(absmax.get(name, 0), np.abs(x).max(axis=0))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in linears.items()]
    with torch.inference_mode():
        names = {"input_ids", "attention_mask", "token_type_ids"}
        for feeds in onnx_int8.calibration_batches(str(model_dir), None, names, max_length):
            real_tokens["mask"] = feeds["attention_mask"].astype(bool)
            model(**{name: torch.as_tensor(value) for name, value in feeds.items()})
    for handle in handles:
        handle.remove()

    def weight_of(module) -> np.ndarray:
        return module.weight.detach().numpy().T

    def emulated(module, smooth):
        def forward(x):
            y = _reference_int8_matmul(x.numpy(), weight_of(module), smooth)
            return torch.as_tensor(y, dtype=torch.float32) + module.bias
        return forward

    for name, module in linears.items():
        weight = weight_of(module)
        if name.endswith(("self.query", "self.key", "self.value")):
            # ONNX fuses query, key and value into one projection: one smoothing for all three.
            prefix = name.rsplit(".", 1)[0]
            weight = np.concatenate([weight_of(linears[f"{prefix}.{part}"]) for part in ("query", "key", "value")], axis=1)
        module.forward = emulated(module, _smoothing(absmax[name], weight))

    encoder = PairEncoder(load_tokenizer(str(model_dir)), max_length, RerankerSettings().max_query_tokens)
    pairs = encoder.encode(QUERY, PASSAGES)
    raw = []
    with torch.inference_mode():
        for index in range(pairs.num_pairs):  # one pair at a time: no padding in the emulation
            feeds = zip(("input_ids", "attention_mask", "token_type_ids"), collate(pairs, np.array([index])))
            logits = model(**{name: torch.as_tensor(value, dtype=torch.long) for name, value in feeds}).logits
            raw.append(float(logits[0, 1]))
    return np.array(raw)


def test_int8_model_matches_a_torch_emulation_of_the_same_arithmetic(tiny_model_dir, int8_cache):
    emulated = _torch_emulation(tiny_model_dir)
    int8 = _scores(tiny_model_dir, int8_cache, "onnx-int8", max_batch_size=len(PASSAGES))
    fp32 = _scores(tiny_model_dir, int8_cache, "onnx", max_batch_size=len(PASSAGES))
    # The emulation sits far closer to the int8 graph than fp32 does: the graph is the arithmetic.
    assert np.max(np.abs(int8 - emulated)) <= 2e-3
    assert np.max(np.abs(fp32 - emulated)) > 10 * np.max(np.abs(int8 - emulated))
