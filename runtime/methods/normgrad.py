"""NormGrad (Rebuffi et al. 2020, virtual-identity variant): product of gradient and activation norms per position."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register


@register(
    "normgrad",
    normalise="minmax",
    description="NormGrad: map(u) = ||G[:,u]||_2 * ||A[:,u]||_2",
)
def normgrad(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """NormGrad maps ``[N,h,w]`` (float32): map_ij = ‖G[:,i,j]‖₂·‖A[:,i,j]‖₂ (non-negative, no ReLU needed)."""
    a, g = check_pair(activations, gradients)
    a_norm = np.linalg.norm(a.astype(np.float64), axis=1)  # [N, h, w]
    g_norm = np.linalg.norm(g.astype(np.float64), axis=1)
    return (g_norm * a_norm).astype(np.float32)
