"""HiResCAM (Draelos & Carin 2020): element-wise gradient·activation summed over channels."""

from __future__ import annotations

import numpy as np

from .base import check_pair, register


@register(
    "hirescam",
    normalise="minmax",
    description="HiResCAM: map = ReLU(sum_c G_c * A_c)",
)
def hirescam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """HiResCAM maps ``[N,h,w]`` (float32): map_ij = ReLU(Σ_c G_c,ij·A_c,ij)."""
    a, g = check_pair(activations, gradients)
    cams = np.einsum("nchw,nchw->nhw", g.astype(np.float64), a.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)
