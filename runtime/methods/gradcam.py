"""Grad-CAM (Selvaraju et al. 2017): gradient-averaged channel weights."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register


@register(
    "gradcam",
    normalise="minmax",
    description="Grad-CAM: w_c = mean_ij G_c, map = ReLU(sum_c w_c A_c)",
)
def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM maps ``[N,h,w]`` (float32): w_c = mean_ij G_c,ij ; map = ReLU(Σ_c w_c A_c)."""
    a, g = check_pair(activations, gradients)
    n, c, h, w = a.shape
    weights = g.reshape(n, c, h * w).mean(axis=2, dtype=np.float64)  # [N, C]
    cams = np.einsum("nc,ncz->nz", weights, a.reshape(n, c, h * w).astype(np.float64))
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)
