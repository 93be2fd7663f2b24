"""Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ weights averaged over noisy copies of the input.

w = (1/n) Σ_s w_gradcam++(A_s, G_s) with (A_s, G_s) the layer's activations and gradients for
x + N(0, σ²) (σ in the model's normalised input units), map = ReLU(Σ_c w_c A_c) on the clean activations.
n extra forward-and-gradient passes per image, batched through ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from onnxcam.cams.base import CAMContext, Options, register
from onnxcam.cams.methods.gradcampp import gradcampp_weights
from onnxcam.core.errors import OnnxcamError


@dataclass(frozen=True)
class SmoothGradCAMPPOptions(Options):
    """``samples`` noisy copies x + N(0, ``sigma``²) (σ in the model's normalised input units), drawn with ``seed``."""

    samples: int = 8
    sigma: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.samples, int | np.integer) and not isinstance(self.samples, bool) and self.samples < 1:
            raise OnnxcamError(f"smoothgradcampp option samples must be a whole number >= 1, got {self.samples!r}")
        if isinstance(self.sigma, Real) and not isinstance(self.sigma, bool) and not 0 <= float(self.sigma) < np.inf:
            raise OnnxcamError(f"smoothgradcampp option sigma must be a finite number >= 0, got {self.sigma!r}")


@register("smoothgradcampp", options=SmoothGradCAMPPOptions, uses_gradients=True, uses_model=True,
          normalise="minmax", reference=None,
          description="Smooth Grad-CAM++: Grad-CAM++ weights averaged over noisy inputs")
def smoothgradcampp(ctx: CAMContext, options: SmoothGradCAMPPOptions) -> np.ndarray:
    """Smooth Grad-CAM++ maps ``[N,h,w]``: Grad-CAM++ weights averaged over ``samples`` noisy inputs."""
    model, batch, class_index = ctx.require_model("smoothgradcampp")
    samples = options.samples
    rng = np.random.default_rng(options.seed)
    n = len(batch)
    weights = np.zeros(ctx.activations.shape[:2])
    per_pass = max(1, model.batch_size // n)
    for start in range(0, samples, per_pass):
        k = min(per_pass, samples - start)
        noisy = np.repeat(batch, k, axis=0)
        noisy = noisy + rng.normal(0.0, options.sigma, noisy.shape).astype(np.float32)
        acts, grads = model.gradients_at(noisy, np.repeat(class_index, k))
        weights += gradcampp_weights(acts, grads).reshape(n, k, -1).sum(axis=1)
    weights /= samples
    cams = np.einsum("nc,nchw->nhw", weights, ctx.activations.astype(np.float64))
    return np.maximum(cams, 0.0).astype(np.float32)
