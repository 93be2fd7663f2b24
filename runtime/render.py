"""Pictures of CAMs: colour heatmaps blended over the image."""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np

from .errors import OnnxcamError

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}


def heatmap(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A ``[H,W]`` map in [0,1] → RGB uint8 ``[H,W,3]`` through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise OnnxcamError(f"unknown colormap '{colormap}'; use one of {', '.join(sorted(COLORMAPS))}")
    scaled = np.uint8(np.clip(cam, 0.0, 1.0) * 255 + 0.5)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend: (1 − alpha)·image + alpha·colormap(cam), RGB uint8; ``cam`` is resized to the image."""
    if not 0.0 <= alpha <= 1.0:
        raise OnnxcamError(f"alpha must lie in [0, 1], got {alpha}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OnnxcamError(f"overlay needs an RGB uint8 [H,W,3] image, got {image.dtype} {image.shape}")
    cam = np.asarray(cam, np.float32)
    if cam.shape != image.shape[:2]:
        cam = cv2.resize(cam, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heatmap(cam, colormap).astype(np.float32)
    return np.uint8(np.clip(blended + 0.5, 0, 255))


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Enlarge small pictures (nearest neighbour keeps pixels crisp) so the short side is ≥ ``min_side``."""
    factor = -(-min_side // min(image.shape[:2]))
    if factor <= 1:
        return image
    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 image → PNG bytes."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OnnxcamError("could not encode the PNG")
    return data.tobytes()


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG."""
    pathlib.Path(path).write_bytes(encode_png(image))
