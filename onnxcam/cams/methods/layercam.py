"""LayerCAM (Jiang et al. 2021): activations weighted position by position by the positive gradients."""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import CAMContext, NoOptions, as_float64, check_pair, graph_form, register, weighted_sum_graph
from onnxcam.core.graph_builder import GraphBuilder


@register(
    "layercam",
    uses_gradients=True,
    uses_model=False,
    normalise="minmax",
    reference="LayerCAM",
    description="LayerCAM: map = ReLU(sum_c ReLU(G_c) * A_c)",
)
def layercam(ctx: CAMContext, options: NoOptions) -> np.ndarray:
    """LayerCAM maps ``[N,h,w]`` (float32): map_ij = ReLU(Σ_c ReLU(G_c,ij)·A_c,ij)."""
    a, g = check_pair(ctx.activations, ctx.gradients)
    cams = np.einsum("nchw,nchw->nhw", np.maximum(g.astype(np.float64), 0.0), a.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)


@graph_form("layercam")
def layercam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                   options: NoOptions) -> str:
    """:func:`layercam` as ONNX nodes: ReLU(Σ_c ReLU(G)·A)."""
    activations, gradients = as_float64(b, activations, gradients)
    return weighted_sum_graph(b, b.op("Relu", gradients), activations)
