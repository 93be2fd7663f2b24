"""HiResCAM (Draelos & Carin 2020): element-wise gradient·activation summed over channels."""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import CAMContext, NoOptions, as_float64, check_pair, graph_form, register, weighted_sum_graph
from onnxcam.core.graph_builder import GraphBuilder


@register(
    "hirescam",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="HiResCAM",
    description="HiResCAM: map = ReLU(sum_c G_c * A_c)",
)
def hirescam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """HiResCAM maps ``[N,h,w]`` (float32): map_ij = ReLU(Σ_c G_c,ij·A_c,ij)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    cams = np.einsum("nchw,nchw->nhw", g.astype(np.float64), a.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)


@graph_form("hirescam")
def hirescam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                   options: NoOptions) -> str:
    """:func:`hirescam` as ONNX nodes: ReLU(Σ_c G·A)."""
    activations, gradients = as_float64(b, activations, gradients)
    return weighted_sum_graph(b, gradients, activations)
