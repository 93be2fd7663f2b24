"""Gradient rules for Resize and Upsample.

Resize and Upsample are linear in x with a fixed, separable spatial map: y = x ×_a A_a over the resized axes a,
one small [out, in] matrix A_a per axis, computed here in numpy from the static shapes with ONNX Runtime's float32
coordinate arithmetic (nearest: a 0/1 matrix; linear: 2 taps a row; cubic: 4). The VJP is dx = g ×_a A_aᵀ: one
MatMul per resized axis with a constant matrix (never the full [H·W, H'·W'] product). That is exact (the same
weights, summed in float32), costs |g|·in multiply-adds per axis, needs no index tensors, and runs at full speed
on every execution provider; ScatterElements(reduction=add) would be O(|g|) but needs an int64 index tensor the
size of g and serial (or atomic) accumulation. The commonest case, nearest upsampling by an integer factor k
(each input repeated k times), is recognised and done in O(|g|) by Reshape + ReduceSum over the k copies.
"""

from __future__ import annotations

import numpy as np

from onnxcam.autodiff.registry import VJP, Grads, rule


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


def resize_matrix(mode: str, coord: str, nearest: str, n_in: int, n_out: int, scale: float | np.float32,
                  roi: tuple[float, float] = (0.0, 1.0), cubic_a: float = -0.75, exclude_outside: bool = False,
                  ) -> np.ndarray:
    """The [n_out, n_in] matrix A of one axis of a Resize: y[o] = Σ_i A[o, i]·x[i] (ONNX Runtime's semantics,
    including tf_crop_and_resize's out-of-range rows, which hold the constant extrapolation value: zero rows)."""
    scale32 = np.float32(scale)
    matrix = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if scale32 == 1:  # ORT maps index to index whenever an axis keeps its scale
        matrix[rows, np.minimum(rows, n_in - 1)] = 1.0
        return matrix.astype(np.float32)
    orig = _original_coordinate(coord, n_in, n_out, scale32, roi)
    if mode == "nearest":
        index = np.clip(_nearest_index(nearest, orig, bool(scale32 < 1)), 0, n_in - 1)
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
        return b.op("ReduceSum", b.op("Reshape", grad, b.ints(v.reshape_dims(split))), b.ints([axis + 1]), keepdims=0)
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
        return v.pad_grads([_resize_back(v, mode, "asymmetric", "simple", scales, [(0.0, 1.0)] * rank)])
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
    return v.pad_grads([grad])


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
    return v.pad_grads([_resize_back(v, mode, "asymmetric", "simple", scales, [(0.0, 1.0)] * rank)])

