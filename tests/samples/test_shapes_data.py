"""The synthetic shapes data set: determinism, tight boxes, balance, preprocessing (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sample_models.shapes_data import CLASSES, PREPROCESSING, make_dataset, preprocess


@pytest.fixture(scope="module")
def data():
    return make_dataset(200, seed=7)


def test_shapes_and_dtypes(data):
    assert 3 <= len(CLASSES) <= 4
    assert data.images.shape == (200, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (200,) and data.labels.dtype == np.int64
    assert data.boxes.shape == (200, 4) and np.issubdtype(data.boxes.dtype, np.integer)
    assert data.masks.shape == (200, 64, 64) and data.masks.dtype == bool
    assert set(np.unique(data.labels)) <= set(range(len(CLASSES)))


def test_deterministic_per_seed(data):
    again = make_dataset(200, seed=7)
    for a, b in zip(data, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_seeds_give_different_images(data):
    other = make_dataset(200, seed=8)
    assert not np.array_equal(data.images, other.images)
    assert not np.array_equal(data.boxes, other.boxes)
    # Not just a permutation or a shift: almost every image differs from its counterpart.
    differs = (data.images != other.images).reshape(200, -1).any(axis=1)
    assert differs.mean() > 0.99


def test_labels_are_balanced():
    for n in (40, 41, 203):
        counts = np.bincount(make_dataset(n, seed=n).labels, minlength=len(CLASSES))
        assert counts.max() - counts.min() <= 1


def test_boxes_inside_image_and_not_too_large(data):
    x0, y0, x1, y1 = data.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 64).all()
    w, h = x1 - x0, y1 - y0
    assert (w >= 8).all() and (h >= 8).all()
    assert (w <= 32).all() and (h <= 32).all()
    assert (w * h <= 64 * 64 / 4).all()  # the box covers well under a quarter of the image
    # Positions vary over the whole image.
    assert np.ptp((x0 + x1) / 2) > 30 and np.ptp((y0 + y1) / 2) > 30


def test_boxes_are_tight_around_the_shape(data):
    for mask, (x0, y0, x1, y1) in zip(data.masks, data.boxes, strict=True):
        assert mask.any()
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any(), "shape pixels outside the box"
        # Every edge row/column of the box touches the shape.
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_shape_pixels_are_bright_against_the_background(data):
    brightness = data.images.max(axis=3).astype(np.float64)
    for img, mask in zip(brightness, data.masks, strict=True):
        assert img[mask].mean() > img[~mask].mean() + 60


def test_background_is_noisy(data):
    # No flat backgrounds: the background pixels vary (noise, texture, gradient).
    bg = data.images[0].astype(np.int16)[~data.masks[0]]
    assert bg.std() > 5


def test_other_sizes_scale_the_shapes():
    small = make_dataset(20, seed=1, size=32)
    assert small.images.shape == (20, 32, 32, 3)
    assert (small.boxes[:, 2:] <= 32).all()
    assert (small.boxes[:, 2] - small.boxes[:, 0]).max() <= 16


def test_preprocess_matches_constants(data):
    x = preprocess(data.images[:5])
    assert x.shape == (5, 3, 64, 64) and x.dtype == np.float32
    mean = np.asarray(PREPROCESSING["mean"])[:, None, None]
    std = np.asarray(PREPROCESSING["std"])[:, None, None]
    expected = (data.images[2].transpose(2, 0, 1) * PREPROCESSING["scale"] - mean) / std
    np.testing.assert_allclose(x[2], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(preprocess(data.images[2]), x[2:3])
    assert PREPROCESSING["channel_order"] == "RGB"
    assert PREPROCESSING["resize"] is None and PREPROCESSING["crop"] is None


def test_module_does_not_import_torch():
    code = "import sys, sample_models.shapes_data; sys.exit(int('torch' in sys.modules))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
