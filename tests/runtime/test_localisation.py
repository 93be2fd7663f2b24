"""The bundled shapes model: the CAM peak falls inside the ground-truth box on held-out images."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.runtime import Explainer
from sample_models.shapes_data import make_dataset
from tests.conftest import SHAPES_MODEL

HELD_OUT_SEED = 4242  # the model was trained on seed 0 (sample_models/train_shapes.py)


@pytest.fixture(scope="module")
def held_out():
    return make_dataset(200, seed=HELD_OUT_SEED)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(SHAPES_MODEL, providers="cpu")


def pointing_rate(cams: np.ndarray, boxes: np.ndarray) -> float:
    """Fraction of maps whose maximum lies inside the box (x0, y0, x1, y1), end-exclusive."""
    hits = 0
    for cam, (x0, y0, x1, y1) in zip(cams, boxes):
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        hits += bool(x0 <= x < x1 and y0 <= y < y1)
    return hits / len(cams)


def test_pointing_rate_is_not_trivial(held_out):
    """A map that ignores the image (peak at the centre) scores far below the bar, so the bar means something."""
    centre = np.zeros((len(held_out.images), 64, 64), np.float32)
    centre[:, 32, 32] = 1.0
    assert pointing_rate(centre, held_out.boxes) < 0.3


@pytest.mark.parametrize("method", ["gradcam", "cfcam"])
def test_peak_inside_ground_truth_box(explainer, held_out, method):
    result = explainer.explain(list(held_out.images), method=method)
    accuracy = float((result.class_index == held_out.labels).mean())
    rate = pointing_rate(result.cams, held_out.boxes)
    print(f"{method}: accuracy {accuracy:.3f}, pointing {rate:.3f}")
    assert accuracy >= 0.9
    assert rate >= 0.9
