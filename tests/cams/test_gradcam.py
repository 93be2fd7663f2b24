"""Grad-CAM on a tiny hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.cams import finalise, get_method
from onnxcam.core.errors import OnnxcamError

gradcam = get_method("gradcam")  # a function of (activations, gradients)

A = np.array(
    [
        [[1.0, 2.0], [0.0, 1.0]],  # A_0
        [[0.0, 1.0], [3.0, 1.0]],  # A_1
    ],
    np.float32,
)
G = np.array(
    [
        [[0.5, 0.5], [0.5, 0.5]],  # mean 0.5
        [[-1.0, 0.0], [0.0, -1.0]],  # mean -0.5
    ],
    np.float32,
)


def test_gradcam_hand_example() -> None:
    acts = np.stack([A, A])
    grads = np.stack([G, -G])  # second image: w = (-0.5, 0.5)
    maps = gradcam(acts, grads)
    assert maps.dtype == np.float32 and maps.shape == (2, 2, 2)
    # image 0: 0.5*A_0 - 0.5*A_1 = [[0.5, 0.5], [-1.5, 0]] -> ReLU
    np.testing.assert_allclose(maps[0], [[0.5, 0.5], [0.0, 0.0]], atol=1e-7)
    # image 1: -0.5*A_0 + 0.5*A_1 = [[-0.5, -0.5], [1.5, 0]] -> ReLU
    np.testing.assert_allclose(maps[1], [[0.0, 0.0], [1.5, 0.0]], atol=1e-7)


def test_gradcam_through_registry_and_finalise() -> None:
    method = get_method("gradcam")
    raw = method(A[None], G[None])
    out = finalise(raw, (2, 2), method.normalise)
    np.testing.assert_allclose(out[0], [[1.0, 1.0], [0.0, 0.0]], atol=1e-7)


def test_gradcam_rejects_mismatched_shapes() -> None:
    with pytest.raises(OnnxcamError):
        gradcam(A[None], G[None, :1])
