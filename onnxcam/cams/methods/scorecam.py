"""Score-CAM (Wang et al. 2020): channel weights from the score of the input masked by each channel.

mask_c = minmax(upsample(A_c)) (bilinear, corners aligned, as pytorch-grad-cam), s_c = score(x ⊙ mask_c),
w = softmax_c(s), map = ReLU(Σ_c w_c A_c). C forward passes per image, sent through ONNX Runtime in batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onnxcam.cams.base import CAMContext, Options, check_batch_size, register


@dataclass(frozen=True)
class ScoreCAMOptions(Options):
    """``batch_size``: masked images per ONNX Runtime call (None: the explainer's batch size)."""

    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_batch_size("scorecam", self.batch_size)


def upsample_aligned(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``[..., h, w]`` to ``size`` with corner pixels aligned (align_corners=True)."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    zoom = (1,) * len(lead) + (size[0] / h, size[1] / w)
    return ndimage.zoom(maps.astype(np.float32), zoom, order=1, grid_mode=False, mode="nearest")


@register("scorecam", options=ScoreCAMOptions, uses_gradients=False, uses_model=True, normalise="minmax",
          reference="ScoreCAM", description="Score-CAM: softmax of the scores of the input masked by each channel")
def scorecam(ctx: CAMContext, options: ScoreCAMOptions) -> np.ndarray:
    """Score-CAM maps ``[N,h,w]``: w = softmax_c(score(x ⊙ minmax(upsample(A_c)))), map = ReLU(Σ w_c A_c).

    A constant channel (a dead ReLU channel, all zeros) has an all-zero mask, so every such channel gets the
    score of the all-zero input: it is computed once per image instead of once per channel.
    """
    model, batch, class_index = ctx.require_model("scorecam")
    a = ctx.activations
    size = batch.shape[2:]
    step = options.batch_size or model.batch_size
    maps = np.zeros((a.shape[0], *a.shape[2:]), np.float32)
    for i, (acts, x, cls) in enumerate(zip(a, batch, class_index)):
        constant = acts.max(axis=(1, 2)) == acts.min(axis=(1, 2))
        live = np.flatnonzero(~constant)
        scores = np.empty(len(acts), np.float32)
        if constant.any():
            scores[constant] = model.scores(np.zeros_like(x)[None], np.array([cls], np.int64))[0]
        for start in range(0, len(live), step):
            chunk = live[start:start + step]
            masks = upsample_aligned(acts[chunk], size)
            lo = masks.min(axis=(1, 2), keepdims=True)
            hi = masks.max(axis=(1, 2), keepdims=True)
            masks = (masks - lo) / (hi - lo + 1e-8)
            masked = x[None] * masks[:, None]
            scores[chunk] = model.scores(masked, np.full(len(masked), cls, np.int64))
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        maps[i] = np.maximum(np.tensordot(weights, acts, axes=1), 0)
    return maps
