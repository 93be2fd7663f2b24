"""Pictures of CAMs: colour heatmaps blended over the image."""

from __future__ import annotations

import io

import cv2
import numpy as np
import onnx

from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}


def heatmap(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A ``[H,W]`` map in [0,1] → RGB uint8 ``[H,W,3]`` through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise OnnxcamError(f"unknown colormap '{colormap}'; use one of {', '.join(sorted(COLORMAPS))}")
    scaled = np.uint8(np.clip(cam, 0.0, 1.0) * 255 + 0.5)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def colormap_table(colormap: str = "jet") -> np.ndarray:
    """The colormap as a 256-entry RGB lookup table ``[256,3]`` uint8: row k = :func:`heatmap` of k/255."""
    if colormap not in COLORMAPS:
        raise OnnxcamError(f"unknown colormap '{colormap}'; use one of {', '.join(sorted(COLORMAPS))}")
    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)[:, 0, :]


def to_uint8_graph(b: GraphBuilder, cam: str, as_index: bool = False) -> str:
    """A [0, 1] map as ONNX nodes → uint8 levels ⌊clip(m)·255 + 0.5⌋ (int64 with ``as_index``)."""
    level = b.op("Add", b.op("Mul", b.op("Clip", cam, b.const(0.0), b.const(1.0)), b.const(255.0)), b.const(0.5))
    return b.op("Cast", level, to=onnx.TensorProto.INT64 if as_index else onnx.TensorProto.UINT8)


def overlay_graph(b: GraphBuilder, batch: str, cam: str, preprocessing: dict, alpha: float = 0.5,
                  colormap: str = "jet") -> str:
    """:func:`overlay` as ONNX nodes: the model view recovered from the preprocessed ``batch`` ``[N,C,H,W]``
    (pixel = round((x·std + mean) / scale), channel order undone; a one-channel input is shown grey), blended
    with ``colormap`` through its lookup table → ``[N,H,W,3]`` uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise OnnxcamError(f"alpha must lie in [0, 1], got {alpha}")
    std = np.asarray(preprocessing.get("std", 1.0), np.float32)
    mean = np.asarray(preprocessing.get("mean", 0.0), np.float32)
    pixels = b.op("Transpose", batch, perm=[0, 2, 3, 1])  # [N, H, W, C]
    pixels = b.op("Div", b.op("Add", b.op("Mul", pixels, b.const(std)), b.const(mean)),
                  b.const(float(preprocessing.get("scale", 1 / 255))))
    pixels = b.op("Clip", b.op("Round", pixels), b.const(0.0), b.const(255.0))
    if str(preprocessing.get("channel_order", "RGB")).upper() == "BGR":
        pixels = b.op("Slice", pixels, b.ints([-1]), b.ints([-(2 ** 62)]), b.ints([3]), b.ints([-1]))
    pixels = b.op("Expand", pixels, b.ints([1, 1, 1, 3]))  # grey → RGB for one-channel models
    heat = b.op("Cast", b.op("Gather", b.const(colormap_table(colormap), np.uint8), to_uint8_graph(b, cam, True)),
                to=onnx.TensorProto.FLOAT)
    blended = b.op("Add", b.op("Mul", pixels, b.const(1.0 - alpha)), b.op("Mul", heat, b.const(alpha)))
    blended = b.op("Clip", b.op("Add", blended, b.const(0.5)), b.const(0.0), b.const(255.0))
    return b.op("Cast", blended, to=onnx.TensorProto.UINT8)


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


def encode_npy(array: np.ndarray) -> bytes:
    """An array → the bytes of its ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getvalue()
