"""LayerCAM (Jiang et al. 2021): activations weighted position by position by the positive gradients."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register


@register(
    "layercam",
    normalise="minmax",
    description="LayerCAM: map = ReLU(sum_c ReLU(G_c) * A_c)",
)
def layercam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """LayerCAM maps ``[N,h,w]`` (float32): map_ij = ReLU(Σ_c ReLU(G_c,ij)·A_c,ij)."""
    a, g = check_pair(activations, gradients)
    cams = np.einsum("nchw,nchw->nhw", np.maximum(g.astype(np.float64), 0.0), a.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)
