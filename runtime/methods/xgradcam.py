"""XGrad-CAM (Fu et al. 2020): activation-normalised gradient·activation channel weights."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register

#: Added to the per-channel activation sum, as pytorch-grad-cam 1.5.7 does (``eps = 1e-7``).
EPS = 1e-7


@register(
    "xgradcam",
    normalise="minmax",
    description="XGrad-CAM: w_c = sum_ij G_c A_c / (sum_ij A_c + eps), map = ReLU(sum_c w_c A_c)",
)
def xgradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM maps ``[N,h,w]`` (float32): w_c = Σ_ij G_c·A_c / (Σ_ij A_c + ε), ε = 1e-7 (w_c = 0 where that
    denominator is 0); map = ReLU(Σ_c w_c A_c)."""
    a, g = check_pair(activations, gradients)
    n, c, h, w = a.shape
    a64 = a.reshape(n, c, h * w).astype(np.float64)
    g64 = g.reshape(n, c, h * w).astype(np.float64)
    numerator = (g64 * a64).sum(axis=2)  # [N, C]
    denominator = a64.sum(axis=2) + EPS
    weights = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0.0)
    cams = np.einsum("nc,ncz->nz", weights, a64)
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)
