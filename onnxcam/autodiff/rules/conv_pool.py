"""Gradient rules for convolutions and pooling: Conv, ConvTranspose, AveragePool, MaxPool, GlobalAveragePool.

The input-VJP of a Conv is a ConvTranspose with the Conv's weight, and that of a ConvTranspose a Conv with its
weight. Handing the backward node the forward node's weight tensor itself is what breaks OpenVINO's CPU plugin
(2026.4): it reorders each (De)Convolution weight into a blocked layout once and caches the result under
(blocked format and dims, byte size, address of the source constant), not under the layout it read the source
in. A Deconvolution reads its [C_in, C_out/g, k…] weight as the transposed view of the same buffer, so
when C_in/g == C_out/g > 1 both nodes ask for the same key, the second gets the first's reordering and computes
with the untransposed weight (relative error ~1; depthwise and per-group non-square weights are unaffected).
Identity, Reshape, Mul by 1 and Transpose pairs are folded back onto the same buffer, so the backward node gets a
weight computed in-graph from the forward one, which OpenVINO and ONNX Runtime fold into a constant of its own at
load time: nothing is added to the file but a few index constants.

* stride 1: dx = Conv(g, flip(Wᵀ)), the "full" correlation with the per-group transposed, spatially reversed
  weight and pads d·(k−1) − p. Exact (the same products, summed in a different order), and ONNX Runtime's Conv
  (NCHWc, depthwise kernels) is faster than its ConvTranspose: 13-30 % less backward time on resnet18 and
  mobilenet_v2.
* strides > 1 (or pads beyond the kernel's reach): the ConvTranspose, its weight reversed twice along axis 0
  (a bit-identical copy, ``VJP.own_copy``) when it is per-group square; the same for a ConvTranspose's backward
  Conv.

Grouped and depthwise convolutions keep their group: the backward Conv / ConvTranspose has the forward node's
``group`` and a [C_in, C_out/g, k…] weight (per group transposed by Reshape → Transpose → Reshape; a Reshape alone
when one side has one channel per group; the weight itself, reversed, for a depthwise one), never a dense
[C, C, k…] one, so its size is the forward weight's whatever the channel count. OpenVINO's cache key only collides
where the per-group weight is square (C_in/g == C_out/g > 1), so only those get their own copy; a depthwise weight
(one channel per group) reads the same either way. An AveragePool's backward is a depthwise ConvTranspose with an
all-ones kernel, cut to the part of the window that can reach the input (a pool window of 2560 on a 19×19 map,
Hugging Face EfficientNet-B7's, would otherwise make a 62.5 GiB [2560, 1, 2560, 2560] kernel).

docs/design.md ("OpenVINO") has the measurements.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from onnxcam.autodiff.registry import VJP, Grads, rule


def _spatial_sizes(v: VJP, name: str) -> list[int]:
    """The spatial sizes of ``name`` (axes 2, 3, …); an error when one is dynamic."""
    sizes = v.shape(name)[2:]
    if None in sizes:
        raise v.fail("the spatial size is dynamic; export with a fixed input size")
    return [d for d in sizes if d is not None]


def conv_geometry(v: VJP) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(input, output, kernel, strides, dilations) spatial sizes of a Conv-like node; an error when dynamic."""
    a = v.attrs
    xs, ys = _spatial_sizes(v, v.x), _spatial_sizes(v, v.y)
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


def _transpose_back(v: VJP, grad: str, channels: int, k: list[int], s: list[int], d: list[int], pads: list[int],
                    xs: list[int], ys: list[int], weight: str) -> str:
    """ConvTranspose undoing a Conv/pool's spatial map, output padded back to the input size."""
    nd, pads = len(xs), list(pads)
    out_pad = [xs[i] - ((ys[i] - 1) * s[i] - pads[i] - pads[i + nd] + (k[i] - 1) * d[i] + 1) for i in range(nd)]
    for i in range(nd):  # ceil_mode windows reach past the padded input: crop that part off the end
        if out_pad[i] < 0:
            pads[i + nd] -= out_pad[i]
            out_pad[i] = 0
    return v.b.op("ConvTranspose", grad, weight, group=channels, kernel_shape=k, strides=s, dilations=d,
                  pads=pads, output_padding=out_pad)


def _square_per_group(shape: tuple[int, ...], group: int) -> bool:
    """A [C_a, C_b/g, k…] weight with C_a/g == C_b/g > 1: one OpenVINO mixes up with its transpose (see above)."""
    return shape[0] // group == shape[1] > 1


def _flipped_transposed(v: VJP, weight: str, group: int, shape: tuple[int, ...]) -> str:
    """The [C_in, C_out/g, k…] weight of the stride-1 Conv that undoes a Conv with [C_out, C_in/g, k…] ``weight``:
    per group, input and output channels swapped; every spatial axis reversed."""

    def make() -> str:
        b = v.b
        cout, cin_g, *k = shape
        cout_g, nd = cout // group, len(k)
        t = weight
        if group == 1:
            t = b.op("Transpose", weight, perm=[1, 0, *range(2, 2 + nd)])
        elif cin_g > 1 and cout_g > 1:
            t = b.op("Reshape", weight, b.ints([group, cout_g, cin_g, *k]))
            t = b.op("Transpose", t, perm=[0, 2, 1, *range(3, 3 + nd)])
            t = b.op("Reshape", t, b.ints([cin_g * group, cout_g, *k]))
        elif cout_g != cin_g:  # one of them is 1: the swap is a reshape
            t = b.op("Reshape", weight, b.ints([cin_g * group, cout_g, *k]))
        return v.reverse(t, list(range(2, 2 + nd)))

    return v.b.memo((weight, "flipped_transposed", group), make)


@rule("Conv")
def conv(v: VJP) -> Grads:
    """dx = Conv(g, flip(Wᵀ)) with pads d·(k−1) − p at stride 1; otherwise ConvTranspose(g, W) with the Conv's
    group/strides/pads/dilations and the output padding (W as its own copy where per-group square)."""
    v.only_first_input()
    xs, ys, k, s, d, pads = _spatial(v)
    nd, group, weight = len(xs), v.attrs.get("group", 1), v.node.input[1]
    shape = v.fixed_shape(weight)
    full = [d[i % nd] * (k[i % nd] - 1) - pads[i] for i in range(2 * nd)]
    if all(st == 1 for st in s) and min(full) >= 0 and shape is not None:
        grad = v.b.op("Conv", v.g, _flipped_transposed(v, weight, group, shape), group=group, kernel_shape=k,
                      dilations=d, pads=full)
        return v.pad_grads([grad])
    if shape is not None and _square_per_group(shape, group):
        weight = v.own_copy(weight)
    return v.pad_grads([_transpose_back(v, v.g, group, k, s, d, pads, xs, ys, weight)])


@rule("ConvTranspose")
def conv_transpose(v: VJP) -> Grads:
    """dx = Conv(g, W) with the same weight (its own copy where per-group square), group, strides, dilations and
    pads (explicit, or derived from auto_pad / output_shape as the ONNX spec and ORT split them); output_padding only
    adds output positions, which the Conv ignores, cropped off where the Conv's output overhangs the input."""
    v.only_first_input()
    a = v.attrs
    xs, ys, k, s, d = conv_geometry(v)
    nd = len(xs)
    out_pad = list(a.get("output_padding", [0] * nd))
    auto = a.get("auto_pad", "NOTSET")
    if a.get("output_shape") or auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, st * (i - 1) + op + (kk - 1) * dd + 1 - o)
                 for i, o, kk, st, dd, op in zip(xs, ys, k, s, d, out_pad)]
        head = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = head + [t - h for t, h in zip(total, head)]
    elif auto == "VALID":
        pads = [0] * 2 * nd
    else:
        pads = list(a.get("pads", [0] * 2 * nd))
    group, weight = a.get("group", 1), v.node.input[1]
    shape = v.fixed_shape(weight)
    if shape is not None and _square_per_group(shape, group):
        weight = v.own_copy(weight)
    grad = v.b.op("Conv", v.g, weight, group=group, kernel_shape=k, strides=s, dilations=d, pads=pads)
    conv_out = [(o + pads[i] + pads[i + nd] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i, o in enumerate(ys)]
    if any(c < i for c, i in zip(conv_out, xs)):
        raise v.fail("the output is smaller than the ConvTranspose's input map implies")
    over = [i for i in range(nd) if conv_out[i] > xs[i]]
    if over:
        grad = v.b.op("Slice", grad, v.b.ints([0] * len(over)), v.b.ints([xs[i] for i in over]),
                      v.b.ints([i + 2 for i in over]))
    return v.pad_grads([grad])


@rule("AveragePool")
def average_pool(v: VJP) -> Grads:
    """dx = depthwise ConvTranspose(g / divisor, ones): divisor per output position (count_include_pad).

    The ones kernel is [C, 1, k…]: a window longer than the padded input (Hugging Face EfficientNet pools with
    ``AvgPool2d(hidden_dim, ceil_mode=True)``: a 2560×2560 window on a 19×19 map for B7, so a [2560, 1, 2560, 2560]
    kernel, 62.5 GiB) is cut to the part that can overlap the input (``_reachable_window``), and that kernel,
    the size of an input map, is a ConstantOfShape rather than an initializer."""
    xs, ys, k, s, d, pads = _spatial(v)
    if any(dd != 1 for dd in d):
        raise v.fail("dilated AveragePool is not supported")
    nd, channels = len(xs), v.dim(v.x, 1)
    include_pad = v.attrs.get("count_include_pad", 0)
    divisor = np.ones((), np.float32)
    for i in range(nd):  # per-axis window lengths; the divisor is their outer product
        start = np.arange(ys[i]) * s[i] - pads[i]
        lo, hi = (-pads[i], xs[i] + pads[i + nd]) if include_pad else (0, xs[i])
        length = np.minimum(start + k[i], hi) - np.maximum(start, lo)
        divisor = np.multiply.outer(divisor, length.astype(np.float32))
    scaled = v.b.op("Div", v.g, v.b.const(divisor))
    cut, pads = _reachable_window(xs, ys, k, s, pads)
    if cut == k:
        ones = v.b.const(np.ones([channels, 1, *k], np.float32))
    else:  # as large as an input map: made at load time, not stored in the file
        ones = v.b.op("ConstantOfShape", v.b.ints([channels, 1, *cut]),
                      value=numpy_helper.from_array(np.ones(1, np.float32)))
        k = cut
    return [_transpose_back(v, scaled, channels, k, s, [1] * nd, pads, xs, ys, ones)]


def _reachable_window(xs: list[int], ys: list[int], k: list[int], s: list[int], pads: list[int],
                      ) -> tuple[list[int], list[int]]:
    """(kernel, pads) of an undilated pool's backward ConvTranspose with every window axis longer than
    ``pads_begin + input`` cut to that length; the other axes as they are.

    Window o covers kernel offsets j at input position o·s − p_begin + j; an input position is < x, so an offset
    j ≥ x + p_begin (≥ x + p_begin − o·s for o ≥ 0) never lands on the input: the ConvTranspose with the shorter
    all-ones kernel gives the same input gradient, at a cost (memory and time) bounded by the padded input's size
    instead of the window's. The cut axis' end pad becomes the (ys − 1)·s positions the shorter kernel's
    ConvTranspose output still overhangs the input by, so ``_transpose_back`` needs no output padding there."""
    nd, k, pads = len(xs), list(k), list(pads)
    for i in range(nd):
        reach = xs[i] + pads[i]
        if k[i] > reach:
            k[i] = reach
            pads[i + nd] = (ys[i] - 1) * s[i]
    return k, pads


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
    count = math.prod(_spatial_sizes(v, v.x))
    return [v.b.op("Expand", v.b.op("Div", v.g, v.b.const(float(count))), v.b.op("Shape", v.x))]

