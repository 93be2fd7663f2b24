"""XGrad-CAM (Fu et al. 2020): activation-normalised gradient·activation channel weights."""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import CAMContext, NoOptions, as_float64, check_pair, graph_form, register, weighted_sum_graph
from onnxcam.core.graph_builder import GraphBuilder

#: Added to the per-channel activation sum, as pytorch-grad-cam 1.5.7 does (``eps = 1e-7``).
EPS = 1e-7


@register(
    "xgradcam",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="XGradCAM",
    description="XGrad-CAM: w_c = sum_ij G_c A_c / (sum_ij A_c + eps), map = ReLU(sum_c w_c A_c)",
)
def xgradcam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """XGrad-CAM maps ``[N,h,w]`` (float32): w_c = Σ_ij G_c·A_c / (Σ_ij A_c + ε), ε = 1e-7 (w_c = 0 where that
    denominator is 0); map = ReLU(Σ_c w_c A_c)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    n, c, h, w = a.shape
    a64 = a.reshape(n, c, h * w).astype(np.float64)
    g64 = g.reshape(n, c, h * w).astype(np.float64)
    numerator = (g64 * a64).sum(axis=2)  # [N, C]
    denominator = a64.sum(axis=2) + EPS
    weights = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0.0)
    cams = np.einsum("nc,ncz->nz", weights, a64)
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)


@graph_form("xgradcam")
def xgradcam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                   options: NoOptions) -> str:
    """:func:`xgradcam` as ONNX nodes: w = Σ G·A / (Σ A + ε) over (h, w), 0 where that denominator is 0."""
    activations, gradients = as_float64(b, activations, gradients)
    numerator = b.reduce("ReduceSum", b.op("Mul", gradients, activations), [2, 3])
    denominator = b.op("Add", b.reduce("ReduceSum", activations, [2, 3]), b.const(EPS, np.float64))
    nonzero = b.op("Not", b.op("Equal", denominator, b.const(0.0, np.float64)))
    weights = b.op("Div", numerator, b.op("Where", nonzero, denominator, b.const(1.0, np.float64)))
    return weighted_sum_graph(b, b.op("Where", nonzero, weights, b.const(0.0, np.float64)), activations)
