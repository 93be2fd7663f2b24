"""NormGrad (Rebuffi et al. 2020, virtual-identity variant): product of gradient and activation norms per position."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.cams.base import CAMContext, NoOptions, as_float64, check_pair, graph_form, register
from onnxcam.core.graph_builder import GraphBuilder


@register(
    "normgrad",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference=None,
    description="NormGrad: map(u) = ||G[:,u]||_2 * ||A[:,u]||_2",
)
def normgrad(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """NormGrad maps ``[N,h,w]`` (float32): map_ij = ‖G[:,i,j]‖₂·‖A[:,i,j]‖₂ (non-negative, no ReLU needed)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    a_norm = np.linalg.norm(a.astype(np.float64), axis=1)  # [N, h, w]
    g_norm = np.linalg.norm(g.astype(np.float64), axis=1)
    return (g_norm * a_norm).astype(np.float32)


@graph_form("normgrad")
def normgrad_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                   options: NoOptions) -> str:
    """:func:`normgrad` as ONNX nodes: ReduceL2 over channels of G and of A, multiplied."""
    norms = [b.reduce("ReduceL2", t, [1], keepdims=False) for t in as_float64(b, gradients, activations)]
    return b.op("Cast", b.op("Mul", *norms), to=onnx.TensorProto.FLOAT)
