"""CF-CAM's channel clustering as standard ONNX ops (the graph form of
:func:`onnxcam.cams.methods.cfcam.clustering.dbscan_partition`), for ``onnxcam embed --cam cfcam``.

For the non-dominant rows X [R, Z] (float64) of one image:

1. distances: D² = ‖x̃_i‖² + ‖x̃_j‖² − 2 x̃_i·x̃_j from one MatMul (x̃: rows minus their mean),
   d = √max(D², 0), read only above the diagonal (each pair once: the graph is symmetric by construction);
2. eps: the 25th percentile of the doubled pair list (numpy's linear method) from two order statistics of
   the pairs (TopK, unsorted, then TopK 2); eps = max(lerp, 1e-5);
3. core points: at least min_samples = max(2, ⌊R/20⌋) entries d_ij ≤ eps in their row (diagonal included);
4. components of the core points by label propagation (Loop): every core point starts with its own index,
   then takes the smallest label among its core neighbours and the label of that label (pointer jumping),
   until nothing changes: each core point ends with the smallest core index of its component;
5. the border rule: every point takes the smallest label among its core neighbours (a core point gets its
   own component's; a border point the component with the smallest core index, i.e. scikit-learn's first
   cluster to reach it); points with none are noise (label BIG).

R < 2 (If): no pair, every row is noise. No R×R×Z array; the largest arrays are R×R.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam.cams.methods.cfcam.clustering import EPS_FLOOR, PERCENTILE
from onnxcam.core.graph_builder import GraphBuilder

#: The label of noise (and of non-core points during the propagation); float32 holds every index below 2²⁴.
BIG = 1e30


def dbscan_labels_graph(b: GraphBuilder, rows: str) -> str:
    """Per row of ``rows`` [R, Z] (float64, R dynamic): the smallest core index of its cluster (float32), or
    :data:`BIG` for noise. Clusters numbered by these labels in ascending order are scikit-learn's."""
    count = b.op("Gather", b.op("Shape", rows), b.const(0, np.int64))  # R, a scalar
    then = b.subgraph()
    labels = _cluster(then, rows, count)
    other = b.subgraph()
    noise = other.op("Expand", other.const(BIG), other.op("Reshape", count, other.ints([1])))
    out = b.op("If", b.op("GreaterOrEqual", count, b.const(2, np.int64)),
               then_branch=then.graph("clustered", [], [_info(labels, TensorProto.FLOAT)]),
               else_branch=other.graph("too_few", [], [_info(noise, TensorProto.FLOAT)]))
    return out


def _info(name: str, elem: int, dims: tuple = ("R",)) -> onnx.ValueInfoProto:
    """A body input's or output's type: ``elem`` with symbolic ``dims`` (() for a scalar)."""
    return helper.make_tensor_value_info(name, elem, list(dims))


def _cluster(b: GraphBuilder, x: str, count: str) -> str:
    """Steps 1–5 of the module doc for R ≥ 2."""
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, [0]))
    squares = b.reduce("ReduceSumSquare", centred, [1])  # [R, 1]
    gram = b.op("MatMul", centred, b.op("Transpose", centred, perm=[1, 0]))
    d2 = b.op("Sub", b.op("Add", squares, b.op("Transpose", squares, perm=[1, 0])),
              b.op("Mul", gram, b.const(2.0, np.float64)))
    dist = b.op("Sqrt", b.op("Max", d2, b.const(0.0, np.float64)))
    index = b.op("Range", b.const(0, np.int64), count, b.const(1, np.int64))  # [R]
    rows, cols = b.op("Unsqueeze", index, b.ints([1])), b.op("Unsqueeze", index, b.ints([0]))
    upper = b.op("Less", rows, cols)  # the pairs i < j: each pair once, so d_ij and d_ji never disagree
    pairs = b.op("Compress", b.op("Reshape", dist, b.ints([-1])), b.op("Reshape", upper, b.ints([-1])), axis=0)
    eps = b.op("Max", _pair_percentile(b, pairs, count), b.const(EPS_FLOOR, np.float64))
    near = b.op("And", b.op("LessOrEqual", dist, eps), upper)
    within = b.op("Or", b.op("Or", near, b.op("Transpose", near, perm=[1, 0])), b.op("Equal", rows, cols))
    degree = b.reduce("ReduceSum", b.op("Cast", within, to=TensorProto.FLOAT), [1], keepdims=False)
    min_samples = b.op("Max", b.op("Div", count, b.const(20, np.int64)), b.const(2, np.int64))
    core = b.op("GreaterOrEqual", degree, b.op("Cast", min_samples, to=TensorProto.FLOAT))  # [R]
    core_column = b.op("Unsqueeze", core, b.ints([0]))  # [1, R]
    core_pairs = b.op("And", within, b.op("And", b.op("Unsqueeze", core, b.ints([1])), core_column))
    big = b.const(BIG)
    start = b.op("Where", core, b.op("Cast", index, to=TensorProto.FLOAT), big)
    components = _propagate(b, core_pairs, core, start, count, big)
    reach = b.op("And", within, core_column)
    return b.reduce("ReduceMin", b.op("Where", reach, b.op("Unsqueeze", components, b.ints([0])), big), [1],
                    keepdims=False)


def _pair_percentile(b: GraphBuilder, pairs: str, count: str) -> str:
    """Step 2: the q-th percentile of the doubled list of ``pairs`` (each of the m pairs' distances once):
    position p = q/100·(2m − 1) in the doubled list, whose k-th entry is the ⌊k/2⌋-th of the single list, so
    s[k1] and s[k2] with k1 = ⌊⌊p⌋/2⌋, k2 = ⌊(⌊p⌋ + 1)/2⌋: the k2 + 1 smallest (TopK, unsorted), then the
    two largest of those (a −1 appended for k2 = 0, when k1 = k2 and only s[k2] is used)."""
    doubled = b.op("Mul", count, b.op("Sub", count, b.const(1, np.int64)))  # 2m = R(R − 1)
    position = b.op("Mul", b.op("Cast", b.op("Sub", doubled, b.const(1, np.int64)), to=TensorProto.DOUBLE),
                    b.const(PERCENTILE / 100.0, np.float64))
    floor = b.op("Floor", position)
    frac = b.op("Sub", position, floor)
    lo = b.op("Cast", floor, to=TensorProto.INT64)
    two_ = b.const(2, np.int64)
    k1 = b.op("Div", lo, two_)
    k2 = b.op("Div", b.op("Add", lo, b.const(1, np.int64)), two_)
    smallest = b.ops("TopK", pairs, b.op("Reshape", b.op("Add", k2, b.const(1, np.int64)), b.ints([1])), outputs=2,
                    largest=0, sorted=0)[0]
    padded = b.op("Concat", smallest, b.const([-1.0], np.float64), axis=0)
    two = b.ops("TopK", padded, b.ints([2]), outputs=2, largest=1, sorted=1)[0]  # s[k2], s[k2 − 1]
    high = b.op("Gather", two, b.const(0, np.int64))
    low = b.op("Where", b.op("Equal", k1, k2), high, b.op("Gather", two, b.const(1, np.int64)))
    diff = b.op("Sub", high, low)
    up = b.op("Add", low, b.op("Mul", diff, frac))
    down = b.op("Sub", high, b.op("Mul", diff, b.op("Sub", b.const(1.0, np.float64), frac)))
    return b.op("Where", b.op("Less", frac, b.const(0.5, np.float64)), up, down)


def _propagate(b: GraphBuilder, core_pairs: str, core: str, start: str, count: str, big: str) -> str:
    """Step 4: label propagation with pointer jumping in a Loop, until no label changes (at most R rounds)."""
    body = b.subgraph()
    iteration, condition, labels = body.name("i"), body.name("cond"), body.name("labels")
    reached = body.reduce("ReduceMin", body.op("Where", core_pairs, body.op("Unsqueeze", labels, body.ints([0])),
                                                big), [1], keepdims=False)
    pointer = body.op("Cast", body.op("Where", core, reached, body.const(0.0)), to=TensorProto.INT64)
    jumped = body.op("Where", core, body.op("Min", reached, body.op("Gather", reached, pointer)), big)
    changed = body.op("Greater", body.reduce("ReduceMax", body.op("Cast", body.op("Not", body.op(
        "Equal", jumped, labels)), to=TensorProto.FLOAT), [0], keepdims=False), body.const(0.0))
    graph = body.graph("propagate",
                       [_info(iteration, TensorProto.INT64, ()), _info(condition, TensorProto.BOOL, ()),
                        _info(labels, TensorProto.FLOAT)],
                       [_info(changed, TensorProto.BOOL, ()), _info(jumped, TensorProto.FLOAT)])
    return b.op("Loop", count, b.const(True, np.bool_), start, body=graph)


__all__ = ["BIG", "dbscan_labels_graph"]
