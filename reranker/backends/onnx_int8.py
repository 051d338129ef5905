"""int8 for the ONNX backend: per-token activations, per-channel weights, smoothed.

ONNX Runtime's `quantize_dynamic` quantizes each activation tensor with one scale for the whole
batch. In BERT a few tokens and channels carry values far larger than the rest, so that one
scale leaves the others a handful of levels, and on real MiniLM weights the ranking of 50
passages drifted to a Spearman of 0.92 against fp32. This quantizer rewrites the fused fp32 graph
instead (benchmarks/RESULTS.md, section 3, has the measurements):

- every token (row) of an activation gets its own asymmetric uint8 scale and zero point
  (blocked `QuantizeLinear`), computed at run time;
- weights are int8 with one scale per output channel;
- before quantizing, each input channel is divided by a smoothing factor that the weights
  absorb (SmoothQuant, Xiao et al. 2023): s_j = sqrt(max|x_j| / max|W_j|), with max|x_j|
  measured by running the fp32 model over a small built-in multilingual calibration set;
- the products run in `MatMulInteger` as u8 x u8: the int8 weights are stored as uint8 (+128)
  with a weight zero point of 128, which ONNX Runtime subtracts exactly; the activation zero
  point's share, zp x column sums of the int8 weights, is subtracted from the integer result
  afterwards. Not u8 x s8: on x86 CPUs without VNNI (AVX2, and AVX-512 without VNNI) ONNX
  Runtime's u8 x s8 kernel adds pairs of products in int16 (VPMADDUBSW), which saturates at
  32767 (255 x 127 x 2 = 64770), so results were wrong by up to ~17 on such CPUs. The u8 x u8
  kernel widens to 16 bits first and is exact on every CPU (benchmarks/RESULTS.md, section 3).
  7-bit weights would also avoid it with u8 x s8, but ranked at a Spearman of 0.985 (0.991 at 8).

Quantized: the QKV projection of every fused `Attention` op (it becomes int8 QKV + `Split` +
`MultiHeadAttention`, which takes projected Q, K and V) and every `MatMul` with a 2-D weight (the
attention output and both feed-forward projections, and the last layer's QKV projection where
the export pruned that layer to [CLS]: onnx_cls_only.py; the projections after it then see token 0
alone, and are calibrated on it). The pooler and classifier stay fp32: they see one token per
pair and cost nothing.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from reranker.backends.onnx_cls_only import ATTENTION_ATTRIBUTES
from reranker.errors import ModelLoadError

# Calibration text: only the per-channel maximum of each quantized activation is taken from it,
# which depends on the model far more than on the text. Kept apart from the benchmark workloads.
CALIBRATION_QUERIES = (
    "how does a heat pump work",
    "symptoms of vitamin d deficiency",
    "wie lange dauert ein flug nach new york",
    "meilleur moment pour visiter le japon",
    "cómo se hace el pan de masa madre",
    "qual è la montagna più alta d'europa",
    "когда была основана москва",
    "東京タワーの高さは",
    "如何学习一门外语",
    "ما هي فوائد الشاي الأخضر",
)
CALIBRATION_PASSAGES = (
    "A heat pump moves heat from the cold outdoor air into the house using a refrigerant cycle.",
    "The company reported higher quarterly revenue, driven by strong sales of its cloud services.",
    "Low levels of vitamin D can cause tiredness, bone pain and muscle weakness.",
    "The bridge was closed for repairs after inspectors found cracks in two of its supports.",
    "Der Flug von Frankfurt nach New York dauert ungefähr acht bis neun Stunden.",
    "Die Bibliothek bleibt wegen Renovierungsarbeiten bis Ende März geschlossen.",
    "Im Herbst färben sich die Blätter der Buchen gelb und rot.",
    "Le printemps, quand les cerisiers fleurissent, est une saison très prisée pour visiter le Japon.",
    "La recette demande deux œufs, un verre de lait et une pincée de sel.",
    "Le tribunal a reporté l'audience à la semaine prochaine.",
    "El pan de masa madre fermenta lentamente gracias a levaduras y bacterias silvestres.",
    "El equipo ganó el campeonato después de una temporada muy difícil.",
    "Los precios del alquiler subieron un diez por ciento en la capital.",
    "Il Monte Bianco, con i suoi 4808 metri, è la vetta più alta delle Alpi.",
    "La biblioteca comunale organizza letture per bambini ogni sabato mattina.",
    "O governo anunciou novas regras para a importação de medicamentos.",
    "A praia fica a poucos minutos a pé do centro da cidade.",
    "De gemeente plant een nieuwe fietsbrug over de rivier.",
    "Москва впервые упоминается в летописи в 1147 году.",
    "Врач посоветовал больше гулять и пить меньше кофе.",
    "Zespół naukowców odkrył nowy gatunek żaby w lesie deszczowym.",
    "Yeni metro hattı şehir merkezini havalimanına bağlayacak.",
    "Stockholms stadsbibliotek ritades av arkitekten Gunnar Asplund.",
    "東京タワーの高さは三百三十三メートルです。",
    "この店のラーメンは濃厚なスープで有名です。",
    "서울의 지하철은 깨끗하고 시간을 잘 지킨다.",
    "学习外语最好的方法是每天坚持练习听和说。",
    "这家公司去年的利润增长了百分之二十。",
    "يحتوي الشاي الأخضر على مضادات أكسدة قد تفيد صحة القلب.",
    "افتتح المتحف الجديد أبوابه للزوار يوم الجمعة.",
    "मानसून के दौरान मुंबई में भारी बारिश होती है।",
    "Η Ακρόπολη της Αθήνας χτίστηκε τον πέμπτο αιώνα π.Χ.",
    "הרכבת לירושלים יוצאת מתחנת תל אביב מרכז.",
    "Hà Nội là thủ đô của Việt Nam từ năm 1976.",
    "Call 555-0142 before 6 p.m. to book a table for 4 people (2 adults, 2 kids).",
    "ERROR 404: page /docs/v2/api.html not found; see https://example.org/help",
)

SMOOTHING_ALPHA = 0.5
WEIGHT_ZERO_POINT = 128  # int8 weights stored as uint8 (see _per_token_int8_matmul)
# Blocked QuantizeLinear (one scale per row) needs opset 21.
OPSET = 21
_MS = "com.microsoft"


def quantization_targets(model) -> dict:
    """{node index: (activation input, weight initializer)} for every node this quantizer rewrites."""
    weights = {init.name: init for init in model.graph.initializer}
    targets = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Attention" and node.domain == _MS and node.input[1] in weights:
            targets[index] = (node.input[0], weights[node.input[1]])
        elif node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            targets[index] = (node.input[0], weights[node.input[1]])
    return targets


def activation_absmax(model, batches) -> dict:
    """max |x| per input channel of every target's activation, over real (unpadded) tokens.

    `batches` yields ONNX feeds (int64 input_ids, attention_mask and, if the model takes them,
    token_type_ids), right-padded as the scorer pads them.
    """
    names = sorted({activation for activation, _ in quantization_targets(model).values()})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    absmax: dict = {}
    for feeds in batches:
        real = feeds["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, feeds)):
            # A tensor of the last layer holds token 0 only where that layer is pruned (onnx_cls_only.py).
            channel_max = np.abs(value[real[:, : value.shape[1]]]).max(axis=0)
            absmax[name] = channel_max if name not in absmax else np.maximum(absmax[name], channel_max)
    return absmax


def _per_token_int8_matmul(graph_nodes: list, initializers: list, prefix: str, x: str, weight: np.ndarray,
                           x_absmax: np.ndarray, alpha: float, output: str) -> None:
    """Appends the nodes computing `output` ~= x @ weight with int8 products (see the module doc)."""

    def const(name: str, value) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), f"{prefix}/{name}"))
        return f"{prefix}/{name}"

    def node(op: str, inputs: list, name: str, **attrs) -> str:
        out = f"{prefix}/{name}"
        graph_nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    in_features = weight.shape[0]
    weight_absmax = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    smooth = np.maximum(np.power(np.maximum(x_absmax, 1e-5), alpha) / np.power(weight_absmax, 1 - alpha), 1e-5)
    smoothed = weight * smooth[:, None]
    weight_scale = np.maximum(np.abs(smoothed).max(axis=0), 1e-12) / 127.0
    quantized = np.clip(np.round(smoothed / weight_scale), -127, 127).astype(np.int8)

    xs = node("Mul", [x, const("inv_smooth", (1.0 / smooth).astype(np.float32))], "smoothed")
    axes = const("axes", np.array([-1], dtype=np.int64))
    zero = const("zero", np.float32(0.0))
    high = node("Max", [node("ReduceMax", [xs, axes], "row_max", keepdims=1), zero], "high")
    low = node("Min", [node("ReduceMin", [xs, axes], "row_min", keepdims=1), zero], "low")
    scale = node("Max", [node("Mul", [node("Sub", [high, low], "range"), const("inv255", np.float32(1 / 255))], "scale_raw"),
                         const("tiny", np.float32(1e-12))], "scale")
    zero_point = node("Round", [node("Neg", [node("Div", [low, scale], "low_scaled")], "zero_point_raw")], "zero_point")
    q = node("QuantizeLinear", [xs, scale, node("Cast", [zero_point], "zero_point_u8", to=TensorProto.UINT8)], "q",
             axis=-1, block_size=in_features)
    # uint8 weights (int8 + 128) with zero point 128: ORT's u8 x s8 kernel saturates on x86
    # without VNNI (module docstring); its u8 x u8 kernel is exact on every CPU.
    weight_u8 = const("weight_u8", (quantized.astype(np.int16) + WEIGHT_ZERO_POINT).astype(np.uint8))
    product = node("MatMulInteger", [q, weight_u8, "", const("weight_zero_point", np.uint8(WEIGHT_ZERO_POINT))], "acc_int32")
    acc = node("Cast", [product], "acc", to=TensorProto.FLOAT)
    column_sums = const("column_sums", quantized.astype(np.float32).sum(axis=0))
    centered = node("Sub", [acc, node("Mul", [zero_point, column_sums], "zero_point_share")], "centered")
    per_column = node("Mul", [centered, const("weight_scale", weight_scale.astype(np.float32))], "per_column")
    graph_nodes.append(helper.make_node("Mul", [per_column, scale], [output], name=f"{prefix}/output"))


def quantize_model(model, absmax: dict, alpha: float = SMOOTHING_ALPHA):
    """A new ModelProto: `model` (fused fp32) with every target rewritten to int8 products."""
    targets = quantization_targets(model)
    nodes, initializers = [], []
    replaced_weights = set()
    for index, node in enumerate(model.graph.node):
        if index not in targets:
            nodes.append(node)
            continue
        activation, weight_proto = targets[index]
        replaced_weights.add(weight_proto.name)
        weight = numpy_helper.to_array(weight_proto).astype(np.float32)
        prefix = f"int8/{index}/{node.name or node.op_type}"
        if node.op_type == "MatMul":
            _per_token_int8_matmul(nodes, initializers, prefix, activation, weight, absmax[activation], alpha, node.output[0])
            continue
        # Attention(x, W_qkv, b_qkv, mask) -> MultiHeadAttention(split(int8(x @ W_qkv)), b_qkv, mask)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        unsupported = set(attrs) - ATTENTION_ATTRIBUTES
        if unsupported or len(node.input) > 4:
            raise ModelLoadError(
                f"onnx-int8 cannot rewrite Attention node {node.name!r} (attributes {sorted(attrs)}, "
                f"{len(node.input)} inputs); serve this model with backend onnx"
            )
        qkv = f"{prefix}/qkv"
        _per_token_int8_matmul(nodes, initializers, prefix, activation, weight, absmax[activation], alpha, qkv)
        hidden = weight.shape[1] // 3
        parts = [f"{prefix}/{name}" for name in ("query", "key", "value")]
        initializers.append(numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), f"{prefix}/split"))
        nodes.append(helper.make_node("Split", [qkv, f"{prefix}/split"], parts, name=f"{prefix}/split_qkv", axis=-1))
        mask = node.input[3] if len(node.input) > 3 else ""
        nodes.append(helper.make_node("MultiHeadAttention", parts + [node.input[2], mask], list(node.output),
                                      name=f"{prefix}/attention", domain=_MS, **attrs))
    still_used = {name for node in nodes for name in node.input}
    kept = [init for init in model.graph.initializer if init.name not in replaced_weights or init.name in still_used]
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), list(model.graph.output),
                              kept + initializers)
    opsets = [helper.make_opsetid(o.domain, OPSET if o.domain in ("", "ai.onnx") else o.version) for o in model.opset_import]
    if _MS not in {o.domain for o in opsets}:
        opsets.append(helper.make_opsetid(_MS, 1))
    quantized = helper.make_model(graph, opset_imports=opsets, producer_name="reranker-int8")
    quantized.ir_version = max(model.ir_version, 10)
    return quantized


def calibration_batches(model: str, revision: Optional[str], input_names: set, max_length: int, batch_pairs: int = 8):
    """Calibration pairs (every query with every passage) as right-padded ONNX feeds."""
    from reranker.batching import collate, plan_batches
    from reranker.tokenization import PairEncoder
    from reranker.model_files import load_tokenizer

    encoder = PairEncoder(load_tokenizer(model, revision), max_length, max_query_tokens=64)
    for query in CALIBRATION_QUERIES:
        pairs = encoder.encode(query, list(CALIBRATION_PASSAGES))
        for indices in plan_batches(pairs.lengths, max_batch_tokens=batch_pairs * max_length, max_batch_size=batch_pairs):
            ids, mask, types = collate(pairs, indices)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            yield {name: np.ascontiguousarray(value, dtype=np.int64) for name, value in feeds.items() if name in input_names}
