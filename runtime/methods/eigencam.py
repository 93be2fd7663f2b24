"""Eigen-CAM (Muhammad & Yeasin 2020) and EigenGrad-CAM: projection on the first principal component."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register


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


@register(
    "eigencam",
    normalise="minmax",
    description="Eigen-CAM (gradient-free): ReLU of the centred activations (positions x channels) projected "
    "on their first right singular vector",
)
def eigencam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Eigen-CAM maps ``[N,h,w]`` (float32): map = ReLU(X̃·v₁), X̃ = A as (Z×C) centred per channel, v₁ its
    first right singular vector (sign: Σ_c v₁c > 0). The gradients are only shape-checked, never used."""
    a, _ = check_pair(activations, gradients)
    return np.maximum(principal_projection(a), 0.0).astype(np.float32)


@register(
    "eigengradcam",
    normalise="minmax",
    description="EigenGrad-CAM: Eigen-CAM of the element-wise product G * A",
)
def eigengradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """EigenGrad-CAM maps ``[N,h,w]`` (float32): Eigen-CAM of G⊙A, map = ReLU(X̃·v₁) with X̃ = (G⊙A) as (Z×C)
    centred per channel and v₁ its first right singular vector (sign: Σ_c v₁c > 0)."""
    a, g = check_pair(activations, gradients)
    return np.maximum(principal_projection(a.astype(np.float64) * g.astype(np.float64)), 0.0).astype(np.float32)
