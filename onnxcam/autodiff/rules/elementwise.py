"""Gradient rules for elementwise arithmetic and pass-through ops: Add, Sub, Mul, Div, Neg, Where, Cast,
Identity / Dropout, the n-ary Sum / Mean / Max / Min, and the piecewise-constant Sign / Floor / Ceil / Round
(an explicit zero gradient: they carry dependency, unlike the rows of ``no_gradient``).

Binary and n-ary ops broadcast, so each operand's gradient is summed back to its shape (``VJP.unbroadcast``).
"""

from __future__ import annotations

import onnx

from onnxcam.autodiff.registry import VJP, Grads, rule


@rule("Identity", "Dropout")
def identity(v: VJP) -> Grads:
    """dx = g."""
    return [v.g] + [None] * (len(v.node.input) - 1)


@rule("Cast")
def cast(v: VJP) -> Grads:
    """dx = Cast(g, type(x))."""
    return [v.b.op("Cast", v.g, to=v.info.types.get(v.x, onnx.TensorProto.FLOAT))]


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


@rule("Neg")
def neg(v: VJP) -> Grads:
    """dx = −g."""
    return [v.b.op("Neg", v.g)]


@rule("Where")
def where(v: VJP) -> Grads:
    """da = unbroadcast(Where(c, g, 0)), db = unbroadcast(Where(c, 0, g))."""
    b, (c, x1, x2) = v.b, v.node.input
    return [None,
            v.unbroadcast(b.op("Where", c, v.g, v.zero()), x1) if v.needs[1] else None,
            v.unbroadcast(b.op("Where", c, v.zero(), v.g), x2) if v.needs[2] else None]


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
    dtype = v.float_type(v.y)
    hits = [b.op("Equal", x, v.y) for x in ins]
    count = b.op("Sum", *[b.op("Cast", hit, to=dtype) for hit in hits])
    share = b.op("Div", v.g, count)
    return [v.unbroadcast(v.mask(hit, share), x) if need else None for x, hit, need in zip(ins, hits, v.needs)]


def _zeros_of(v: VJP, ref: str) -> str:
    """Zeros of ``ref``'s run-time shape and element type."""
    zeros = v.zeros_like(ref)
    dtype = v.float_type(ref)
    return zeros if dtype == onnx.TensorProto.FLOAT else v.b.op("Cast", zeros, to=dtype)


@rule("Sign", "Floor", "Ceil", "Round")
def piecewise_constant(v: VJP) -> Grads:
    """dx = 0, as an explicit zeros tensor (a layer reached only through these ops gets a zero gradient)."""
    return [_zeros_of(v, v.x)]

