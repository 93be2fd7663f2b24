"""Ablation-CAM (Desai & Ramaswamy 2020): channel weights from the score drop when a channel is removed.

w_c = (y − y_c) / y, with y the class score and y_c the score with channel c of the layer's activations
set to 0 (or far below the minimum when the layer has negative values, as pytorch-grad-cam does);
map = ReLU(Σ_c w_c A_c). The C ablated passes run through the head subgraph only (layer → logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam.cams.base import CAMContext, Options, check_batch_size, register

FAR_BELOW = 1e7


@dataclass(frozen=True)
class AblationCAMOptions(Options):
    """``batch_size``: ablated activation sets per ONNX Runtime call (None: the explainer's batch size)."""

    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_batch_size("ablationcam", self.batch_size)


@register("ablationcam", options=AblationCAMOptions, uses_gradients=False, uses_model=True, normalise="minmax",
          reference="AblationCAM",
          description="Ablation-CAM: relative score drop when each channel is zeroed (head subgraph passes)")
def ablationcam(ctx: CAMContext, options: AblationCAMOptions) -> np.ndarray:
    """Ablation-CAM maps ``[N,h,w]``: w_c = (y − y_ablated(c)) / y, map = ReLU(Σ w_c A_c)."""
    model, _, class_index = ctx.require_model("ablationcam")
    a = ctx.activations
    step = options.batch_size or model.batch_size
    original = model.head(a, class_index)
    ablate_to = 0.0 if a.min() == 0 else float(a.min()) - FAR_BELOW
    maps = np.zeros((a.shape[0], *a.shape[2:]), np.float32)
    for i, (acts, cls) in enumerate(zip(a, class_index)):
        ablated = np.empty(len(acts), np.float32)
        for start in range(0, len(acts), step):
            channels = np.arange(start, min(start + step, len(acts)))
            batch = np.repeat(acts[None], len(channels), axis=0)
            batch[np.arange(len(channels)), channels] = ablate_to
            ablated[channels] = model.head(batch, np.full(len(channels), cls, np.int64))
        weights = (original[i] - ablated) / original[i]
        maps[i] = np.maximum(np.tensordot(weights, acts, axes=1), 0)
    return maps
