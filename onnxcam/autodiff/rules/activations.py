"""Gradient rules for unary activations and other smooth or piecewise-linear elementwise functions: Relu,
Clip, LeakyRelu, PRelu, ThresholdedRelu, Sigmoid, HardSigmoid, HardSwish, Tanh, Exp, Log, Sqrt, Reciprocal, Abs,
Pow (constant exponent), Erf, Gelu (exact and tanh), Softplus, Mish, Elu / Selu / Celu, and Softmax.

Conventions at kinks follow torch's backward functions (named in each rule's docstring where it matters).
"""

from __future__ import annotations

import math

import numpy as np

from onnxcam.autodiff.registry import VJP, Grads, rule


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


@rule("ThresholdedRelu")
def thresholded_relu(v: VJP) -> Grads:
    """dx = g · [x > α]."""
    return [v.mask(v.b.op("Greater", v.x, v.b.const(v.attrs.get("alpha", 1.0))), v.g)]


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


@rule("Tanh")
def tanh(v: VJP) -> Grads:
    """dx = g · (1 − y²)."""
    b = v.b
    return [b.op("Mul", v.g, b.op("Sub", b.const(1.0), b.op("Mul", v.y, v.y)))]


@rule("Exp")
def exp(v: VJP) -> Grads:
    """dx = g · y."""
    return [v.b.op("Mul", v.g, v.y)]


@rule("Log")
def log(v: VJP) -> Grads:
    """dx = g / x."""
    return [v.b.op("Div", v.g, v.x)]


@rule("Sqrt")
def sqrt(v: VJP) -> Grads:
    """dx = g / (2y)."""
    return [v.b.op("Div", v.g, v.b.op("Mul", v.y, v.b.const(2.0)))]


@rule("Reciprocal")
def reciprocal(v: VJP) -> Grads:
    """dx = −g · y²."""
    b = v.b
    return [b.op("Neg", b.op("Mul", v.g, b.op("Mul", v.y, v.y)))]


@rule("Abs")
def abs_(v: VJP) -> Grads:
    """dx = g · sign(x) (0 at x = 0, as torch)."""
    return [v.b.op("Mul", v.g, v.b.op("Sign", v.x))]


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


@rule("Softmax")
def softmax(v: VJP) -> Grads:
    """dx = y · (g − Σ_axis g·y) (opset ≥ 13 semantics: one axis)."""
    if v.opset < 13:
        raise v.fail("Softmax before opset 13 (2-D coercion) is not supported; convert the model to opset 13+")
    b, axis = v.b, v.attrs.get("axis", -1)
    rank = len(v.shape(v.x))
    dot = b.op("ReduceSum", b.op("Mul", v.g, v.y), b.ints([axis % rank]), keepdims=1)
    return [b.op("Mul", v.y, b.op("Sub", v.g, dot))]

