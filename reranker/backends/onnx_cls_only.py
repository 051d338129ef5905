"""The last encoder layer of the fused ONNX graph, run for the [CLS] token only.

A sequence-classification head reads one position of the last layer: BERT's pooler (and
XLM-R's classifier) take token 0. Every other token's output of the last layer is computed and
thrown away: its attention output projection, both feed-forward projections, GELU and two layer
norms, three quarters of the layer's products (about 6% of a 12-layer model's FLOPs). Keys and
values still need every token, so the rewrite keeps the layer's QKV projection for every token
(the same `MatMul`, which the int8 rewrite then quantizes exactly as before), attends with the
query of token 0 only (`MultiHeadAttention` takes a query shorter than its keys), and lets the
rest of the layer run on that one row: the residual input is token 0 of the layer's input.

It is applied at export, only where it provably changes nothing: the last `Attention` must be one
this rewrite knows (no attributes beyond heads, scale and mask fill value, no past state), and
everything downstream of it must be row-wise ops that end in a selection of token 0 (a `Gather`
or `Slice` on the sequence axis). Anything else (a mean-pooling head, a token-classification
output) keeps the whole graph, and `prune_last_layer` says why. `prune_file` then runs both graphs
on random padded batches and keeps the pruned one only if ONNX Runtime runs it and its logits
match (benchmarks/RESULTS.md section 1 has its speed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MS = "com.microsoft"
# Ops that compute each token's row from that row alone (given constant weights and biases).
ROW_WISE = {
    ("", "MatMul"), ("", "Add"), ("", "Mul"), ("", "Div"), ("", "Sub"), ("", "Erf"), ("", "Tanh"),
    ("", "Relu"), ("", "Sigmoid"), ("", "LayerNormalization"), ("", "Cast"), ("", "Identity"),
    (_MS, "SkipLayerNormalization"), (_MS, "BiasGelu"), (_MS, "FastGelu"), (_MS, "Gelu"),
    (_MS, "SkipSimplifiedLayerNormalization"), (_MS, "SimplifiedLayerNormalization"),
}
# The fused Attention's attributes that MultiHeadAttention takes as they are (the int8 rewrite
# turns Attention into MultiHeadAttention too, and refuses the others likewise).
ATTENTION_ATTRIBUTES = {"num_heads", "mask_filter_value", "scale"}


class NotPrunable(Exception):
    """The graph does not have the shape this rewrite can prove unchanged; the message says why."""


def _constants(model) -> dict:
    """{name: TensorProto} of the initializers and of the `Constant` nodes that hold a tensor."""
    values = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            values[node.output[0]] = helper.get_attribute_value(node.attribute[0])
    return values


def _is_token_zero(node, constants: dict) -> bool:
    """Gather(x, 0, axis=1), or Slice(x, [0], [1], [1]): selects token 0 of [batch, sequence, hidden]."""

    def value(name: str) -> Optional[np.ndarray]:
        return numpy_helper.to_array(constants[name]) if name in constants else None

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gather" and node.domain == "" and attrs.get("axis", 0) == 1:
        index = value(node.input[1])
        return index is not None and index.size == 1 and int(index.reshape(-1)[0]) == 0
    if node.op_type == "Slice" and node.domain == "" and len(node.input) >= 4:
        starts, ends, axes = (value(name) for name in node.input[1:4])
        if any(v is None or v.size != 1 for v in (starts, ends, axes)):
            return False
        steps = value(node.input[4]) if len(node.input) > 4 and node.input[4] else np.array([1])
        if steps is None or steps.size != 1:
            return False
        return int(axes[0]) == 1 and int(starts[0]) == 0 and int(ends[0]) == 1 and int(steps[0]) == 1
    return False


def _check_downstream(model, attention_index: int, constants: dict) -> None:
    """Every path from the last attention's output (and from its input, past the attention) reaches
    the graph's outputs through row-wise ops and then a selection of token 0; raises NotPrunable."""
    nodes = model.graph.node
    attention = nodes[attention_index]
    graph_outputs = {output.name for output in model.graph.output}
    rows = {attention.output[0]}  # tensors that still hold one row per token of the last layer
    layer_input = attention.input[0]
    for index, node in enumerate(nodes):
        if index == attention_index:
            continue
        touched = [name for name in node.input if name in rows or (name == layer_input and index > attention_index)]
        if not touched:
            continue
        if _is_token_zero(node, constants) and node.input[0] in touched:
            continue
        if (node.domain, node.op_type) not in ROW_WISE:
            raise NotPrunable(f"{node.op_type} {node.name!r} reads every token of the last layer")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" and (node.input[1] not in constants or len(constants[node.input[1]].dims) != 2):
            raise NotPrunable(f"MatMul {node.name!r} mixes tokens of the last layer")
        if node.op_type == "LayerNormalization" and attrs.get("axis", -1) not in (-1, 2):
            raise NotPrunable(f"LayerNormalization {node.name!r} normalizes across tokens")
        rows.update(node.output)
    leaked = (rows | {layer_input}) & graph_outputs
    if leaked:
        raise NotPrunable(f"the graph outputs every token of the last layer ({sorted(leaked)})")


def prune_last_layer(model) -> onnx.ModelProto:
    """A copy of the fused fp32 graph whose last layer runs for token 0 only; raises NotPrunable."""
    nodes = list(model.graph.node)
    attentions = [i for i, node in enumerate(nodes) if node.op_type == "Attention" and node.domain == _MS]
    if not attentions:
        raise NotPrunable("no fused Attention in the graph")
    index = attentions[-1]
    attention = nodes[index]
    attrs = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    if set(attrs) - ATTENTION_ATTRIBUTES or len(attention.input) > 4 or len(attention.output) > 1:
        raise NotPrunable(f"the last Attention has attributes {sorted(attrs)} and {len(attention.input)} inputs")
    constants = _constants(model)
    weight = constants.get(attention.input[1])
    if weight is None or len(weight.dims) != 2 or weight.dims[1] % 3:
        raise NotPrunable("the last Attention's QKV weight is not a constant [hidden, 3 x hidden] matrix")
    _check_downstream(model, index, constants)

    x, qkv_weight, qkv_bias = attention.input[:3]
    mask = attention.input[3] if len(attention.input) > 3 else ""
    hidden = weight.dims[1] // 3
    prefix = f"cls_only/{attention.name or 'attention'}"
    names = {part: f"{prefix}/{part}" for part in ("x_cls", "qkv", "query", "key", "value", "query_cls")}
    start, end, axis = (f"{prefix}/{name}" for name in ("start", "end", "axis"))
    split = f"{prefix}/split"
    new_initializers = [
        numpy_helper.from_array(np.array([0], np.int64), start),
        numpy_helper.from_array(np.array([1], np.int64), end),
        numpy_helper.from_array(np.array([1], np.int64), axis),
        numpy_helper.from_array(np.array([hidden] * 3, np.int64), split),
    ]
    replacement = [
        helper.make_node("MatMul", [x, qkv_weight], [names["qkv"]], name=names["qkv"]),
        helper.make_node("Split", [names["qkv"], split], [names["query"], names["key"], names["value"]],
                         name=f"{prefix}/split_qkv", axis=-1),
        helper.make_node("Slice", [names["query"], start, end, axis], [names["query_cls"]], name=names["query_cls"]),
        helper.make_node("MultiHeadAttention", [names["query_cls"], names["key"], names["value"], qkv_bias, mask],
                         list(attention.output), name=f"{prefix}/attention", domain=_MS, **attrs),
        helper.make_node("Slice", [x, start, end, axis], [names["x_cls"]], name=names["x_cls"]),
    ]
    rewritten = []
    for position, node in enumerate(nodes):
        if position == index:
            rewritten.extend(replacement)
            continue
        if position > index and x in node.input:  # the residual: token 0 of the layer's input
            node = onnx.NodeProto.FromString(node.SerializeToString())
            node.input[:] = [names["x_cls"] if name == x else name for name in node.input]
        rewritten.append(node)
    pruned = onnx.ModelProto.FromString(model.SerializeToString())
    del pruned.graph.node[:]
    pruned.graph.node.extend(rewritten)
    pruned.graph.initializer.extend(new_initializers)
    # Shapes recorded for the last layer's tensors say "sequence"; they now hold one row.
    stale = {output for node in rewritten[index:] for output in node.output}
    kept = [info for info in pruned.graph.value_info if info.name not in stale]
    del pruned.graph.value_info[:]
    pruned.graph.value_info.extend(kept)
    if _MS not in {opset.domain for opset in pruned.opset_import}:
        pruned.opset_import.append(helper.make_opsetid(_MS, 1))
    return pruned


def random_feeds(input_names: set, vocab_size: int, seed: int = 0) -> list:
    """Right-padded batches of random token ids, lengths from 1 to 40, as the scorer pads them."""
    rng = np.random.default_rng(seed)
    batches = []
    for batch, length in ((3, 17), (5, 40)):
        lengths = rng.integers(1, length + 1, size=batch)
        lengths[0] = length
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
        feeds = {
            "input_ids": rng.integers(0, vocab_size, size=(batch, length)) * mask,
            "attention_mask": mask,
            "token_type_ids": (np.arange(length)[None, :] >= lengths[:, None] // 2).astype(np.int64) * mask,
        }
        batches.append({name: value for name, value in feeds.items() if name in input_names})
    return batches


def max_logit_difference(whole: str, pruned: str, vocab_size: int) -> float:
    """Largest |logit| difference between two ONNX files on random padded batches (CPU sessions)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for path in (whole, pruned)]
    input_names = {value.name for value in sessions[0].get_inputs()}
    worst = 0.0
    for feeds in random_feeds(input_names, vocab_size):
        expected, got = (session.run(None, feeds)[0] for session in sessions)
        worst = max(worst, float(np.max(np.abs(expected - got))))
    return worst


def prune_file(path, vocab_size: int, tolerance: float = 1e-4) -> Optional[str]:
    """Rewrites the graph at `path` (its weights in an external file beside it, left as they are)
    with the last layer pruned, once the two graphs give the same logits; returns None, or why the
    whole graph was kept."""
    path = Path(path)
    graph = onnx.load(str(path), load_external_data=False)
    try:
        pruned = prune_last_layer(graph)
    except NotPrunable as exc:
        return str(exc)
    candidate = path.with_name(f"{path.stem}-cls-only{path.suffix}")
    onnx.save(pruned, str(candidate))  # the weights stay external, in the same file as `path`'s
    try:
        difference = max_logit_difference(str(path), str(candidate), vocab_size)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors share no base class; keep the whole graph
        candidate.unlink()
        return f"the pruned graph does not run: {exc}"
    if not difference <= tolerance:
        candidate.unlink()
        return f"the pruned graph's logits differ by {difference:.3g} (tolerance {tolerance:g})"
    candidate.replace(path)
    return None
