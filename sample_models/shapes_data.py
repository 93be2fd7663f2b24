"""Synthetic shapes data set with ground-truth boxes (numpy + OpenCV only, no torch).

Each image holds one filled shape (circle, square, triangle or cross) of random size, rotation, position
and bright colour on a dark, noisy, textured background with a faint gradient. The tight pixel box of the
shape is known, so CAMs can be scored with the pointing game.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: Preprocessing of the shapes model: RGB, ``(x / 255 - 0.5) / 0.25``, no resize or crop.
PREPROCESSING: dict = {
    "resize": None,
    "crop": None,
    "scale": 1 / 255,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "channel_order": "RGB",
}

#: Diameter range (pixels, inclusive) of the circle each shape is inscribed in, at ``size=64``.
DIAMETER_RANGE: tuple[int, int] = (14, 26)


class ShapesData(NamedTuple):
    """A generated batch of images, class labels, tight boxes and the shapes' pixel masks."""

    images: np.ndarray  # uint8 [n,H,W,3] RGB
    labels: np.ndarray  # int64 [n], index into CLASSES
    boxes: np.ndarray  # int64 [n,4] (x0, y0, x1, y1): the shape lies in rows y0..y1-1, columns x0..x1-1
    masks: np.ndarray  # bool [n,H,W], True on the shape's pixels


def _outline(label: int, radius: float, angle: float) -> np.ndarray | None:
    """Polygon vertices [k,2] (x, y) centred on 0, or None for a circle."""
    name = CLASSES[label]
    if name == "circle":
        return None
    if name == "square":
        t = angle + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * radius
    elif name == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * radius
    else:  # cross (plus sign, arm half-width 0.32 R): one arm's 3 vertices, turned by 0, 90, 180, 270 deg
        a, w = radius, 0.32 * radius
        arm = np.array([(w, -a), (w, -w), (a, -w)])
        pts = np.concatenate([arm @ np.linalg.matrix_power([[0, 1], [-1, 0]], k) for k in range(4)])
        c, s = np.cos(angle), np.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    return pts


def _shape_mask(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Binary mask uint8 [size,size] of one random shape that lies fully inside the image."""
    scale = size / 64.0
    diameter = rng.integers(DIAMETER_RANGE[0], DIAMETER_RANGE[1] + 1) * scale
    radius = diameter / 2.0
    pts = _outline(label, radius, rng.uniform(0.0, 2 * np.pi))
    margin = 1.0
    if pts is None:
        lo, hi = np.array([-radius, -radius]), np.array([radius, radius])
    else:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    # Centre such that the whole shape keeps a margin of one pixel from the border.
    cx = rng.uniform(margin - lo[0], size - 1 - margin - hi[0])
    cy = rng.uniform(margin - lo[1], size - 1 - margin - hi[1])
    mask = np.zeros((size, size), np.uint8)
    if pts is None:
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        poly = np.round(pts + [cx, cy]).astype(np.int32)
        cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8)
    return mask


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark float32 [size,size,3] background: base colour, faint gradient, blotchy low-frequency texture."""
    base = rng.uniform(25.0, 100.0, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1) - 0.5
    theta = rng.uniform(0.0, 2 * np.pi)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy)[..., None] * rng.uniform(-30.0, 30.0, size=3)
    coarse = rng.normal(0.0, 14.0, size=(6, 6, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (base + ramp + texture).astype(np.float32)


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    """A random bright RGB colour: any hue, saturation 0.15-0.7, value 0.85-1 (float, 0-255)."""
    hsv = np.array([[[rng.integers(180), rng.integers(38, 179), rng.integers(217, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_dataset(n: int, seed: int, size: int = 64) -> ShapesData:
    """Generate ``n`` images of one shape each, deterministically from ``seed``; labels are balanced."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    boxes = np.empty((n, 4), np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        mask = _shape_mask(int(labels[i]), size, rng).astype(bool)
        masks[i] = mask
        img = _background(size, rng)
        colour = _bright_colour(rng)
        img[mask] = colour
        img += rng.normal(0.0, 9.0, size=img.shape).astype(np.float32)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return ShapesData(images=images, labels=labels, boxes=boxes, masks=masks)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[N,H,W,3]`` (or one ``[H,W,3]``) to float32 NCHW with :data:`PREPROCESSING`."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    mean = np.asarray(PREPROCESSING["mean"], np.float32)
    std = np.asarray(PREPROCESSING["std"], np.float32)
    x = (x.astype(np.float32) * np.float32(PREPROCESSING["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
