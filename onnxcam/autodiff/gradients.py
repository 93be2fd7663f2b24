"""The ONNX → ONNX reverse-mode pass (docs/design.md §4).

Opens the classifier (:func:`onnxcam.classifier.view.open_classifier`), finds the nodes on paths from the target
activations to the class score, seeds the score with ``OneHot(class_index)`` and walks those nodes in reverse
topological order, emitting each op's vector-Jacobian product (:data:`onnxcam.autodiff.registry.RULES`) as new
nodes, summing fan-out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxcam.autodiff.precision import FloatViews, carries_quantized, dequantised, quant_params
from onnxcam.autodiff.rules import RULES, VJP, carries_gradient, reads_quantized
from onnxcam.classifier.view import ClassifierView, open_classifier
from onnxcam.core.contract import TARGETS, target_output_names
from onnxcam.core.errors import OnnxcamError, UnsupportedOpError
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version
from onnxcam.core.graph_queries import ancestors, attributes, opset_of, rename_everywhere
from onnxcam.core.layout import infer_layout
from onnxcam.core.metadata import write_metadata
from onnxcam.core.tensor_info import TensorInfo

#: The opset the pass needs (ScatterElements with ``reduction="add"``); older graphs are converted to 17.
SCATTER_ADD_OPSET = 16


def _dependents(graph: onnx.GraphProto, info: TensorInfo, source: str) -> set[str]:
    """Float (and quantized integer) tensors whose value depends on ``source`` through ops that carry a gradient
    (not the no-gradient rows of the table: shapes, indices, comparisons)."""
    dep = {source}
    for node in graph.node:
        if not carries_gradient(node.op_type) or not any(i in dep for i in node.input):
            continue
        for out in node.output:
            if out and (info.is_float(out) is not False or carries_quantized(node, out, info)):
                dep.add(out)
    return dep


def add_gradients(
    model: onnx.ModelProto,
    *,
    activations: str | list[str] | None = None,
    logits: str | None = None,
    target: str = "logit",
    layer_names: list[str] | None = None,
    layouts: list[dict[str, Any]] | None = None,
    input_size: tuple[int, int] | None = None,
    input_layout: str | None = None,
) -> onnx.ModelProto:
    """Return ``model`` rewritten to the onnxcam contract (docs/design.md, "The ONNX contract").

    Inputs ``input`` (float32 ``[N,C,H,W]``, whatever the model's own layout) and ``class_index`` (int64
    ``[N]``, −1 = argmax); outputs ``logits`` (the class score), ``activations`` and ``gradients`` =
    ∂ score / ∂ activations, where score is the class's score (``target="logit"``) or its probability
    (``target="probability"``). The image input, the class score (the input of a final Softmax / LogSoftmax /
    Sigmoid) and the default layer are the classifier view's (:func:`onnxcam.classifier.view.open_classifier`).
    ``activations`` names the target tensor(s) (default: the view's default layer) — a tensor name, or a torch
    module name in a graph from torch's TorchScript exporter; with several, the outputs are ``activations_i`` /
    ``gradients_i``. ``layer_names`` are the user-facing names stored in metadata; ``layouts`` override the
    inferred layout of each target (NCHW, NHWC or tokens, see :mod:`onnxcam.core.layout`).
    ``input_size`` = (H, W) fixes a dynamic image size; ``input_layout`` (NCHW/NHWC) overrides the detected
    layout of the image input.
    """
    if target not in TARGETS:
        raise OnnxcamError(f"unknown gradient target '{target}'; use one of {', '.join(TARGETS)}")
    original = model
    model = _free_logits_name(model)
    view = open_classifier(model, input_size=input_size, input_layout=input_layout, logits=logits,
                           min_opset=SCATTER_ADD_OPSET)
    model, meta, source, score = view.model, view.metadata, view.source, view.score
    graph = model.graph
    logits = score.tensor
    requested = ([view.require_default_layer()] if activations is None
                 else [activations] if isinstance(activations, str) else list(activations))
    targets = [view.resolve_layer(name) for name in requested]
    view.probe([logits, *targets])
    info = view.info
    logits_shape = info.shape(logits)
    if len(logits_shape) != 2 or logits_shape[1] is None:
        raise OnnxcamError(f"expected logits of shape [N, classes], got {list(logits_shape)} for '{logits}'")
    num_classes = logits_shape[1]

    b = GraphBuilder(opset=opset_of(model))
    views = FloatViews(b, info, graph)
    seed, chosen = _seed(b, views(logits), num_classes, target, score.kind)

    outputs = [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", num_classes])]
    extra_nodes = [_as_float32(info, logits, "logits")]
    if logits == "logits":  # already named: keep it, drop the Identity
        extra_nodes = []
    for t, names in zip(targets, target_output_names(len(targets))):
        grad = _backward(view, b, views, t, seed, chosen)
        value, grad = _float_target(view, b, views, t, grad)
        shape = ["N", *info.shape(t)[1:]]
        extra_nodes.append(helper.make_node("Identity", [value], [names[0]], name=f"onnxcam/{names[0]}"))
        extra_nodes.append(helper.make_node("Identity", [grad], [names[1]], name=f"onnxcam/{names[1]}"))
        outputs += [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in names]

    nodes, initializers = _used(b, extra_nodes)
    graph.node.extend(nodes + extra_nodes)
    graph.initializer.extend(initializers)
    graph.input.append(helper.make_tensor_value_info("class_index", onnx.TensorProto.INT64, ["N"]))
    _set_batch_dim(graph.input[0])
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    set_ir_version(model)

    meta.target_tensors = targets
    meta.target_layers = layer_names or requested
    input_hw = (view.input_size[1], view.input_size[2])
    meta.layouts = list(layouts) if layouts else [infer_layout(info.shape(t), input_hw) for t in targets]
    if len(meta.layouts) != len(targets):
        raise OnnxcamError(f"{len(meta.layouts)} layouts given for {len(targets)} target layers")
    meta.layout = meta.layouts[0]["layout"]
    meta.target = target
    meta.input_size = list(view.input_size)
    meta.input_layout = source.layout
    if score.kind != "logits" or not meta.output_kind:
        meta.output_kind = score.kind
    meta.provenance.setdefault("source_framework", model.producer_name or "onnx")
    meta.provenance["opset"] = opset_of(model)
    meta.provenance["gradient_pass"] = "onnxcam"
    meta.provenance["logits_tensor"] = logits
    meta.provenance.setdefault("input_tensor", source.name)
    meta.provenance.setdefault("output_tensor", score.output)
    meta.cams = None
    write_metadata(model, meta)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        if not _fails_check(original):  # unless the checker refuses the model itself (e.g. GroupNormalization-18)
            raise RuntimeError(f"onnxcam produced an invalid graph: {exc}") from exc  # a bug in a rule
    return model


def _free_logits_name(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose float16 (or other non-float32) output ``logits`` is renamed: the contract's
    ``logits`` output is float32 (a Cast of it)."""
    out = next((o for o in model.graph.output if o.name == "logits"), None)
    if out is None or out.type.tensor_type.elem_type in (0, onnx.TensorProto.FLOAT):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rename_everywhere(copy.graph, "logits", "onnxcam/model_logits")
    return copy


def _as_float32(info: TensorInfo, name: str, out: str) -> onnx.NodeProto:
    """``out`` = ``name`` as float32: an Identity, or a Cast for a float16 / float64 score (exact)."""
    if info.types.get(name) in (None, 0, onnx.TensorProto.FLOAT):
        return helper.make_node("Identity", [name], [out], name=f"onnxcam/{out}")
    return helper.make_node("Cast", [name], [out], to=onnx.TensorProto.FLOAT, name=f"onnxcam/{out}")


def _float_target(view: ClassifierView, b: GraphBuilder, views: FloatViews, target: str, grad: str,
                  ) -> tuple[str, str]:
    """The target's value and gradient in float32: a float16 map cast; a quantized map dequantised,
    x = (q − z)·s, and its raw-value gradient divided by s (∂score/∂x = ∂score/∂q / s)."""
    if not views.is_quantized(target):
        return views(target), grad
    params = quant_params(view.model.graph, target)
    if params is None:
        raise OnnxcamError(f"layer '{target}' is quantized and onnxcam cannot find its scale; pick the float "
                           "layer that a DequantizeLinear makes from it")
    scale, zero = params
    return dequantised(b, views, target, scale, zero), b.op("Div", grad, views(scale))


def _used(b: GraphBuilder, outputs: list[onnx.NodeProto]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The builder's nodes and constants that ``outputs`` need (float32 views made but never read are dropped)."""
    needed = {i for n in outputs for i in n.input}
    kept = []
    for node in reversed(b.nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1], [t for t in b.initializers if t.name in needed]


def _fails_check(model: onnx.ModelProto) -> bool:
    """Whether onnx's checker already refuses ``model`` as it was given (ONNX Runtime may still run it)."""
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError:
        return True
    return False


def _seed(b: GraphBuilder, logits: str, num_classes: int, target: str, kind: str = "logits",
          ) -> tuple[str, str | None]:
    """(∂ score / ∂ logits, the class c when that is OneHot(c)): OneHot(c) for a logit; for a probability
    p_c·(OneHot(c) − p) (softmax) or p_c·(1 − p_c)·OneHot(c) (sigmoid heads), where c = class_index, or
    argmax(logits) where class_index < 0."""
    predicted = b.op("ArgMax", logits, axis=1, keepdims=0)
    chosen = b.op("Where", b.op("Less", "class_index", b.const(0, np.int64)), predicted, "class_index")
    onehot = b.op("OneHot", chosen, b.const([num_classes], np.int64), b.const([0.0, 1.0]), axis=-1)
    if target == "logit":
        return onehot, chosen
    if kind == "sigmoid":
        p = b.op("Sigmoid", logits)
        return b.op("Mul", onehot, b.op("Mul", p, b.op("Sub", b.const(1.0), p))), None
    p = b.op("Softmax", logits, axis=1)
    pc = b.op("ReduceSum", b.op("Mul", p, onehot), b.ints([1]), keepdims=1)
    return b.op("Mul", pc, b.op("Sub", onehot, p)), None


def _class_row(model: onnx.ModelProto, info: TensorInfo, b: GraphBuilder, views: FloatViews, logits: str,
               chosen: str) -> tuple[list[onnx.NodeProto], str, str] | None:
    """A score made by a Gemm/MatMul with a constant weight W (float, or a QDQ file's dequantised weight, the
    score's own Q→DQ pair passed straight through), seeded with OneHot(c): (the nodes that replaces, the Gemm's
    input, ∂score/∂input = α·W's row for c). A Gather of [N, C] values instead of a [N,K]×[K,C] product, the
    largest cost of the backward pass on small models with 1000 classes. None for any other head."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    skipped, tensor = [], logits
    dq = made_by.get(tensor)
    q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if dq is not None and q is not None and q.op_type == "QuantizeLinear":
        skipped, tensor = [dq, q], q.input[0]
    node = made_by.get(tensor)
    value = views.constant(node.input[1]) if node is not None and len(node.input) > 1 else None
    if node is None or node.op_type not in ("Gemm", "MatMul") or value is None:
        return None
    a = attributes(node)
    input_shape = info.shapes.get(node.input[0])
    if a.get("transA", 0) or value.ndim != 2 or input_shape is None or len(input_shape) != 2:
        return None
    weight = views(node.input[1])
    if a.get("transB", 0):  # W [K, C]
        row = b.op("Gather", weight, chosen, axis=0)
    else:  # W [C, K]
        row = b.op("Transpose", b.op("Gather", weight, chosen, axis=1), perm=[1, 0])
    alpha = float(a.get("alpha", 1.0))
    return [*skipped, node], node.input[0], row if alpha == 1.0 else b.op("Mul", row, b.const(alpha))


def _set_batch_dim(vi: onnx.ValueInfoProto) -> None:
    dims = vi.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        dims[0].dim_param = "N"


def path_nodes(model: onnx.ModelProto, info: TensorInfo, source: str, logits: str,
               ) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes between ``source`` and ``logits`` (graph order) and the float tensors on those paths."""
    graph = model.graph
    dep = _dependents(graph, info, source)
    if logits not in dep:
        raise OnnxcamError(f"layer '{source}' does not reach the logits; pick a layer before the classifier head")
    on_path = dep & ancestors(graph, logits)
    nodes = [n for n in graph.node if any(o in on_path for o in n.output) and any(i in on_path for i in n.input)]
    return nodes, on_path


def _score_quantisation(model: onnx.ModelProto, logits: str) -> str | None:
    """The quantized tensor that a file dequantizes into its class score (a QDQ file's last QuantizeLinear output,
    or a QOperator op's): its rule passes the gradient straight through, with no clipping mask. The output range
    is the calibration's; a predicted class beyond it would otherwise get an all-zero map."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    dq = made_by.get(logits)
    return dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else None


def _backward(view: ClassifierView, b: GraphBuilder, views: FloatViews, source: str, seed: str,
              chosen: str | None = None) -> str:
    """Emit the reverse pass from the view's score (seeded with ``seed``; OneHot(``chosen``) when that is given)
    to ``source``; return ∂/∂source."""
    model, info, logits = view.model, view.info, view.score.tensor
    nodes, on_path = path_nodes(model, info, source, logits)
    view.probe([t for n in nodes for t in [*n.input, *n.output] if t])
    missing = sorted({n.op_type for n in nodes} - RULES.keys())
    if missing:
        first = next(n for n in nodes if n.op_type == missing[0])
        others = f" (also: {', '.join(missing[1:])})" if missing[1:] else ""
        raise UnsupportedOpError(f"no gradient rule for op {missing[0]} (node '{first.name}'){others}; pick a target "
                                 "layer after it or add a rule module in onnxcam/autodiff/rules/")
    grads: dict[str, list[str]] = defaultdict(list)
    head = _class_row(model, info, b, views, logits, chosen) if chosen is not None and logits != source else None
    if head is not None and head[1] in on_path:
        grads[head[1]].append(head[2])
        nodes = [n for n in nodes if all(n is not replaced for replaced in head[0])]
    else:
        grads[logits].append(seed)
    unclipped = _score_quantisation(model, logits)
    opset = opset_of(model)
    for node in reversed(nodes):
        out_grads = [b.sum(grads[o]) if grads.get(o) else None for o in node.output]
        if all(g is None for g in out_grads):
            continue
        needs = [bool(i) and i in on_path for i in node.input]
        as_float = node if reads_quantized(node.op_type) else views.node(node)
        result = RULES[node.op_type](VJP(as_float, out_grads, needs, b, info, opset, views,
                                         unclipped=unclipped in node.output))
        for name, need, g in zip(node.input, needs, result):
            if need and g is not None:
                grads[name].append(g)
    if not grads.get(source):
        raise OnnxcamError(f"no gradient reaches layer '{source}'")
    return b.sum(grads[source])


