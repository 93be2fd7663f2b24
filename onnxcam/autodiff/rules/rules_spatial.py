"""Gradient rules for re-sampling, layout and normalisation ops: Resize / Upsample, Conv, ConvTranspose, Einsum,
DepthToSpace / SpaceToDepth, Tile, GroupNormalization, LRN, and the reflect / edge / wrap modes of Pad
(:func:`pad_back`, called by ``rules.pad``). Registered into ``rules.RULES`` when ``rules`` is imported.

Resize and Upsample are linear in x with a fixed, separable spatial map: y = x ×_a A_a over the resized axes a,
one small [out, in] matrix A_a per axis, computed here in numpy from the static shapes with ONNX Runtime's float32
coordinate arithmetic (nearest: a 0/1 matrix; linear: 2 taps a row; cubic: 4). The VJP is dx = g ×_a A_aᵀ: one
MatMul per resized axis with a constant matrix (never the full [H·W, H'·W'] product). That is exact (the same
weights, summed in float32), costs |g|·in multiply-adds per axis, needs no index tensors, and runs at full speed
on every execution provider; ScatterElements(reduction=add) would be O(|g|) but needs an int64 index tensor the
size of g and serial (or atomic) accumulation. The commonest case, nearest upsampling by an integer factor k
(each input repeated k times), is recognised and done in O(|g|) by Reshape + ReduceSum over the k copies.
Pad's reflect / edge / wrap modes copy whole runs of the input, so their adjoint adds each run of g back onto
its source with Slice (negative steps for reflections) and zero-Pad: O(|g|), no matrices.
"""

from __future__ import annotations

import string
from collections import Counter

import numpy as np

from onnxcam.autodiff.rules import (
    BEFORE_START,
    VJP,
    Grads,
    _reduce_mean,
    _spatial,
    _transpose_back,
    conv_geometry,
    own_copy,
    reverse,
    rule,
    weight_read_transposed,
)
from onnxcam.core.tensor_info import Shape


def _dims(v: VJP, shape: list[int | None]) -> list[int]:
    """``shape`` for a Reshape: the one dynamic (batch) size as -1."""
    if shape.count(None) > 1:
        raise v.fail("more than one dynamic dimension; export with a fixed input size")
    return [-1 if d is None else int(d) for d in shape]


def _static(v: VJP, name: str) -> Shape:
    """Shape of ``name``, all but the batch axis static."""
    shape = v.shape(name)
    if None in shape[1:]:
        raise v.fail("the tensor sizes are dynamic; export with a fixed input size")
    return shape


def _others(v: VJP) -> Grads:
    return [None] * (len(v.node.input) - 1)


# --- Resize / Upsample -------------------------------------------------------------------------------------------


def _original_coordinate(coord: str, n_in: int, n_out: int, scale: np.float32, roi: tuple[float, float],
                         ) -> np.ndarray:
    """x_original for every output index, in float32 as ONNX Runtime computes it (upsamplebase.h)."""
    f32 = np.float32
    x = np.arange(n_out, dtype=f32)
    half, length_in, length_out = f32(0.5), f32(n_in), f32(n_out)
    if coord == "asymmetric":
        return x / scale
    if coord == "half_pixel":
        return (x + half) / scale - half
    if coord == "pytorch_half_pixel":
        return (x + half) / scale - half if n_out > 1 else np.zeros(n_out, f32)
    if coord == "tf_half_pixel_for_nn":
        return (x + half) / scale
    if coord == "align_corners":
        return np.zeros(n_out, f32) if n_out == 1 else x * (length_in - f32(1)) / (length_out - f32(1))
    if coord == "half_pixel_symmetric":
        adjustment = length_out / (scale * length_in)
        offset = (length_in / f32(2)) * (f32(1) - adjustment)
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(scale) - 0.5).astype(f32)
    if coord == "tf_crop_and_resize":
        start, end = f32(roi[0]), f32(roi[1])
        if n_out > 1:
            return start * (length_in - f32(1)) + (x * (end - start) * (length_in - f32(1))) / (length_out - f32(1))
        return np.full(n_out, 0.5 * np.float64(start + end) * (n_in - 1), f32)
    raise ValueError(coord)


def _nearest_index(nearest: str, orig: np.ndarray, downsampling: bool) -> np.ndarray:
    """The input index ONNX Runtime's ``nearest_mode`` picks for float32 ``orig`` ("simple": Resize-10/Upsample)."""
    whole = np.trunc(orig)
    away = whole + np.sign(orig) * (np.abs(orig - whole) >= 0.5)  # std::round: halves away from zero
    if nearest == "simple":
        index = np.ceil(orig) if downsampling else whole
    elif nearest == "round_prefer_ceil":
        index = away
    elif nearest == "round_prefer_floor":
        index = np.where(orig == whole + np.float32(0.5), np.floor(orig), away)
    elif nearest == "floor":
        index = np.floor(orig)
    elif nearest == "ceil":
        index = np.ceil(orig)
    else:
        raise ValueError(nearest)
    return index.astype(np.int64)


def _cubic_coefficients(s: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights for the taps at floor(x) − 1 … floor(x) + 2, s = x − floor(x): [out, 4]."""
    s = np.abs(s.astype(np.float64))
    near = [1 - s, s]  # distances to the two inner taps
    far = [s + 1, 2 - s]  # and to the two outer ones
    inner = [((a + 2) * t - (a + 3)) * t * t + 1 for t in near]
    outer = [((a * t - 5 * a) * t + 8 * a) * t - 4 * a for t in far]
    return np.stack([outer[0], inner[1], inner[0], outer[1]], axis=1)


def resize_matrix(mode: str, coord: str, nearest: str, n_in: int, n_out: int, scale: float,
                  roi: tuple[float, float] = (0.0, 1.0), cubic_a: float = -0.75, exclude_outside: bool = False,
                  ) -> np.ndarray:
    """The [n_out, n_in] matrix A of one axis of a Resize: y[o] = Σ_i A[o, i]·x[i] (ONNX Runtime's semantics,
    including tf_crop_and_resize's out-of-range rows, which hold the constant extrapolation value: zero rows)."""
    scale = np.float32(scale)
    matrix = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if scale == 1:  # ORT maps index to index whenever an axis keeps its scale
        matrix[rows, np.minimum(rows, n_in - 1)] = 1.0
        return matrix.astype(np.float32)
    orig = _original_coordinate(coord, n_in, n_out, scale, roi)
    if mode == "nearest":
        index = np.clip(_nearest_index(nearest, orig, bool(scale < 1)), 0, n_in - 1)
        matrix[rows, index] = 1.0
    elif mode == "linear":
        clamped = np.clip(orig, np.float32(0), np.float32(n_in - 1))
        first = np.minimum(np.trunc(clamped).astype(np.int64), n_in - 1)
        second = np.minimum(first + 1, n_in - 1)
        to_first = np.abs(clamped - first.astype(np.float32))  # weight of the second tap, and vice versa
        to_second = np.abs(clamped - second.astype(np.float32))
        same = first == second
        np.add.at(matrix, (rows, first), np.where(same, 0.5, to_second))
        np.add.at(matrix, (rows, second), np.where(same, 0.5, to_first))
    elif mode == "cubic":
        floor = np.floor(orig)
        coeffs = _cubic_coefficients(orig - floor, cubic_a)
        taps = floor.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
        if exclude_outside:
            coeffs = np.where((taps >= 0) & (taps < n_in), coeffs, 0.0)
            coeffs = coeffs / coeffs.sum(axis=1, keepdims=True)
        for t in range(4):
            np.add.at(matrix, (rows, np.clip(taps[:, t], 0, n_in - 1)), coeffs[:, t])
    else:
        raise ValueError(mode)
    if coord == "tf_crop_and_resize":
        matrix[(orig < 0) | (orig > np.float32(n_in - 1))] = 0.0
    return matrix.astype(np.float32)


def _repeat_factor(matrix: np.ndarray) -> int | None:
    """k when ``matrix`` repeats every input k times in order (nearest upsampling by an integer factor)."""
    n_out, n_in = matrix.shape
    if n_out % n_in or n_out == n_in:
        return None
    k = n_out // n_in
    expected = np.kron(np.eye(n_in, dtype=np.float32), np.ones((k, 1), np.float32))
    return k if np.array_equal(matrix, expected) else None


def _apply_transposed(v: VJP, grad: str, shape: list[int | None], axis: int, matrix: np.ndarray) -> str:
    """Σ_o grad[…, o, …]·A[o, i] along ``axis`` (``shape`` is grad's; its ``axis`` becomes A's input size)."""
    b, rank = v.b, len(shape)
    n_out, n_in = matrix.shape
    k = _repeat_factor(matrix)
    if k is not None:  # block sums: [.., in, k, ..] → ReduceSum over the k copies
        split = shape[:axis] + [n_in, k] + shape[axis + 1:]
        return b.op("ReduceSum", b.op("Reshape", grad, b.ints(_dims(v, split))), b.ints([axis + 1]), keepdims=0)
    if axis == rank - 1:
        return b.op("MatMul", grad, b.const(matrix))
    if axis == rank - 2:
        return b.op("MatMul", b.const(np.ascontiguousarray(matrix.T)), grad)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = b.op("MatMul", b.op("Transpose", grad, perm=perm), b.const(matrix))
    return b.op("Transpose", moved, perm=[int(i) for i in np.argsort(perm)])


def _resize_back(v: VJP, mode: str, coord: str, nearest: str, scales: list[np.float32],
                 rois: list[tuple[float, float]], cubic_a: float = -0.75, exclude_outside: bool = False) -> str:
    """dx = g ×_a A_aᵀ over every resized axis a (see the module docstring)."""
    xs, ys = list(v.shape(v.x)), list(v.shape(v.y))
    if xs == ys:  # ORT copies the input when no size changes
        return v.g
    grad, shape = v.g, list(ys)
    for axis, (n_in, n_out) in enumerate(zip(xs, ys)):
        if scales[axis] == 1 and n_in == n_out:
            continue
        if n_in is None or n_out is None:
            raise v.fail("resizing along the dynamic batch axis")
        matrix = resize_matrix(mode, coord, nearest, n_in, n_out, scales[axis], rois[axis], cubic_a, exclude_outside)
        if n_in == n_out and np.array_equal(matrix, np.eye(n_in, dtype=np.float32)):
            continue
        grad = _apply_transposed(v, grad, shape, axis, matrix)
        shape[axis] = n_in
    return grad


def _resize_scales(v: VJP, scales_name: str, sizes_name: str, axes: list[int]) -> list[np.float32]:
    """Per-axis float32 scales as ORT derives them: the scales input, or output / input size from the sizes."""
    xs, ys = v.shape(v.x), v.shape(v.y)
    rank = len(xs)
    given = v.info.constant(scales_name) if scales_name else None
    if scales_name and given is None:
        raise v.fail("the scales are computed at run time")
    scales = [np.float32(1)] * rank
    if given is not None and given.size:
        for axis, value in zip(axes, np.asarray(given, np.float32).ravel()):
            scales[axis] = np.float32(value)
        return scales
    if not sizes_name:
        raise v.fail("neither scales nor sizes are given")
    policy = v.attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        for axis in axes:
            if xs[axis] is not None and ys[axis] is not None and xs[axis]:
                scales[axis] = np.float32(ys[axis]) / np.float32(xs[axis])
        return scales
    sizes = v.info.constant(sizes_name)
    if sizes is None or policy not in ("not_larger", "not_smaller"):
        raise v.fail(f"keep_aspect_ratio_policy '{policy}' needs constant sizes")
    ratios = [np.float32(s) / np.float32(xs[a]) for a, s in zip(axes, np.asarray(sizes).ravel())]
    common = min(ratios) if policy == "not_larger" else max(ratios)
    return [common if a in axes else np.float32(1) for a in range(rank)]


@rule("Resize")
def resize(v: VJP) -> Grads:
    """dx = g ×_a A_aᵀ: one constant [out, in] matrix per resized axis (nearest / linear / cubic, every
    coordinate_transformation_mode and nearest_mode, from scales or sizes); see the module docstring."""
    a, ins = v.attrs, list(v.node.input) + [""] * 4
    mode = a.get("mode", "nearest")
    rank = len(v.shape(v.x))
    if mode not in ("nearest", "linear", "cubic"):
        raise v.fail(f"Resize mode '{mode}' is not supported")
    if a.get("antialias", 0):
        raise v.fail("Resize with antialias=1 has no rule yet")
    if v.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates, ORT's "simple" rounding
        scales = _resize_scales(v, ins[1], "", list(range(rank)))
        return [_resize_back(v, mode, "asymmetric", "simple", scales, [(0.0, 1.0)] * rank)] + _others(v)
    axes = [int(x) % rank for x in a.get("axes", range(rank))]
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    scales = _resize_scales(v, ins[2], ins[3], axes)
    rois = [(0.0, 1.0)] * rank
    if coord == "tf_crop_and_resize":
        roi = v.info.constant(ins[1])
        if roi is None:
            raise v.fail("tf_crop_and_resize with a roi computed at run time")
        roi = np.asarray(roi, np.float32).ravel()
        for i, axis in enumerate(axes):
            rois[axis] = (float(roi[i]), float(roi[i + len(axes)]))
    nearest = a.get("nearest_mode", "round_prefer_floor")
    grad = _resize_back(v, mode, coord, nearest, scales, rois, a.get("cubic_coeff_a", -0.75),
                        bool(a.get("exclude_outside", 0)))
    return [grad] + _others(v)


@rule("Upsample")
def upsample(v: VJP) -> Grads:
    """Upsample (opset 7–9, nearest / linear): the Resize rule with asymmetric coordinates and ORT's rounding."""
    a = v.attrs
    mode = {"bilinear": "linear"}.get(a.get("mode", "nearest"), a.get("mode", "nearest"))
    if mode not in ("nearest", "linear"):
        raise v.fail(f"Upsample mode '{mode}' is not supported")
    rank = len(v.shape(v.x))
    if len(v.node.input) > 1:
        scales = _resize_scales(v, v.node.input[1], "", list(range(rank)))
    else:
        scales = [np.float32(s) for s in a["scales"]]
    return [_resize_back(v, mode, "asymmetric", "simple", scales, [(0.0, 1.0)] * rank)] + _others(v)


# --- Conv and ConvTranspose --------------------------------------------------------------------------------------
#
# The input-VJP of a Conv is a ConvTranspose with the Conv's weight, and that of a ConvTranspose a Conv with its
# weight. Handing the backward node the forward node's weight tensor itself is what breaks OpenVINO's CPU plugin
# (2026.4): it reorders each (De)Convolution weight into a blocked layout once and caches the result under
# (blocked format and dims, byte size, address of the source constant), not under the layout it read the source
# in. A Deconvolution reads its [C_in, C_out/g, k…] weight as the transposed view of the same buffer, so
# when C_in/g == C_out/g > 1 both nodes ask for the same key, the second gets the first's reordering and computes
# with the untransposed weight (relative error ~1; depthwise and per-group non-square weights are unaffected).
# Identity, Reshape, Mul by 1 and Transpose pairs are folded back onto the same buffer, so the backward node gets a
# weight computed in-graph from the forward one, which OpenVINO and ONNX Runtime fold into a constant of its own at
# load time: nothing is added to the file but a few index constants.
#   * stride 1: dx = Conv(g, flip(Wᵀ)), the "full" correlation with the per-group transposed, spatially reversed
#     weight and pads d·(k−1) − p. Exact (the same products, summed in a different order), and ONNX Runtime's Conv
#     (NCHWc, depthwise kernels) is faster than its ConvTranspose: 13-30 % less backward time on resnet18 and
#     mobilenet_v2.
#   * strides > 1 (or pads beyond the kernel's reach): the ConvTranspose, its weight reversed twice along axis 0
#     (a bit-identical copy) when it is per-group square; the same for a ConvTranspose's backward Conv.
# docs/design.md ("OpenVINO") has the measurements.

def _square_per_group(shape: Shape, group: int) -> bool:
    """A [C_a, C_b/g, k…] weight with C_a/g == C_b/g > 1: one OpenVINO mixes up with its transpose (see above)."""
    return shape[0] // group == shape[1] > 1


def _flipped_transposed(v: VJP, weight: str, group: int, shape: Shape) -> str:
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
        return reverse(v, t, list(range(2, 2 + nd)))

    return v.b.memo((weight, "flipped_transposed", group), make)


@rule("Conv")
def conv(v: VJP) -> Grads:
    """dx = Conv(g, flip(Wᵀ)) with pads d·(k−1) − p at stride 1; otherwise ConvTranspose(g, W) with the Conv's
    group/strides/pads/dilations and the output padding (W as its own copy where per-group square)."""
    v.only_first_input()
    xs, ys, k, s, d, pads = _spatial(v)
    nd, group, weight = len(xs), v.attrs.get("group", 1), v.node.input[1]
    shape = v.shape(weight)
    full = [d[i % nd] * (k[i % nd] - 1) - pads[i] for i in range(2 * nd)]
    if all(st == 1 for st in s) and min(full) >= 0 and None not in shape:
        grad = v.b.op("Conv", v.g, _flipped_transposed(v, weight, group, shape), group=group, kernel_shape=k,
                      dilations=d, pads=full)
        return [grad] + _others(v)
    if None not in shape and _square_per_group(shape, group):
        weight = own_copy(v, weight)
    return [_transpose_back(v, v.g, group, k, s, d, pads, xs, ys, weight)] + _others(v)


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
    shape = v.shape(weight)
    if None not in shape and _square_per_group(shape, group):
        weight = own_copy(v, weight)
    grad = v.b.op("Conv", v.g, weight, group=group, kernel_shape=k, strides=s, dilations=d, pads=pads)
    conv_out = [(o + pads[i] + pads[i + nd] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i, o in enumerate(ys)]
    if any(c < i for c, i in zip(conv_out, xs)):
        raise v.fail("the output is smaller than the ConvTranspose's input map implies")
    over = [i for i in range(nd) if conv_out[i] > xs[i]]
    if over:
        grad = v.b.op("Slice", grad, v.b.ints([0] * len(over)), v.b.ints([xs[i] for i in over]),
                      v.b.ints([i + 2 for i in over]))
    return [grad] + _others(v)


# --- Einsum ------------------------------------------------------------------------------------------------------


def _einsum_subscripts(v: VJP) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, with "..." spelled out as fresh letters (right-aligned)."""
    equation = v.attrs["equation"].replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(v.node.input):
        raise v.fail(f"equation '{equation}' does not match the {len(v.node.input)} operands")
    fresh = [c for c in string.ascii_letters if c not in equation]
    spans = [len(v.shape(name)) - len(t.replace("...", "")) for t, name in zip(terms, v.node.input)]
    width = max([n for t, n in zip(terms, spans) if "..." in t], default=0)
    ellipsis = "".join(fresh[:width])
    subs = [t.replace("...", ellipsis[width - n:]) for t, n in zip(terms, spans)]
    if arrow:
        return subs, rhs.replace("...", ellipsis)
    counts = Counter("".join(t.replace("...", "") for t in terms))
    return subs, ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))


@rule("Einsum")
def einsum(v: VJP) -> Grads:
    """d operand_i = Einsum(g, other operands → subscripts of operand i); its letters that appear nowhere else
    (summed over inside operand i alone) are put back by Unsqueeze + Expand, and axes it broadcast (size 1
    against a larger size elsewhere) are summed."""
    b, ins = v.b, list(v.node.input)
    subs, out = _einsum_subscripts(v)
    size: dict[str, int | None] = {}
    for letters, name in [*zip(subs, ins), (out, v.y)]:
        for c, n in zip(letters, v.shape(name)):
            if size.get(c, 1) == 1:
                size[c] = n
    grads: Grads = []
    for i, (letters, name) in enumerate(zip(subs, ins)):
        if not v.needs[i]:
            grads.append(None)
            continue
        if len(set(letters)) != len(letters):
            raise v.fail(f"operand {i} repeats a subscript in '{v.attrs['equation']}' (a diagonal)")
        others = [j for j in range(len(ins)) if j != i]
        present = set(out).union(*(subs[j] for j in others))
        kept = "".join(c for c in letters if c in present)
        equation = ",".join([out] + [subs[j] for j in others]) + "->" + kept
        grad = b.op("Einsum", v.g, *[weight_read_transposed(v, ins[j]) for j in others], equation=equation)
        missing = [p for p, c in enumerate(letters) if c not in present]
        if missing:
            grad = b.op("Expand", b.op("Unsqueeze", grad, b.ints(missing)), b.op("Shape", name))
        shape = v.shape(name)
        spread = [p for p, c in enumerate(letters) if c in present and shape[p] == 1 and size.get(c) != 1]
        if spread:
            grad = b.op("ReduceSum", grad, b.ints(spread), keepdims=1)
        grads.append(grad)
    return grads


# --- layout ops --------------------------------------------------------------------------------------------------


@rule("DepthToSpace")
def depth_to_space(v: VJP) -> Grads:
    """A permutation, so dx = its inverse applied to g: SpaceToDepth (DCR mode), or for CRD
    Reshape [N, C', H, b, W, b] → Transpose (0, 1, 3, 5, 2, 4) → Reshape [N, C'·b², H, W]."""
    a, b = v.attrs, v.b
    block, mode = a["blocksize"], a.get("mode", "DCR")
    if mode == "DCR":
        return [b.op("SpaceToDepth", v.g, blocksize=block)]
    if mode != "CRD":
        raise v.fail(f"DepthToSpace mode '{mode}' is not supported")
    n, c, h, w = _static(v, v.x)
    split = b.op("Reshape", v.g, b.ints(_dims(v, [n, c // block**2, h, block, w, block])))
    moved = b.op("Transpose", split, perm=[0, 1, 3, 5, 2, 4])
    return [b.op("Reshape", moved, b.ints(_dims(v, [n, c, h, w])))]


@rule("SpaceToDepth")
def space_to_depth(v: VJP) -> Grads:
    """A permutation whose inverse is DepthToSpace in DCR mode: dx = DepthToSpace(g, DCR)."""
    return [v.b.op("DepthToSpace", v.g, blocksize=v.attrs["blocksize"], mode="DCR")]


@rule("Tile")
def tile(v: VJP) -> Grads:
    """dx = Σ over the tiles: Reshape g so each tiled axis splits into (repeats, size), ReduceSum the repeats."""
    repeats = v.info.constant(v.node.input[1])
    if repeats is None:
        raise v.fail("the repeats are computed at run time")
    repeats = [int(r) for r in np.asarray(repeats).ravel()]
    if all(r == 1 for r in repeats):
        return [v.g, None]
    shape, split, summed = v.shape(v.x), [], []
    for r, n in zip(repeats, shape):
        if r != 1:
            summed.append(len(split))
            split.append(r)
        split.append(n)
    b = v.b
    grad = b.op("Reshape", v.g, b.ints(_dims(v, split)))
    return [b.op("ReduceSum", grad, b.ints(summed), keepdims=0), None]


# --- normalisation -----------------------------------------------------------------------------------------------


@rule("GroupNormalization")
def group_norm(v: VJP) -> Grads:
    """Over x grouped as [N, G, C/G·spatial]: dx = (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ per group, ĝ = g·scale with
    scale per channel (opset 21) or per group (opset 18, repeated over the group's channels)."""
    if any(v.needs[1:]):
        raise v.fail("the scale or bias depends on the target layer")
    a, b, x = v.attrs, v.b, v.x
    groups = int(a["num_groups"])
    shape = _static(v, x)
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
    channels = _static(v, x)[1]
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


# --- Pad: reflect / edge / wrap (called by rules.pad) ---------------------------------------------------------


def _runs(src: np.ndarray, start: int, stop: int) -> list[tuple[int, int, int]]:
    """Split output positions [start, stop) into runs (o0, o1, step) whose sources move by step ∈ {1, −1, 0}."""
    runs: list[tuple[int, int, int]] = []
    o = start
    while o < stop:
        end, step = o + 1, 1
        if end < stop and src[end] - src[o] in (1, -1, 0):
            step = int(src[end] - src[o])
            while end < stop and src[end] - src[end - 1] == step:
                end += 1
        runs.append((o, end, step))
        o = end
    return runs


def pad_back(v: VJP, pads: list[int], axes: list[int], mode: str) -> str:
    """dx for a reflect / edge / wrap Pad: per padded axis, output position o copies input src[o] (np.pad of
    arange(n) in that mode), so dx adds each run of g onto its source: Slice (reversed for reflections, summed
    for an edge's repeats), zero-Pad into place, Sum."""
    b, x_shape = v.b, v.shape(v.x)
    rank = len(x_shape)
    grad, shape = v.g, list(v.shape(v.y))
    for k, axis in enumerate(axes):
        lo, hi = pads[k], pads[k + len(axes)]
        n = x_shape[axis]
        if lo == 0 and hi == 0:
            continue
        if n is None:
            raise v.fail("padding along the dynamic batch axis")
        if (mode == "reflect" and max(lo, hi) >= n) or (mode == "wrap" and max(lo, hi) > n):
            raise v.fail(f"{mode} padding of {max(lo, hi)} on an axis of size {n}")
        src = np.pad(np.arange(n), (lo, hi), mode=mode)  # numpy's reflect / edge / wrap are ONNX's
        runs = _runs(src, 0, lo) + [(lo, lo + n, 1)] + _runs(src, lo + n, lo + n + hi)
        pieces = []
        for o0, o1, step in runs:
            if step == -1:
                piece = b.op("Slice", grad, b.ints([o1 - 1]), b.ints([o0 - 1 if o0 > 0 else BEFORE_START]),
                             b.ints([axis]), b.ints([-1]))
            else:
                piece = b.op("Slice", grad, b.ints([o0]), b.ints([o1]), b.ints([axis]))
            if step == 0 and o1 - o0 > 1:
                piece = b.op("ReduceSum", piece, b.ints([axis]), keepdims=1)
            first, length = int(src[o0:o1].min()), 1 if step == 0 else o1 - o0
            if (first, length) != (0, n):
                widths = [0] * (2 * rank)
                widths[axis], widths[axis + rank] = first, n - first - length
                piece = b.op("Pad", piece, b.ints(widths))
            pieces.append(piece)
        grad = b.sum(pieces)
        shape[axis] = n
    return grad

