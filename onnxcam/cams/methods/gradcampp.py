"""Grad-CAM++ (Chattopadhay et al. 2018): second-order pixel weights on the positive gradients."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from onnxcam.cams.base import CAMContext, Options, as_float64, check_pair, graph_form, register, weighted_sum_graph
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

#: Added to the α denominator, as pytorch-grad-cam 1.5.7 does (``eps = 0.000001``).
EPS = 1e-6


@dataclass(frozen=True)
class GradCAMPPOptions(Options):
    """``eps``: added to the α denominator (default 1e-6, pytorch-grad-cam's); ``eps=0`` gives the paper's α."""

    eps: float = EPS

    def __post_init__(self) -> None:
        _check_eps(self.eps)


@register(
    "gradcampp",
    options=GradCAMPPOptions,
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="GradCAMPlusPlus",
    description="Grad-CAM++: alpha = G^2 / (2 G^2 + sum_ab A * G^3), w_c = sum_ij alpha * ReLU(G), "
    "map = ReLU(sum_c w_c A_c)",
)
def gradcampp(ctx: CAMContext, options: GradCAMPPOptions) -> np.ndarray:
    """Grad-CAM++ maps ``[N,h,w]`` (float32).

    Per channel c with S_c = Σ_ab A_c,ab: α_c,ij = G² / (2G² + S_c·G³ + ε) at (c, i, j), and α = 0 where
    G = 0 (the 0/0 case) or the denominator is 0; w_c = Σ_ij α_c,ij·ReLU(G_c,ij); map = ReLU(Σ_c w_c A_c).
    ε = ``eps`` (default 1e-6, pytorch-grad-cam's); it is not negligible next to 2G² when gradients are
    ~1e-3, so ``eps=0`` gives the paper's exact α = 1 / (2 + S_c·G).
    """
    a, g = check_pair(ctx.activations, ctx.gradients)
    n, c, h, w = a.shape
    weights = gradcampp_weights(a, g, options.eps)
    cams = np.einsum("nc,ncz->nz", weights, a.reshape(n, c, h * w).astype(np.float64))
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)


def gradcampp_weights(activations: np.ndarray, gradients: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Grad-CAM++ channel weights ``[N, C]`` (float64): w_c = Σ_ij α_c,ij·ReLU(G_c,ij), α as in :func:`gradcampp`."""
    n, c, h, w = activations.shape
    a64 = activations.reshape(n, c, h * w).astype(np.float64)
    g64 = gradients.reshape(n, c, h * w).astype(np.float64)
    sums = a64.sum(axis=2, keepdims=True)  # [N, C, 1]
    g2 = g64 * g64
    denominator = 2.0 * g2 + sums * g2 * g64 + float(eps)
    valid = (g64 != 0.0) & (denominator != 0.0)
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=valid)
    return (alpha * np.maximum(g64, 0.0)).sum(axis=2)


@graph_form("gradcampp")
def gradcampp_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                    options: GradCAMPPOptions) -> str:
    """:func:`gradcampp` as ONNX nodes: α = G² / (2G² + S·G³ + ε) where G ≠ 0 and the denominator ≠ 0, else 0;
    w = Σ_ij α·ReLU(G); ReLU(Σ_c w_c A_c)."""
    activations, gradients = as_float64(b, activations, gradients)
    eps = options.eps
    sums = b.reduce("ReduceSum", activations, [2, 3])
    g2 = b.op("Mul", gradients, gradients)
    cubic = b.op("Mul", b.op("Mul", sums, g2), gradients)
    denominator = b.op("Add", b.op("Add", b.op("Mul", b.const(2.0, np.float64), g2), cubic),
                       b.const(float(eps), np.float64))
    zero = b.const(0.0, np.float64)
    valid = b.op("And", b.op("Not", b.op("Equal", gradients, zero)), b.op("Not", b.op("Equal", denominator, zero)))
    alpha = b.op("Where", valid, b.op("Div", g2, b.op("Where", valid, denominator, b.const(1.0, np.float64))), zero)
    weights = b.reduce("ReduceSum", b.op("Mul", alpha, b.op("Relu", gradients)), [2, 3])
    return weighted_sum_graph(b, weights, activations)


def _check_eps(eps: float) -> None:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, Real) or not (0.0 <= float(eps) < np.inf):
        raise OnnxcamError(f"gradcampp option eps must be a finite number >= 0, got {eps!r}")
