"""Grad-CAM (Selvaraju et al. 2017): gradient-averaged channel weights."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.cams.base import NOT_FINITE, CAMContext, NoOptions, as_float64, check_pair, graph_form, register
from onnxcam.core.errors import OnnxcamError
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
    """Grad-CAM maps ``[N,h,w]`` (float32): w_c = mean_ij G_c,ij ; map = ReLU(Σ_c w_c A_c).

    Both sums in float64 (channel terms can cancel, see :func:`~onnxcam.cams.base.as_float64`), as products
    with BLAS: the per-channel means and the per-pixel channel sum are matrix-vector products on float64
    copies, about twice as fast as ``mean(dtype=float64)`` and ``einsum`` on ``[N,C,h·w]``.
    """
    a, g = check_pair(ctx.activations, ctx.gradients, finite=False)
    n, c, h, w = a.shape
    with np.errstate(invalid="ignore"):  # NaN from bad inputs: the one-line error below, no RuntimeWarning
        weights = g.reshape(n, c, h * w).astype(np.float64) @ np.full(h * w, 1.0 / (h * w))  # [N, C]
        cams = np.matmul(weights[:, None, :], a.reshape(n, c, h * w).astype(np.float64))[:, 0]  # [N, h·w]
    # float64 sums of float32 values cannot overflow, so a NaN or infinity in A or G shows up in the weights or
    # the map before ReLU (inf·0 and inf − inf are NaN): checking these small arrays is checking the inputs
    if not (np.isfinite(weights).all() and np.isfinite(cams).all()):
        raise OnnxcamError(NOT_FINITE)
    return np.maximum(cams, 0.0).reshape(n, h, w).astype(np.float32)


@graph_form("gradcam")
def gradcam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                  options: NoOptions) -> str:
    """:func:`gradcam` as ONNX nodes: ReduceMean of G over (h, w), then ReLU(Σ_c w_c A_c) as one float64
    MatMul ``[N,1,C] × [N,C,h·w]`` (no ``[N,C,h,w]`` product and channel ReduceSum)."""
    c, h, w = shape
    activations, gradients = as_float64(b, activations, gradients)
    weights = b.op("Reshape", b.reduce("ReduceMean", gradients, [2, 3]), b.ints([0, 1, c]))  # [N, 1, C]
    summed = b.op("MatMul", weights, b.op("Reshape", activations, b.ints([0, c, h * w])))  # [N, 1, h·w]
    maps = b.op("Cast", b.op("Relu", summed), to=onnx.TensorProto.FLOAT)
    return b.op("Reshape", maps, b.ints([0, h, w]))
