"""The gradient rules: one vector-Jacobian product per ONNX op type, registered in ``RULES``.

A rule receives a :class:`VJP` (the node, its output gradients, a builder for new nodes and the tensor
shapes) and returns one gradient tensor name per node input (``None`` where no gradient is needed).
Adding an op means adding one function here with ``@rule("OpType")`` and one test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcam.core.errors import UnsupportedOpError
from onnxcam.core.graph_builder import GraphBuilder
from onnxcam.core.graph_queries import attributes
from onnxcam.core.tensor_info import Shape, TensorInfo

Grads = list[str | None]


@dataclass
class VJP:
    """Everything a rule needs: ``g`` is the gradient of output 0, ``needs[i]`` whether input i wants one."""

    node: onnx.NodeProto
    grads: Grads
    needs: list[bool]
    b: GraphBuilder
    info: TensorInfo
    opset: int

    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    @property
    def g(self) -> str:
        return self.grads[0]

    @property
    def attrs(self) -> dict:
        return attributes(self.node)

    def shape(self, name: str) -> Shape:
        return self.info.shape(name)

    def fail(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"cannot differentiate {self.node.op_type} node '{self.node.name}': {why}")

    def only_first_input(self) -> None:
        """Rules for ops whose other inputs are weights: refuse if a weight depends on the target layer."""
        if any(self.needs[1:]):
            raise self.fail("a weight input depends on the target layer; pick a layer after it")

    # small graph-building conveniences used by many rules
    def zero(self) -> str:
        return self.b.const(0.0)

    def mask(self, cond: str, grad: str) -> str:
        """``Where(cond, grad, 0)``."""
        return self.b.op("Where", cond, grad, self.zero())

    def zeros_like(self, ref: str) -> str:
        """float32 zeros of ``ref``'s run-time shape (ConstantOfShape's default value)."""
        return self.b.op("ConstantOfShape", self.b.op("Shape", ref))

    def like(self, grad: str, ref: str) -> str:
        """``Reshape(grad, Shape(ref))``."""
        return self.b.op("Reshape", grad, self.b.op("Shape", ref))

    def unbroadcast(self, grad: str, operand: str) -> str:
        """Sum ``grad`` (shaped like the node's output) over the axes ``operand`` was broadcast along."""
        out, src = self.shape(self.y), self.shape(operand)
        if out == src:
            return grad
        lead = len(out) - len(src)
        axes = [i for i in range(len(out)) if i < lead or (src[i - lead] == 1 and out[i] != 1)]
        if axes:
            grad = self.b.op("ReduceSum", grad, self.b.ints(axes), keepdims=1)
        return self.like(grad, operand)


RULES: dict[str, Callable[[VJP], Grads]] = {}


def rule(*op_types: str) -> Callable:
    """Register a VJP function for ``op_types``."""

    def register(fn: Callable[[VJP], Grads]) -> Callable[[VJP], Grads]:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


def conv_geometry(v: VJP) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(input, output, kernel, strides, dilations) spatial sizes of a Conv-like node; an error when dynamic."""
    a = v.attrs
    xs, ys = list(v.shape(v.x)[2:]), list(v.shape(v.y)[2:])
    if None in xs or None in ys:
        raise v.fail("the spatial size is dynamic; export with a fixed input size")
    nd = len(xs)
    k = list(a.get("kernel_shape") or v.shape(v.node.input[1])[2:])
    return xs, ys, k, list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))


def _spatial(v: VJP) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """(input, output, kernel, strides, dilations, pads) of a Conv/pool node, with auto_pad resolved."""
    a = v.attrs
    xs, ys, k, s, d = conv_geometry(v)
    nd = len(xs)
    pads = list(a.get("pads", [0] * 2 * nd))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * st + (kk - 1) * dd + 1 - i, 0) for i, o, kk, st, dd in zip(xs, ys, k, s, d)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = small + big if auto == "SAME_UPPER" else big + small
    elif auto == "VALID":
        pads = [0] * 2 * nd
    return xs, ys, k, s, d, pads


def _transpose_back(v: VJP, grad: str, channels: int, k, s, d, pads, xs, ys, weight: str) -> str:
    """ConvTranspose undoing a Conv/pool's spatial map, output padded back to the input size."""
    nd, pads = len(xs), list(pads)
    out_pad = [xs[i] - ((ys[i] - 1) * s[i] - pads[i] - pads[i + nd] + (k[i] - 1) * d[i] + 1) for i in range(nd)]
    for i in range(nd):  # ceil_mode windows reach past the padded input: crop that part off the end
        if out_pad[i] < 0:
            pads[i + nd] -= out_pad[i]
            out_pad[i] = 0
    return v.b.op("ConvTranspose", grad, weight, group=channels, kernel_shape=k, strides=s, dilations=d,
                  pads=pads, output_padding=out_pad)


@rule("AveragePool")
def average_pool(v: VJP) -> Grads:
    """dx = depthwise ConvTranspose(g / divisor, ones): divisor per output position (count_include_pad)."""
    xs, ys, k, s, d, pads = _spatial(v)
    if any(dd != 1 for dd in d):
        raise v.fail("dilated AveragePool is not supported")
    nd, channels = len(xs), v.shape(v.x)[1]
    include_pad = v.attrs.get("count_include_pad", 0)
    divisor = np.ones((), np.float32)
    for i in range(nd):  # per-axis window lengths; the divisor is their outer product
        start = np.arange(ys[i]) * s[i] - pads[i]
        lo, hi = (-pads[i], xs[i] + pads[i + nd]) if include_pad else (0, xs[i])
        length = np.minimum(start + k[i], hi) - np.maximum(start, lo)
        divisor = np.multiply.outer(divisor, length.astype(np.float32))
    scaled = v.b.op("Div", v.g, v.b.const(divisor))
    ones = v.b.const(np.ones([channels, 1, *k], np.float32))
    return [_transpose_back(v, scaled, channels, k, s, [1] * nd, pads, xs, ys, ones)]


@rule("MaxPool")
def max_pool(v: VJP) -> Grads:
    """dx = ScatterElements(0, Indices, g, reduction=add) over the flattened input (Indices recomputed)."""
    if v.opset < 16:
        raise v.fail("needs opset >= 16 (ScatterElements with reduction=add); re-export with opset 17")
    b = v.b
    _, idx = b.ops("MaxPool", v.x, outputs=2, **{k: a for k, a in v.attrs.items() if k != "storage_order"})
    flat = b.ints([-1])
    zeros = b.op("ConstantOfShape", b.op("Reshape", b.op("Size", v.x), flat))
    scattered = b.op("ScatterElements", zeros, b.op("Reshape", idx, flat), b.op("Reshape", v.g, flat),
                     axis=0, reduction="add")
    return [v.like(scattered, v.x)]


@rule("GlobalAveragePool")
def global_average_pool(v: VJP) -> Grads:
    """dx = Expand(g / (h·w), shape(x))."""
    count = math.prod(v.shape(v.x)[2:])
    return [v.b.op("Expand", v.b.op("Div", v.g, v.b.const(float(count))), v.b.op("Shape", v.x))]


def _reduce_axes(v: VJP, attr_until: int) -> list[int]:
    """Axes of a Reduce* node (attribute before opset ``attr_until``, input from then on), made positive."""
    rank = len(v.shape(v.x))
    if v.opset < attr_until:
        axes = v.attrs.get("axes")
    elif len(v.node.input) > 1 and v.node.input[1]:
        axes = v.info.constant(v.node.input[1])
        if axes is None:
            raise v.fail("the reduction axes are computed at run time")
        axes = axes.tolist()
    else:
        axes = None
    if not axes:
        if v.attrs.get("noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _reduce_back(v: VJP, axes: list[int], divide: bool) -> str:
    b, grad = v.b, v.g
    if not axes:
        return grad
    if not v.attrs.get("keepdims", 1):
        grad = b.op("Unsqueeze", grad, b.ints(axes))
    if divide:
        shape = v.shape(v.x)
        grad = b.op("Div", grad, b.const(float(math.prod(shape[a] for a in axes))))
    return b.op("Expand", grad, b.op("Shape", v.x))


@rule("ReduceMean")
def reduce_mean(v: VJP) -> Grads:
    """dx = Expand(g / count, shape(x)) (g unsqueezed first when keepdims = 0)."""
    return [_reduce_back(v, _reduce_axes(v, 18), divide=True)]


@rule("ReduceSum")
def reduce_sum(v: VJP) -> Grads:
    """dx = Expand(g, shape(x))."""
    return [_reduce_back(v, _reduce_axes(v, 13), divide=False)]


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(v: VJP) -> Grads:
    """dx = Reshape(g, shape(x))."""
    return [v.like(v.g, v.x)] + [None] * (len(v.node.input) - 1)


@rule("Identity", "Dropout")
def identity(v: VJP) -> Grads:
    """dx = g."""
    return [v.g] + [None] * (len(v.node.input) - 1)


@rule("Cast")
def cast(v: VJP) -> Grads:
    """dx = Cast(g, type(x))."""
    return [v.b.op("Cast", v.g, to=v.info.types.get(v.x, onnx.TensorProto.FLOAT))]


@rule("Relu")
def relu(v: VJP) -> Grads:
    """dx = g · [x > 0]."""
    return [v.mask(v.b.op("Greater", v.x, v.zero()), v.g)]


@rule("Clip")
def clip(v: VJP) -> Grads:
    """dx = g · [min < x < max] (torch's convention at the edges)."""
    b, a, ins = v.b, v.attrs, list(v.node.input) + ["", ""]
    lo = ins[1] or (b.const(a["min"]) if "min" in a else None)
    hi = ins[2] or (b.const(a["max"]) if "max" in a else None)
    conds = ([b.op("Greater", v.x, lo)] if lo else []) + ([b.op("Less", v.x, hi)] if hi else [])
    if not conds:
        return [v.g]
    cond = conds[0] if len(conds) == 1 else b.op("And", *conds)
    return [v.mask(cond, v.g)] + [None] * (len(v.node.input) - 1)


@rule("Sigmoid")
def sigmoid(v: VJP) -> Grads:
    """dx = g · y · (1 − y)."""
    b = v.b
    return [b.op("Mul", v.g, b.op("Mul", v.y, b.op("Sub", b.const(1.0), v.y)))]


@rule("HardSigmoid")
def hard_sigmoid(v: VJP) -> Grads:
    """dx = g · α · [0 < αx + β < 1]."""
    b, a = v.b, v.attrs
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    z = b.op("Add", b.op("Mul", v.x, b.const(alpha)), b.const(beta))
    inside = b.op("And", b.op("Greater", z, v.zero()), b.op("Less", z, b.const(1.0)))
    return [v.mask(inside, b.op("Mul", v.g, b.const(alpha)))]


@rule("HardSwish")
def hard_swish(v: VJP) -> Grads:
    """dx = g · (0 if x < −3; x/3 + 1/2 if x ≤ 3; 1 otherwise) — torch's hardswish_backward."""
    b, x = v.b, v.x
    middle = b.op("Mul", v.g, b.op("Add", b.op("Div", x, b.const(3.0)), b.const(0.5)))
    upper = b.op("Where", b.op("LessOrEqual", x, b.const(3.0)), middle, v.g)
    return [b.op("Where", b.op("Less", x, b.const(-3.0)), v.zero(), upper)]


@rule("BatchNormalization")
def batch_norm(v: VJP) -> Grads:
    """dx = g · scale / sqrt(var + ε) (inference mode), broadcast over channels."""
    if any(v.needs[1:]) or v.attrs.get("training_mode", 0):
        raise v.fail("only inference-mode BatchNormalization with constant statistics is supported")
    b, (_, scale, _, _, var) = v.b, v.node.input
    factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", var, b.const(v.attrs.get("epsilon", 1e-5)))))
    factor = b.op("Reshape", factor, b.ints([-1] + [1] * (len(v.shape(v.x)) - 2)))
    return [b.op("Mul", v.g, factor), None, None, None, None]


@rule("Add")
def add(v: VJP) -> Grads:
    """da = unbroadcast(g), db = unbroadcast(g)."""
    a, c = v.node.input
    return [v.unbroadcast(v.g, a) if v.needs[0] else None, v.unbroadcast(v.g, c) if v.needs[1] else None]


@rule("Sub")
def sub(v: VJP) -> Grads:
    """da = unbroadcast(g), db = unbroadcast(−g)."""
    a, c = v.node.input
    return [v.unbroadcast(v.g, a) if v.needs[0] else None,
            v.unbroadcast(v.b.op("Neg", v.g), c) if v.needs[1] else None]


@rule("Mul")
def mul(v: VJP) -> Grads:
    """da = unbroadcast(g · b), db = unbroadcast(g · a)."""
    a, c = v.node.input
    return [v.unbroadcast(v.b.op("Mul", v.g, c), a) if v.needs[0] else None,
            v.unbroadcast(v.b.op("Mul", v.g, a), c) if v.needs[1] else None]


@rule("Div")
def div(v: VJP) -> Grads:
    """da = unbroadcast(g / b), db = unbroadcast(−g · y / b)."""
    b, (a, c) = v.b, v.node.input
    return [v.unbroadcast(b.op("Div", v.g, c), a) if v.needs[0] else None,
            v.unbroadcast(b.op("Neg", b.op("Div", b.op("Mul", v.g, v.y), c)), c) if v.needs[1] else None]


#: Slice end meaning "past the start" for a negative step, whatever the axis length.
BEFORE_START = -(2**62)


def reverse(v: VJP, t: str, axes: list[int]) -> str:
    """``t`` reversed along ``axes`` (Slice with step −1)."""
    n = len(axes)
    return v.b.op("Slice", t, v.b.ints([-1] * n), v.b.ints([BEFORE_START] * n), v.b.ints(axes), v.b.ints([-1] * n))


def own_copy(v: VJP, weight: str) -> str:
    """A bit-identical copy of ``weight`` (reversed twice along axis 0) that OpenVINO folds into a constant of
    its own. A backward node that reads a forward node's square weight transposed must not read the same
    constant: OpenVINO's CPU plugin caches reordered weights by buffer, not by how they are read (design.md §4)."""
    return v.b.memo((weight, "copy"), lambda: reverse(v, reverse(v, weight, [0]), [0]))


def weight_read_transposed(v: VJP, name: str) -> str:
    """``name`` for a backward MatMul/Gemm/Einsum: its own copy when it is a constant whose last two axes are
    equal (a square Linear weight), else itself."""
    shape = v.info.shapes.get(name)
    if v.info.constants.get(name) is not None and shape and len(shape) >= 2 and shape[-1] == shape[-2] > 1:
        return own_copy(v, name)
    return name


@rule("Gemm")
def gemm(v: VJP) -> Grads:
    """Y = α·A'·B' + β·C: dA' = α·g·B'ᵀ, dB' = α·A'ᵀ·g, dC = unbroadcast(β·g)."""
    b, a = v.b, v.attrs
    alpha, beta, ta, tb = a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0)
    ins = list(v.node.input)
    grads: Grads = [None] * len(ins)
    if v.needs[0]:
        da = b.op("Gemm", v.g, weight_read_transposed(v, ins[1]), alpha=alpha, transB=1 - tb)
        grads[0] = b.op("Transpose", da) if ta else da
    if v.needs[1]:
        db = b.op("Gemm", weight_read_transposed(v, ins[0]), v.g, alpha=alpha, transA=1 - ta)
        grads[1] = b.op("Transpose", db) if tb else db
    if len(ins) > 2 and v.needs[2]:
        grads[2] = v.unbroadcast(b.op("Mul", v.g, b.const(beta)), ins[2])
    return grads


@rule("MatMul")
def matmul(v: VJP) -> Grads:
    """dA = unbroadcast(g·Bᵀ), dB = unbroadcast(Aᵀ·g) (transposing the last two axes)."""
    b, (a, c) = v.b, v.node.input
    ranks = len(v.shape(a)), len(v.shape(c))
    if min(ranks) < 2:
        raise v.fail("MatMul with a 1-D operand is not supported")

    def t(name: str, rank: int) -> str:
        return b.op("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])

    return [v.unbroadcast(b.op("MatMul", v.g, t(weight_read_transposed(v, c), ranks[1])), a) if v.needs[0] else None,
            v.unbroadcast(b.op("MatMul", t(weight_read_transposed(v, a), ranks[0]), v.g), c) if v.needs[1] else None]


@rule("Concat")
def concat(v: VJP) -> Grads:
    """d input_i = Slice(g) over that input's range of the concatenation axis."""
    b, rank = v.b, len(v.shape(v.y))
    axis = v.attrs["axis"] % rank
    grads: Grads = []
    start = 0
    for name, need in zip(v.node.input, v.needs):
        size = v.shape(name)[axis]
        if size is None:
            raise v.fail("concatenation along a dynamic axis")
        grads.append(b.op("Slice", v.g, b.ints([start]), b.ints([start + size]), b.ints([axis])) if need else None)
        start += size
    return grads


@rule("Transpose")
def transpose(v: VJP) -> Grads:
    """dx = Transpose(g, inverse permutation)."""
    perm = v.attrs.get("perm") or list(range(len(v.shape(v.x))))[::-1]
    return [v.b.op("Transpose", v.g, perm=[int(i) for i in np.argsort(perm)])]


@rule("Slice")
def slice_(v: VJP) -> Grads:
    """dx = g scattered back: per sliced axis, interleave zeros (step s > 1: Unsqueeze, Pad to s, merge the
    two axes) and Pad/Slice to the input's size (constant starts/ends/axes/steps); a negative step s reads x
    backwards, so g is flipped (Slice step −1) and scattered as the step −s from the lowest index read."""
    b, x_shape = v.b, v.shape(v.x)
    ins = list(v.node.input) + [""] * (5 - len(v.node.input))
    values = [v.info.constant(name) for name in ins[1:5]]
    if values[0] is None or values[1] is None or any(n and val is None for n, val in zip(ins[3:5], values[2:])):
        raise v.fail("the slice bounds are computed at run time")
    starts = values[0].tolist()
    rank = len(x_shape)
    axes = [a % rank for a in values[2].tolist()] if values[2] is not None else list(range(len(starts)))
    steps = values[3].tolist() if values[3] is not None else [1] * len(starts)
    grad, shape = v.g, list(v.shape(v.y))
    for start, axis, step in zip(starts, axes, steps):
        size = x_shape[axis]
        if step == 0:
            raise v.fail("Slice with step 0")
        if size is None:
            raise v.fail("slicing along the dynamic batch axis")
        count = shape[axis]
        if step < 0:  # indices first, first + step, …: flip g so it runs upwards from the lowest one
            first = min(max(start + size if start < 0 else start, 0), size - 1)
            lo = first + (count - 1) * step if count else 0
            grad = b.op("Slice", grad, b.ints([-1]), b.ints([-(2**62)]), b.ints([axis]), b.ints([-1]))
            step = -step
        else:
            lo = min(max(start + size if start < 0 else start, 0), size)
        if step > 1:  # element i goes to i·step: a zero-padded new axis of length `step`, merged into this one
            grad = b.op("Pad", b.op("Unsqueeze", grad, b.ints([axis + 1])),
                        b.ints([0] * (rank + 1) + [step - 1 if k == axis + 1 else 0 for k in range(rank + 1)]))
            shape[axis] = count * step
            grad = b.op("Reshape", grad, b.ints([-1 if d is None else d for d in shape]))
            count = count * step
        after = size - lo - count
        pads = [0] * (2 * rank)
        pads[axis], pads[axis + rank] = lo, max(after, 0)
        grad = b.op("Pad", grad, b.ints(pads))
        if after < 0:
            grad = b.op("Slice", grad, b.ints([0]), b.ints([size]), b.ints([axis]))
        shape[axis] = size
    return [grad] + [None] * (len(v.node.input) - 1)


def _reduce_mean(v: VJP, t: str, axes: list[int]) -> str:
    """ReduceMean over ``axes`` with keepdims, in the model's opset form (axes input from opset 18)."""
    return v.b.reduce("ReduceMean", t, axes, opset=v.opset)


@rule("Tanh")
def tanh(v: VJP) -> Grads:
    """dx = g · (1 − y²)."""
    b = v.b
    return [b.op("Mul", v.g, b.op("Sub", b.const(1.0), b.op("Mul", v.y, v.y)))]


@rule("Exp")
def exp(v: VJP) -> Grads:
    """dx = g · y."""
    return [v.b.op("Mul", v.g, v.y)]


@rule("Sqrt")
def sqrt(v: VJP) -> Grads:
    """dx = g / (2y)."""
    return [v.b.op("Div", v.g, v.b.op("Mul", v.y, v.b.const(2.0)))]


@rule("Neg")
def neg(v: VJP) -> Grads:
    """dx = −g."""
    return [v.b.op("Neg", v.g)]


@rule("Erf")
def erf(v: VJP) -> Grads:
    """dx = g · 2/√π · exp(−x²)."""
    b = v.b
    bell = b.op("Exp", b.op("Neg", b.op("Mul", v.x, v.x)))
    return [b.op("Mul", v.g, b.op("Mul", b.const(2 / math.sqrt(math.pi)), bell))]


@rule("Pow")
def pow_(v: VJP) -> Grads:
    """dx = g · p · x^(p−1) (constant exponent p)."""
    p = v.info.constant(v.node.input[1])
    if v.needs[1] or p is None:
        raise v.fail("the exponent is not a constant")
    b, p = v.b, np.asarray(p, np.float32)
    return [b.op("Mul", v.g, b.op("Mul", b.const(p), b.op("Pow", v.x, b.const(p - 1)))), None]


@rule("LeakyRelu")
def leaky_relu(v: VJP) -> Grads:
    """dx = g if x > 0 else α·g."""
    b = v.b
    return [b.op("Where", b.op("Greater", v.x, v.zero()), v.g, b.op("Mul", v.g, b.const(v.attrs.get("alpha", 0.01))))]


@rule("PRelu")
def prelu(v: VJP) -> Grads:
    """dx = g if x > 0 else slope·g (constant slope)."""
    if v.needs[1]:
        raise v.fail("the slope depends on the target layer")
    b = v.b
    return [v.unbroadcast(b.op("Where", b.op("Greater", v.x, v.zero()), v.g, b.op("Mul", v.g, v.node.input[1])), v.x),
            None]


@rule("Softmax")
def softmax(v: VJP) -> Grads:
    """dx = y · (g − Σ_axis g·y) (opset ≥ 13 semantics: one axis)."""
    if v.opset < 13:
        raise v.fail("Softmax before opset 13 (2-D coercion) is not supported; convert the model to opset 13+")
    b, axis = v.b, v.attrs.get("axis", -1)
    rank = len(v.shape(v.x))
    dot = b.op("ReduceSum", b.op("Mul", v.g, v.y), b.ints([axis % rank]), keepdims=1)
    return [b.op("Mul", v.y, b.op("Sub", v.g, dot))]


@rule("Gelu")
def gelu(v: VJP) -> Grads:
    """dx = g·(Φ(x) + x·φ(x)); "tanh": g·(½(1+t) + ½x(1−t²)·√(2/π)(1+3c·x²)), t = tanh(√(2/π)(x+c·x³))."""
    approximate = v.attrs.get("approximate", "none")
    if approximate == "tanh":
        return [_gelu_tanh(v)]
    if approximate != "none":
        raise v.fail(f"Gelu with approximate='{approximate}' has no rule")
    b, x = v.b, v.x
    cdf = b.op("Mul", b.const(0.5), b.op("Add", b.const(1.0), b.op("Erf", b.op("Mul", x, b.const(1 / math.sqrt(2))))))
    pdf = b.op("Mul", b.const(1 / math.sqrt(2 * math.pi)), b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.const(-0.5))))
    return [b.op("Mul", v.g, b.op("Add", cdf, b.op("Mul", x, pdf)))]


@rule("Expand")
def expand(v: VJP) -> Grads:
    """dx = unbroadcast(g)."""
    return [v.unbroadcast(v.g, v.x), None]


@rule("Where")
def where(v: VJP) -> Grads:
    """da = unbroadcast(Where(c, g, 0)), db = unbroadcast(Where(c, 0, g))."""
    b, (c, x1, x2) = v.b, v.node.input
    return [None,
            v.unbroadcast(b.op("Where", c, v.g, v.zero()), x1) if v.needs[1] else None,
            v.unbroadcast(b.op("Where", c, v.zero(), v.g), x2) if v.needs[2] else None]


@rule("Pad")
def pad(v: VJP) -> Grads:
    """dx = Slice(g) removing the padding (constant mode, non-negative constant pads); reflect / edge / wrap:
    the copied border runs of g are added back onto their sources (``rules_spatial.pad_back``)."""
    a, ins = v.attrs, list(v.node.input)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise v.fail(f"Pad mode '{mode}' has no rule yet")
    pads = a.get("pads") if v.opset < 11 else v.info.constant(ins[1])
    if pads is None:
        raise v.fail("the pads are computed at run time")
    pads = [int(p) for p in np.asarray(pads).tolist()]
    rank = len(v.shape(v.x))
    axes = list(range(rank))
    if len(ins) > 3 and ins[3]:
        axes = [int(x) % rank for x in v.info.constant(ins[3]).tolist()]
    if any(p < 0 for p in pads):
        raise v.fail("negative pads (cropping) have no rule yet")
    if mode != "constant":
        return [rules_spatial.pad_back(v, pads, axes, mode)] + [None] * (len(ins) - 1)
    n = len(axes)
    starts = [pads[i] for i in range(n)]
    ends = [pads[i] + v.shape(v.x)[axes[i]] if v.shape(v.x)[axes[i]] is not None else 2**62 for i in range(n)]
    out = v.b.op("Slice", v.g, v.b.ints(starts), v.b.ints(ends), v.b.ints(axes))
    return [out] + [None] * (len(ins) - 1)


@rule("Gather")
def gather(v: VJP) -> Grads:
    """dx = ScatterElements(0, indices, g, axis, reduction=add), the indices spread over g's shape
    (constant or computed indices, e.g. a ViT class token or the as_strided decomposition of permutes)."""
    if v.opset < 16:
        raise v.fail("needs opset >= 16 (ScatterElements with reduction=add); re-export with opset 17")
    b, idx = v.b, v.node.input[1]
    rank = len(v.shape(v.x))
    axis = v.attrs.get("axis", 0) % rank
    q = v.shape(idx)
    grad = v.g
    if len(q) != 1:  # one index axis: scalar → unsqueeze, several → merge (at most one size unknown)
        g_shape = list(v.shape(v.y))
        merged = g_shape[:axis] + [None if None in q else math.prod(q)] + g_shape[axis + len(q):]
        if merged.count(None) > 1:
            raise v.fail("Gather with multi-dimensional indices of dynamic size on a batched tensor")
        grad = b.op("Reshape", grad, b.ints([-1 if d is None else d for d in merged]))
        idx = b.op("Reshape", idx, b.ints([-1]))
    spread = b.op("Reshape", idx, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
    spread = b.op("Expand", b.op("Cast", spread, to=onnx.TensorProto.INT64), b.op("Shape", grad))
    return [b.op("ScatterElements", v.zeros_like(v.x), spread, grad, axis=axis, reduction="add"), None]


@rule("Split")
def split(v: VJP) -> Grads:
    """dx = Concat(g_i) along the split axis (zeros for outputs that carry no gradient)."""
    b = v.b
    parts = [g if g is not None else v.zeros_like(out) for g, out in zip(v.grads, v.node.output)]
    return [b.op("Concat", *parts, axis=v.attrs.get("axis", 0))] + [None] * (len(v.node.input) - 1)


def _normalise_back(v: VJP, axes: list[int], scale_shape: list[int] | None) -> str:
    """dx for y = x̂·scale + bias, x̂ = (x − μ)/σ over ``axes``: (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ, ĝ = g·scale."""
    b, x = v.b, v.x
    eps = v.b.const(float(v.attrs.get("epsilon", 1e-5)))
    centred = b.op("Sub", x, _reduce_mean(v, x, axes))
    sigma = b.op("Sqrt", b.op("Add", _reduce_mean(v, b.op("Mul", centred, centred), axes), eps))
    xhat = b.op("Div", centred, sigma)
    scale = v.node.input[1]
    if scale_shape is not None:
        scale = b.op("Reshape", scale, b.ints(scale_shape))
    gh = b.op("Mul", v.g, scale)
    projection = b.op("Mul", xhat, _reduce_mean(v, b.op("Mul", gh, xhat), axes))
    inner = b.op("Sub", b.op("Sub", gh, _reduce_mean(v, gh, axes)), projection)
    return b.op("Div", inner, sigma)


@rule("LayerNormalization")
def layer_norm(v: VJP) -> Grads:
    """LayerNorm over axes [axis, rank): dx = (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ with ĝ = g·scale."""
    if any(v.needs[1:]):
        raise v.fail("the scale or bias depends on the target layer")
    rank = len(v.shape(v.x))
    axis = v.attrs.get("axis", -1) % rank
    return [_normalise_back(v, list(range(axis, rank)), None)] + [None] * (len(v.node.input) - 1)


@rule("InstanceNormalization")
def instance_norm(v: VJP) -> Grads:
    """InstanceNorm over the spatial axes, per-channel scale: the LayerNorm formula on axes [2, rank)."""
    if any(v.needs[1:]):
        raise v.fail("the scale or bias depends on the target layer")
    rank = len(v.shape(v.x))
    return [_normalise_back(v, list(range(2, rank)), [-1] + [1] * (rank - 2)), None, None]


@rule("ScatterND")
def scatter_nd(v: VJP) -> Grads:
    """y = data with updates written at indices: d data = g with those positions zeroed, d updates = GatherND(g)."""
    if v.attrs.get("reduction", "none") != "none":
        raise v.fail("ScatterND with a reduction has no rule yet")
    b, (_, indices, updates) = v.b, v.node.input
    grads: Grads = [None, None, None]
    if v.needs[0]:
        grads[0] = b.op("ScatterND", v.g, indices, v.zeros_like(updates))
    if v.needs[2]:
        grads[2] = b.op("GatherND", v.g, indices)
    return grads


# --- rules for ops other exporters emit (elementwise and reductions) ---


def _float_type(v: VJP, name: str) -> int:
    """Element type of ``name`` (float32 when unknown)."""
    return v.info.types.get(name) or onnx.TensorProto.FLOAT


def _zeros_of(v: VJP, ref: str) -> str:
    """Zeros of ``ref``'s run-time shape and element type."""
    zeros = v.zeros_like(ref)
    dtype = _float_type(v, ref)
    return zeros if dtype == onnx.TensorProto.FLOAT else v.b.op("Cast", zeros, to=dtype)


def _pad_grads(v: VJP, grads: Grads) -> Grads:
    """``grads`` followed by ``None`` for the node's remaining (non-differentiable) inputs, e.g. the axes."""
    return grads + [None] * (len(v.node.input) - len(grads))


@rule("Reciprocal")
def reciprocal(v: VJP) -> Grads:
    """dx = −g · y²."""
    b = v.b
    return [b.op("Neg", b.op("Mul", v.g, b.op("Mul", v.y, v.y)))]


@rule("Abs")
def abs_(v: VJP) -> Grads:
    """dx = g · sign(x) (0 at x = 0, as torch)."""
    return [v.b.op("Mul", v.g, v.b.op("Sign", v.x))]


@rule("Log")
def log(v: VJP) -> Grads:
    """dx = g / x."""
    return [v.b.op("Div", v.g, v.x)]


@rule("Sum")
def sum_(v: VJP) -> Grads:
    """dx_i = unbroadcast(g) for every input."""
    return [v.unbroadcast(v.g, x) if need else None for x, need in zip(v.node.input, v.needs)]


@rule("Mean")
def mean(v: VJP) -> Grads:
    """dx_i = unbroadcast(g / n) for every one of the n inputs."""
    scaled = v.b.op("Div", v.g, v.b.const(float(len(v.node.input))))
    return [v.unbroadcast(scaled, x) if need else None for x, need in zip(v.node.input, v.needs)]


@rule("Max", "Min")
def max_min(v: VJP) -> Grads:
    """dx_i = unbroadcast(g · [x_i = y] / Σ_j [x_j = y]) (the selected input; ties split g evenly)."""
    # tie rule: torch.maximum/minimum for two inputs, torch.amax/amin over the stacked inputs for more
    b, ins = v.b, list(v.node.input)
    if len(ins) == 1:
        return [v.g]
    dtype = _float_type(v, v.y)
    hits = [b.op("Equal", x, v.y) for x in ins]
    count = b.op("Sum", *[b.op("Cast", hit, to=dtype) for hit in hits])
    share = b.op("Div", v.g, count)
    return [v.unbroadcast(v.mask(hit, share), x) if need else None for x, hit, need in zip(ins, hits, v.needs)]


def _kept(v: VJP, t: str, axes: list[int]) -> str:
    """A Reduce* node's output-shaped ``t`` with the reduced axes kept (length 1), so that it broadcasts to x."""
    if axes and not v.attrs.get("keepdims", 1):
        return v.b.op("Unsqueeze", t, v.b.ints(axes))
    return t


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(v: VJP) -> Grads:
    """dx = g · [x = y] / Σ_axes [x = y] (the arg-max/arg-min positions; ties split g evenly, as torch.amax)."""
    # empty axes with noop_with_empty_axes = 1: y = x elementwise, so dx = g
    axes = _reduce_axes(v, 18)
    if not axes:
        return _pad_grads(v, [v.g])
    b = v.b
    hit = b.op("Equal", v.x, _kept(v, v.y, axes))
    count = b.op("ReduceSum", b.op("Cast", hit, to=_float_type(v, v.y)), b.ints(axes), keepdims=1)
    return _pad_grads(v, [v.mask(hit, b.op("Div", _kept(v, v.g, axes), count))])


@rule("ReduceL2")
def reduce_l2(v: VJP) -> Grads:
    """dx = x · g / y (0 where y = 0, as torch's norm); with noop_with_empty_axes y = |x|."""
    axes = _reduce_axes(v, 18)
    b, y = v.b, _kept(v, v.y, axes)
    ratio = b.op("Where", b.op("Equal", y, v.zero()), v.zero(), b.op("Div", _kept(v, v.g, axes), y))
    return _pad_grads(v, [b.op("Mul", v.x, ratio)])


@rule("ReduceSumSquare")
def reduce_sum_square(v: VJP) -> Grads:
    """dx = 2x · g (g broadcast over the reduced axes)."""
    axes = _reduce_axes(v, 18)
    b = v.b
    return _pad_grads(v, [b.op("Mul", b.op("Mul", v.x, b.const(2.0)), _kept(v, v.g, axes))])


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(v: VJP) -> Grads:
    """dx = g · exp(x − y) (the softmax of x over the reduced axes)."""
    axes = _reduce_axes(v, 18)
    b = v.b
    weights = b.op("Exp", b.op("Sub", v.x, _kept(v, v.y, axes)))
    return _pad_grads(v, [b.op("Mul", _kept(v, v.g, axes), weights)])


@rule("Softplus")
def softplus(v: VJP) -> Grads:
    """dx = g · σ(x)."""
    return [v.b.op("Mul", v.g, v.b.op("Sigmoid", v.x))]


@rule("Mish")
def mish(v: VJP) -> Grads:
    """dx = g · (t + x·σ(x)·(1 − t²)), t = tanh(softplus(x))."""
    b, x = v.b, v.x
    t = b.op("Tanh", b.op("Softplus", x))
    slope = b.op("Mul", b.op("Mul", x, b.op("Sigmoid", x)), b.op("Sub", b.const(1.0), b.op("Mul", t, t)))
    return [b.op("Mul", v.g, b.op("Add", t, slope))]


def _exponential_linear(v: VJP, positive: float, negative: float, rate: float) -> str:
    """g·positive where x > 0, else g·negative·exp(rate·x) (torch's elu_backward convention at 0)."""
    b, x = v.b, v.x
    scaled = x if rate == 1.0 else b.op("Mul", x, b.const(rate))
    below = b.op("Mul", v.g, b.op("Mul", b.const(negative), b.op("Exp", scaled)))
    above = v.g if positive == 1.0 else b.op("Mul", v.g, b.const(positive))
    return b.op("Where", b.op("Greater", x, v.zero()), above, below)


@rule("Elu")
def elu(v: VJP) -> Grads:
    """dx = g if x > 0 else g·α·exp(x)."""
    return [_exponential_linear(v, 1.0, v.attrs.get("alpha", 1.0), 1.0)]


@rule("Selu")
def selu(v: VJP) -> Grads:
    """dx = γ·g if x > 0 else g·γ·α·exp(x)."""
    alpha, gamma = v.attrs.get("alpha", 1.67326319217681884765625), v.attrs.get("gamma", 1.05070102214813232421875)
    return [_exponential_linear(v, gamma, gamma * alpha, 1.0)]


@rule("Celu")
def celu(v: VJP) -> Grads:
    """dx = g if x > 0 else g·exp(x/α)."""
    return [_exponential_linear(v, 1.0, 1.0, 1.0 / v.attrs.get("alpha", 1.0))]


@rule("ThresholdedRelu")
def thresholded_relu(v: VJP) -> Grads:
    """dx = g · [x > α]."""
    return [v.mask(v.b.op("Greater", v.x, v.b.const(v.attrs.get("alpha", 1.0))), v.g)]


def _gelu_tanh(v: VJP) -> str:
    """The Gelu rule's approximate="tanh" form (see :func:`gelu`)."""
    b, x = v.b, v.x
    c, k = 0.044715, math.sqrt(2 / math.pi)
    x2 = b.op("Mul", x, x)
    t = b.op("Tanh", b.op("Mul", b.const(k), b.op("Add", x, b.op("Mul", b.const(c), b.op("Mul", x2, x)))))
    inner = b.op("Mul", b.const(k), b.op("Add", b.const(1.0), b.op("Mul", b.const(3 * c), x2)))
    slope = b.op("Mul", b.op("Mul", b.const(0.5), x), b.op("Mul", b.op("Sub", b.const(1.0), b.op("Mul", t, t)), inner))
    cdf = b.op("Mul", b.const(0.5), b.op("Add", b.const(1.0), t))
    return b.op("Mul", v.g, b.op("Add", cdf, slope))


@rule("Sign", "Floor", "Ceil", "Round")
def piecewise_constant(v: VJP) -> Grads:
    """dx = 0, as an explicit zeros tensor (a layer reached only through these ops gets a zero gradient)."""
    return [_zeros_of(v, v.x)]


from onnxcam.autodiff.rules import rules_spatial  # noqa: E402,F401  (registers the spatial rules)
