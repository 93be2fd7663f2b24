"""Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ weights averaged over noisy copies of the input.

w = (1/n) Σ_s w_gradcam++(A_s, G_s) with (A_s, G_s) the layer's activations and gradients for
x + N(0, σ²) (σ in the model's normalised input units), map = ReLU(Σ_c w_c A_c) on the clean activations.
n extra forward-and-gradient passes per image, batched through ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from onnxcam.cams.base import register
from onnxcam.cams.context import CAMContext
from onnxcam.cams.methods.gradcampp import gradcampp_weights


@register("smoothgradcampp", uses_model=True, options=("samples", "sigma", "seed"),
          description="Smooth Grad-CAM++: Grad-CAM++ weights averaged over noisy inputs")
def smoothgradcampp(ctx: CAMContext, samples: int = 8, sigma: float = 0.3, seed: int = 0) -> np.ndarray:
    """Smooth Grad-CAM++ maps ``[N,h,w]``: Grad-CAM++ weights averaged over ``samples`` noisy inputs."""
    rng = np.random.default_rng(seed)
    n = len(ctx.batch)
    weights = np.zeros(ctx.activations.shape[:2])
    per_pass = max(1, ctx.batch_size // n)
    for start in range(0, samples, per_pass):
        k = min(per_pass, samples - start)
        noisy = np.repeat(ctx.batch, k, axis=0)
        noisy = noisy + rng.normal(0.0, sigma, noisy.shape).astype(np.float32)
        acts, grads = ctx.gradients_at(noisy, np.repeat(ctx.class_index, k))
        weights += gradcampp_weights(acts, grads).reshape(n, k, -1).sum(axis=1)
    weights /= samples
    cams = np.einsum("nc,nchw->nhw", weights, ctx.activations.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)
