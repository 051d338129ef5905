"""The last layer run for [CLS] only (reranker/backends/onnx_cls_only.py): same logits, less work,
and the graphs it cannot prove unchanged kept whole."""

from __future__ import annotations

import collections
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from reranker.backends import onnx as onnx_backend
from reranker.backends import onnx_cls_only
from reranker.backends.onnx import FP32_FILE, cache_dir_for, ensure_exported
from reranker.backends.onnx_cls_only import NotPrunable, prune_file, prune_last_layer
from reranker.model_files import read_model_config

HIDDEN, HEADS, FFN = 8, 2, 16


def _encoder(head: str, layers: int = 2, **attention_attrs):
    """Fused BERT layers as ORT's optimizer writes them (Attention, MatMul, SkipLayerNormalization,
    BiasGelu), on inputs x [batch, sequence, hidden] and mask [batch, sequence], then `head`:
    "cls" (token 0, a projection and tanh, like BERT's pooler), "mean" (mean over tokens) or
    "tokens" (every token's output, like token classification)."""
    rng = np.random.default_rng(0)
    initializers, nodes = [], []

    def const(name, value):
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    x = "x"
    for layer in range(layers):
        p = f"l{layer}"
        nodes += [
            helper.make_node("Attention", [x, const(f"{p}/wqkv", rng.standard_normal((HIDDEN, 3 * HIDDEN)) * 0.5),
                                           const(f"{p}/bqkv", rng.standard_normal(3 * HIDDEN) * 0.1), "mask"],
                             [f"{p}/att"], domain="com.microsoft", num_heads=HEADS, **attention_attrs),
            helper.make_node("MatMul", [f"{p}/att", const(f"{p}/wo", rng.standard_normal((HIDDEN, HIDDEN)) * 0.5)], [f"{p}/o"]),
            helper.make_node("SkipLayerNormalization", [f"{p}/o", x, const(f"{p}/g1", np.ones(HIDDEN)), const(f"{p}/b1", np.zeros(HIDDEN)),
                                                        const(f"{p}/bo", rng.standard_normal(HIDDEN) * 0.1)], [f"{p}/ln1"], domain="com.microsoft"),
            helper.make_node("MatMul", [f"{p}/ln1", const(f"{p}/wu", rng.standard_normal((HIDDEN, FFN)) * 0.5)], [f"{p}/u"]),
            helper.make_node("BiasGelu", [f"{p}/u", const(f"{p}/bu", rng.standard_normal(FFN) * 0.1)], [f"{p}/g"], domain="com.microsoft"),
            helper.make_node("MatMul", [f"{p}/g", const(f"{p}/wd", rng.standard_normal((FFN, HIDDEN)) * 0.5)], [f"{p}/d"]),
            helper.make_node("SkipLayerNormalization", [f"{p}/d", f"{p}/ln1", const(f"{p}/g2", np.ones(HIDDEN)), const(f"{p}/b2", np.zeros(HIDDEN)),
                                                        const(f"{p}/bd", rng.standard_normal(HIDDEN) * 0.1)], [f"{p}/out"], domain="com.microsoft"),
        ]
        x = f"{p}/out"
    if head == "cls":
        initializers.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
        nodes += [helper.make_node("Gather", [x, "zero"], ["cls"], axis=1),
                  helper.make_node("MatMul", ["cls", const("wp", rng.standard_normal((HIDDEN, 2)))], ["p"]),
                  helper.make_node("Tanh", ["p"], ["y"])]
    elif head == "mean":
        nodes.append(helper.make_node("ReduceMean", [x], ["y"], axes=[1]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
         helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(model, outputs=("y",)):
    rng = np.random.default_rng(1)
    lengths = np.array([7, 3, 1, 5])
    feeds = {"x": rng.standard_normal((4, 7, HIDDEN)).astype(np.float32),
             "mask": (np.arange(7)[None, :] < lengths[:, None]).astype(np.int32)}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs if name != "y")
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), feeds)


def test_pruned_layer_gives_the_same_output_from_one_row():
    whole = _encoder("cls")
    pruned = prune_last_layer(whole)
    ops = collections.Counter(node.op_type for node in pruned.graph.node)
    assert ops["Attention"] == 1 and ops["MultiHeadAttention"] == 1  # only the last layer changes
    (expected,) = _run(whole)
    got, first_layer, last_layer = _run(pruned, ("y", "l0/out", "l1/out"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The layer before still runs for every token (the last one's keys and values need them);
    # the last layer's output projection, FFN and norms run for token 0 alone.
    assert first_layer.shape == (4, 7, HIDDEN) and last_layer.shape == (4, 1, HIDDEN)


@pytest.mark.parametrize("head, reason", [
    ("mean", "ReduceMean .* reads every token"),
    ("tokens", "outputs every token"),
])
def test_a_head_that_reads_other_tokens_keeps_the_layer_whole(head, reason):
    with pytest.raises(NotPrunable, match=reason):
        prune_last_layer(_encoder(head))


def test_an_attention_it_does_not_know_keeps_the_layer_whole():
    with pytest.raises(NotPrunable, match="unidirectional"):
        prune_last_layer(_encoder("cls", unidirectional=1))


def test_exported_graph_is_pruned_and_keeps_scores(tiny_model_dir, tmp_path):
    """The tiny BERT's export: the last layer pruned, logits equal to the whole graph's (the torch
    parity of the pruned graph is tests/parity/test_onnx_backend.py), and pruning it again refused."""
    path = ensure_exported(str(tiny_model_dir), None, cache_root=str(tmp_path / "pruned"))
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["Attention"] == 1 and ops["MultiHeadAttention"] == 1
    whole = cache_dir_for(str(tiny_model_dir), None, str(tmp_path / "whole")) / FP32_FILE
    whole.parent.mkdir(parents=True)
    onnx_backend.export_fp32(str(tiny_model_dir), None, whole, cls_only=False)
    assert collections.Counter(node.op_type for node in onnx.load(str(whole)).graph.node)["Attention"] == 2
    vocab_size = read_model_config(str(tiny_model_dir))["vocab_size"]
    assert onnx_cls_only.max_logit_difference(str(whole), str(path), vocab_size) <= 1e-5
    before = path.read_bytes()
    assert "Split" in prune_file(path, vocab_size)  # the layer before feeds the pruned one's keys
    assert path.read_bytes() == before


def _refused(*args):
    raise ort.capi.onnxruntime_pybind11_state.InvalidArgument("a shape the pruned graph got wrong")


@pytest.mark.parametrize("check, reason", [
    (lambda *args: 0.5, "logits differ by 0.5"),
    (_refused, "does not run: a shape the pruned graph got wrong"),
])
def test_an_export_whose_pruned_graph_fails_its_check_keeps_the_layer_whole(tiny_model_dir, tmp_path, monkeypatch, caplog,
                                                                            check, reason):
    monkeypatch.setattr(onnx_cls_only, "max_logit_difference", check)
    caplog.set_level(logging.INFO, logger="ray.serve")
    path = ensure_exported(str(tiny_model_dir), None, cache_root=str(tmp_path))
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["Attention"] == 2 and ops["MultiHeadAttention"] == 0
    assert [p.name for p in path.parent.glob("*.onnx")] == [FP32_FILE]
    assert reason in caplog.text


def test_the_serving_process_logs_whether_its_export_child_pruned(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ray.serve")
    path = onnx_backend.exported_in_child(str(tiny_model_dir), None, cache_root=str(tmp_path))
    assert path.name == FP32_FILE
    assert "ONNX export runs the last layer for the [CLS] token only" in caplog.text
