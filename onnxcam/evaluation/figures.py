"""The evaluation figure: overlays (images × methods) and the mean deletion/insertion curves, drawn with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam.cams.render import overlay
from onnxcam.evaluation.evaluate import Evaluation

TILE = 128
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40), (128, 0, 0), (0, 128, 128)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour=(0, 0, 0), scale: float = 0.4) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _tile(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA if image.shape[0] > TILE else cv2.INTER_LINEAR)


def _curves(evaluation: Evaluation, key: str, width: int, height: int = 220) -> np.ndarray:
    """One panel: the mean ``key`` curve ("deletion" or "insertion") of every method."""
    panel = np.full((height, width, 3), 255, np.uint8)
    left, top, right, bottom = 40, 24, width - 150, height - 30
    cv2.rectangle(panel, (left, top), (right, bottom), (0, 0, 0), 1)
    _text(panel, f"{key} (x: fraction of pixels, y: probability)", (left, 16))
    for y in (0.0, 0.5, 1.0):
        _text(panel, f"{y:.1f}", (8, int(bottom - y * (bottom - top)) + 4))
    for i, (name, result) in enumerate(evaluation.methods.items()):
        curve = result.deletion_curve if key == "deletion" else result.insertion_curve
        xs = left + result.fractions * (right - left)
        ys = bottom - np.clip(curve, 0, 1) * (bottom - top)
        points = np.stack([xs, ys], 1).astype(np.int32)
        colour = PALETTE[i % len(PALETTE)]
        cv2.polylines(panel, [points], False, colour, 2, cv2.LINE_AA)
        auc = result.metrics[f"{key}_auc"]
        _text(panel, f"{name} {auc:.3f}", (right + 8, top + 14 + 16 * i), colour)
    return panel


def evaluation_figure(evaluation: Evaluation, max_images: int = 6) -> np.ndarray:
    """RGB uint8 figure: one row per image (the picture, then each method's overlay), then the curves."""
    names = list(evaluation.methods)
    images = evaluation.images[:max_images]
    width = TILE * (len(names) + 1)
    header = np.full((20, width, 3), 255, np.uint8)
    for j, name in enumerate(["image", *names]):
        _text(header, name, (j * TILE + 4, 14))
    rows = [header]
    for i, image in enumerate(images):
        tiles = [_tile(image)] + [_tile(overlay(image, evaluation.methods[n].cams[i])) for n in names]
        row = np.concatenate(tiles, axis=1)
        if evaluation.labels:
            _text(row, evaluation.labels[i][:18], (4, TILE - 6), (255, 255, 255))
        rows.append(row)
    width = max(width, 520)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    rows += [_curves(evaluation, "deletion", width), _curves(evaluation, "insertion", width)]
    return np.concatenate(rows, axis=0)
