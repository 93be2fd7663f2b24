"""The ONNX → ONNX reverse-mode pass (docs/design.md §4).

Finds the nodes on paths from the target activations to the logits, seeds the logits with
``OneHot(class_index)`` and walks those nodes in reverse topological order, emitting each op's
vector-Jacobian product (``rules.RULES``) as new nodes, summing fan-out.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from onnxcam.autodiff.rules import RULES, VJP
from onnxcam.classifier.inputs import ImageInput, fix_input
from onnxcam.classifier.layout_inference import infer_layout
from onnxcam.classifier.scores import find_score, flatten_score
from onnxcam.classifier.torch_names import module_tensor
from onnxcam.core.contract import ADAPTER, TARGETS, strip_gradients, target_output_names
from onnxcam.core.errors import OnnxcamError, UnsupportedOpError
from onnxcam.core.graph_builder import GraphBuilder, set_ir_version
from onnxcam.core.graph_queries import (
    ancestors,
    image_dependents,
    opset_of,
    producers,
    rename_everywhere,
    resolve_tensor,
)
from onnxcam.core.metadata import CamMetadata, read_metadata, write_metadata
from onnxcam.core.tensor_info import DynamicSizeError, TensorInfo, check_runs

#: Ops whose outputs carry no gradient (shapes, indices, comparisons).
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not",
    "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Range", "IsNaN", "IsInf", "Constant", "EyeLike",
}
MIN_OPSET = 13






def default_layer(model: onnx.ModelProto, logits: str | None = None, info: TensorInfo | None = None) -> str:
    """The last 4-D float tensor with spatial size > 1 computed from the image on the path to the logits."""
    graph = model.graph
    info = info or TensorInfo(model)
    logits = logits or graph.output[0].name
    feeds_logits = ancestors(graph, logits) & image_dependents(graph)
    best = None
    for node in graph.node:
        for out in node.output:
            shape = info.shapes.get(out)
            if (out in feeds_logits and info.is_float(out) and shape and len(shape) == 4
                    and None not in shape[2:] and shape[2] * shape[3] > 1):
                best = out
    if best is None:
        raise OnnxcamError("found no 4-D feature map with spatial size > 1 before the logits; "
                           "name the target layer with --layer")
    return best






def _dependents(graph: onnx.GraphProto, info: TensorInfo, source: str) -> set[str]:
    """Float tensors whose value depends on ``source`` through differentiable ops."""
    dep = {source}
    for node in graph.node:
        if node.op_type in NON_DIFFERENTIABLE or not any(i in dep for i in node.input):
            continue
        for out in node.output:
            if out and info.is_float(out) is not False:
                dep.add(out)
    return dep


def _ensure_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at opset 17 when it is below 16 (ScatterElements' ``reduction="add"`` needs 16)."""
    opset = opset_of(model)
    if opset >= 16:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, 17)
    except Exception as exc:  # noqa: BLE001
        if opset < MIN_OPSET:
            raise OnnxcamError(f"the model uses opset {opset} and could not be converted to opset 17 ({exc}); "
                               "re-export it with opset >= 13") from None
        return model
    # Below opset 11 every Resize comes from an Upsample or a Resize-10, which sample at out/scale (asymmetric,
    # floor); onnx's converter gives them Resize-11's half-pixel default, another function: keep the old one.
    for node in converted.graph.node if opset < 11 else []:
        if node.op_type == "Resize":
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                   helper.make_attribute("nearest_mode", "floor")])
    return converted


def add_gradients(
    model: onnx.ModelProto,
    *,
    activations: str | list[str] | None = None,
    logits: str | None = None,
    target: str = "logit",
    layer_names: list[str] | None = None,
    layouts: list[dict] | None = None,
    input_size: tuple[int, int] | None = None,
    input_layout: str | None = None,
    cams: list[str] | None = None,
    cam_options: dict[str, dict] | None = None,
    cam_dtype: str = "float32",
    overlay: bool = False,
) -> onnx.ModelProto:
    """Return ``model`` rewritten to the onnxcam contract (docs/design.md, "The ONNX contract").

    Inputs ``input`` (float32 ``[N,C,H,W]``, whatever the model's own layout) and ``class_index`` (int64
    ``[N]``, −1 = argmax); outputs ``logits`` (the class score), ``activations`` and ``gradients`` =
    ∂ score / ∂ activations, where score is the class's score (``target="logit"``) or its probability
    (``target="probability"``). A model that ends in Softmax / LogSoftmax / Sigmoid is differentiated from
    that node's input, the class score (``scores.py``).
    ``activations`` names the target tensor(s) (default: :func:`default_layer`) — a tensor name, or a torch
    module name in a graph from torch's TorchScript exporter (``torch_names.py``); with several, the outputs
    are ``activations_i`` / ``gradients_i``. ``layer_names`` are the user-facing names stored in metadata;
    ``layouts`` override the inferred layout of each target (NCHW, NHWC or tokens, see ``layout.py``).
    ``input_size`` = (H, W) fixes a dynamic image size; ``input_layout`` (NCHW/NHWC) overrides the detected
    layout of the image input (``inputs.py``).
    ``cams`` embeds those methods' finished maps as outputs ``cam_<method>`` (``embed.embed_cams`` with
    ``cam_options``, ``cam_dtype`` and ``overlay``).
    """
    if target not in TARGETS:
        raise OnnxcamError(f"unknown gradient target '{target}'; use one of {', '.join(TARGETS)}")
    meta = read_metadata(model)
    original = model
    model = _ensure_opset(strip_gradients(model))
    model, source = fix_model_input(model, meta, input_size, input_layout)
    graph = model.graph
    logits = logits or graph.output[0].name
    if logits not in {o.name for o in graph.output} and logits not in producers(graph):
        raise OnnxcamError(f"tensor '{logits}' (logits) is not in the model")
    if logits == "input":
        raise OnnxcamError("the logits tensor is the model input")
    if source.resized:
        check_runs(model, logits)
    info = TensorInfo(model)
    _probe(model, info, [logits])
    score = find_score(model, logits, info)
    _probe(model, info, [score.tensor])
    score = flatten_score(model, score, info)
    logits = score.tensor
    if logits != "logits" and "logits" in producers(graph):  # the model's own output (a probability) is 'logits'
        rename_everywhere(graph, "logits", f"{ADAPTER}model_output")
        info = TensorInfo(model)
    if activations is None:
        requested = [default_layer(model, logits, info)]
    else:
        requested = [activations] if isinstance(activations, str) else list(activations)
    known = producers(graph).keys() | {i.name for i in graph.input}
    tensors = []
    for name in requested:
        tensor = "input" if name == source.name else name
        tensor = tensor if tensor in known else module_tensor(graph, name)
        if tensor is None:
            raise OnnxcamError(f"unknown layer '{name}'; run `onnxcam layers MODEL` to list the candidates")
        tensors.append(tensor)
    targets = [resolve_tensor(graph, name) for name in tensors]
    _probe(model, info, [logits, *targets])
    logits_shape = info.shape(logits)
    if len(logits_shape) != 2 or logits_shape[1] is None:
        raise OnnxcamError(f"expected logits of shape [N, classes], got {list(logits_shape)} for '{logits}'")
    num_classes = logits_shape[1]

    b = GraphBuilder(opset=opset_of(model))
    seed = _seed(b, logits, num_classes, target, score.kind)

    outputs = [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", num_classes])]
    extra_nodes = [helper.make_node("Identity", [logits], ["logits"], name="onnxcam/logits")]
    if logits == "logits":  # already named: keep it, drop the Identity
        extra_nodes = []
    for t, names in zip(targets, target_output_names(len(targets))):
        grad = _backward(model, info, b, t, logits, seed)
        shape = ["N", *info.shape(t)[1:]]
        extra_nodes.append(helper.make_node("Identity", [t], [names[0]], name=f"onnxcam/{names[0]}"))
        extra_nodes.append(helper.make_node("Identity", [grad], [names[1]], name=f"onnxcam/{names[1]}"))
        outputs += [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in names]

    graph.node.extend(b.nodes + extra_nodes)
    graph.initializer.extend(b.initializers)
    graph.input.append(helper.make_tensor_value_info("class_index", onnx.TensorProto.INT64, ["N"]))
    _set_batch_dim(graph.input[0])
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    set_ir_version(model)

    meta.target_tensors = targets
    meta.target_layers = layer_names or requested
    input_hw = info.shape("input")[2:4]
    meta.layouts = list(layouts) if layouts else [infer_layout(info.shape(t), input_hw) for t in targets]
    if len(meta.layouts) != len(targets):
        raise OnnxcamError(f"{len(meta.layouts)} layouts given for {len(targets)} target layers")
    meta.layout = meta.layouts[0]["layout"]
    meta.target = target
    meta.input_size = [d for d in info.shape("input")[1:]]
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
    if cams:
        from onnxcam.cams.embed import embed_cams

        model = embed_cams(model, cams, options=cam_options, dtype=cam_dtype, overlay=overlay)
    return model


def _fails_check(model: onnx.ModelProto) -> bool:
    """Whether onnx's checker already refuses ``model`` as it was given (ONNX Runtime may still run it)."""
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError:
        return True
    return False


def fix_model_input(model: onnx.ModelProto, meta: CamMetadata, input_size: tuple[int, int] | None,
               input_layout: str | None) -> tuple[onnx.ModelProto, ImageInput]:
    """``fix_input`` with what the metadata records: its input size, and its layout unless the graph already
    carries onnxcam's NCHW adapter (an augmented file: then the source layout is the recorded one)."""
    recorded = tuple(meta.input_size[1:]) if meta.input_size and len(meta.input_size) == 3 else None
    adapted = any(n.name.startswith(ADAPTER + "input_layout") for n in model.graph.node)
    if adapted:
        if input_layout and input_layout.upper() != (meta.input_layout or "NHWC"):
            raise OnnxcamError(f"--input-layout {input_layout} contradicts the file, whose model was recorded as "
                               f"{meta.input_layout or 'NHWC'}; leave the option out")
        fixed, found = fix_input(model, input_size=input_size, layout="NCHW", recorded_size=recorded)
        return fixed, ImageInput(meta.provenance.get("input_tensor", found.name), found.dims, "NHWC",
                                 found.detected, found.resized)
    layout = input_layout or meta.input_layout
    return fix_input(model, input_size=input_size, layout=layout, recorded_size=recorded)


def _seed(b: GraphBuilder, logits: str, num_classes: int, target: str, kind: str = "logits") -> str:
    """∂ score / ∂ logits: OneHot(c) for a logit; for a probability p_c·(OneHot(c) − p) (softmax) or
    p_c·(1 − p_c)·OneHot(c) (sigmoid heads), where c = class_index, or argmax(logits) where class_index < 0."""
    predicted = b.op("ArgMax", logits, axis=1, keepdims=0)
    chosen = b.op("Where", b.op("Less", "class_index", b.const(0, np.int64)), predicted, "class_index")
    onehot = b.op("OneHot", chosen, b.const([num_classes], np.int64), b.const([0.0, 1.0]), axis=-1)
    if target == "logit":
        return onehot
    if kind == "sigmoid":
        p = b.op("Sigmoid", logits)
        return b.op("Mul", onehot, b.op("Mul", p, b.op("Sub", b.const(1.0), p)))
    p = b.op("Softmax", logits, axis=1)
    pc = b.op("ReduceSum", b.op("Mul", p, onehot), b.ints([1]), keepdims=1)
    return b.op("Mul", pc, b.op("Sub", onehot, p))


def _set_batch_dim(vi: onnx.ValueInfoProto) -> None:
    dims = vi.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        dims[0].dim_param = "N"


def _probe(model: onnx.ModelProto, info: TensorInfo, names: list[str]) -> None:
    """``info.probe``, with a dynamic image size reported at the first node whose output size it leaves open."""
    try:
        info.probe(model, names)
    except DynamicSizeError as exc:
        made_by = producers(model.graph)
        open_sizes = [t for t in names if info.shapes.get(t) is None or None in info.shapes[t][1:]]
        node = next((made_by[t] for t in open_sizes if t in made_by), None)
        where = f"{node.op_type} node '{node.name}'" if node is not None else f"tensor '{open_sizes[0]}'"
        raise OnnxcamError(f"{where} has a dynamic spatial size ({exc}); pass the image size with --input-size "
                           "HxW (Explainer(input_size=(H, W))), or record it with `onnxcam annotate --input-size`"
                           ) from None


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


def _backward(model: onnx.ModelProto, info: TensorInfo, b: GraphBuilder, source: str, logits: str,
              seed: str) -> str:
    """Emit the reverse pass from ``logits`` (seeded with ``seed``) to ``source``; return ∂/∂source."""
    nodes, on_path = path_nodes(model, info, source, logits)
    _probe(model, info, [t for n in nodes for t in [*n.input, *n.output] if t])
    missing = sorted({n.op_type for n in nodes} - RULES.keys())
    if missing:
        first = next(n for n in nodes if n.op_type == missing[0])
        others = f" (also: {', '.join(missing[1:])})" if missing[1:] else ""
        raise UnsupportedOpError(f"no gradient rule for op {missing[0]} (node '{first.name}'){others}; pick a target "
                                 "layer after it or add a rule in exporter/rules.py")
    grads: dict[str, list[str]] = defaultdict(list)
    grads[logits].append(seed)
    opset = opset_of(model)
    for node in reversed(nodes):
        out_grads = [b.sum(grads[o]) if grads.get(o) else None for o in node.output]
        if all(g is None for g in out_grads):
            continue
        needs = [bool(i) and i in on_path for i in node.input]
        result = RULES[node.op_type](VJP(node, out_grads, needs, b, info, opset))
        for name, need, g in zip(node.input, needs, result):
            if need and g is not None:
                grads[name].append(g)
    if not grads.get(source):
        raise OnnxcamError(f"no gradient reaches layer '{source}'")
    return b.sum(grads[source])




