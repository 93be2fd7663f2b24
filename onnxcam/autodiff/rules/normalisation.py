"""Gradient rules for the normalisation ops: BatchNormalization (inference mode), LayerNormalization,
InstanceNormalization, GroupNormalization and LRN. Scale, bias and statistics must not depend on the target layer.
"""

from __future__ import annotations

import numpy as np

from onnxcam.autodiff.registry import VJP, Grads, rule


@rule("BatchNormalization")
def batch_norm(v: VJP) -> Grads:
    """dx = g · scale / sqrt(var + ε) (inference mode), broadcast over channels."""
    if any(v.needs[1:]) or v.attrs.get("training_mode", 0):
        raise v.fail("only inference-mode BatchNormalization with constant statistics is supported")
    b, (_, scale, _, _, var) = v.b, v.node.input
    factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", var, b.const(v.attrs.get("epsilon", 1e-5)))))
    factor = b.op("Reshape", factor, b.ints([-1] + [1] * (len(v.shape(v.x)) - 2)))
    return [b.op("Mul", v.g, factor), None, None, None, None]


def _reduce_mean(v: VJP, t: str, axes: list[int]) -> str:
    """ReduceMean over ``axes`` with keepdims, in the model's opset form (axes input from opset 18)."""
    return v.b.reduce("ReduceMean", t, axes, opset=v.opset)


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


@rule("GroupNormalization")
def group_norm(v: VJP) -> Grads:
    """Over x grouped as [N, G, C/G·spatial]: dx = (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ per group, ĝ = g·scale with
    scale per channel (opset 21) or per group (opset 18, repeated over the group's channels)."""
    if any(v.needs[1:]):
        raise v.fail("the scale or bias depends on the target layer")
    a, b, x = v.attrs, v.b, v.x
    groups = int(a["num_groups"])
    shape = v.static_shape(x)
    channels, rank = shape[1], len(shape)
    per_channel = [1, channels] + [1] * (rank - 2)
    scale = v.node.input[1]
    if v.opset < 21:  # scale [G] → [C]: each group's value repeated over its C/G channels
        scale = b.op("Expand", b.op("Reshape", scale, b.ints([groups, 1])), b.ints([groups, channels // groups]))
    gh = b.op("Mul", v.g, b.op("Reshape", scale, b.ints(per_channel)))
    grouped = b.ints([0, groups, -1])
    xg, gg = b.op("Reshape", x, grouped), b.op("Reshape", gh, grouped)
    eps = b.const(float(a.get("epsilon", 1e-5)))
    centred = b.op("Sub", xg, _reduce_mean(v, xg, [2]))
    sigma = b.op("Sqrt", b.op("Add", _reduce_mean(v, b.op("Mul", centred, centred), [2]), eps))
    xhat = b.op("Div", centred, sigma)
    projection = b.op("Mul", xhat, _reduce_mean(v, b.op("Mul", gg, xhat), [2]))
    inner = b.op("Sub", b.op("Sub", gg, _reduce_mean(v, gg, [2])), projection)
    return [v.like(b.op("Div", inner, sigma), x), None, None]


@rule("LRN")
def lrn(v: VJP) -> Grads:
    """y = x·d^−β, d = bias + α/n·Σ_window x² (window [c − ⌊(n−1)/2⌋, c + ⌈(n−1)/2⌉]):
    dx = g·d^−β − (2αβ/n)·x·Σ_mirrored window (g·x·d^(−β−1)); window sums by a ones Conv along the channels."""
    a, b, x = v.attrs, v.b, v.x
    size = int(a["size"])
    alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    channels = v.static_shape(x)[1]
    before = (size - 1) // 2
    after = size - 1 - before
    ones = b.const(np.ones((1, 1, size, 1), np.float32))

    def window_sum(t: str, lo: int, hi: int) -> str:
        flat = b.op("Reshape", t, b.ints([0, 1, channels, -1]))
        summed = b.op("Conv", flat, ones, kernel_shape=[size, 1], pads=[lo, 0, hi, 0])
        return v.like(summed, x)

    d = b.op("Add", b.const(bias), b.op("Mul", b.const(alpha / size), window_sum(b.op("Mul", x, x), before, after)))
    direct = b.op("Mul", v.g, b.op("Pow", d, b.const(-beta)))
    inner = b.op("Mul", b.op("Mul", v.g, x), b.op("Pow", d, b.const(-beta - 1.0)))
    cross = b.op("Mul", b.op("Mul", x, b.const(-2.0 * alpha * beta / size)), window_sum(inner, after, before))
    return [b.op("Add", direct, cross)]

