"""Gradient rules for the Reduce* ops: ReduceMean, ReduceSum, ReduceMax / ReduceMin, ReduceL2, ReduceSumSquare,
ReduceLogSumExp. The axes are an attribute before opset 18 (ReduceSum: 13) and an input from then on
(:func:`reduce_axes`); with keepdims = 0 the output-shaped tensors get the reduced axes back (:func:`kept`) so
that they broadcast against x.
"""

from __future__ import annotations

import math

from onnxcam.autodiff.registry import VJP, Grads, rule


def reduce_axes(v: VJP, attr_until: int) -> list[int]:
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
        grad = b.op("Div", grad, b.const(float(math.prod(v.dim(v.x, a) for a in axes))))
    return b.op("Expand", grad, b.op("Shape", v.x))


@rule("ReduceMean")
def reduce_mean(v: VJP) -> Grads:
    """dx = Expand(g / count, shape(x)) (g unsqueezed first when keepdims = 0)."""
    return [_reduce_back(v, reduce_axes(v, 18), divide=True)]


@rule("ReduceSum")
def reduce_sum(v: VJP) -> Grads:
    """dx = Expand(g, shape(x))."""
    return [_reduce_back(v, reduce_axes(v, 13), divide=False)]


def kept(v: VJP, t: str, axes: list[int]) -> str:
    """A Reduce* node's output-shaped ``t`` with the reduced axes kept (length 1), so that it broadcasts to x."""
    if axes and not v.attrs.get("keepdims", 1):
        return v.b.op("Unsqueeze", t, v.b.ints(axes))
    return t


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(v: VJP) -> Grads:
    """dx = g · [x = y] / Σ_axes [x = y] (the arg-max/arg-min positions; ties split g evenly, as torch.amax)."""
    # empty axes with noop_with_empty_axes = 1: y = x elementwise, so dx = g
    axes = reduce_axes(v, 18)
    if not axes:
        return v.pad_grads([v.g])
    b = v.b
    hit = b.op("Equal", v.x, kept(v, v.y, axes))
    count = b.op("ReduceSum", b.op("Cast", hit, to=v.float_type(v.y)), b.ints(axes), keepdims=1)
    return v.pad_grads([v.mask(hit, b.op("Div", kept(v, v.g, axes), count))])


@rule("ReduceL2")
def reduce_l2(v: VJP) -> Grads:
    """dx = x · g / y (0 where y = 0, as torch's norm); with noop_with_empty_axes y = |x|."""
    axes = reduce_axes(v, 18)
    b, y = v.b, kept(v, v.y, axes)
    ratio = b.op("Where", b.op("Equal", y, v.zero()), v.zero(), b.op("Div", kept(v, v.g, axes), y))
    return v.pad_grads([b.op("Mul", v.x, ratio)])


@rule("ReduceSumSquare")
def reduce_sum_square(v: VJP) -> Grads:
    """dx = 2x · g (g broadcast over the reduced axes)."""
    axes = reduce_axes(v, 18)
    b = v.b
    return v.pad_grads([b.op("Mul", b.op("Mul", v.x, b.const(2.0)), kept(v, v.g, axes))])


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(v: VJP) -> Grads:
    """dx = g · exp(x − y) (the softmax of x over the reduced axes)."""
    axes = reduce_axes(v, 18)
    b = v.b
    weights = b.op("Exp", b.op("Sub", v.x, kept(v, v.y, axes)))
    return v.pad_grads([b.op("Mul", kept(v, v.g, axes), weights)])

