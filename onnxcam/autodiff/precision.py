"""The backward pass runs in float32 whatever the forward pass's precision (docs/edge.md).

A float16, bfloat16 or float64 forward tensor is read by the rules through its float32 view (a Cast, or a
float32 copy of a constant); an integer tensor of a quantized graph (uint8/int8/int16/uint16/int32) through
its raw value as float32. The gradient of a quantized tensor is the gradient with respect to that raw integer
value: ``DequantizeLinear`` multiplies it by the scale, ``QuantizeLinear`` divides by it (straight-through),
so a Q→DQ pair passes the gradient unchanged where the value was not clipped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from onnxcam.core.graph_builder import GraphBuilder
from onnxcam.core.tensor_info import TensorInfo

FLOAT = onnx.TensorProto.FLOAT
#: Element types a backward rule reads through a float32 Cast.
OTHER_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
#: Integer element types a quantized graph computes in; their tensors carry gradients (raw-value convention).
QUANTIZED = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16,
             onnx.TensorProto.INT32, onnx.TensorProto.UINT4, onnx.TensorProto.INT4}
#: Ops whose float16 output the backward pass reads from an equivalent op of another type (:meth:`FloatViews._tap`;
#: the same op would be merged with the original by ONNX Runtime's common-subexpression elimination).
TAPS = {"Relu", "Clip", "Add", "Mul"}
#: Where each QOperator op that makes a quantized output keeps that output's scale and zero point.
OUTPUT_PARAMS: dict[str, tuple[int, int]] = {
    "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QGemm": (7, 8),
    "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4), "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4), "QLinearSoftmax": (3, 4), "QLinearReduceMean": (3, 4), "QLinearConcat": (0, 1),
    "QuantizeLinear": (1, 2),
}
#: Ops that move quantized values without changing their scale (the scale is the input's).
SCALE_KEEPING = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Identity", "Slice", "Gather",
                 "Split", "Pad", "Resize", "DepthToSpace", "SpaceToDepth", "Expand", "Tile"}


def carries_quantized(node: onnx.NodeProto, out: str, info: TensorInfo) -> bool:
    """Whether ``out`` (an integer output of ``node``) carries the gradient of a quantized value; a Cast to an
    integer type (truncation) does not."""
    return info.types.get(out) in QUANTIZED and node.op_type != "Cast"


class FloatViews:
    """float32 views of forward tensors, made once each: ``views(name)``."""

    def __init__(self, b: GraphBuilder, info: TensorInfo, graph: onnx.GraphProto | None = None) -> None:
        self.b, self.info = b, info
        self._made_by = {o: n for n in graph.node for o in n.output} if graph is not None else {}
        self._requantised = _requantised(graph) if graph is not None else {}
        self._weights: dict[str, np.ndarray | None] = {}

    def __call__(self, name: str) -> str:
        t = self.info.types.get(name)
        if name and self._dequantised_weight(name) is not None:
            return self.b.memo((name, "float32"), lambda: self._weight(name))
        if name in self._requantised:  # the value the deployed model goes on with
            return self(self._requantised[name])
        if not name or t in (None, 0, FLOAT) or (t not in OTHER_FLOATS and t not in QUANTIZED):
            return name
        return self.b.memo((name, "float32"), lambda: self._make(name))

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant or a QDQ file's dequantised weight, else None."""
        value = self.info.constants.get(name)
        return value if value is not None else self._dequantised_weight(name)

    def _dequantised_weight(self, name: str) -> np.ndarray | None:
        """The value of a DequantizeLinear of constants (a QDQ file's weight), else None, computed once. The rules
        read it as a float32 constant of their own: a backward MatMul sharing the forward's DequantizeLinear lets
        OpenVINO's int8 transformations rewrite it (a per-channel one crashed its CPU plugin with a
        floating-point exception)."""
        if name not in self._weights:
            self._weights[name] = self._dequantise(name)
        return self._weights[name]

    def _dequantise(self, name: str) -> np.ndarray | None:
        node = self._made_by.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.output[0] != name:
            return None
        values = [self.info.constants.get(i) if i else np.zeros((), np.float32) for i in node.input]
        if any(v is None for v in values) or helper.get_attribute_value(
                next((a for a in node.attribute if a.name == "block_size"), helper.make_attribute("b", 0))):
            return None
        q, s, z = (np.asarray(v, np.float32) for v in (values + [np.zeros((), np.float32)])[:3])
        if s.ndim == 1 and s.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [-1 if i == axis else 1 for i in range(q.ndim)]
            s, z = s.reshape(shape), (z.reshape(shape) if z.ndim == 1 else z)
        return ((q - z) * s).astype(np.float32)

    def _weight(self, name: str) -> str:
        value = self._dequantised_weight(name)
        assert value is not None
        return self.register(self.b.const(value), tuple(value.shape), value)

    def _make(self, name: str) -> str:
        value = self.info.constants.get(name)
        if value is not None:
            view = self.b.const(np.asarray(value, np.float32))
        else:
            view = self.b.op("Cast", self._tap(name), to=FLOAT)
        self.register(view, self.info.shapes.get(name), value)
        return view

    def _tap(self, name: str) -> str:
        """Where to read the float16 tensor ``name``: an equivalent of the cheap op that makes it (Relu, Clip, Add,
        Mul), so that the forward tensor keeps the one consumer it had. ONNX Runtime's CPU provider runs most
        float16 ops in float32 and drops the rounding between two of them unless a third node reads the tensor
        in between; reading a copy keeps more of the forward pass as the model alone runs it (docs/edge.md)."""
        node = self._made_by.get(name)
        if (node is None or self.info.types.get(name) not in OTHER_FLOATS or len(node.output) != 1
                or node.op_type not in TAPS or "" in node.input):
            return name
        return _equivalent(self.b, node)

    def is_quantized(self, name: str) -> bool:
        """Whether ``name`` is an integer tensor of a quantized graph."""
        return self.info.types.get(name) in QUANTIZED

    def register(self, name: str, shape: tuple | None, value: np.ndarray | None = None) -> str:
        """Record a new float32 tensor's shape (and value, for constants) for the rules."""
        self.info.types[name] = FLOAT
        self.info.shapes[name] = shape
        self.info.constants[name] = None if value is None else np.asarray(value, np.float32)
        return name

    def node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """``node`` reading and writing the float32 views of its tensors (itself when all are float32)."""
        ins, outs = [self(i) for i in node.input], [self(o) for o in node.output]
        if ins == list(node.input) and outs == list(node.output):
            return node
        view = helper.make_node(node.op_type, ins, outs, name=node.name, domain=node.domain)
        view.attribute.extend(node.attribute)
        return view


def _requantised(graph: onnx.GraphProto) -> dict[str, str]:
    """float tensor → the DequantizeLinear output of its QuantizeLinear (a QDQ graph's Q → DQ pairs).

    ONNX Runtime runs an op whose float output only a QuantizeLinear reads as one integer kernel (QLinearConv, …):
    the float output never exists. The backward pass reads DQ(Q(x)) instead of x, the value the model goes on
    with, so that it adds no reader to x and the forward pass stays the fused, deployed one."""
    quantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    return {quantized[n.input[0]]: n.output[0] for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized}


def quant_params(graph: onnx.GraphProto, name: str) -> tuple[str, str] | None:
    """(scale, zero point) of the quantized tensor ``name``: from the op that makes it (QuantizeLinear, a QLinear
    op), through ops that keep the scale (Reshape, MaxPool, …), or from a DequantizeLinear that reads it."""
    made_by = {o: n for n in graph.node for o in n.output}
    seen = name
    while seen in made_by:
        node = made_by[seen]
        if node.op_type in OUTPUT_PARAMS and seen == node.output[0]:
            s, z = OUTPUT_PARAMS[node.op_type]
            if len(node.input) > s and node.input[s]:
                return node.input[s], node.input[z] if len(node.input) > z else ""
        if node.op_type == "DynamicQuantizeLinear" and seen == node.output[0]:
            return node.output[1], node.output[2]
        if node.op_type not in SCALE_KEEPING:
            break
        seen = node.input[0]
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == name:
            return node.input[1], node.input[2] if len(node.input) > 2 else ""
    return None


def dequantised(b: GraphBuilder, views: Callable[[str], str], raw: str, scale: str, zero: str) -> str:
    """(raw − zero)·scale in float32 (per-tensor scale)."""
    x = views(raw)
    if zero:
        x = b.op("Sub", x, views(zero))
    return b.op("Mul", x, views(scale))


def _equivalent(b: GraphBuilder, node: onnx.NodeProto) -> str:
    """A node computing ``node``'s value exactly, of another form: Relu = Max(x, 0), Clip = Min(Max(x, lo), hi),
    a + b = b + a, a·b = b·a (the float16 rounding of one op is the same whichever way round)."""
    ins = list(node.input)
    if node.op_type == "Relu":
        return b.op("Max", ins[0], b.op("CastLike", b.const(0.0), ins[0]))
    if node.op_type == "Clip":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        lo = ins[1] if len(ins) > 1 else None
        hi = ins[2] if len(ins) > 2 else None
        x = ins[0]
        if lo or "min" in attrs:
            x = b.op("Max", x, lo or b.op("CastLike", b.const(attrs["min"]), x))
        if hi or "max" in attrs:
            x = b.op("Min", x, hi or b.op("CastLike", b.const(attrs["max"]), x))
        return x
    return b.op(node.op_type, ins[1], ins[0])
