"""Gradient rules for layout ops, which move, copy or select elements: Reshape / Flatten / Squeeze / Unsqueeze,
Transpose, Concat, Split, Slice (any steps), Expand, Tile, Gather, ScatterND, DepthToSpace / SpaceToDepth and Pad
(constant, reflect, edge, wrap).

Pad's reflect / edge / wrap modes copy whole runs of the input, so their adjoint adds each run of g back onto
its source with Slice (negative steps for reflections) and zero-Pad: O(|g|), no matrices (:func:`_pad_back`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import onnx

from onnxcam.autodiff.registry import BEFORE_START, VJP, Grads, rule


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(v: VJP) -> Grads:
    """dx = Reshape(g, shape(x))."""
    return [v.like(v.g, v.x)] + [None] * (len(v.node.input) - 1)


@rule("Transpose")
def transpose(v: VJP) -> Grads:
    """dx = Transpose(g, inverse permutation)."""
    perm = v.attrs.get("perm") or list(range(len(v.shape(v.x))))[::-1]
    return [v.b.op("Transpose", v.g, perm=[int(i) for i in np.argsort(perm)])]


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


@rule("Split")
def split(v: VJP) -> Grads:
    """dx = Concat(g_i) along the split axis (zeros for outputs that carry no gradient)."""
    b = v.b
    parts = [g if g is not None else v.zeros_like(out) for g, out in zip(v.grads, v.node.output)]
    return [b.op("Concat", *parts, axis=v.attrs.get("axis", 0))] + [None] * (len(v.node.input) - 1)


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
        size, count = x_shape[axis], shape[axis]
        if step == 0:
            raise v.fail("Slice with step 0")
        if size is None or count is None:
            raise v.fail("slicing along the dynamic batch axis")
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


@rule("Expand")
def expand(v: VJP) -> Grads:
    """dx = unbroadcast(g)."""
    return [v.unbroadcast(v.g, v.x), None]


@rule("Tile")
def tile(v: VJP) -> Grads:
    """dx = Σ over the tiles: Reshape g so each tiled axis splits into (repeats, size), ReduceSum the repeats."""
    given = v.info.constant(v.node.input[1])
    if given is None:
        raise v.fail("the repeats are computed at run time")
    repeats = [int(r) for r in np.asarray(given).ravel()]
    if all(r == 1 for r in repeats):
        return [v.g, None]
    split: list[int | None] = []
    summed: list[int] = []
    for r, n in zip(repeats, v.shape(v.x)):
        if r != 1:
            summed.append(len(split))
            split.append(r)
        split.append(n)
    b = v.b
    grad = b.op("Reshape", v.g, b.ints(v.reshape_dims(split)))
    return [b.op("ReduceSum", grad, b.ints(summed), keepdims=0), None]


@rule("Gather")
def gather(v: VJP) -> Grads:
    """dx = ScatterElements(0, indices, g, axis, reduction=add), the indices spread over g's shape
    (constant or computed indices, e.g. a ViT class token or the as_strided decomposition of permutes)."""
    if v.opset < 16:
        raise v.fail("needs opset >= 16 (ScatterElements with reduction=add); re-export with opset 17")
    b, idx = v.b, v.node.input[1]
    rank = len(v.shape(v.x))
    axis = v.attrs.get("axis", 0) % rank
    q, q_fixed = v.shape(idx), v.fixed_shape(idx)
    grad = v.g
    if len(q) != 1:  # one index axis: scalar → unsqueeze, several → merge (at most one size unknown)
        g_shape = list(v.shape(v.y))
        merged = g_shape[:axis] + [None if q_fixed is None else math.prod(q_fixed)] + g_shape[axis + len(q):]
        if merged.count(None) > 1:
            raise v.fail("Gather with multi-dimensional indices of dynamic size on a batched tensor")
        grad = b.op("Reshape", grad, b.ints([-1 if d is None else d for d in merged]))
        idx = b.op("Reshape", idx, b.ints([-1]))
    spread = b.op("Reshape", idx, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
    spread = b.op("Expand", b.op("Cast", spread, to=onnx.TensorProto.INT64), b.op("Shape", grad))
    return [b.op("ScatterElements", v.zeros_like(v.x), spread, grad, axis=axis, reduction="add"), None]


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
    n, c, h, w = v.static_shape(v.x)
    split = b.op("Reshape", v.g, b.ints(v.reshape_dims([n, c // block**2, h, block, w, block])))
    moved = b.op("Transpose", split, perm=[0, 1, 3, 5, 2, 4])
    return [b.op("Reshape", moved, b.ints(v.reshape_dims([n, c, h, w])))]


@rule("SpaceToDepth")
def space_to_depth(v: VJP) -> Grads:
    """A permutation whose inverse is DepthToSpace in DCR mode: dx = DepthToSpace(g, DCR)."""
    return [v.b.op("DepthToSpace", v.g, blocksize=v.attrs["blocksize"], mode="DCR")]


@rule("Pad")
def pad(v: VJP) -> Grads:
    """dx = Slice(g) removing the padding (constant mode, non-negative constant pads); reflect / edge / wrap:
    the copied border runs of g are added back onto their sources (:func:`_pad_back`)."""
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
        given = v.info.constant(ins[3])
        if given is None:
            raise v.fail("the pad axes are computed at run time")
        axes = [int(x) % rank for x in given.tolist()]
    if any(p < 0 for p in pads):
        raise v.fail("negative pads (cropping) have no rule yet")
    if mode != "constant":
        return [_pad_back(v, pads, axes, mode)] + [None] * (len(ins) - 1)
    n = len(axes)
    starts = [pads[i] for i in range(n)]
    ends = [pads[i] + v.shape(v.x)[axes[i]] if v.shape(v.x)[axes[i]] is not None else 2**62 for i in range(n)]
    out = v.b.op("Slice", v.g, v.b.ints(starts), v.b.ints(ends), v.b.ints(axes))
    return [out] + [None] * (len(ins) - 1)


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


def _pad_back(v: VJP, pads: list[int], axes: list[int], mode: Literal["reflect", "edge", "wrap"]) -> str:
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

