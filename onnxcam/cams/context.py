"""What methods with extra passes (Score-CAM, Ablation-CAM, Smooth Grad-CAM++) get from the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class CAMContext:
    """One target layer's tensors for a batch, and ways back into the model.

    ``activations``/``gradients`` are ``[N,C,h,w]`` (already converted from token or channels-last layouts);
    ``scores(batch, class_index)`` returns the explained score (the logit) of each image of a preprocessed
    batch, running at most ``batch_size`` images per call; ``gradients_at(batch, class_index)`` returns that
    layer's ``(activations, gradients)`` for another batch; ``head(activations, class_index)`` runs only the
    part of the model after the layer on ``[M,C,h,w]`` activations and returns the scores.
    """

    activations: np.ndarray
    gradients: np.ndarray
    batch: np.ndarray
    class_index: np.ndarray
    scores: Callable[[np.ndarray, np.ndarray], np.ndarray]
    gradients_at: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    head: Callable[[np.ndarray, np.ndarray], np.ndarray]
    batch_size: int = 32
