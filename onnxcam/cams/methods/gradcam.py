"""Grad-CAM (Selvaraju et al. 2017): gradient-averaged channel weights."""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import CAMContext, NoOptions, as_float64, check_pair, graph_form, register, weighted_sum_graph
from onnxcam.core.graph_builder import GraphBuilder


@register(
    "gradcam",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="GradCAM",
    description="Grad-CAM: w_c = mean_ij G_c, map = ReLU(sum_c w_c A_c)",
)
def gradcam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """Grad-CAM maps ``[N,h,w]`` (float32): w_c = mean_ij G_c,ij ; map = ReLU(Σ_c w_c A_c)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    n, c, h, w = a.shape
    weights = g.reshape(n, c, h * w).mean(axis=2, dtype=np.float64)  # [N, C]
    cams = np.einsum("nc,ncz->nz", weights, a.reshape(n, c, h * w).astype(np.float64))
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)


@graph_form("gradcam")
def gradcam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                  options: NoOptions) -> str:
    """:func:`gradcam` as ONNX nodes: ReduceMean of G over (h, w), then ReLU(Σ_c w_c A_c)."""
    activations, gradients = as_float64(b, activations, gradients)
    return weighted_sum_graph(b, b.reduce("ReduceMean", gradients, [2, 3]), activations)
