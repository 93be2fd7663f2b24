"""Eigen-CAM (Muhammad & Yeasin 2020) and EigenGrad-CAM: projection on the first principal component."""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import CAMContext, NoOptions, check_pair, graph_form, register
from onnxcam.core.graph_builder import GraphBuilder

#: Squarings of the Gram matrix in the graph form: the power iteration K^(2^16), 65,536 steps. The part of
#: the second component left is (λ₂/λ₁)^65536: below 0.2 % as long as λ₂/λ₁ ≤ 0.9999, at the cost of 16
#: products of min(h·w, C)² matrices (49² at a 7×7 layer, 196² at a 14×14 one).
SQUARINGS = 16


def principal_projection(features: np.ndarray) -> np.ndarray:
    """First-principal-component maps ``[N,h,w]`` (float64, not ReLU'd) of ``features [N,C,h,w]``.

    Per image: X = features as (Z×C) (Z = h·w positions as rows), X̃ = X − mean over positions (per channel),
    p = X̃·v with v the first right singular vector of X̃. The SVD leaves the sign of v arbitrary; it is
    fixed so that Σ_c v_c > 0, i.e. p correlates positively with the centred channel sum Σ_c X̃_c
    (because p·X̃1 = σ₁²·(v·1)); when Σ_c v_c = 0 the largest |p| is made positive instead.
    """
    n, c, h, w = features.shape
    x = features.reshape(n, c, h * w).transpose(0, 2, 1).astype(np.float64)  # [N, Z, C]
    x = x - x.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    v = vt[:, 0, :]  # [N, C]
    p = np.einsum("nzc,nc->nz", x, v)  # [N, Z]
    direction = v.sum(axis=1)
    tie = np.abs(direction) <= 1e-9
    extreme = np.take_along_axis(p, np.abs(p).argmax(axis=1)[:, None], axis=1)[:, 0]
    sign = np.where(tie, np.sign(extreme), np.sign(direction))
    sign = np.where(sign == 0.0, 1.0, sign)
    return (p * sign[:, None]).reshape(n, h, w)


def principal_projection_graph(b: GraphBuilder, features: str, shape: tuple[int, int, int]) -> str:
    """:func:`principal_projection` as ONNX nodes: ``[N,C,h,w]`` → ``[N,h,w]``.

    With X̃ the centred (Z×C) matrix, K = X̃X̃ᵀ (Z×Z) when Z ≤ C, else X̃ᵀX̃ (C×C); K is squared
    :data:`SQUARINGS` times (scaled by its largest entry before each product), which leaves ≈ σ₁²ⁿ·u uᵀ, and the
    column at the largest diagonal entry gives the first singular vector u (Z ≤ C: p = σ₁u with
    σ₁ = ‖X̃ᵀu‖) or v (else: p = X̃v). Same sign rule as the numpy form.
    """
    c, h, w = shape
    z = h * w
    x = b.op("Transpose", b.op("Reshape", features, b.ints([0, c, z])), perm=[0, 2, 1])  # [N, Z, C]
    x = b.op("Sub", x, b.reduce("ReduceMean", x, [1]))
    xt = b.op("Transpose", x, perm=[0, 2, 1])  # [N, C, Z]
    rows = z <= c
    k = b.op("MatMul", x, xt) if rows else b.op("MatMul", xt, x)
    one = b.const(1.0)
    zero = b.const(0.0)
    for _ in range(SQUARINGS):
        k = b.op("MatMul", *[_scaled(b, k, one, zero)] * 2)
    k = _scaled(b, k, one, zero)
    size = z if rows else c
    diagonal = b.reduce("ReduceSum", b.op("Mul", k, b.const(np.eye(size, dtype=np.float32))), [2], keepdims=False)
    pick = b.op("OneHot", b.op("ArgMax", diagonal, axis=1, keepdims=0), b.ints([size]), b.const([0.0, 1.0]), axis=-1)
    vector = b.op("MatMul", k, b.op("Unsqueeze", pick, b.ints([2])))  # [N, size, 1]: u or v, not yet unit length
    norm = b.reduce("ReduceL2", vector, [1])
    vector = b.op("Div", vector, b.op("Where", b.op("Greater", norm, zero), norm, one))
    if rows:
        sigma = b.reduce("ReduceL2", b.op("MatMul", xt, vector), [1])  # [N, 1, 1]
        projection = b.op("Mul", vector, sigma)  # p = X̃v = σu
        channel_sums = b.reduce("ReduceSum", x, [2])  # [N, Z, 1]: X̃·1
        direction = b.op("Div", b.reduce("ReduceSum", b.op("Mul", channel_sums, vector), [1]),
                         b.op("Where", b.op("Greater", sigma, zero), sigma, one))  # Σ_c v_c = (X̃1)·u / σ
    else:
        projection = b.op("MatMul", x, vector)  # [N, Z, 1]
        direction = b.reduce("ReduceSum", vector, [1])
    projection = b.op("Squeeze", projection, b.ints([2]))  # [N, Z]
    direction = b.op("Reshape", direction, b.ints([-1, 1]))
    extreme = b.op("GatherElements", projection, b.op("ArgMax", b.op("Abs", projection), axis=1, keepdims=1), axis=1)
    tie = b.op("LessOrEqual", b.op("Abs", direction), b.const(1e-9))
    sign = b.op("Where", tie, b.op("Sign", extreme), b.op("Sign", direction))
    sign = b.op("Where", b.op("Equal", sign, zero), one, sign)
    return b.op("Reshape", b.op("Mul", projection, sign), b.ints([0, h, w]))


def _scaled(b: GraphBuilder, k: str, one: str, zero: str) -> str:
    """``k`` divided by its largest absolute entry per image (unchanged where that is 0)."""
    peak = b.reduce("ReduceMax", b.op("Abs", k), [1, 2])
    return b.op("Div", k, b.op("Where", b.op("Greater", peak, zero), peak, one))


@register(
    "eigencam",
    uses_gradients=False,
    uses_model=False,
    normalise="minmax",
    reference="EigenCAM",
    description="Eigen-CAM (gradient-free): ReLU of the centred activations (positions x channels) projected "
    "on their first right singular vector",
)
def eigencam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """Eigen-CAM maps ``[N,h,w]`` (float32): map = ReLU(X̃·v₁), X̃ = A as (Z×C) centred per channel, v₁ its
    first right singular vector (sign: Σ_c v₁c > 0). The gradients are only shape-checked, never used."""
    a, _ = check_pair(ctx.activations, ctx.gradients)
    return np.maximum(principal_projection(a), 0.0).astype(np.float32)


@register(
    "eigengradcam",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="EigenGradCAM",
    description="EigenGrad-CAM: Eigen-CAM of the element-wise product G * A",
)
def eigengradcam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """EigenGrad-CAM maps ``[N,h,w]`` (float32): Eigen-CAM of G⊙A, map = ReLU(X̃·v₁) with X̃ = (G⊙A) as (Z×C)
    centred per channel and v₁ its first right singular vector (sign: Σ_c v₁c > 0)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    return np.maximum(principal_projection(a.astype(np.float64) * g.astype(np.float64)), 0.0).astype(np.float32)


@graph_form("eigencam")
def eigencam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                   options: NoOptions) -> str:
    """:func:`eigencam` as ONNX nodes: ReLU of :func:`principal_projection_graph` of A."""
    return b.op("Relu", principal_projection_graph(b, activations, shape))


@graph_form("eigengradcam")
def eigengradcam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                       options: NoOptions) -> str:
    """:func:`eigengradcam` as ONNX nodes: ReLU of :func:`principal_projection_graph` of G⊙A."""
    return b.op("Relu", principal_projection_graph(b, b.op("Mul", activations, gradients), shape))
