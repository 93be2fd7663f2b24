"""Reading images and turning them into the model's input, as the metadata describes."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import cv2
import numpy as np

from onnxcam.core.errors import OnnxcamError


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB ``[H,W,3]`` uint8 array."""
    p = pathlib.Path(path)
    if not p.exists():
        raise OnnxcamError(f"image '{p}' does not exist; check the path")
    if p.is_dir():
        raise OnnxcamError(f"'{p}' is a folder, not an image; pass image files")
    return decode_image(np.fromfile(p, np.uint8), f"'{p}'")


def decode_image(data: np.ndarray, what: str) -> np.ndarray:
    """Encoded image bytes (uint8 ``[n]``) → RGB ``[H,W,3]`` uint8; ``what`` names them in the one-line errors."""
    if data.size == 0:
        raise OnnxcamError(f"{what} is empty (0 bytes); it is not an image")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OnnxcamError(f"{what} is not an image OpenCV can read; pass a JPEG, PNG, BMP, TIFF or WebP file")
    return as_rgb(image, bgr=True)


def as_rgb(image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Gray, RGB or RGBA (BGR/BGRA with ``bgr``) uint8 image → RGB ``[H,W,3]`` uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image // 257).astype(np.uint8)
        else:
            raise OnnxcamError(f"images must be uint8 arrays (got {image.dtype}); convert them first")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise OnnxcamError(f"expected an [H,W,3] image, got shape {image.shape}")
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(image)


def model_view(image: np.ndarray, spec: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """The part of ``image`` the model sees, ``[H,W,3]`` uint8: short side to ``resize``, centre ``crop``,
    then (if the size still differs) a plain resize to ``size`` = (H, W)."""
    h, w = size
    if spec.get("resize"):
        short = int(spec["resize"])
        scale = short / min(image.shape[:2])
        new = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = _resize(image, new)
    if spec.get("crop"):
        ch, cw = spec["crop"]
        top, left = max(0, (image.shape[0] - ch) // 2), max(0, (image.shape[1] - cw) // 2)
        image = image[top:top + ch, left:left + cw]
    if image.shape[:2] != (h, w):
        image = _resize(image, (w, h))
    return np.ascontiguousarray(image)


def _resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    shrink = size_wh[0] * size_wh[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, size_wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalise(views: np.ndarray, spec: dict[str, Any], channels: int = 3) -> np.ndarray:
    """``[N,H,W,3]`` uint8 → float32 ``[N,C,H,W]``: x = (pixel·scale − mean) / std in ``channel_order``;
    for a one-channel model (C = 1) the pixel is the luma 0.299 R + 0.587 G + 0.114 B."""
    x = views.astype(np.float32)
    if channels == 1:
        x = x @ np.asarray([[0.299], [0.587], [0.114]], np.float32)
    elif spec.get("channel_order", "RGB").upper() == "BGR":
        x = x[..., ::-1]
    x = x * np.float32(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec.get("mean", 0.0), np.float32)) / np.asarray(spec.get("std", 1.0), np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)




