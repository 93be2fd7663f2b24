"""Gradient rules for the ops of quantized graphs (ONNX Runtime's quantizer, all three forms; docs/edge.md).

The forward pass stays the quantized one; the backward pass runs in float32 on the raw integer values
(``onnxcam.autodiff.precision``): the gradient of a quantized tensor q is ∂score/∂q, so

- ``DequantizeLinear`` x = (q − z)·s: dq = g·s;
- ``QuantizeLinear`` q = clamp(round(x/s) + z, qmin, qmax): dx = g/s · [qmin < q < qmax], the
  straight-through estimator of quantisation-aware training (zero where the range clips x);
- ``DynamicQuantizeLinear`` the same with the scale it computes (held constant), never clipping;
- ``ConvInteger`` / ``MatMulInteger`` y = conv(x − xz, w − wz): the float op's rule with the shifted weight;
- QOperator ops (``QLinearConv``, ``QGemm``, …): the float op's rule on dequantised tensors, g/ys in and ·xs
  out, zero where the output saturates (a fused Relu's clip at the zero point).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from onnxcam.autodiff.registry import RULES, VJP, Grads, rule

#: (lowest, highest) raw value of each quantized element type.
RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7)}

#: QOperator op → (float op, its float inputs as (value, scale, zero point) positions, output (scale, zero point)
#: positions or None for a float output). Bias inputs (int32) are left out: no gradient flows to them.
QLINEAR: dict[str, tuple[str, list[tuple[int, int, int]], tuple[int, int] | None]] = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QGemm": ("Gemm", [(0, 1, 2), (3, 4, 5)], (7, 8)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2)], (3, 4)),
    "QLinearReduceMean": ("ReduceMean", [(0, 1, 2)], (3, 4)),
}

#: Attributes of QOperator ops that their float op does not have.
_QUANT_ONLY_ATTRS = {"channels_last", "opset"}


def _range(v: VJP, name: str) -> tuple[int, int]:
    return RANGES.get(int(v.info.types.get(name) or onnx.TensorProto.UINT8), (0, 255))


def _per_axis(v: VJP, scale: str, ref: str, axis: int) -> str:
    """A per-axis (1-D) scale reshaped to broadcast along ``axis`` of ``ref``; a scalar scale as it is."""
    shape = v.info.shapes.get(scale)
    if not shape or len(shape) == 0 or shape == (1,):
        return scale
    rank = len(v.shape(ref))
    dims = [1] * rank
    dims[axis % rank] = -1
    return v.b.op("Reshape", scale, v.b.ints(dims))


@rule("DequantizeLinear", quantized=True)
def dequantize_linear(v: VJP) -> Grads:
    """x = (q − z)·s ⇒ dq = g·s."""
    if v.attrs.get("block_size"):
        raise v.fail("blocked quantisation (block_size) is not supported")
    s = _per_axis(v, v.views(v.node.input[1]), v.x, v.attrs.get("axis", 1))
    return v.pad_grads([v.b.op("Mul", v.g, s)])


@rule("QuantizeLinear", quantized=True)
def quantize_linear(v: VJP) -> Grads:
    """q = clamp(round(x/s) + z, qmin, qmax) ⇒ dx = g/s · [qmin < q < qmax] (straight through; zero where the
    range clipped x, read from q so that the pass does not read x, which ONNX Runtime fuses away)."""
    if v.attrs.get("block_size"):
        raise v.fail("blocked quantisation (block_size) is not supported")
    b = v.b
    s = _per_axis(v, v.views(v.node.input[1]), v.x, v.attrs.get("axis", 1))
    grad = b.op("Div", v.g, s)
    if v.unclipped:
        return v.pad_grads([grad])
    return v.pad_grads([v.mask(_unsaturated(v, v.y), grad)])


def _unsaturated(v: VJP, q: str) -> str:
    """[qmin < q < qmax] for the quantized tensor ``q``."""
    b, raw, (lo, hi) = v.b, v.views(q), _range(v, q)
    return b.op("And", b.op("Greater", raw, b.const(float(lo))), b.op("Less", raw, b.const(float(hi))))


@rule("DynamicQuantizeLinear", quantized=True)
def dynamic_quantize_linear(v: VJP) -> Grads:
    """y = round(x/ys) + yz with ys, yz from x's own range (so nothing clips); ys held constant ⇒ dx = g_y/ys
    (0 for an all-zero x, whose scale is 0)."""
    if v.grads[0] is None:
        return [None]
    b, ys = v.b, v.views(v.node.output[1])
    safe = b.op("Max", ys, b.const(np.finfo(np.float32).tiny))
    return [v.mask(b.op("Greater", ys, v.zero()), b.op("Div", v.g, safe))]


def _shifted(v: VJP, q: str, zero: str, axis: int) -> str:
    """float32 q − zero (a constant when both are: the weights of ConvInteger / MatMulInteger)."""
    qv, zv = v.info.constants.get(q), v.info.constants.get(zero) if zero else np.zeros(())
    if qv is not None and zv is not None:
        z = np.asarray(zv, np.float32)
        if z.ndim == 1 and z.size > 1:
            dims = [1] * qv.ndim
            dims[axis % qv.ndim] = -1
            z = z.reshape(dims)
        return _float_const(v, np.asarray(qv, np.float32) - z)
    x = v.views(q)
    return v.b.op("Sub", x, _per_axis(v, v.views(zero), q, axis)) if zero else x


def _float_const(v: VJP, value: np.ndarray) -> str:
    name = v.b.const(value)
    v.info.types[name], v.info.shapes[name], v.info.constants[name] = onnx.TensorProto.FLOAT, value.shape, value
    return name


def _float_twin(v: VJP, op: str, inputs: list[str], output: str, needs: list[bool], grads: Grads,
                opset: int | None = None, drop: set[str] | None = None) -> Grads:
    """Run ``op``'s float rule on a node reading ``inputs`` and writing ``output`` (float32 tensors registered
    with :func:`_register`), with the quantized node's attributes."""
    node = helper.make_node(op, inputs, [output], name=v.node.name)
    node.attribute.extend(a for a in v.node.attribute if a.name not in (drop or set()))
    return RULES[op](replace(v, node=node, grads=grads, needs=needs, opset=opset or v.opset))


def _register(v: VJP, name: str, like: str) -> str:
    v.info.types[name] = onnx.TensorProto.FLOAT
    v.info.shapes[name] = v.info.shapes.get(like)
    v.info.constants.setdefault(name, None)
    return name


@rule("ConvInteger", "MatMulInteger", quantized=True)
def integer_linear(v: VJP) -> Grads:
    """y = op(a − az, b − bz) in int32 ⇒ the float op's rule on the shifted operands (the raw-value convention
    makes the gradient of y the gradient of its int32 value)."""
    ins = list(v.node.input) + ["", ""]
    conv = v.node.op_type == "ConvInteger"
    if v.needs[1] and v.needs[0]:
        raise v.fail("both operands depend on the target layer")
    # an operand that wants a gradient is read as it is (a shift does not change the derivative); the other one,
    # the weight, shifted by its zero point
    axes = (1, 0 if conv else -1)
    a, w = (_register(v, v.views(ins[i]) if v.needs[i] else _shifted(v, ins[i], ins[i + 2], axes[i]), ins[i])
            for i in (0, 1))
    y = _register(v, v.views(v.y), v.y)
    grads = _float_twin(v, "Conv" if conv else "MatMul", [a, w], y, v.needs[:2], [v.g])
    return v.pad_grads(list(grads[:2]))


def _qlinear(v: VJP, op: str, operands: list[tuple[int, int, int]], out: tuple[int, int] | None) -> Grads:
    b, ins = v.b, list(v.node.input) + [""] * 3
    g = v.g
    y = v.views(v.y)
    if out is not None and ins[out[0]]:
        g = b.op("Div", g if v.unclipped else v.mask(_unsaturated(v, v.y), g), v.views(ins[out[0]]))
        y = _register(v, b.op("Mul", b.op("Sub", y, v.views(ins[out[1]])) if ins[out[1]] else y,
                               v.views(ins[out[0]])), v.y)
    floats = [_register(v, _dequantised(v, ins[q], ins[s], ins[z], q), ins[q]) for q, s, z in operands]
    needs = [v.needs[q] for q, _, _ in operands]
    opset = v.attrs.get("opset") if op == "Softmax" else 17 if op == "ReduceMean" else None
    grads = _float_twin(v, op, floats, y, needs, [g], opset=opset, drop=_QUANT_ONLY_ATTRS)
    result: Grads = [None] * len(v.node.input)
    for (q, s, _), grad in zip(operands, grads):
        if grad is not None and v.needs[q]:
            result[q] = b.op("Mul", grad, v.views(ins[s]))
    return result


def _dequantised(v: VJP, q: str, s: str, z: str, position: int) -> str:
    """(q − z)·s in float32: a constant for weights (per-channel along the output axis), ops otherwise."""
    qv, sv = v.info.constants.get(q), v.info.constants.get(s)
    zv = v.info.constants.get(z) if z else np.zeros((), np.int32)
    if qv is not None and sv is not None and zv is not None:
        axis = 0 if v.node.op_type == "QLinearConv" else -1
        if v.node.op_type == "QGemm" and v.attrs.get("transB", 0):
            axis = 0
        shift = lambda a: a.reshape([-1 if i == axis % qv.ndim else 1 for i in range(qv.ndim)]) if (  # noqa: E731
            np.ndim(a) == 1 and np.size(a) > 1) else a
        value = (np.asarray(qv, np.float32) - shift(np.asarray(zv, np.float32))) * shift(np.asarray(sv, np.float32))
        return _float_const(v, value.astype(np.float32))
    x = v.views(q)
    if z:
        x = v.b.op("Sub", x, v.views(z))
    return v.b.op("Mul", x, v.views(s))


def _make_qlinear(op_type: str) -> None:
    float_op, operands, out = QLINEAR[op_type]

    def vjp(v: VJP) -> Grads:
        if v.attrs.get("channels_last"):
            raise v.fail("channels_last quantized pooling is not supported")
        return _qlinear(v, float_op, operands, out)

    vjp.__name__ = vjp.__qualname__ = f"q_{float_op.lower()}"
    vjp.__doc__ = f"{op_type}: the {float_op} rule on dequantised tensors, g/ys in, ·xs out."
    rule(op_type, quantized=True)(vjp)


for _op in QLINEAR:
    _make_qlinear(_op)


@rule("QLinearConcat", quantized=True)
def qlinear_concat(v: VJP) -> Grads:
    """Y = Concat(dequantised Xi) requantised: Concat's rule, g/ys in, ·xs_i out."""
    ins = list(v.node.input)
    operands = [(i, i + 1, i + 2) for i in range(2, len(ins), 3)]
    return _qlinear(v, "Concat", operands, (0, 1))
