"""Questions about an ONNX graph (who makes a tensor, what depends on the image, a node's attributes) and the
small edits the contract needs (renaming a tensor everywhere, cutting out the head after a layer)."""

from __future__ import annotations

from collections.abc import Collection

import onnx
from onnx import helper

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import set_ir_version
from onnxcam.core.tensor_info import TensorInfo


def attributes(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values (bytes decoded to str)."""
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxcamError("the model imports no default ONNX opset; is it an ONNX classifier?")


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def resolve_tensor(graph: onnx.GraphProto, name: str) -> str:
    """Follow Identity nodes back to the tensor that really carries the layer's output."""
    made_by = producers(graph)
    while name in made_by and made_by[name].op_type == "Identity":
        name = made_by[name].input[0]
    return name


def image_dependents(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value depends on the image input: never weights, Constant outputs, or tensors computed
    from weights alone."""
    dep = {i.name for i in data_inputs(graph)}
    for node in graph.node:
        if any(i in dep for i in node.input):
            dep.update(o for o in node.output if o)
    return dep


def ancestors(graph: onnx.GraphProto, name: str, not_through: Collection[str] = ()) -> set[str]:
    """``name`` and the tensors it is computed from, not looking through the inputs of ``not_through`` ops."""
    made_by = producers(graph)
    seen, stack = set(), [name]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = made_by.get(t)
        if node is not None and node.op_type not in not_through:
            stack.extend(i for i in node.input if i)
    return seen


def head_model(model: onnx.ModelProto, target: str, logits: str) -> onnx.ModelProto:
    """The part of ``model`` after tensor ``target``: a graph from ``target`` (its only input) to ``logits``.

    Raises when the logits also depend on the image by a path that bypasses ``target``.
    """
    graph = model.graph
    info = TensorInfo(model)
    made_by = producers(graph)
    image_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    needed, stack = set(), [logits]
    while stack:
        t = stack.pop()
        if t == target or t in needed:
            continue
        if t in image_inputs:
            raise OnnxcamError(f"the logits depend on the image by a path that bypasses '{target}'; this method "
                               "needs a layer that all information flows through")
        needed.add(t)
        if t in made_by:
            stack.extend(i for i in made_by[t].input if i)
    nodes = [n for n in graph.node if any(o in needed for o in n.output)]
    used = {i for n in nodes for i in n.input}
    shape = ["N", *info.shape(target)[1:]]
    head = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)],
        [i for i in graph.initializer if i.name in used])
    out = helper.make_model(head, opset_imports=list(model.opset_import))
    set_ir_version(out)
    return out


def data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers."""
    init_names = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in init_names]


def rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new
